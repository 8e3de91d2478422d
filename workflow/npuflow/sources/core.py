"""Model sources: where a model's architecture and weights come from. A source is one registry
entry (`SOURCES`, keyed by the prefix of `source: <prefix>:<reference>`) that carries what the rest
of npuflow needs to know of it: the config fields it reads (their JSON Schema, which the config
schema takes from here), which of them it requires, the tasks it serves, the hub it loads
pretrained weights from (probed quickly, so offline is noticed in seconds), and its own config
checks. Each source builds the architecture offline with random weights and loads pretrained
weights when they can be had; `fetch` decides which by the weights policy.

Built in: `timm:`, `hf:`, `url:`, `file:` here; `torchvision:` and `ultralytics:` in their own
modules (imported at the end of this one, so that they register)."""

from __future__ import annotations

import copy
import importlib
import json
import os
import urllib.parse
from pathlib import Path
from typing import ClassVar

from npuflow.sources.checkpoints import CheckpointError, load_state_dict_file
from npuflow.util.download import ChecksumMismatch, DownloadError, DownloadUnavailable, download, reachable
from npuflow.util.errors import NpuflowError
from npuflow.util.io import sha256_file
from npuflow.util.registry import Registry, unknown_name_message

SOURCES: Registry[type[ModelSource]] = Registry("model source")
HF_CONFIG_DIR = Path(__file__).resolve().parent / "hf_configs"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
DEFAULT_OUTPUT = "output"


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


# Config fields shared by several sources: one definition each (the schema takes them from here).
ARCH_FIELD = {"description": "timm architecture a url: or file: checkpoint is loaded into.", "type": "string"}
SHA256_FIELD = {
    "description": "Expected sha256 of a url: or file: checkpoint.",
    "type": "string",
    "pattern": "^[0-9a-fA-F]{64}$",
}
STATE_DICT_KEY_FIELD = {
    "description": "Key of the state dict inside the checkpoint (e.g. `model` for the EfficientViT release).",
    "type": "string",
}


class ModelSource:
    """A kind of model source: the registry entry of one prefix. `spec` is the resolved model
    spec (npuflow.pipeline.spec.model_spec); `entry` the model's config entry as validated."""

    # `<prefix>:…` as the schema's description shows it
    syntax: ClassVar[str] = ""
    # config fields this source reads, beyond the common ones: name -> JSON Schema
    fields: ClassVar[dict[str, dict]] = {}
    # fields an entry of this source must give, with why
    required: ClassVar[dict[str, str]] = {}
    # tasks its models can serve
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    # where pretrained weights come from: probed (3 s at most) before loading, or None
    hub: ClassVar[str | None] = None
    # a small entry of this source that builds offline in seconds (the tests run every source's)
    example: ClassVar[dict] = {}

    @classmethod
    def example_entry(cls, folder: Path) -> dict:
        """`example` as a config entry; a source whose entries name a local file makes it in `folder`."""
        return copy.deepcopy(cls.example)

    def check(self, entry: dict, where: str) -> list[str]:
        """Config-time problems of an entry (each `<field path>: <problem>`), beyond the schema.
        No heavy imports here: this runs at every Snakemake start."""
        return []

    def probe_hub(self) -> bool | None:
        """Whether the hub answers (None: this source uses none)."""
        return reachable(self.hub) if self.hub else None

    def build(self, spec: dict):
        """The architecture with freshly initialised weights (the caller seeds torch)."""
        raise NotImplementedError

    def architecture(self, spec: dict):
        """The architecture whose weights are about to be loaded (the fetched ones): `build`,
        unless initialising costs work that loading would throw away."""
        return self.build(spec)

    def load_pretrained(self, spec: dict, cache_dir: Path):
        """The architecture with pretrained weights; raise WeightsUnavailable if they can't be had.
        Returns (module, details) where details is a dict recorded in the manifest."""
        raise NotImplementedError

    def preprocessing(self, spec: dict, module) -> dict:
        return {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}

    def deploy_form(self, module):
        """The module as deployed (reparameterised), or the module itself if it has no such form."""
        return module

    def check_input(self, shape):
        """The fixed input the export is checked on, in the range the model's inputs take
        (normalised images: about standard normal)."""
        from npuflow.util.onnxutil import fixed_input

        return fixed_input(shape)

    def export_form(self, module, spec: dict):
        """(module to export, its output names): the deploy form when `reparameterize` is on."""
        return (self.deploy_form(module) if spec.get("reparameterize", True) else module), [DEFAULT_OUTPUT]

    def num_classes(self, entry: dict, where: str) -> tuple[int, str] | None:
        """(how many classes the model outputs, where that comes from) where the config entry
        tells without building the model; None where only building it would (the evaluation
        job then checks the labels against the outputs). Cheap: runs at every Snakemake start."""
        return None

    def head(self, module) -> dict | None:
        """What the host needs to post-process the outputs (detection heads), for the manifest."""
        return None

    def task_of(self, reference: str) -> str:
        """The task of the model a reference names, where the name alone says it (`sim-validate`
        builds a CSV row's model from its name); else the first task the source serves."""
        return self.tasks[0]

    def native_input_size(self, module) -> tuple[int, int] | None:
        """The input size (H, W) the model was made for, where the source knows it (for the
        message of an export that fails on the configured size); None where it does not."""
        return None

    def family(self, module) -> str:
        """The architecture family (timm's model module, e.g. efficientvit_msra), for grouping runs."""
        return type(module).__module__.rsplit(".", 1)[-1]


