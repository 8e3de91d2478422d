"""The config checks a schema cannot express: registry names, dependent fields, datasets, memory per job."""

from __future__ import annotations

import math
from pathlib import Path

from npuflow.core.layout import reserved_names
from npuflow.core.tasks import TASKS
from npuflow.pipeline.schema import resolved_block
from npuflow.targets import PROFILE_DIR, load_targets
from npuflow.util.errors import ConfigError

# Entries of results/ that are not model folders: a model of one of these names would write into
# them (results/mlflow.db/… would break the tracking store). From the stage table.
RESERVED_MODEL_NAMES = reserved_names()
# Names Windows gives to devices, whatever the extension: results/NUL/ or results/com1.x/ cannot be
# a folder there (a shared results/ on a Windows file server, a checkout on Windows).
WINDOWS_DEVICE_NAMES = {"CON", "PRN", "AUX", "NUL"} | {f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)}
# A job holds all its images at once, preprocessed to float32 (npuflow.data.batches.image_batches): the
# counts that would need more than this are refused (224×224: 14 266 images; 640×1280: 873).
MAX_IMAGE_BYTES = 8 * 2**30


def check_semantics(config: dict) -> None:
    # Imported here: the registries pull in onnx; validation of the schema alone stays light.
    from npuflow.data.prepare import local_path_problems
    from npuflow.graph.precision import check_recipe
    from npuflow.graph.surgery import SURGERY_PASSES
    from npuflow.quant.calibrate import CALIBRATION_METHODS
    from npuflow.sources.core import check_entry
    from npuflow.targets.schema import user_profile_problems
    from npuflow.tracking.uri import check_uri

    # The profiles as written first: resolving `base:` chains and applying fits reads them.
    profiles = config.get("target_profiles", {})
    problems = [line for name, prof in profiles.items() for line in user_profile_problems(prof, f"target_profiles.{name}")]
    problems += credential_problems(config)
    problems += [
        line
        for name, prof in profiles.items()
        if isinstance(prof, dict) and isinstance(prof.get("precision"), dict)
        for line in check_recipe(prof["precision"], f"target_profiles.{name}.precision")
        if ".op_types." in line
    ]
    # A profile of a built-in's name would replace it, and change the built-ins derived from it
    # (ax650n-npu1 from ax650n-npu3) behind the user's back.
    builtins = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
    problems += [
        f"target_profiles.{name}: the name of a built-in profile; give yours another name (with base: {name} to start from it)"
        for name in profiles
        if name in builtins
    ]
    if problems:  # a profile's op type checked by both: said once
        raise ConfigError("invalid config:\n  " + "\n  ".join(dict.fromkeys(problems)))
    try:
        targets = load_targets(profiles)
    except ConfigError as e:
        raise ConfigError(f"invalid config:\n  {e}") from None
    for i, t in enumerate(config["targets"]):
        if t not in targets:
            problems.append(f"targets.{i}: {targets.unknown_message(t)}")
    datasets = _dataset_names(config)
    problems += _check_calibration("calibration", config["calibration"], CALIBRATION_METHODS, datasets)
    problems += _check_quantization("quantization", config.get("quantization", {}))
    if config["evaluation"]["dataset"] not in datasets:
        problems.append(f"evaluation.dataset: {datasets.unknown_message(config['evaluation']['dataset'])}")
    for name, entry in config["datasets"].items():
        if "url" in entry and entry["url"].startswith("http://") and not entry["allow_http"]:
            problems.append(f"datasets.{name}.url: plain http is refused; use https, or set allow_http: true")
        problems += local_path_problems(name, entry)
    problems += _evaluation_dataset_problems(config)
    try:
        check_uri(config["mlflow"]["tracking_uri"], "mlflow.tracking_uri")
    except ConfigError as e:
        problems.append(str(e))
    folded = {}
    for name in config["models"]:
        if name in RESERVED_MODEL_NAMES:
            problems.append(
                f"models.{name}: the name is taken by results/{name} (reserved: {', '.join(RESERVED_MODEL_NAMES)}); rename the entry"
            )
        if name.split(".")[0].upper() in WINDOWS_DEVICE_NAMES:
            problems.append(
                f"models.{name}: {name.split('.')[0]} is a device name on Windows, not a possible folder name; rename the entry"
            )
        if name.lower() in folded:  # one folder on case-insensitive file systems (macOS, Windows)
            problems.append(f"models.{name}: differs from models.{folded[name.lower()]} only in case; their results folders would be one")
        folded.setdefault(name.lower(), name)
    for name, entry in config["models"].items():
        where = f"models.{name}"
        for field in ("mean", "std"):
            values = entry["input"].get(field, [])
            if not all(math.isfinite(v) for v in values):
                problems.append(f"{where}.input.{field}: expected finite numbers, got {values}")
        problems += check_entry(entry, where)
        problems += _image_memory_problems(name, entry, config)
        batch = entry["input"]["shape"][0]
        if batch != 1:
            problems.append(f"{where}.input.shape: batch must be 1 (edge deployment runs batch 1), got {batch}")
        if entry["input"]["shape"][1] != 3:
            problems.append(f"{where}.input.shape: expected 3 (RGB) channels in NCHW, got {entry['input']['shape'][1]}")
        for i, p in enumerate(entry["surgery"]):
            if p not in SURGERY_PASSES:
                problems.append(f"{where}.surgery.{i}: {SURGERY_PASSES.unknown_message(p)}")
        task = TASKS.get(entry["task"])
        if "append_argmax" in entry["surgery"] and not task.per_pixel:
            per_pixel = ", ".join(n for n, t in TASKS.items() if t.per_pixel)
            problems.append(f"{where}.surgery: append_argmax turns logits into class ids per pixel; it is for task: {per_pixel}")
        for i, t in enumerate(entry.get("targets", [])):
            if t not in targets:
                problems.append(f"{where}.targets.{i}: {targets.unknown_message(t)}")
        if "calibration" in entry:
            problems += _check_calibration(f"{where}.calibration", entry["calibration"], CALIBRATION_METHODS, datasets)
        problems += _check_quantization(f"{where}.quantization", entry.get("quantization", {}))
        for t, recipe in (entry.get("precision") or {}).items():  # op types that exist, a close match named
            problems += [line for line in check_recipe(recipe, f"{where}.precision.{t}") if ".op_types." in line]
        model_targets = resolved_block(config, entry, "targets")
        # a key may also name a target the model's targets derive from (`base: rdk-x5`): it applies to them
        keyed = set(model_targets) | {b for t in model_targets if t in targets for b in targets.get(t).get("derived_from", [])}
        for t in entry.get("precision", {}):
            if t not in keyed:
                problems.append(f"{where}.precision.{t}: not one of this model's targets, nor a base of one ({', '.join(model_targets)})")
        goal = entry.get("mixed_precision", {}).get("goal", {}).get("metric")
        if "mixed_precision" in entry and not task.goal_metrics:
            problems.append(f"{where}.mixed_precision: not available for task: {task.name} yet (no goal metric is defined for its outputs)")
        elif goal and goal not in task.goal_metrics:
            problems.append(
                f"{where}.mixed_precision.goal.metric: {goal} is not a goal for task: {task.name}; use {' or '.join(task.goal_metrics)}"
            )
        for t in entry.get("mixed_precision", {}).get("targets", []):
            if t not in model_targets:
                problems.append(f"{where}.mixed_precision.targets: {t!r} is not one of this model's targets ({', '.join(model_targets)})")
        calib_set = resolved_block(config, entry, "calibration")["dataset"]
        if calib_set in config["datasets"] and calib_set == config["evaluation"]["dataset"]:
            problems.append(
                f"{where}.calibration.dataset: {calib_set!r} is also the evaluation dataset; evaluation images must be "
                "held out from calibration — declare two datasets (e.g. two folders)"
            )
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def credential_problems(config: dict) -> list[str]:
    """Every config value but the tracking URI (which has its own rule, npuflow.tracking.uri)
    with credentials in it (`https://user:pass@host/…`, `?token=…`, a pre-signed URL's signature):
    a model's or dataset's fields travel to its jobs as a rule parameter, which Snakemake writes to
    its metadata and logs, and on to MLflow, where no secret may go."""
    from npuflow.core.names import field_path
    from npuflow.tracking.uri import redacted

    def walk(value, path):
        if isinstance(value, dict):
            for key, item in value.items():
                yield from walk(item, (*path, key))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                yield from walk(item, (*path, i))
        elif isinstance(value, str) and path != ("mlflow", "tracking_uri") and redacted(value) != value:
            yield (
                f"{field_path(path)}: {redacted(value)} has credentials in it, which would be stored in Snakemake's metadata "
                "and logs and in MLflow; download the file yourself and name the local copy (file:, folder:) instead"
            )

    return list(walk(config, ()))


