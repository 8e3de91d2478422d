"""The `timm:` source: a timm model by name, and loading a checkpoint into a timm architecture."""

from __future__ import annotations

import importlib
from typing import ClassVar

from npuflow.sources.core import IMAGENET_MEAN, IMAGENET_STD, SOURCES, FetchError, HFHubSource, WeightsUnavailable, reference
from npuflow.util.registry import unknown_name_message


def _check_timm_name(name: str, where: str) -> None:
    import timm

    if not timm.is_model(name):
        known = set(timm.list_models()) | set(timm.list_pretrained())
        raise FetchError(f"{where}: {unknown_name_message('timm model', name, known)}")


def create_timm(name: str, where: str, pretrained: bool = False):
    """A timm model by name (checked first, so an unknown name lists close matches)."""
    import timm

    _check_timm_name(name, where)
    return timm.create_model(name, pretrained=pretrained).eval()


@SOURCES.register("timm")
class TimmSource(HFHubSource):
    syntax = "timm:<name>"
    example: ClassVar[dict] = {"source": "timm:mobilenetv3_small_050", "task": "classification", "input": {"shape": [1, 3, 64, 64]}}

    def _arch(self, spec) -> tuple[str, str]:
        """(timm model name, config field it comes from)."""
        return reference(spec), f"models.{spec['name']}.source"

    def build(self, spec):
        return create_timm(*self._arch(spec))

    def load_pretrained(self, spec, cache_dir):
        name, where = self._arch(spec)
        _check_timm_name(name, where)
        try:
            module = create_timm(name, where, pretrained=True)
        except Exception as e:  # hub errors come in many types; all mean "not available now"
            raise WeightsUnavailable(f"timm could not load pretrained {name}: {type(e).__name__}: {e}") from e
        return module, {"from": f"hub:{module.pretrained_cfg.get('hf_hub_id') or name}"}

    def preprocessing(self, spec, module):
        """timm's data config for the model: normalisation, eval centre-crop share, interpolation."""
        cfg = getattr(module, "pretrained_cfg", None) or {}
        return {
            "mean": list(cfg.get("mean", IMAGENET_MEAN)),
            "std": list(cfg.get("std", IMAGENET_STD)),
            "crop_pct": float(cfg.get("crop_pct", 1.0)),
            "interpolation": cfg.get("interpolation", "bilinear"),
        }

    def native_input_size(self, module):
        """timm's pretrained input size (ViTs and Swin take only that one)."""
        size = (getattr(module, "pretrained_cfg", None) or {}).get("input_size")
        return tuple(size[-2:]) if size else None

    def deploy_form(self, module):
        """timm's reparameterisation: multi-branch training blocks fused into single convolutions."""
        from timm.models import reparameterize_model

        return reparameterize_model(module)


def load_into_timm(arch: str, state_dict: dict, where: str):
    """Load a state dict into a timm architecture, remapping original-repo layouts with the model
    module's own checkpoint_filter_fn (timm's convention), strictly."""
    module = create_timm(arch, f"{where}.arch")
    filter_fn = getattr(importlib.import_module(type(module).__module__), "checkpoint_filter_fn", None)
    try:
        if filter_fn is not None:
            state_dict = filter_fn(state_dict, module)
        module.load_state_dict(state_dict, strict=True)
    except (RuntimeError, AssertionError, ValueError, KeyError) as e:  # filters assert on misfits
        raise FetchError(f"{where}: checkpoint does not fit architecture {arch}: {str(e)[:800]}") from e
    return module.eval()
