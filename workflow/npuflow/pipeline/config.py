"""Config loading and validation: JSON Schema first (shape, types, defaults), then the checks a
schema cannot express (names that must exist in a registry, fields that depend on each other).
Every error names the config entry and field at fault and what was expected."""

from __future__ import annotations

import copy
import functools
import json
import math
from pathlib import Path

import jsonschema
import yaml

from npuflow.core.layout import STAGES, reserved_names
from npuflow.core.names import field_path, name_problems
from npuflow.targets import PROFILE_DIR, YAML_LOADER, load_targets
from npuflow.util.errors import ConfigError
from npuflow.util.merge import merge_blocks

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"
# Entries of results/ that are not model folders: a model of one of these names would write into
# them (results/mlflow.db/… would break the tracking store). From the stage table.
RESERVED_MODEL_NAMES = reserved_names()
# Names Windows gives to devices, whatever the extension: results/NUL/ or results/com1.x/ cannot be
# a folder there (a shared results/ on a Windows file server, a checkout on Windows).
WINDOWS_DEVICE_NAMES = {"CON", "PRN", "AUX", "NUL"} | {f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)}
# A YAML alias repeats a node without copying it; validation and the per-job specs expand it.
# A config larger than this once expanded is refused (a "billion laughs" file would hang them).
MAX_CONFIG_NODES = 1_000_000
# A job holds all its images at once, preprocessed to float32 (npuflow.data.datasets.image_batches): the
# counts that would need more than this are refused (224×224: 14 266 images; 640×1280: 873).
MAX_IMAGE_BYTES = 8 * 2**30


def load_schema() -> dict:
    """The schema file, with what the model-source registry says of sources: the kinds in the
    `source` description and each source's own fields (one registry entry per source)."""
    from npuflow.sources.core import SOURCES, source_fields

    schema = yaml.load(SCHEMA_PATH.read_text(), Loader=YAML_LOADER)
    # A block a model may also set (`calibration:`, `quantization:`, `targets:`, …) overrides the
    # global one key by key (model_spec): the model's takes no schema defaults of its own, or a
    # block that sets only `method` would reset the global images and dataset to the defaults
    # (what the global block gets filled with, not the entry's).
    for key in shared_blocks(schema):
        given = schema["$defs"]["model"]["properties"][key]
        schema["$defs"]["model"]["properties"][key] = _without_defaults(_inlined(given, schema["$defs"]))
    model = schema["$defs"]["model"]["properties"]
    kinds = ", ".join(SOURCES.get(k).syntax for k in SOURCES.names())
    model["source"]["description"] = f"{kinds}. {model['source']['description']}"
    for name, field in source_fields().items():
        if name in model:
            raise ValueError(f"model source field {name!r} clashes with a common model field of the schema")
        model[name] = field
    return schema


def shared_blocks(schema: dict | None = None) -> tuple[str, ...]:
    """The settings the config has both at the top level and under a model (in the top level's
    order): a model's resolves over the global one by `resolved_block`."""
    schema = schema or _raw_schema()
    model = schema["$defs"]["model"]["properties"]
    return tuple(k for k in schema["properties"] if k in model)


@functools.cache
def _raw_schema() -> dict:
    return yaml.load(SCHEMA_PATH.read_text(), Loader=YAML_LOADER)


@functools.cache
def _block_defaults() -> dict:
    """The schema's defaults of the shared blocks, as validation fills an empty config's."""
    filled: dict = {}
    for _ in _defaults_filling_validator()(_raw_schema()).iter_errors(filled):  # `models` missing: filled all the same
        pass
    return {k: filled[k] for k in shared_blocks() if k in filled}


def resolved_block(config: dict, entry: dict, key: str):
    """A shared block (`shared_blocks`) as a model uses it: per key, the model's value over the
    global one over the schema's default, mappings merged the same way inside, lists and other
    values replaced whole (npuflow.util.merge)."""
    layers = [layer for layer in (_block_defaults(), config, entry) if key in layer]
    return merge_blocks(*({key: layer[key]} for layer in layers)).get(key)