def source_fields() -> dict[str, dict]:
    """Every registered source's config fields (name -> JSON Schema); a field two sources share
    must be defined alike."""
    merged: dict[str, dict] = {}
    for prefix in SOURCES.names():
        for name, schema in SOURCES.get(prefix).fields.items():
            if merged.setdefault(name, schema) != schema:
                raise ValueError(f"model source {prefix!r} defines field {name!r} differently from another source")
    return merged


def sources_using(field: str) -> list[str]:
    return [p for p in SOURCES.names() if field in SOURCES.get(p).fields]


def check_entry(entry: dict, where: str) -> list[str]:
    """The source-dependent checks of a model entry: a known prefix, its required fields, no
    field of another source, a task it serves, and the source's own checks."""
    kind = entry["source"].partition(":")[0]
    if kind not in SOURCES:
        return [f"{where}.source: {SOURCES.unknown_message(kind)}"]
    cls = SOURCES.get(kind)
    problems = [f"{where}.{field}: a {kind}: source needs `{field}`, {why}" for field, why in cls.required.items() if field not in entry]
    for field in source_fields():
        if field in entry and field not in cls.fields:
            problems.append(f"{where}.{field}: not read by {kind}: sources (it is for {', '.join(p + ':' for p in sources_using(field))})")
    if entry["task"] not in cls.tasks:
        problems.append(f"{where}.task: {kind}: sources serve {', '.join(cls.tasks)}, not {entry['task']}")
    return problems + cls().check(entry, where)


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


class _HFHubSource(ModelSource):
    """Sources whose pretrained weights come from the Hugging Face hub (timm's and transformers')."""

    @property
    def hub(self):
        return hub_endpoint()

    def probe_hub(self):
        return set_hub_offline_unless_reachable()


