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


def load_into_timm(arch: str, state_dict: dict, where: str, match: str = "names"):
    """Load a state dict into a timm architecture, strictly. `match: names` remaps original-repo
    layouts with the model module's own checkpoint_filter_fn (timm's convention); `match: order`
    pairs the checkpoint's tensors with the architecture's in order (`by_order`)."""
    module = create_timm(arch, f"{where}.arch")
    filter_fn = getattr(importlib.import_module(type(module).__module__), "checkpoint_filter_fn", None)
    if match == "order":
        state_dict, filter_fn = by_order(state_dict, module.state_dict(), f"{where}.state_dict_match"), None
    try:
        if filter_fn is not None:
            state_dict = filter_fn(state_dict, module)
        module.load_state_dict(state_dict, strict=True)
    except (RuntimeError, AssertionError, ValueError, KeyError) as e:  # filters assert on misfits
        raise FetchError(f"{where}: checkpoint does not fit architecture {arch}: {str(e)[:800]}") from e
    return module.eval()


def by_order(checkpoint: dict, own: dict, where: str) -> dict:
    """The checkpoint's tensors under the architecture's names, paired in order: for a checkpoint
    of another implementation of the same network (EfficientNet-Lite's original PyTorch port into
    timm's `tf_efficientnet_lite0`), whose tensors come in the same order with other names.
    BatchNorm's `num_batches_tracked` counters are skipped on both sides (some ports drop them);
    every pair must agree in shape, and the counts must match."""
    skip = "num_batches_tracked"
    theirs = [(k, v) for k, v in checkpoint.items() if not k.endswith(skip)]
    ours = [k for k in own if not k.endswith(skip)]
    if len(theirs) != len(ours):
        raise FetchError(f"{where}: order: the checkpoint has {len(theirs)} tensors, the architecture {len(ours)} (counters aside)")
    for i, (name, (their_name, tensor)) in enumerate(zip(ours, theirs)):
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise FetchError(
                f"{where}: order: tensor {i} of the checkpoint ({their_name}, {tuple(tensor.shape)}) does not fit"
                f" {name} {tuple(own[name].shape)}: not the same network in the same order"
            )
    mapped = {name: tensor for name, (_, tensor) in zip(ours, theirs)}
    return {**{k: v for k, v in own.items() if k.endswith(skip)}, **mapped}