_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "dependentSchemas")
_VALUE_KEYWORDS = ("const", "enum", "examples", "required")


def _without_defaults(schema):
    """`schema` with no `default` keyword at any depth (a property named `default` stays)."""
    if isinstance(schema, list):
        return [_without_defaults(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for k, v in schema.items():
        if k == "default":
            continue
        if k in _SUBSCHEMA_MAPS and isinstance(v, dict):
            out[k] = {name: _without_defaults(sub) for name, sub in v.items()}
        else:
            out[k] = v if k in _VALUE_KEYWORDS else _without_defaults(v)
    return out


def _inlined(schema, defs: dict, depth: int = 0):
    """`schema` with its local `$ref`s replaced by their definitions (their defaults can then be
    dropped for one use of them, not for every use). The schema's definitions are not recursive."""
    if depth > 32:
        raise ValueError("config schema: $ref nested past 32 levels (a recursive definition?)")
    if isinstance(schema, list):
        return [_inlined(s, defs, depth + 1) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for k, v in schema.items():
        if k in _SUBSCHEMA_MAPS and isinstance(v, dict):
            out[k] = {name: _inlined(sub, defs, depth + 1) for name, sub in v.items()}
        elif k != "$ref":
            out[k] = v if k in _VALUE_KEYWORDS else _inlined(v, defs, depth + 1)
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return {**_inlined(copy.deepcopy(defs[ref.removeprefix("#/$defs/")]), defs, depth + 1), **out}
    return out


def _defaults_filling_validator():
    base = jsonschema.Draft202012Validator

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema)

    return jsonschema.validators.extend(base, {"properties": set_defaults})


def _field_path(error: jsonschema.ValidationError) -> str:
    return field_path(error.absolute_path) or "(top level)"


def _path_order(error: jsonschema.ValidationError) -> list:
    """Errors in field order: list items by index, keys by text (YAML keys may be numbers, null
    or true, which Python does not order beside text)."""
    return [(0, p, "") if isinstance(p, int) and not isinstance(p, bool) else (1, 0, repr(p)) for p in error.absolute_path]


def validate_config(config: dict) -> dict:
    """Validate `config` in place (filling schema defaults) and return it; raise ConfigError."""
    if not isinstance(config, dict):
        raise ConfigError("config: expected a mapping at the top level")
    # Names first: a name that is a command or a path is refused before anything reads it.
    lines = name_problems(config)
    validator = _defaults_filling_validator()(load_schema())
    errors = sorted(validator.iter_errors(config), key=_path_order)
    lines += [f"{_field_path(e)}: {e.message}" + _expected(e) for e in errors]
    if lines:
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines))
    _check_semantics(config)
    return config


def _expected(error: jsonschema.ValidationError) -> str:
    desc = error.schema.get("description") if isinstance(error.schema, dict) else None
    return f" (expected: {desc})" if desc else ""