@SOURCES.register("timm")
class TimmSource(_HFHubSource):
    syntax = "timm:<name>"
    example: ClassVar[dict] = {"source": "timm:mobilenetv3_small_050", "task": "classification", "input": {"shape": [1, 3, 64, 64]}}

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

    def native_input_size(self, module):
        """timm's pretrained input size (ViTs and Swin take only that one)."""
        size = (getattr(module, "pretrained_cfg", None) or {}).get("input_size")
        return tuple(size[-2:]) if size else None

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
class HFSource(_HFHubSource):
    syntax = "hf:<repo>"
    fields: ClassVar[dict[str, dict]] = {
        "hf_config": {
            "description": "Architecture config for an hf: source (as in its config.json), for random weights offline.",
            "type": "object",
        }
    }
    tasks = ("classification", "segmentation")
    example: ClassVar[dict] = {
        "source": "hf:example/tiny-segformer",
        "hf_config": {
            "model_type": "segformer",
            "architectures": ["SegformerForSemanticSegmentation"],
            "depths": [1, 1, 1, 1],
            "hidden_sizes": [8, 16, 24, 32],
            "num_attention_heads": [1, 1, 1, 1],
            "decoder_hidden_size": 32,
            "num_labels": 5,
        },
        "task": "segmentation",
        "input": {"shape": [1, 3, 64, 64]},
    }

    def check(self, entry, where):
        problem = hf_config_problem(_ref(entry), entry, where)
        return [problem] if problem else []

    def num_classes(self, entry, where):
        """The architecture config's `id2label` (or its `num_labels`), given or shipped."""
        field = f"{where}.hf_config"
        cfg = entry.get("hf_config")
        if cfg is None and hf_config_file(_ref(entry)).exists():
            field = f"the shipped config of hf:{_ref(entry)}"
            try:
                cfg = json.loads(hf_config_file(_ref(entry)).read_text())
            except (OSError, ValueError):
                return None
        if not isinstance(cfg, dict):
            return None
        if isinstance(cfg.get("id2label"), dict) and cfg["id2label"]:  # transformers counts these first
            return len(cfg["id2label"]), f"{field}: id2label"
        if isinstance(cfg.get("num_labels"), int) and not isinstance(cfg["num_labels"], bool) and cfg["num_labels"] > 0:
            return cfg["num_labels"], f"{field}: num_labels"
        return None

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

    def native_input_size(self, module):
        """The transformers config's image_size."""
        size = getattr(getattr(module.inner, "config", None), "image_size", None)
        if isinstance(size, int):
            return size, size
        return tuple(size) if isinstance(size, list | tuple) and len(size) == 2 else None

    def family(self, module):
        return module.inner.config.model_type


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

    required: ClassVar[dict[str, str]] = {"arch": "the timm architecture to load it into"}
    hub = None

    def probe_hub(self):
        return None

    def _arch(self, spec):
        return spec["arch"], f"models.{spec['name']}.arch"

    def _checkpoint(self, spec, cache_dir) -> tuple[Path, str]:
        raise NotImplementedError

    def load_pretrained(self, spec, cache_dir):
        path, digest = self._checkpoint(spec, cache_dir)
        where = f"models.{spec['name']}"
        try:
            state_dict = load_state_dict_file(path, spec.get("state_dict_key"), where)
        except CheckpointError as e:
            raise FetchError(str(e)) from e
        return load_into_timm(spec["arch"], state_dict, where), {"from": spec["source"], "file_sha256": digest}


@SOURCES.register("url")
class URLSource(_CheckpointSource):
    syntax = "url:<https URL> (with arch)"
    example: ClassVar[dict] = {
        "source": "url:https://127.0.0.1:9/mobilenetv3_small_050.pth",
        "arch": "mobilenetv3_small_050",
        "task": "classification",
        "input": {"shape": [1, 3, 64, 64]},
    }
    fields: ClassVar[dict[str, dict]] = {
        "arch": ARCH_FIELD,
        "sha256": SHA256_FIELD,
        "state_dict_key": STATE_DICT_KEY_FIELD,
        "allow_http": {"description": "Permit a plain-http url: source (otherwise only https is fetched).", "type": "boolean"},
    }

    def check(self, entry, where):
        url = entry["source"][4:]
        if url.startswith("http://") and not entry.get("allow_http", False):
            return [f"{where}.source: plain http is refused; use https, or set allow_http: true"]
        if not url.startswith(("https://", "http://")):
            return [f"{where}.source: expected url:https://…, got {entry['source']!r}"]
        return []

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
    syntax = "file:<path> (with arch)"
    example: ClassVar[dict] = {
        "source": "file:/nonexistent/mobilenetv3_small_050.pth",
        "arch": "mobilenetv3_small_050",
        "task": "classification",
        "input": {"shape": [1, 3, 64, 64]},
    }
    fields: ClassVar[dict[str, dict]] = {"arch": ARCH_FIELD, "sha256": SHA256_FIELD, "state_dict_key": STATE_DICT_KEY_FIELD}

    @classmethod
    def example_entry(cls, folder: Path) -> dict:
        # The config checks that the file is there; an empty one is no checkpoint, so pretrained
        # weights fail on it as on any unreadable file.
        path = Path(folder) / "mobilenetv3_small_050.pth"
        path.touch()
        return {**copy.deepcopy(cls.example), "source": f"file:{path}"}

    def check(self, entry, where):
        # Before any job runs; the fetch job checks again (the file can go in between).
        problem = missing_file_problem(Path(_ref(entry)).expanduser(), f"{where}.source")
        return [problem] if problem else []

    def _checkpoint(self, spec, cache_dir):
        path = Path(_ref(spec)).expanduser()
        problem = missing_file_problem(path, f"models.{spec['name']}.source")
        if problem:
            raise FetchError(problem)
        digest = sha256_file(path)
        if spec.get("sha256") and digest != spec["sha256"].lower():
            raise FetchError(f"models.{spec['name']}.sha256: {path} has sha256 {digest}, expected {spec['sha256'].lower()}")
        return path, digest


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