def _evaluation_dataset_problems(config: dict) -> list[str]:
    """Evaluation images are held out and count once each: a folder dataset must hold as many as
    asked (an archive's images are counted once it is prepared). And the labels its class folders
    give must be classes the models evaluated on it can output, where the config tells how many
    they output (npuflow.sources.core: `num_classes`; else the evaluation job checks): a label past
    them would give a top-1 of 0, not an error."""
    from npuflow.data.datasets import DATASETS, DatasetError
    from npuflow.data.prepare import folder_labels, images_under

    ev = config["evaluation"]
    name = ev["dataset"]
    if name in DATASETS and not config["datasets"].get(name):
        builtin = DATASETS.get(name)
        if not builtin.augment_evaluation and ev["images"] > builtin.evaluation_images:
            return [
                f"evaluation.images: {ev['images']} asked, but the built-in dataset {name} holds {builtin.evaluation_images}"
                f" labelled images; held-out images count once each, so at most {builtin.evaluation_images}"
            ]
        return []
    entry = config["datasets"].get(name)
    if not entry or "folder" not in entry or not Path(entry["folder"]).is_dir():
        return []
    root = Path(entry["folder"])
    paths = images_under(root, root / entry["masks"] if entry.get("masks") else None)
    problems = []
    held = len(paths)
    if ev["images"] > held:
        most = f"so at most {held}" if held else "and it holds none"
        problems.append(
            f"evaluation.images: {ev['images']} asked, but datasets.{name} holds {held} images "
            f"({entry['folder']}); held-out images count once each, {most}"
        )
    classifiers = [m for m, e in config["models"].items() if TASKS.get(e["task"]).annotations == "labels"]
    if not classifiers or not paths:
        return problems
    try:
        labels = folder_labels(name, entry, paths)
    except DatasetError as e:
        return [*problems, str(e)]
    if not labels:
        return problems
    from npuflow.sources.core import SOURCES

    field = f"datasets.{name}.classes" if entry.get("classes") else f"datasets.{name}.folder"
    folder, top = max(labels.items(), key=lambda item: item[1])
    for model in classifiers:
        model_entry = config["models"][model]
        kind = model_entry["source"].partition(":")[0]
        outputs = SOURCES.get(kind)().num_classes(model_entry, f"models.{model}") if kind in SOURCES else None
        if outputs is None or top < outputs[0]:
            continue
        count, basis = outputs
        past = sum(1 for label in labels.values() if label >= count)
        problems.append(
            f"{field}: class folder {folder!r} is label {top}, but models.{model} outputs {count} classes (0 to {count - 1}; "
            f"{basis}): the model can never predict {past} of the {len(labels)} class folders, and top-1 would count their "
            "images as wrong instead of failing; name the class folders by the model's class indices, or list the model's "
            f"classes in order under datasets.{name}.classes"
        )
    return problems


