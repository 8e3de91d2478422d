"""Preparing a user dataset: its paths checked, fetched and extracted, its images, labels, masks and boxes indexed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from npuflow.data.datasets import IMAGE_SUFFIXES, INDEX_FILE, DatasetError
from npuflow.util.io import sha256_file, write_json


def images_under(root: Path, skip: Path | None) -> list[Path]:
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
        paths = images_under(root, root / entry["masks"] if entry.get("masks") else None)
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
    paths = images_under(root, masks_dir)
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
    return len(images_under(root, root / entry["masks"] if entry.get("masks") else None))


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
