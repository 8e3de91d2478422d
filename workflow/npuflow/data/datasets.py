"""Images for calibration and evaluation, preprocessed to a model's input spec.

Datasets are the built-in `samples` (the real photos scikit-image ships inside its wheel, so a fresh
offline machine still calibrates on real images; calibration and evaluation draw from disjoint
photos) and `labelled-photos` (photos scikit-image, matplotlib and scikit-learn ship, four of them
labelled with the ImageNet class a person would give: a real classifier's sanity check), or the user's, declared under `datasets:` in config.yaml: an image folder (class sub-folders
as labels, or flat), a tar/zip archive (local path, or https URL with sha256; extracted safely), with
segmentation masks alongside when given. A user dataset is prepared once (`npuflow dataset`: fetch,
extract, index: npuflow.data.prepare) into results/datasets/<name>/index.json; preprocessed tensors
(npuflow.data.batches) are cached per (dataset, split, input spec, count, seed). This module holds
the dataset kinds, the built-in registry and open_dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from npuflow.util.errors import NpuflowError
from npuflow.util.io import read_json, sha256_file
from npuflow.util.registry import Registry

DATASETS: Registry[ImageSet] = Registry("built-in dataset")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm"}
IGNORE_LABEL = 255  # mask pixels that count for no class (Cityscapes convention)
INDEX_FILE = "index.json"

# Photos bundled in scikit-image's wheel (no download); greyscale ones are stacked to RGB.
CALIBRATION_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "moon", "brick", "grass")
EVALUATION_PHOTOS = ("hubble_deep_field", "immunohistochemistry", "gravel", "page", "text", "horse")


class DatasetError(NpuflowError):
    """A dataset that cannot be read as declared; names the dataset and the file at fault."""


class Sample:
    """One image (uint8 HWC RGB), its class label (or None), its mask (uint8 HW, or None) and its
    object boxes (float [n, 5]: class, x1, y1, x2, y2 in image pixels; or None)."""

    __slots__ = ("boxes", "image", "label", "mask", "name")

    def __init__(
        self, name: str, image: np.ndarray, label: int | None = None, mask: np.ndarray | None = None, boxes: np.ndarray | None = None
    ):
        self.name, self.image, self.label, self.mask, self.boxes = name, image, label, mask, boxes


class ImageSet:
    """A source of samples for a split ('calibration' or 'evaluation')."""

    key = ""  # identifies the content, for the preprocessed-tensor cache
    description = ""  # a built-in's: where its images come from (MLflow's dataset source)
    # More evaluation images than the split holds: augmented copies (the unlabelled built-in
    # photos, few and only compared float against int8) or an error (labelled sets count once each).
    augment_evaluation = False
    evaluation_images: int | None = None  # a built-in's evaluation split, counted without reading it

    def samples(self, split: str) -> list[Sample]:
        raise NotImplementedError


def opened_rgb(im) -> np.ndarray:
    """A PIL image as uint8 RGB; a transparent one (RGBA, LA, a palette with transparency) composited
    over white, as a viewer shows it — `convert("RGB")` alone keeps whatever colour the transparent
    pixels happen to hold (often black), which the model would then see."""
    from PIL import Image

    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.asarray(im.convert("RGB"))


def _rgb(img: np.ndarray) -> np.ndarray:
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


@DATASETS.register("samples")
class SamplePhotos(ImageSet):
    key = "samples:skimage"
    description = "scikit-image sample photos (skimage.data)"
    augment_evaluation = True

    def samples(self, split):
        import skimage.data

        names = CALIBRATION_PHOTOS if split == "calibration" else EVALUATION_PHOTOS
        return [Sample(name, _rgb(np.asarray(getattr(skimage.data, name)()))) for name in names]


# Real photos that installed packages ship, each showing one thing a person would name with an
# ImageNet-1k class: (package, file, ImageNet index, class name). Four images: a sanity check of a
# real classifier's top-1/top-5 offline, not an accuracy estimate. The cat is an ambiguous case
# (ImageNet's 281 tabby, 282 tiger cat and 285 Egyptian cat all fit a brown striped cat); top-5 is
# the fairer figure for it.
LABELLED_PHOTOS = (
    ("skimage", "data/chelsea.png", 281, "tabby cat"),
    ("skimage", "data/coffee.png", 967, "espresso"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", 652, "military uniform"),
    ("sklearn", "datasets/images/china.jpg", 698, "palace"),
)
# Its calibration split: the other photos of the same packages (no label), never evaluated on.
UNLABELLED_PHOTOS = (
    ("skimage", "data/astronaut.png"),
    ("skimage", "data/camera.png"),
    ("skimage", "data/rocket.jpg"),
    ("skimage", "data/motorcycle_left.png"),
    ("skimage", "data/coins.png"),
    ("skimage", "data/brick.png"),
    ("skimage", "data/grass.png"),
    ("sklearn", "datasets/images/flower.jpg"),
)


@DATASETS.register("labelled-photos")
class LabelledPhotos(ImageSet):
    """Evaluation: LABELLED_PHOTOS with their ImageNet labels; calibration: UNLABELLED_PHOTOS."""

    key = "labelled-photos:v1"
    description = "photos scikit-image, matplotlib and scikit-learn ship, four labelled with an ImageNet class"
    evaluation_images = len(LABELLED_PHOTOS)

    def samples(self, split):
        import importlib.util

        from PIL import Image

        items = LABELLED_PHOTOS if split == "evaluation" else [(*p, None, None) for p in UNLABELLED_PHOTOS]
        out = []
        for package, inner, label, _ in items:
            spec = importlib.util.find_spec(package)
            if spec is None or not spec.submodule_search_locations:
                raise DatasetError(f"dataset labelled-photos: needs the Python package {package!r}, which is not installed")
            path = Path(spec.submodule_search_locations[0]) / inner
            with Image.open(path) as im:
                out.append(Sample(path.stem, _rgb(opened_rgb(im)), label))
        return out


class IndexedImages(ImageSet):
    """A user dataset prepared by `prepare_dataset`: every listed image serves either split
    (config validation keeps one dataset from serving both roles of a model)."""

    def __init__(self, index_json: str | Path):
        self.index = read_json(index_json)
        self.key = f"index:{sha256_file(index_json)}"

    def samples(self, split):
        from PIL import Image

        root = Path(self.index["root"])
        out = []
        for item in self.index["images"]:
            path = root / item["path"]
            try:
                with Image.open(path) as im:
                    image = opened_rgb(im)
                mask = None
                if item.get("mask"):
                    with Image.open(root / item["mask"]) as im:
                        mask = np.asarray(im.convert("L") if im.mode not in ("L", "P", "I;16", "I") else im).astype(np.int64)
                        mask = np.where(mask > IGNORE_LABEL, IGNORE_LABEL, mask).astype(np.uint8)
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                raise DatasetError(f"dataset {self.index['name']}: cannot read {path}: {e}") from None
            boxes = np.asarray(item["boxes"], np.float64).reshape(-1, 5) if "boxes" in item else None
            out.append(Sample(item["path"], image, item.get("label"), mask, boxes))
        return out


def open_dataset(name: str, datasets_dir: str | Path = "results/datasets") -> ImageSet:
    """A built-in dataset by name, else the user dataset prepared under `datasets_dir`."""
    if name in DATASETS:
        return DATASETS.get(name)()
    index = Path(datasets_dir) / name / INDEX_FILE
    if not index.exists():
        raise DatasetError(f"dataset {name}: not prepared ({index} missing; `npuflow dataset` prepares it)")
    return IndexedImages(index)
