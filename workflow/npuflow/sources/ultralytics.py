"""`ultralytics:<name>`: Ultralytics YOLO (yolov5nu, yolov8s, yolov9t, yolov10n, yolo11n, yolo12n,
yolo26n, … and their -seg, -pose, -cls variants), built from the model definitions shipped in the
`ultralytics` package (AGPL-3.0), so random weights need no network.

Pretrained weights are Ultralytics' release checkpoints (`<name>.pt` from its GitHub assets),
cached under results/downloads/ultralytics/. They are pickled model objects; npuflow reads them
with `checkpoints.load_module_pickle` (nothing in them is run) and loads their tensors into the
architecture built here.

Export: a detection model's NPU graph ends, as the vendor model zoos deploy YOLO, at the
per-scale head outputs (`head: split`, the default): for each stride s, `box_s<s>` (the DFL box
distributions, or the 4 box distances where the head has no DFL) and `cls_s<s>` (class logits),
plus `mask_s<s>` and `proto` (-seg) or `kpt_s<s>` (-pose); decoding, threshold and NMS run on the
host (npuflow.evaluation.detect). `head: full` exports Ultralytics' own decoded output instead."""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path
from typing import ClassVar

from npuflow.sources.checkpoints import CheckpointError, load_module_pickle, module_state_dict
from npuflow.sources.core import SOURCES, FetchError, ModelSource, WeightsUnavailable
from npuflow.util.download import DownloadError, DownloadUnavailable, download
from npuflow.util.registry import unknown_name_message

ASSETS = "https://github.com/ultralytics/assets/releases/download/v8.4.0"
# Families and variants npuflow builds (the model definitions under ultralytics/cfg/models/).
FAMILIES = ("v5", "v8", "v9", "v10", "11", "12", "26")
VARIANTS = {"": "detection", "-seg": "detection", "-pose": "detection", "-cls": "classification"}
# What an Ultralytics checkpoint's pickle may name: its own classes and torch's modules (all read
# as inert stand-ins), numpy scalars and simple containers of its training records.
CHECKPOINT_GLOBALS = (
    "ultralytics.",
    "torch.nn.modules.",
    "numpy.",
    "collections.",
    "types.SimpleNamespace",
    "pathlib.",
    "datetime.",
    "builtins.set",
    "builtins.frozenset",
)
HEAD_FORMS = ("split", "full")
# Classes of Ultralytics' released weights (COCO, COCO keypoints: person only, ImageNet). Random
# weights get the same head, so both are one architecture (some model definitions say otherwise).
RELEASE_CLASSES = {"detect": 80, "segment": 80, "pose": 1, "classify": 1000}
# The input size Ultralytics trains its released weights at (imgsz).
RELEASE_SIZE = {"detect": 640, "segment": 640, "pose": 640, "classify": 224}


def _ultralytics():
    """Import ultralytics quietly and offline: no update checks, no banner."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    import ultralytics.nn.tasks as tasks

    return tasks


def task_of_name(name: str) -> str:
    """The npuflow task an Ultralytics model name implies (no import): -cls classifies, the others detect."""
    return "classification" if name.endswith("-cls") else "detection"


@cache
def known_names() -> dict[str, str]:
    """{model name: model definition to build it from}, from the definitions the package ships."""
    import yaml

    root = Path(_ultralytics().__file__).resolve().parent.parent / "cfg" / "models"
    names = {}
    for family in FAMILIES:
        for path in sorted((root / family).glob("*.yaml")):
            stem = path.stem
            base, variant = next(((stem[: -len(v)], v) for v in VARIANTS if v and stem.endswith(v)), (stem, ""))
            if not re.fullmatch(r"yolov?\d+[a-z]?", base):  # ghost, p2/p6, world, yoloe, rtdetr, resnet backbones, obb…
                continue
            if base[-1].isalpha():  # one size per file (yolov9t, yolov10n)
                names[stem] = stem
                continue
            for scale in (yaml.safe_load(path.read_text()) or {}).get("scales") or {}:
                name = f"{base}{scale}{'u' if family == 'v5' else ''}{variant}"  # Ultralytics calls its v5 "yolov5nu"
                names[name] = f"{base}{scale}{variant}"
    return names


def _batch_norm_statistics(model, hw, images: int = 8):
    """Running statistics of the random network's BatchNorms estimated on the sample photos
    (the calibration ones, letterboxed to the model's input; one train-mode pass). Left at their initial values (mean
    0, variance 1), a random YOLO's activations shrink layer after layer until every head output
    is its bias: nothing to quantise or detect. Estimated, each layer sees inputs of the scale a
    trained network's do."""
    import torch

    from npuflow.data.batches import image_batches

    prep = {"mean": [0.0] * 3, "std": [1.0] * 3, "resize": "letterbox", "pad": 114}
    photos = torch.from_numpy(image_batches("samples", "calibration", images, [1, 3, *hw], prep, seed=0).images)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
    model.train()
    with torch.no_grad():
        model(photos)
    for m in norms:
        m.momentum = 0.03  # Ultralytics' value
    return model.eval()


