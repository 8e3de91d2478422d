"""Images for calibration and evaluation, preprocessed to a model's input spec.

The built-in dataset `samples` is the set of real photos that scikit-image ships inside its wheel,
so a fresh offline machine still calibrates on real images. Calibration and evaluation draw from
disjoint photos, so evaluation is on held-out images."""

from __future__ import annotations

import numpy as np

from .registry import Registry

DATASETS: Registry["ImageSet"] = Registry("calibration dataset")

# Photos bundled in scikit-image's wheel (no download); greyscale ones are stacked to RGB.
CALIBRATION_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "moon", "brick", "grass")
EVALUATION_PHOTOS = ("hubble_deep_field", "immunohistochemistry", "gravel", "page", "text", "horse")


class ImageSet:
    """A source of RGB uint8 photos, split into calibration and held-out evaluation photos."""

    def photos(self, split: str) -> list[tuple[str, np.ndarray]]:
        raise NotImplementedError


@DATASETS.register("samples")
class SamplePhotos(ImageSet):
    def photos(self, split):
        import skimage.data

        names = CALIBRATION_PHOTOS if split == "calibration" else EVALUATION_PHOTOS
        out = []
        for name in names:
            img = np.asarray(getattr(skimage.data, name)())
            if img.dtype == bool:
                img = img.astype(np.uint8) * 255
            if img.ndim == 2:
                img = np.stack([img] * 3, axis=-1)
            out.append((name, img[..., :3].astype(np.uint8)))
        return out


def preprocess(img: np.ndarray, hw: tuple[int, int], mean, std, rng: np.random.Generator | None) -> np.ndarray:
    """uint8 HWC RGB -> normalised float32 CHW of size hw. With `rng`: a light augmentation
    (random crop of 60-100% of the area at the target aspect, horizontal flip); without: a centre
    crop at the target aspect, as timm's eval transform does."""
    from PIL import Image

    h, w = img.shape[:2]
    target_aspect = hw[1] / hw[0]
    area = rng.uniform(0.6, 1.0) if rng is not None else 1.0
    crop_h = min(h, int(round(np.sqrt(area * h * w / target_aspect))))
    crop_w = min(w, int(round(crop_h * target_aspect)))
    crop_h = min(crop_h, int(round(crop_w / target_aspect))) or 1
    if rng is not None:
        top, left = rng.integers(0, h - crop_h + 1), rng.integers(0, w - crop_w + 1)
    else:
        top, left = (h - crop_h) // 2, (w - crop_w) // 2
    crop = img[top : top + crop_h, left : left + crop_w]
    if rng is not None and rng.random() < 0.5:
        crop = crop[:, ::-1]
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((hw[1], hw[0]), Image.BILINEAR), dtype=np.float32) / 255.0
    chw = (resized - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return chw.transpose(2, 0, 1).astype(np.float32)


def image_batches(dataset: str, split: str, count: int, shape, preprocessing: dict, seed: int) -> tuple[np.ndarray, list[str]]:
    """`count` preprocessed images as an array [count, C, H, W] and where each came from.
    Images cycle through the split's photos; each draw is a fresh augmentation (seeded)."""
    photos = DATASETS.get(dataset)().photos(split)
    rng = np.random.default_rng(seed)
    hw = (shape[2], shape[3])
    arrays, names = [], []
    for i in range(count):
        name, img = photos[i % len(photos)]
        # The first pass over the photos is un-augmented, so small sets still see each whole photo.
        arrays.append(preprocess(img, hw, preprocessing["mean"], preprocessing["std"], rng if i >= len(photos) else None))
        names.append(name if i < len(photos) else f"{name}#aug{i // len(photos)}")
    return np.stack(arrays), names
