"""Model sources: where a model's architecture and weights come from (`timm:`, `hf:`, `url:`,
`file:`). Each source builds the architecture offline with random weights, and loads pretrained
weights when they can be had; `fetch` decides which by the weights policy."""

from __future__ import annotations

import importlib
import json
import os
import urllib.parse
from pathlib import Path

from .download import ChecksumMismatch, DownloadError, DownloadUnavailable, download, reachable
from .errors import NpuflowError
from .io import sha256_file
from .registry import Registry, unknown_name_message

SOURCES: Registry[ModelSource] = Registry("model source")
HF_CONFIG_DIR = Path(__file__).resolve().parent / "hf_configs"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class FetchError(NpuflowError):
    """A model cannot be fetched or built; the message says which entry and why."""


class WeightsUnavailable(FetchError):
    """Pretrained weights cannot be had now (offline, unreachable host, not cached)."""


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def set_hub_offline_unless_reachable() -> bool:
    """Put huggingface_hub in offline mode (cache only, no retries) when the hub is unreachable."""
    online = reachable(hub_endpoint())
    if not online:
        os.environ["HF_HUB_OFFLINE"] = "1"
        import sys

        if "huggingface_hub.constants" in sys.modules:  # already imported: set the flag it read
            sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True
    return online


class ModelSource:
    """A kind of model source. `spec` is the resolved model spec (npuflow.config.model_spec)."""

    def build(self, spec: dict):
        """The architecture with freshly initialised weights (the caller seeds torch)."""
        raise NotImplementedError

    def load_pretrained(self, spec: dict, cache_dir: Path):
        """The architecture with pretrained weights; raise WeightsUnavailable if they can't be had.
        Returns (module, details) where details is a dict recorded in the manifest."""
        raise NotImplementedError

    def preprocessing(self, spec: dict, module) -> dict:
        return {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}

    def deploy_form(self, module):
        """The module as deployed (reparameterised), or the module itself if it has no such form."""
        return module

    def family(self, module) -> str:
        """The architecture family (timm's model module, e.g. efficientvit_msra), for grouping runs."""
        return type(module).__module__.rsplit(".", 1)[-1]


def _ref(spec: dict) -> str:
    return spec["source"].split(":", 1)[1]


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
class TimmSource(ModelSource):
    def _arch(self, spec) -> tuple[str, str]:
        """(timm model name, config field it comes from)."""
        return _ref(spec), f"models.{spec['name']}.source"

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

    def deploy_form(self, module):
        """timm's reparameterisation: multi-branch training blocks fused into single convolutions."""
        from timm.models import reparameterize_model

        return reparameterize_model(module)


def _hf_wrapper(model):
    """Wrap a transformers model so export sees one tensor in, the logits out."""
    import torch

    class HFLogitsModule(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values):
            return self.inner(pixel_values=pixel_values).logits

    return HFLogitsModule(model).eval()


def hf_config_file(repo: str) -> Path:
    return HF_CONFIG_DIR / (repo.replace("/", "__") + ".json")


@SOURCES.register("hf")
class HFSource(ModelSource):
    def _config(self, spec):
        import transformers

        repo = _ref(spec)
        cfg = spec.get("hf_config")
        if cfg is None:
            problem = hf_config_problem(repo, spec, f"models.{spec['name']}")
            if problem:
                raise FetchError(problem)
            cfg = json.loads(hf_config_file(repo).read_text())
        cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
        model_type = cfg.pop("model_type", None)
        if not model_type:
            raise FetchError(f"models.{spec['name']}.hf_config: expected a `model_type` field")
        return transformers.AutoConfig.for_model(model_type, **cfg)

    @staticmethod
    def _model_class(config, spec):
        import transformers

        archs = getattr(config, "architectures", None) or []
        if not archs or not hasattr(transformers, archs[0]):
            raise FetchError(f"models.{spec['name']}.hf_config: expected `architectures` naming a transformers class")
        return getattr(transformers, archs[0])

    def build(self, spec):
        config = self._config(spec)
        config._attn_implementation = "eager"  # the SDPA path does not export at opset < 14
        return _hf_wrapper(self._model_class(config, spec)(config))

    def load_pretrained(self, spec, cache_dir):
        repo = _ref(spec)
        config = self._config(spec)
        try:
            model = self._model_class(config, spec).from_pretrained(repo, attn_implementation="eager")
        except Exception as e:
            raise WeightsUnavailable(f"transformers could not load pretrained {repo}: {type(e).__name__}: {e}") from e
        return _hf_wrapper(model), {"from": f"hub:{repo}"}

    def family(self, module):
        return module.inner.config.model_type


def _looks_like_safetensors(path: Path) -> bool:
    """safetensors starts with an 8-byte header length and a JSON header: a URL's file name need
    not say which format it serves."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _load_failure(e: Exception) -> str:
    """The part of a loader's error that says why: torch's weights-only refusal is a page of
    advice to load with weights_only=False, which npuflow never does."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    code = next((line for line in lines if "GLOBAL" in line), None)
    if code:
        return f"it would import and run code ({code}); npuflow never runs code from a checkpoint"
    if lines and lines[0].startswith("Weights only load failed"):
        why = next((line for line in lines if line.startswith("Unsupported")), lines[-1])
        return f"truncated, corrupt, not a weights file, or holding more than tensors (the weights-only unpickler says: {why})"
    return f"truncated, corrupt or not a weights file ({type(e).__name__}: {lines[0][:200] if lines else 'file ended early'})"