def _image_memory_problems(name: str, entry: dict, config: dict) -> list[str]:
    """Counts of images whose float32 tensors one job of this model could not hold (MAX_IMAGE_BYTES)."""
    h, w = entry["input"]["shape"][2:]
    per_image = 3 * h * w * 4
    calib = resolved_block(config, entry, "calibration")
    calib_where = f"models.{name}.calibration" if "images" in entry.get("calibration", {}) else "calibration"
    calib_images = calib["images"] + (calib["selection_images"] if calib["method"] == "auto" else 0)
    jobs = [(f"{calib_where}.images", calib_images, "calibration"), ("evaluation.images", config["evaluation"]["images"], "evaluation")]
    if "mixed_precision" in entry:
        mixed = calib_images + entry["mixed_precision"]["images"]
        jobs.append((f"models.{name}.mixed_precision.images", mixed, "mixed-precision"))
    problems = []
    for where, count, job in jobs:
        if count * per_image > MAX_IMAGE_BYTES:
            problems.append(
                f"{where}: the {job} job of models.{name} would hold {count} images of 3×{h}×{w} at once, "
                f"{count * per_image / 2**30:.1f} GiB of float32 tensors; at most {MAX_IMAGE_BYTES // per_image} fit "
                f"in the {MAX_IMAGE_BYTES // 2**30} GiB a job may hold"
            )
    return problems


def _dataset_names(config: dict):
    """Built-in datasets and the config's own, as a registry (for its unknown-name message)."""
    from npuflow.data.datasets import DATASETS
    from npuflow.util.registry import Registry

    names: Registry[str] = Registry("dataset")
    for name in list(DATASETS.names()) + list(config["datasets"]):
        names.add(name, name)
    return names


def _check_quantization(where: str, block: dict) -> list[str]:
    """The `quantization:` keys against the PTQ-method registry (npuflow.quant.ptq)."""
    from npuflow.quant.ptq import PtqError, check_settings

    try:
        check_settings(block, where)
    except PtqError as e:
        return [str(e)]
    return []


def _check_calibration(where: str, calib: dict, methods, datasets) -> list[str]:
    problems = []
    if "method" in calib and calib["method"] not in methods:
        problems.append(f"{where}.method: {methods.unknown_message(calib['method'])}")
    if "dataset" in calib and calib["dataset"] not in datasets:
        problems.append(f"{where}.dataset: {datasets.unknown_message(calib['dataset'])}")
    return problems
