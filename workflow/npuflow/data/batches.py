"""A model's input images: preprocessing (eval transform, calibration augmentation, letterbox) and cached batches."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from npuflow.data.datasets import DatasetError, open_dataset
from npuflow.util.io import atomic_path


def preprocess(img: np.ndarray, hw: tuple[int, int], prep: dict, rng: np.random.Generator | None, mask: np.ndarray | None = None):
    """uint8 HWC RGB -> normalised float32 CHW of size hw (and the mask cropped and resized alike,
    nearest-neighbour). Without `rng`: timm's eval transform — a centre crop of `crop_pct` of the
    largest window at the target aspect, resized (bicubic or bilinear). With `rng`: a light
    augmentation for calibration (random crop of 60-100% of the area, horizontal flip)."""
    from PIL import Image

    h, w = img.shape[:2]
    target_aspect = hw[1] / hw[0]
    fit_h = min(h, w / target_aspect)
    scale = np.sqrt(rng.uniform(0.6, 1.0)) if rng is not None else (prep.get("crop_pct") or 1.0)
    crop_h = max(1, min(h, round(float(fit_h * scale))))
    crop_w = max(1, min(w, round(crop_h * target_aspect)))
    if rng is not None:
        top, left = int(rng.integers(0, h - crop_h + 1)), int(rng.integers(0, w - crop_w + 1))
    else:
        top, left = (h - crop_h) // 2, (w - crop_w) // 2
    flip = rng is not None and rng.random() < 0.5
    crop = img[top : top + crop_h, left : left + crop_w]
    if flip:
        crop = crop[:, ::-1]
    resample = Image.BICUBIC if prep.get("interpolation") == "bicubic" else Image.BILINEAR
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((hw[1], hw[0]), resample), dtype=np.float32) / 255.0
    chw = ((resized - np.asarray(prep["mean"], np.float32)) / np.asarray(prep["std"], np.float32)).transpose(2, 0, 1).astype(np.float32)
    if mask is None:
        return chw, None
    mcrop = mask[top : top + crop_h, left : left + crop_w]
    if flip:
        mcrop = mcrop[:, ::-1]
    return chw, np.asarray(Image.fromarray(np.ascontiguousarray(mcrop)).resize((hw[1], hw[0]), Image.NEAREST), dtype=np.uint8)


def letterbox(img: np.ndarray, hw: tuple[int, int], prep: dict, rng: np.random.Generator | None, boxes: np.ndarray | None = None):
    """uint8 HWC RGB -> normalised float32 CHW of size hw, as Ultralytics' LetterBox feeds YOLO:
    scaled to fit (aspect kept), centred on a grey (`pad`, 114) canvas; boxes ([n, 5], pixels)
    mapped alike. With `rng`, first a light augmentation (random crop of 60-100% of the area at
    the image's aspect, horizontal flip). Resampling is PIL's (bilinear), not OpenCV's."""
    from PIL import Image

    h, w = img.shape[:2]
    if rng is not None:
        scale = np.sqrt(rng.uniform(0.6, 1.0))
        ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        img = img[top : top + ch, left : left + cw]
        if rng.random() < 0.5:
            img = img[:, ::-1]
        boxes = None  # calibration images carry no boxes
        h, w = ch, cw
    r = min(hw[0] / h, hw[1] / w)
    new_w, new_h = round(w * r), round(h * r)
    dw, dh = (hw[1] - new_w) / 2, (hw[0] - new_h) / 2
    top, left = round(dh - 0.1), round(dw - 0.1)
    canvas = np.full((hw[0], hw[1], 3), prep.get("pad", 114), np.uint8)
    resample = Image.BICUBIC if prep.get("interpolation") == "bicubic" else Image.BILINEAR
    canvas[top : top + new_h, left : left + new_w] = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((new_w, new_h), resample))
    chw = ((canvas.astype(np.float32) / 255.0 - np.asarray(prep["mean"], np.float32)) / np.asarray(prep["std"], np.float32)).transpose(
        2, 0, 1
    )
    if boxes is not None:
        boxes = boxes.astype(np.float64).copy()
        boxes[:, [1, 3]] = boxes[:, [1, 3]] * r + left
        boxes[:, [2, 4]] = boxes[:, [2, 4]] * r + top
    return np.ascontiguousarray(chw, np.float32), boxes


