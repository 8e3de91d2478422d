"""Model sources: where a model's architecture and weights come from. A source is one registry
entry (`SOURCES`, keyed by the prefix of `source: <prefix>:<reference>`) that carries what the rest
of npuflow needs to know of it: the config fields it reads (their JSON Schema, which the config
schema takes from here), which of them it requires, the tasks it serves, the hub it loads
pretrained weights from (probed quickly, so offline is noticed in seconds), and its own config
checks. Each source builds the architecture offline with random weights and loads pretrained
weights when they can be had; `fetch` decides which by the weights policy.

This module holds the registry, the ModelSource base and the checks of an entry against it. The
sources are in modules of their own: `timm:` (timm), `hf:` (hf), `url:` and `file:` (files),
`torchvision:`, `ultralytics:`, `onnx:` (onnx_files); the package imports them all, so that they
register."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import ClassVar

from npuflow.util.download import reachable
from npuflow.util.errors import NpuflowError
from npuflow.util.registry import Registry

SOURCES: Registry[type[ModelSource]] = Registry("model source")
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
    # True: the model arrives as an ONNX graph with its weights (`graph_file`), not as a torch
    # module; the weights policy does not apply, and export imports the graph instead of tracing one
    carries_graph: ClassVar[bool] = False

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

    def graph_file(self, spec: dict, cache_dir: Path) -> tuple[Path, str]:
        """(the model's ONNX file, its sha256), for a source that `carries_graph`."""
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


def reference(spec: dict) -> str:
    """The part of `source:` after the prefix."""
    return spec["source"].split(":", 1)[1]


class HFHubSource(ModelSource):
    """Sources whose pretrained weights come from the Hugging Face hub (timm's and transformers')."""

    @property
    def hub(self):
        return hub_endpoint()

    def probe_hub(self):
        return set_hub_offline_unless_reachable()


def source_for(spec: dict) -> ModelSource:
    return SOURCES.get(spec["source"].split(":", 1)[0])()