def _split_module(model):
    """The model up to its head, then each scale's head branches as separate outputs."""
    import torch

    class SplitHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            head = self.model.model[-1]
            branches = head.one2many
            saved = []
            for m in self.model.model[:-1]:
                if m.f != -1:
                    x = saved[m.f] if isinstance(m.f, int) else [x if j == -1 else saved[j] for j in m.f]
                x = m(x)
                saved.append(x if m.i in self.model.save else None)
            feats = [x if j == -1 else saved[j] for j in head.f]
            outs = []
            for i, f in enumerate(feats):
                outs += [branches["box_head"][i](f), branches["cls_head"][i](f)]
                if "mask_head" in branches:
                    outs.append(branches["mask_head"][i](f))
                if "pose_head" in branches:
                    k = branches["pose_head"][i](f)
                    outs.append(branches["kpts_head"][i](k) if "kpts_head" in branches else k)
            if "mask_head" in branches:
                outs.append(head.proto(feats) if type(head).__name__.endswith("26") else head.proto(feats[0]))
            return tuple(outs)

    return SplitHead().eval()


def _full_module(model):
    """Ultralytics' own export form: decoded boxes (xywh) and sigmoid scores per anchor (+ mask
    coefficients and protos, or decoded keypoints)."""
    import torch

    model.model[-1].export, model.model[-1].format = True, "onnx"

    class Full(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)

    return Full().eval()


