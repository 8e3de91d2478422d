"""The `hf:` source: a transformers model, built from its architecture config (given or shipped in hf_configs/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from npuflow.sources.core import SOURCES, FetchError, HFHubSource, WeightsUnavailable, reference

HF_CONFIG_DIR = Path(__file__).resolve().parent / "hf_configs"


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
class HFSource(HFHubSource):
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
        problem = hf_config_problem(reference(entry), entry, where)
        return [problem] if problem else []

    def num_classes(self, entry, where):
        """The architecture config's `id2label` (or its `num_labels`), given or shipped."""
        field = f"{where}.hf_config"
        cfg = entry.get("hf_config")
        if cfg is None and hf_config_file(reference(entry)).exists():
            field = f"the shipped config of hf:{reference(entry)}"
            try:
                cfg = json.loads(hf_config_file(reference(entry)).read_text())
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

        repo = reference(spec)
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
        repo = reference(spec)
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


def hf_config_problem(repo: str, entry: dict, where: str) -> str | None:
    """An hf: source is built from its architecture config (HFSource._config): shipped, or given."""
    if "hf_config" in entry or hf_config_file(repo).exists():
        return None
    return f"{where}.hf_config: hf:{repo} has no shipped architecture config; add `hf_config:` (the repo's config.json) so it can be built offline"