def load_state_dict_file(path: Path, key: str | None, where: str) -> dict:
    """Load a checkpoint without executing code from it (safetensors or weights-only pickle)."""
    import torch

    safetensors = path.suffix == ".safetensors" or _looks_like_safetensors(path)
    try:
        if safetensors:
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # each loader has its own error types for a bad file
        kind = "safetensors file" if safetensors else "weights-only checkpoint"
        raise FetchError(f"{where}.source: {path} is not a loadable {kind}: {_load_failure(e)}") from e
    if key:
        if not isinstance(obj, dict) or key not in obj:
            keys = list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
            raise FetchError(f"{where}.state_dict_key: no key {key!r} in the checkpoint (top-level keys: {keys})")
        obj = obj[key]
    if not isinstance(obj, dict) or not all(hasattr(v, "shape") for v in obj.values()):
        raise FetchError(f"{where}: {path} is not a state dict of tensors (set state_dict_key?)")
    return obj


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


class _CheckpointSource(TimmSource):
    """A checkpoint file loaded into the timm architecture named by `arch`."""

    def _arch(self, spec):
        return spec["arch"], f"models.{spec['name']}.arch"

    def _checkpoint(self, spec, cache_dir) -> tuple[Path, str]:
        raise NotImplementedError

    def load_pretrained(self, spec, cache_dir):
        path, digest = self._checkpoint(spec, cache_dir)
        where = f"models.{spec['name']}"
        state_dict = load_state_dict_file(path, spec.get("state_dict_key"), where)
        return load_into_timm(spec["arch"], state_dict, where), {"from": spec["source"], "file_sha256": digest}


@SOURCES.register("url")
class URLSource(_CheckpointSource):
    def _checkpoint(self, spec, cache_dir):
        url = _ref(spec)
        name = Path(urllib.parse.urlsplit(url).path).name
        name = name if name not in ("", ".", "..") else "checkpoint"  # `https://host/a/..` names no file
        dest = Path(cache_dir) / "downloads" / spec["name"] / name
        where = f"models.{spec['name']}"
        try:
            return dest, download(url, dest, spec.get("sha256"), spec.get("allow_http", False))
        except DownloadUnavailable as e:  # `weights: auto` falls back to random weights on this
            raise WeightsUnavailable(str(e)) from e
        except ChecksumMismatch as e:
            raise FetchError(f"{where}.sha256: {e}") from e
        except DownloadError as e:
            raise FetchError(f"{where}.source: {e}") from e


@SOURCES.register("file")
class FileSource(_CheckpointSource):
    def _checkpoint(self, spec, cache_dir):
        path = Path(_ref(spec)).expanduser()
        problem = missing_file_problem(path, f"models.{spec['name']}.source")
        if problem:
            raise FetchError(problem)
        digest = sha256_file(path)
        if spec.get("sha256") and digest != spec["sha256"].lower():
            raise FetchError(f"models.{spec['name']}.sha256: {path} has sha256 {digest}, expected {spec['sha256'].lower()}")
        return path, digest


def native_input_size(module) -> tuple[int, int] | None:
    """The input size (H, W) a model was made for, where its library records it: timm's
    pretrained_cfg, a transformers config's image_size. None where neither says."""
    cfg = getattr(module, "pretrained_cfg", None) or {}
    if cfg.get("input_size"):
        return tuple(cfg["input_size"][-2:])
    size = getattr(getattr(getattr(module, "inner", module), "config", None), "image_size", None)
    if isinstance(size, int):
        return size, size
    if isinstance(size, list | tuple) and len(size) == 2:
        return tuple(size)
    return None


def source_for(spec: dict) -> ModelSource:
    return SOURCES.get(spec["source"].split(":", 1)[0])()


# ------------------------------------------------------------------ checks when the config is read
def missing_file_problem(path: Path, where: str) -> str | None:
    """A local checkpoint that is not a readable file, named by the field it comes from."""
    shown = str(path) if path.is_absolute() else f"{path} (relative to {Path.cwd()})"
    if path.is_dir():
        return f"{where}: {shown} is a folder, not a checkpoint file"
    if not path.is_file():
        return f"{where}: no such file {shown}"
    if not os.access(path, os.R_OK):
        return f"{where}: {shown} cannot be read (permissions)"
    return None


def hf_config_problem(repo: str, entry: dict, where: str) -> str | None:
    """An hf: source is built from its architecture config (HFSource._config): shipped, or given."""
    if "hf_config" in entry or hf_config_file(repo).exists():
        return None
    return f"{where}.hf_config: hf:{repo} has no shipped architecture config; add `hf_config:` (the repo's config.json) so it can be built offline"


def entry_problems(name: str, entry: dict) -> list[str]:
    """What a model entry's source can be checked for before any job runs, without importing
    torch or the hubs: a `file:` checkpoint that is not there, an `hf:` model without an
    architecture config. The fetch job checks the same again."""
    kind, ref = entry["source"].split(":", 1)
    where = f"models.{name}"
    if kind == "file":
        problem = missing_file_problem(Path(ref).expanduser(), f"{where}.source")
    elif kind == "hf":
        problem = hf_config_problem(ref, entry, where)
    else:
        problem = None
    return [problem] if problem else []