def _classifier_logits(model):
    """A -cls model's logits (in eval its head returns (softmax, logits))."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            out = self.model(x)
            return out[1] if isinstance(out, tuple) else out

    return Logits().eval()


@SOURCES.register("ultralytics")
class UltralyticsSource(ModelSource):
    syntax = "ultralytics:<name> (AGPL-3.0)"
    tasks = ("detection", "classification")
    hub = "https://github.com"
    example: ClassVar[dict] = {"source": "ultralytics:yolo11n", "task": "detection", "input": {"shape": [1, 3, 64, 64]}}
    fields: ClassVar[dict[str, dict]] = {
        "head": {
            "description": (
                "Detection models: `split` (default) ends the NPU graph at the per-scale head outputs, as the vendor zoos "
                "deploy YOLO (box decoding, threshold and NMS on the host); `full` exports Ultralytics' own decoded output "
                "(threshold and NMS still on the host)."
            ),
            "enum": list(HEAD_FORMS),
        }
    }

    def check(self, entry, where):
        name = entry["source"].split(":", 1)[1]
        task = task_of_name(name)
        problems = []
        if entry["task"] != task:
            problems.append(f"{where}.task: ultralytics:{name} is a {task} model (`-cls` names classify, the others detect)")
        if "head" in entry and task != "detection":
            problems.append(f"{where}.head: only detection models have a head to split")
        return problems

    def _name(self, spec) -> tuple[str, str]:
        name = spec["source"].split(":", 1)[1]
        names = known_names()
        if name not in names:
            raise FetchError(f"models.{spec['name']}.source: {unknown_name_message('Ultralytics model', name, names)}")
        return name, names[name]

    def build(self, spec):
        return _batch_norm_statistics(self.architecture(spec), spec["input"]["shape"][2:])

    def architecture(self, spec):
        tasks = _ultralytics()
        _, definition = self._name(spec)
        cfg = tasks.yaml_model_load(f"{definition}.yaml")
        kind = tasks.guess_model_task(cfg)
        cls = {
            "detect": tasks.DetectionModel,
            "segment": tasks.SegmentationModel,
            "pose": tasks.PoseModel,
            "classify": tasks.ClassificationModel,
        }[kind]
        return cls(cfg, nc=RELEASE_CLASSES[kind], verbose=False).eval()

    def load_pretrained(self, spec, cache_dir):
        name, _ = self._name(spec)
        where = f"models.{spec['name']}"
        url = f"{ASSETS}/{name}.pt"
        path = Path(cache_dir) / "downloads" / "ultralytics" / f"{name}.pt"
        if not path.is_file():
            try:
                download(url, path, None)
            except DownloadUnavailable as e:
                raise WeightsUnavailable(f"Ultralytics weights {name}.pt are not in {path.parent} and {e}") from e
            except DownloadError as e:
                raise FetchError(f"{where}.source: {e}") from e
        try:
            checkpoint = load_module_pickle(path, CHECKPOINT_GLOBALS, where)
            inert = checkpoint.get("model") or checkpoint.get("ema")
            if inert is None:
                raise CheckpointError(f"{where}: {path} has no `model` entry (keys: {sorted(checkpoint)[:10]})")
            state = module_state_dict(inert, where)
        except CheckpointError as e:
            raise FetchError(str(e)) from e
        module = self.architecture(spec)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise FetchError(f"{where}: {path} does not fit ultralytics:{name}: {str(e)[:800]}") from e
        from npuflow.util.io import sha256_file

        return module.eval(), {"from": url, "file": str(path), "file_sha256": sha256_file(path)}

    def preprocessing(self, spec, module):
        """As Ultralytics feeds YOLO: RGB in 0..1, no mean/std, letterboxed with grey (114) borders."""
        if spec["task"] == "classification":
            return {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "crop_pct": 1.0, "interpolation": "bilinear"}
        return {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "resize": "letterbox", "pad": 114, "interpolation": "bilinear"}

    def check_input(self, shape):
        """An image as YOLO takes it: RGB in 0..1 (seeded)."""
        import numpy as np

        return np.random.default_rng(0).random(shape, dtype=np.float32)

    def export_form(self, module, spec):
        head = self.head(module)
        if head is None:
            return _classifier_logits(module), ["output"]
        if spec.get("head", "split") == "full":
            return _full_module(module), ["output", "proto"] if head["kind"] == "segment" else ["output"]
        names = []
        for s in head["strides"]:
            names += [f"box_s{s}", f"cls_s{s}"]
            names += [f"mask_s{s}"] if head["kind"] == "segment" else [f"kpt_s{s}"] if head["kind"] == "pose" else []
        return _split_module(module), names + (["proto"] if head["kind"] == "segment" else [])

    def head(self, module):
        """Strides, DFL bins, classes and the extra per-anchor outputs of a detection head."""
        head = module.model[-1]
        if not hasattr(head, "reg_max"):
            return None
        kind = "segment" if hasattr(head, "nm") else "pose" if hasattr(head, "kpt_shape") else "detect"
        described = {
            "kind": kind,
            "head_class": type(head).__name__,
            "strides": [int(s) for s in head.stride.tolist()],
            "reg_max": int(head.reg_max),
            "classes": int(head.nc),
        }
        if kind == "segment":
            described["masks"] = int(head.nm)
        if kind == "pose":
            described["keypoints"] = [int(k) for k in head.kpt_shape]
            described["keypoint_decode"] = "yolo26" if type(head).__name__.endswith("26") else "yolov8"
        return described

    def task_of(self, reference):
        return task_of_name(reference)

    def native_input_size(self, module):
        """The size Ultralytics' released weights were trained at (a YOLO also runs on other
        multiples of its largest stride)."""
        head = self.head(module)
        size = RELEASE_SIZE["classify" if head is None else head["kind"]]
        return size, size

    def family(self, module):
        """yolov8, yolo11, yolo26, … (the model definition's family)."""
        stem = Path(str(getattr(module, "yaml", {}).get("yaml_file", ""))).stem
        found = re.match(r"yolov?\d+", stem)
        return found.group() if found else super().family(module)
