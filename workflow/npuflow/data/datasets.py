"""Images for calibration and evaluation, preprocessed to a model's input spec.

Datasets are the built-in `samples` (the real photos scikit-image ships inside its wheel, so a fresh
offline machine still calibrates on real images; calibration and evaluation draw from disjoint
photos) or the user's, declared under `datasets:` in config.yaml: an image folder (class sub-folders
as labels, or flat), a tar/zip archive (local path, or https URL with sha256; extracted safely), with
segmentation masks alongside when given. A user dataset is prepared once (`npuflow dataset`: fetch,
extract, index) into results/datasets/<name>/index.json; preprocessed tensors are cached per
(dataset, split, input spec, count, seed)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from npuflow.util.errors import NpuflowError
from npuflow.util.io import atomic_path, read_json, sha256_file, write_json
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

    def samples(self, split: str) -> list[Sample]:
        raise NotImplementedError


def _rgb(img: np.ndarray) -> np.ndarray:
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


@DATASETS.register("samples")
class SamplePhotos(ImageSet):
    key = "samples:skimage"

    def samples(self, split):
        import skimage.data

        names = CALIBRATION_PHOTOS if split == "calibration" else EVALUATION_PHOTOS
        return [Sample(name, _rgb(np.asarray(getattr(skimage.data, name)()))) for name in names]


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
                    image = np.asarray(im.convert("RGB"))
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


# ---------------------------------------------------------------- preparing a user dataset


def _images_under(root: Path, skip: Path | None) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and (skip is None or skip not in p.parents)
    )


def _has_image(root: Path, skip: Path | None) -> bool:
    """Whether `root` holds an image `_images_under` would list: stops at the first one (a config
    check on a folder of a million images takes no longer than on one of ten)."""
    for folder, subfolders, files in os.walk(root):
        if skip is not None and (Path(folder) == skip or skip in Path(folder).parents):
            subfolders[:] = []
            continue
        if any(
            Path(f).suffix.lower() in IMAGE_SUFFIXES and not f.startswith(".") and os.path.isfile(os.path.join(folder, f)) for f in files
        ):
            return True
    return False


def no_images_text(root: Path) -> str:
    return f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {_shown(root)} or its sub-folders"


def _labelling(where: str, root: Path, entry: dict, paths: list[Path]) -> tuple[str, list[str] | None]:
    """("folders" or "none", classes): how the index labels the images `paths` of a folder. Class
    sub-folders label them where every image sits in one (`labels: auto`): integer names are the
    class indices (classes None); other names map by `classes`, else by sorted order."""
    folders = sorted({p.relative_to(root).parts[0] for p in paths if len(p.relative_to(root).parts) > 1})
    labelled = entry.get("labels", "auto")
    if labelled == "auto":
        labelled = "folders" if folders and all(len(p.relative_to(root).parts) > 1 for p in paths) else "none"
    classes = None
    if labelled == "folders":
        if entry.get("classes"):
            classes = list(entry["classes"])
            unknown = sorted(set(folders) - set(classes))
            if unknown:
                raise DatasetError(f"{where}.classes: class folder(s) {', '.join(unknown[:5])} not listed")
        elif all(f.isdigit() for f in folders):
            classes = None  # folder names are the class indices
        else:
            classes = folders
    return labelled, classes


def folder_labels(name: str, entry: dict, paths: list[Path] | None = None) -> dict[str, int] | None:
    """{class folder: label} of a `folder:` dataset as its index will label its images (`paths`,
    listed here if not given); None where its images are unlabelled, or are in an archive (known
    once it is extracted). Raises DatasetError as the index would (a folder `classes` lacks)."""
    if "folder" not in entry or not Path(entry["folder"]).is_dir():
        return None
    root = Path(entry["folder"])
    if paths is None:
        paths = _images_under(root, root / entry["masks"] if entry.get("masks") else None)
    if not paths:
        return None
    labelled, classes = _labelling(f"datasets.{name}", root, entry, paths)
    if labelled != "folders":
        return None
    folders = {p.relative_to(root).parts[0] for p in paths if len(p.relative_to(root).parts) > 1}
    return {f: int(f) if classes is None else classes.index(f) for f in sorted(folders)}


def index_images(name: str, root: Path, entry: dict) -> dict:
    """The index of an image folder: labels from class sub-folders (integer names are class
    indices; other names map by `classes`, else sorted order), masks from the `masks` sub-folder
    (same relative path, any image suffix)."""
    where = f"datasets.{name}"
    masks_dir = root / entry["masks"] if entry.get("masks") else None
    if masks_dir is not None and not masks_dir.is_dir():
        raise DatasetError(f"{where}.masks: no folder {masks_dir}")
    paths = _images_under(root, masks_dir)
    if not paths:
        raise DatasetError(f"{where}: {no_images_text(root)}")
    labelled, classes = _labelling(where, root, entry, paths)
    boxes = _box_labels(name, root, entry, paths)
    images = []
    for p in paths:
        rel = p.relative_to(root)
        item = {"path": rel.as_posix()}
        if boxes is not None:
            item["boxes"] = boxes.get(rel.as_posix(), [])
        if labelled == "folders":
            folder = rel.parts[0]
            item["label"] = int(folder) if classes is None else classes.index(folder)
        if masks_dir is not None:
            candidates = [c for c in masks_dir.joinpath(rel).parent.glob(rel.stem + ".*") if c.suffix.lower() in IMAGE_SUFFIXES]
            if not candidates:
                raise DatasetError(f"{where}.masks: no mask for {rel} under {masks_dir}")
            item["mask"] = candidates[0].relative_to(root).as_posix()
        images.append(item)
    return {
        "name": name,
        "root": str(root.resolve()),
        "labels": labelled,
        "classes": classes,
        "masks": masks_dir is not None,
        "boxes": boxes is not None,
        "images": images,
    }


def _box_labels(name: str, root: Path, entry: dict, paths: list[Path]) -> dict[str, list] | None:
    """{image path: [[class, x1, y1, x2, y2], …] in pixels} from YOLO txt labels (`yolo_labels`:
    a folder holding <image path>.txt, `images/` mapped to that folder as Ultralytics lays
    datasets out; lines `class cx cy w h`, normalised) or a COCO json (`coco_json`: categories in
    id order are the model's classes 0, 1, …; crowd regions left out). None without either."""
    from PIL import Image

    where = f"datasets.{name}"
    if entry.get("yolo_labels"):
        folder = root / entry["yolo_labels"]
        if not folder.is_dir():
            raise DatasetError(f"{where}.yolo_labels: no folder {folder}")
        out = {}
        for p in paths:
            rel = p.relative_to(root)
            candidates = [folder / rel.with_suffix(".txt")]
            if rel.parts[0] == "images" and len(rel.parts) > 1:
                candidates.append(folder / Path(*rel.parts[1:]).with_suffix(".txt"))
            label = next((c for c in candidates if c.is_file()), None)
            if label is None:
                continue  # no label file: an image without objects, as Ultralytics reads it
            with Image.open(p) as im:
                w, h = im.size
            rows = []
            for n, line in enumerate(label.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    c, cx, cy, bw, bh = (float(v) for v in line.split()[:5])
                except ValueError:
                    raise DatasetError(f"{where}.yolo_labels: {label}:{n}: expected `class cx cy w h`, got {line.strip()[:80]!r}") from None
                rows.append([int(c), (cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
            out[rel.as_posix()] = rows
        return out
    if entry.get("coco_json"):
        path = Path(entry["coco_json"]) if Path(entry["coco_json"]).is_absolute() else root / entry["coco_json"]
        try:
            coco = json.loads(path.read_text())
            classes = {c["id"]: i for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
            files = {im["id"]: im["file_name"] for im in coco["images"]}
            by_name = {p.relative_to(root).as_posix(): p.relative_to(root).as_posix() for p in paths}
            by_name.update({p.name: p.relative_to(root).as_posix() for p in paths})
            out = {by_name[f]: [] for f in files.values() if f in by_name}
            for a in coco["annotations"]:
                rel = by_name.get(files.get(a["image_id"], ""))
                if rel is None or a.get("iscrowd"):
                    continue
                x, y, bw, bh = (float(v) for v in a["bbox"])
                out[rel].append([classes[a["category_id"]], x, y, x + bw, y + bh])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DatasetError(f"{where}.coco_json: cannot read {path} as COCO annotations: {type(e).__name__}: {e}") from None
        return out
    return None


def _shown(path: Path) -> str:
    return str(path) if path.is_absolute() else f"{path} (relative to {Path.cwd()})"


def local_path_problems(name: str, entry: dict) -> list[str]:
    """The local paths of a dataset entry that are not there (its folder and masks folder, or its
    archive), and a folder that holds no image: checked when the config is read, and again when
    the dataset is prepared."""
    where = f"datasets.{name}"
    if "folder" in entry:
        root = Path(entry["folder"])
        if not root.is_dir():
            return [
                f"{where}.folder: {_shown(root)} is a file, not a folder" if root.exists() else f"{where}.folder: no folder {_shown(root)}"
            ]
        if entry.get("masks") and not (root / entry["masks"]).is_dir():
            return [f"{where}.masks: no folder {_shown(root / entry['masks'])}"]
        if not _has_image(root, root / entry["masks"] if entry.get("masks") else None):
            return [f"{where}.folder: {no_images_text(root)}"]
    elif "archive" in entry and not Path(entry["archive"]).is_file():
        archive = Path(entry["archive"])
        return [
            f"{where}.archive: {_shown(archive)} is a folder, not an archive"
            if archive.exists()
            else f"{where}.archive: no file {_shown(archive)}"
        ]
    return []


def folder_image_count(entry: dict) -> int | None:
    """How many images a `folder:` dataset holds (as its index will list them); None for archives."""
    if "folder" not in entry or not Path(entry["folder"]).is_dir():
        return None
    root = Path(entry["folder"])
    return len(_images_under(root, root / entry["masks"] if entry.get("masks") else None))


def prepare_dataset(name: str, entry: dict, out_dir: str | Path) -> dict:
    """Fetch (url), extract safely (archive) and index a user dataset into out_dir/index.json."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    where = f"datasets.{name}"
    problems = local_path_problems(name, entry)
    if problems:
        raise DatasetError(problems[0])
    if "folder" in entry:
        root = Path(entry["folder"])
        origin = {"folder": str(root)}
    else:
        from npuflow.data.archive import extract_archive, fetch_archive

        if "url" in entry:
            archive = out_dir / ("download" + "".join(Path(entry["url"].split("?")[0]).suffixes[-2:]))
            fetch_archive(entry["url"], entry.get("sha256"), archive, allow_http=entry.get("allow_http", False))
        else:
            archive = Path(entry["archive"])
            if entry.get("sha256") and sha256_file(archive) != entry["sha256"].lower():
                raise DatasetError(f"{where}.sha256: {archive} does not match (expected {entry['sha256']})")
        root = out_dir / "files"
        if not root.exists():
            extract_archive(archive, root)
        origin = {"archive": str(archive), "archive_sha256": sha256_file(archive)}
    index = {**index_images(name, root, entry), **origin, "seconds": round(time.perf_counter() - start, 3)}
    write_json(out_dir / INDEX_FILE, index)
    return index


# ---------------------------------------------------------------- preprocessing


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
    if split == "evaluation" and dataset not in DATASETS and count > len(samples):
        # The built-in samples are few and repeat augmented; a user's evaluation images count once each.
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