def _check_semantics(config: dict) -> None:
    # Imported here: the registries pull in onnx; validation of the schema alone stays light.
    from npuflow.data.datasets import local_path_problems
    from npuflow.graph.precision import check_recipe
    from npuflow.graph.surgery import SURGERY_PASSES
    from npuflow.quant.calibrate import CALIBRATION_METHODS
    from npuflow.sources.core import check_entry
    from npuflow.targets.schema import user_profile_problems
    from npuflow.tracking.server import check_uri

    # The profiles as written first: resolving `base:` chains and applying fits reads them.
    profiles = config.get("target_profiles", {})
    problems = [line for name, prof in profiles.items() for line in user_profile_problems(prof, f"target_profiles.{name}")]
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
        if "append_argmax" in entry["surgery"] and entry["task"] != "segmentation":
            problems.append(f"{where}.surgery: append_argmax turns logits into class ids per pixel; it is for task: segmentation")
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
        if "mixed_precision" in entry and entry["task"] == "detection":
            problems.append(
                f"{where}.mixed_precision: not available for task: detection yet (its goal metrics are for classifier and segmenter outputs)"
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


def _evaluation_dataset_problems(config: dict) -> list[str]:
    """Evaluation images are held out and count once each: a folder dataset must hold as many as
    asked (an archive's images are counted once it is prepared). And the labels its class folders
    give must be classes the models evaluated on it can output, where the config tells how many
    they output (npuflow.sources.core: `num_classes`; else the evaluation job checks): a label past
    them would give a top-1 of 0, not an error."""
    from npuflow.data.datasets import DatasetError, _images_under, folder_labels

    ev = config["evaluation"]
    name = ev["dataset"]
    entry = config["datasets"].get(name)
    if not entry or "folder" not in entry or not Path(entry["folder"]).is_dir():
        return []
    root = Path(entry["folder"])
    paths = _images_under(root, root / entry["masks"] if entry.get("masks") else None)
    problems = []
    held = len(paths)
    if ev["images"] > held:
        most = f"so at most {held}" if held else "and it holds none"
        problems.append(
            f"evaluation.images: {ev['images']} asked, but datasets.{name} holds {held} images "
            f"({entry['folder']}); held-out images count once each, {most}"
        )
    classifiers = [m for m, e in config["models"].items() if e["task"] == "classification"]
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


def load_yaml(path: str | Path):
    """YAML as yaml.safe_load reads it (JSON as json does, below), but refusing what it would silently get wrong: a key
    given twice in one mapping (PyYAML keeps the last, so two models of one name would be one),
    and aliases that expand beyond MAX_CONFIG_NODES."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        where = "" if path.is_absolute() else f" (in {Path.cwd()})"
        raise ConfigError(f"{path}: no such file{where}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a folder, not a config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read as a text file: {e}") from None
    # JSON is YAML only without tabs: a .json file, or one that opens with '{', is read as JSON.
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        return _load_json(text, path)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _check_nodes(loader, node, path, [], {}) > MAX_CONFIG_NODES:
            raise ConfigError(f"{path}: more than {MAX_CONFIG_NODES} values once its YAML aliases are expanded; refused")
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(e)}") from None
    finally:
        loader.dispose()


def _load_json(text: str, path: Path):
    """JSON, refusing a key given twice in one object as load_yaml does (json keeps the last)."""

    def unique(pairs):
        keys = [k for k, _ in pairs]
        twice = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
        if twice is not None:
            raise ConfigError(f"{path}: the key {twice!r} is given twice in one object; JSON readers keep only the last one")
        return dict(pairs)

    try:
        return json.loads(text, object_pairs_hook=unique)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: line {e.lineno}, column {e.colno}: {e.msg}") from None


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's error on one line: where, the problem, and what it was parsing there."""
    if not isinstance(error, yaml.MarkedYAMLError) or error.problem_mark is None:
        return " ".join(str(error).split())
    mark = error.problem_mark
    text = f"line {mark.line + 1}, column {mark.column + 1}: {error.problem}"
    if error.context and error.context_mark is not None:
        text += f" ({error.context} from line {error.context_mark.line + 1})"
    return text


def _check_nodes(loader, node, path: Path, where: list[str], sizes: dict) -> int:
    """Refuse duplicate keys (naming the field and both lines); return the node's expanded size."""
    if id(node) in sizes:  # an alias: its size is known (None while it is being walked: a cycle)
        if sizes[id(node)] is None:
            raise ConfigError(
                f"{path}:{node.start_mark.line + 1}: {'.'.join(where) or '(top level)'}: a YAML alias that contains itself; refused"
            )
        return sizes[id(node)]
    sizes[id(node)] = None
    size = 1
    if isinstance(node, yaml.MappingNode):
        seen = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                size += _check_nodes(loader, value_node, path, where, sizes)
                continue
            key = loader.construct_object(key_node, deep=True) if isinstance(key_node, yaml.ScalarNode) else id(key_node)
            field = ".".join([*where, str(key)])
            if key in seen:
                raise ConfigError(
                    f"{field}: given twice in {path} (lines {seen[key]} and {key_node.start_mark.line + 1}); "
                    "YAML would silently keep only the last one. Rename or remove one"
                )
            seen[key] = key_node.start_mark.line + 1
            size += _check_nodes(loader, value_node, path, [*where, str(key)], sizes)
    elif isinstance(node, yaml.SequenceNode):
        size += sum(_check_nodes(loader, v, path, [*where, str(i)], sizes) for i, v in enumerate(node.value))
    sizes[id(node)] = size
    return size


def load_config(path: str | Path) -> dict:
    return validate_config(load_yaml(path))


# What each stage reads of a model spec (the stage table's `fields`). The workflow passes each job
# only these fields, so a changed field re-runs the stages that read it (and what depends on their
# outputs), nothing else.
STAGE_FIELDS = {s.name: s.fields for s in STAGES if s.fields is not None}


def stage_spec(spec: dict, stage: str) -> dict:
    return {k: spec[k] for k in STAGE_FIELDS[stage] if k in spec}


def _defaults_required(schema):
    """`schema` with every property that has a default also required (a resolved spec has it)."""
    if isinstance(schema, list):
        return [_defaults_required(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _defaults_required(v) for k, v in schema.items()}
    if isinstance(schema.get("properties"), dict):
        defaulted = [k for k, v in schema["properties"].items() if isinstance(v, dict) and "default" in v]
        out["required"] = list(dict.fromkeys([*schema.get("required", []), *defaulted]))
    return out


def spec_problems(spec: dict, stage: str) -> list[str]:
    """What a hand-written `--spec` of `stage` lacks or gets wrong, against what model_spec
    resolves: the stage's fields that every resolved spec has (the model entry's required and
    defaulted fields, and the global ones model_spec adds), each checked by the config schema."""
    schema = _defaults_required(load_schema())
    top, model = schema["properties"], schema["$defs"]["model"]
    fields = {
        "name": {"type": "string", "minLength": 1},
        **{k: top[k] for k in ("weights", "seed", "evaluation", *shared_blocks())},
        **{k: v for k, v in model["properties"].items() if k not in shared_blocks()},
    }
    always = {"name", "weights", "seed", "targets", "calibration", "evaluation", *model["required"]}
    stage_fields = STAGE_FIELDS[stage]
    spec_schema = {
        "$defs": schema["$defs"],
        "type": "object",
        "required": [k for k in stage_fields if k in always],
        "properties": {k: v for k, v in fields.items() if k in stage_fields},
    }
    problems = []
    for e in sorted(jsonschema.Draft202012Validator(spec_schema).iter_errors(spec), key=_path_order):
        if e.validator == "required":
            where = "".join(f"{p}." for p in e.absolute_path)
            problems += [f"missing field {where}{k}" for k in e.validator_value if k not in e.instance]
        else:
            problems.append(f"{_field_path(e)}: {e.message}")
    return list(dict.fromkeys(problems))  # a `required` error per missing field, each naming them all


def model_spec(config: dict, name: str) -> dict:
    """Everything the stages need to know about one model, global settings merged in: each block
    the config has both globally and per model (`shared_blocks`: calibration, quantization,
    targets) is `resolved_block`'s. The spec is what Snakemake compares to decide whether a
    model's jobs must re-run."""
    entry = copy.deepcopy(config["models"][name])
    spec = {
        "name": name,
        "weights": config["weights"],
        "seed": config["seed"],
        "evaluation": dict(config["evaluation"]),
        # quantization: npuflow.quant.ptq's settings, as given (its defaults are the stage's)
        **{key: resolved_block(config, entry, key) for key in shared_blocks()},
    }
    spec = {k: v for k, v in spec.items() if v is not None}  # a shared block set nowhere, with no default
    spec.update({k: v for k, v in entry.items() if k not in spec})
    return spec
