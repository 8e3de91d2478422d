"""The config schema as npuflow reads it (the sources' fields added), its defaults and the blocks a model shares."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import jsonschema
import yaml

from npuflow.core.names import field_path
from npuflow.targets import YAML_LOADER
from npuflow.util.merge import merge_blocks

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


def load_schema() -> dict:
    """The schema file, with what the model-source registry says of sources (the kinds in the
    `source` description, each source's own fields) and the task registry of tasks."""
    from npuflow.core.tasks import TASKS
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
    # the tasks, one registry entry each (npuflow.core.tasks)
    model["task"]["enum"] = [name for name, _ in TASKS.items()]
    model["task"]["description"] = "; ".join(f"{name}: {t.description}" for name, t in TASKS.items()) + "."
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
    for _ in defaults_filling_validator()(_raw_schema()).iter_errors(filled):  # `models` missing: filled all the same
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


def defaults_filling_validator():
    base = jsonschema.Draft202012Validator

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema)

    return jsonschema.validators.extend(base, {"properties": set_defaults})


def error_field(error: jsonschema.ValidationError) -> str:
    return field_path(error.absolute_path) or "(top level)"


def error_order(error: jsonschema.ValidationError) -> list:
    """Errors in field order: list items by index, keys by text (YAML keys may be numbers, null
    or true, which Python does not order beside text)."""
    return [(0, p, "") if isinstance(p, int) and not isinstance(p, bool) else (1, 0, repr(p)) for p in error.absolute_path]
