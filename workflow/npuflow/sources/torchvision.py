"""`torchvision:<name>[.<weights>]`: torchvision's classification and segmentation builders
(mobilenet_v2, googlenet, squeezenet1_1, resnet18, lraspp_mobilenet_v3_large,
deeplabv3_mobilenet_v3_large, …), with one of the builder's weights (`mobilenet_v2.IMAGENET1K_V1`;
default: torchvision's DEFAULT entry, e.g. IMAGENET1K_V2 for mobilenet_v2).

Pretrained weights are that weights enum entry's file, as torchvision would fetch it,
looked for first in torch's hub cache (`$TORCH_HOME/hub/checkpoints/<file>`, where torchvision
keeps it), downloaded there when download.pytorch.org answers, checked against the sha256 prefix
its name carries, and loaded weights-only. The architecture is always built the way torchvision
builds it for those weights (GoogLeNet/Inception normalise their input themselves), without the
training-only auxiliary heads, so random and pretrained weights share one deployable module."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from npuflow.sources.checkpoints import CheckpointError, load_state_dict_file
from npuflow.sources.core import SOURCES, FetchError, ModelSource, WeightsUnavailable
from npuflow.util.download import DownloadError, DownloadUnavailable, download
from npuflow.util.io import sha256_file
from npuflow.util.registry import unknown_name_message

HUB = "https://download.pytorch.org"
# Builder arguments torchvision sets when it loads pretrained weights (and the deploy form: the
# auxiliary classifiers only train); the same for random weights, so both are one architecture.
DEPLOY_KWARGS = {
    "googlenet": {"transform_input": True, "aux_logits": False, "init_weights": False},
    "inception_v3": {"transform_input": True, "aux_logits": False, "init_weights": False},
}
SEGMENTATION_KWARGS = {"aux_loss": False, "weights_backbone": None}
AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.", "aux_classifier.")


def _names() -> tuple[list[str], list[str]]:
    from torchvision import models

    return models.list_models(module=models), models.list_models(module=models.segmentation)


def _segmentation_logits(model):
    """Wrap a torchvision segmenter (which returns {'out': logits, …}) so export sees the logits."""
    import torch

    class SegmentationLogits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)["out"]

    return SegmentationLogits(model).eval()


def hub_checkpoints() -> Path:
    """torch's hub cache of checkpoints ($TORCH_HOME/hub/checkpoints), where torchvision keeps its weights."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


@SOURCES.register("torchvision")
class TorchvisionSource(ModelSource):
    syntax = "torchvision:<builder>[.<weights>]"
    tasks = ("classification", "segmentation")
    hub = HUB
    example: ClassVar[dict] = {"source": "torchvision:squeezenet1_1", "task": "classification", "input": {"shape": [1, 3, 64, 64]}}

    def _name(self, spec) -> str:
        name = spec["source"].split(":", 1)[1].split(".", 1)[0]
        classifiers, segmenters = _names()
        where = f"models.{spec['name']}"
        if name not in classifiers and name not in segmenters:
            raise FetchError(f"{where}.source: {unknown_name_message('torchvision model', name, classifiers + segmenters)}")
        task = "segmentation" if name in segmenters else "classification"
        if spec["task"] != task:
            raise FetchError(f"{where}.task: torchvision's {name} is a {task} model, not {spec['task']}")
        return name

    def num_classes(self, entry, where):
        """torchvision's classifiers output the 1000 ImageNet-1k classes (every builder's default,
        and every classification weight's `categories`); its segmenters' classes depend on the weights."""
        return (1000, "torchvision's classifiers: ImageNet-1k") if entry["task"] == "classification" else None

    def _weights(self, spec):
        """The weights enum entry the source names (after the builder's name), else DEFAULT; None
        for a builder without pretrained weights."""
        from torchvision import models

        name = self._name(spec)
        tag = spec["source"].split(":", 1)[1].partition(".")[2] or "DEFAULT"
        try:
            enum = models.get_model_weights(name)
        except (ValueError, AttributeError):
            return None
        if tag not in enum.__members__ and tag != "DEFAULT":
            raise FetchError(f"models.{spec['name']}.source: {unknown_name_message(f'{enum.__name__} entry', tag, enum.__members__)}")
        return enum[tag] if tag != "DEFAULT" else enum.DEFAULT

    def build(self, spec):
        from torchvision import models

        name = self._name(spec)
        self._weights(spec)  # a weights name the builder lacks is an error whatever the weights policy
        if spec["task"] == "segmentation":
            return _segmentation_logits(models.get_model(name, weights=None, **SEGMENTATION_KWARGS))
        return models.get_model(name, weights=None, **DEPLOY_KWARGS.get(name, {})).eval()

    def load_pretrained(self, spec, cache_dir):
        name = self._name(spec)
        weights = self._weights(spec)
        where = f"models.{spec['name']}"
        if weights is None:
            raise WeightsUnavailable(f"torchvision has no pretrained weights for {name}")
        path = hub_checkpoints() / Path(weights.url).name
        if not path.is_file():
            try:
                download(weights.url, path, None)
            except DownloadUnavailable as e:
                raise WeightsUnavailable(
                    f"torchvision weights {weights}: {path.name} is not in torch's hub cache ({path.parent}) and {e}"
                ) from e
            except DownloadError as e:
                raise FetchError(f"{where}.source: {e}") from e
        digest = sha256_file(path)
        prefix = path.stem.rsplit("-", 1)[-1]  # torchvision names its files <name>-<first hex digits of sha256>
        if not digest.startswith(prefix.lower()):
            raise FetchError(f"{where}: {path} has sha256 {digest}, not the {prefix}… its name promises (a damaged download? remove it)")
        try:
            state = load_state_dict_file(path, None, where)
        except CheckpointError as e:
            raise FetchError(str(e)) from e
        state = {k: v for k, v in state.items() if not k.startswith(AUX_PREFIXES)}
        module = self.build(spec)
        target = module.inner if spec["task"] == "segmentation" else module
        try:
            target.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise FetchError(f"{where}: {path} does not fit torchvision's {name}: {str(e)[:800]}") from e
        return module.eval(), {"from": f"torchvision:{weights}", "file": str(path), "file_sha256": digest}

    def preprocessing(self, spec, module):
        """The weights' own eval transform: resize, centre crop share, mean/std, interpolation."""
        weights = self._weights(spec)
        t = weights.transforms() if weights is not None else None
        crop, resize = getattr(t, "crop_size", None), getattr(t, "resize_size", None)
        return {
            "mean": list(getattr(t, "mean", None) or super().preprocessing(spec, module)["mean"]),
            "std": list(getattr(t, "std", None) or super().preprocessing(spec, module)["std"]),
            "crop_pct": float(crop[0] / resize[0]) if crop and resize else 1.0,
            "interpolation": str(getattr(getattr(t, "interpolation", None), "value", "bilinear")),
        }

    def task_of(self, reference):
        """A segmentation builder's name segments; the others classify."""
        return "segmentation" if reference.split(".", 1)[0] in _names()[1] else "classification"

    def native_input_size(self, module):
        """A vision transformer's image_size (torchvision's ViTs take only that one)."""
        size = getattr(getattr(module, "inner", module), "image_size", None)
        return (size, size) if isinstance(size, int) else None

    def family(self, module):
        return super().family(getattr(module, "inner", module))