class Batch:
    """Preprocessed images [N, C, H, W], where each came from, and labels/masks/boxes when the set
    has them (boxes: one [n, 5] array per image, in input pixels)."""

    def __init__(
        self, images: np.ndarray, names: list[str], labels: np.ndarray | None, masks: np.ndarray | None, boxes: list | None = None
    ):
        self.images, self.names, self.labels, self.masks, self.boxes = images, names, labels, masks, boxes


def image_batches(
    dataset: str,
    split: str,
    count: int,
    shape,
    preprocessing: dict,
    seed: int,
    datasets_dir: str | Path = "results/datasets",
    cache_dir: str | Path | None = None,
) -> Batch:
    """`count` preprocessed images. Images cycle through the split's samples; the first pass is
    un-augmented (timm's eval transform), later passes are seeded augmentations. Cached under
    `cache_dir` by everything that determines them."""
    source = open_dataset(dataset, datasets_dir)
    hw = (shape[2], shape[3])
    prep = {k: preprocessing.get(k) for k in ("mean", "std", "crop_pct", "interpolation", "resize", "pad")}
    key = hashlib.sha256(json.dumps([source.key, split, count, hw, prep, seed], sort_keys=True).encode()).hexdigest()[:16]
    cached = Path(cache_dir) / f"{dataset}-{split}-{key}.npz" if cache_dir else None
    if cached is not None and cached.exists():
        with np.load(cached, allow_pickle=False) as z:
            boxes = None
            if "boxes" in z:
                boxes = [z["boxes"][z["boxes"][:, 0] == i, 1:] for i in range(len(z["images"]))]
            return Batch(z["images"], list(z["names"]), z["labels"] if "labels" in z else None, z["masks"] if "masks" in z else None, boxes)
    samples = source.samples(split)
    if not samples:
        raise DatasetError(f"dataset {dataset}: no images for {split}")
    if split == "evaluation" and not source.augment_evaluation and count > len(samples):
        raise DatasetError(
            f"evaluation.images: {count} asked, but dataset {dataset} holds {len(samples)} images; held-out images count once each"
        )
    rng = np.random.default_rng(seed)
    arrays, names, labels, masks, boxes = [], [], [], [], []
    for i in range(count):
        s = samples[i % len(samples)]
        augment = rng if i >= len(samples) else None
        if prep.get("resize") == "letterbox":
            chw, box = letterbox(s.image, hw, prep, augment, s.boxes)
            mask = None
        else:
            (chw, mask), box = preprocess(s.image, hw, prep, augment, s.mask), None
        arrays.append(chw)
        names.append(s.name if i < len(samples) else f"{s.name}#aug{i // len(samples)}")
        labels.append(-1 if s.label is None else s.label)
        masks.append(mask)
        boxes.append(box)
    batch = Batch(
        np.stack(arrays),
        names,
        np.asarray(labels) if any(lb >= 0 for lb in labels) else None,
        np.stack(masks) if all(m is not None for m in masks) else None,
        boxes if all(b is not None for b in boxes) else None,
    )
    if cached is not None:
        with atomic_path(cached) as tmp, open(tmp, "wb") as f:
            extra = {k: v for k, v in (("labels", batch.labels), ("masks", batch.masks)) if v is not None}
            if batch.boxes is not None:
                extra["boxes"] = stack_boxes(batch.boxes)
            np.savez(f, images=batch.images, names=np.asarray(names), **extra)
    return batch


def stack_boxes(boxes: list[np.ndarray]) -> np.ndarray:
    """Per-image [n, 5] boxes as one [N, 6] array (image index first), for an .npz."""
    rows = [np.column_stack([np.full(len(b), i), b]) for i, b in enumerate(boxes) if len(b)]
    return np.concatenate(rows).astype(np.float64) if rows else np.zeros((0, 6))


def held_out_batch(spec: dict, preprocessing: dict, datasets_dir: str | Path, cache_dir: str | Path | None) -> Batch:
    """The evaluation images of a model spec: its `evaluation` dataset and count, seeded apart from
    calibration (seed + 1), so that they are images calibration never sees."""
    ev = spec["evaluation"]
    return image_batches(
        ev["dataset"], "evaluation", ev["images"], spec["input"]["shape"], preprocessing, spec["seed"] + 1, datasets_dir, cache_dir
    )
