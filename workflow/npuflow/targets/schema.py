"""The JSON Schema of a target profile (workflow/schemas/target_profile.schema.yaml) and the checks
it cannot express, applied to every profile once its `base:` chain is resolved: built-in and
user profiles alike, before any job runs. Each problem is one line naming the profile and the key
path (`target_profiles.my-npu.units.tensor.peak_op_per_s: unknown key (expected one of …)`)."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from npuflow.core.names import field_path

SCHEMA_DIR = Path(__file__).resolve().parent.parent.parent / "schemas"
SCHEMA_PATH = SCHEMA_DIR / "target_profile.schema.yaml"
# The units whose `ops` lists place op types (an op on none of them runs on the CPU).
PLACING_UNITS = ("tensor", "vector", "dma")
# JSON Schema's types as a YAML file's writer knows them.
YAML_TYPES = {
    "array": "a list",
    "object": "a mapping",
    "integer": "an integer",
    "number": "a number",
    "string": "text",
    "boolean": "true or false",
}
# YAML 1.1 (PyYAML) reads 8e12 and 1.5e-6 without a dot or a signed exponent as text.
_NUMBER_TEXT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


@cache
def profile_schema() -> dict:
    """The schema, with the precision recipe's definition taken from the config schema (one
    definition of a recipe for both)."""
    import yaml

    from npuflow.targets import YAML_LOADER

    schema = yaml.load(SCHEMA_PATH.read_text(), Loader=YAML_LOADER)
    config = yaml.load((SCHEMA_DIR / "config.schema.yaml").read_text(), Loader=YAML_LOADER)
    schema["$defs"]["recipe"] = config["$defs"]["recipe"]
    return schema


def _described(schema: dict) -> str:
    """A property's description, through its $ref."""
    if "description" in schema:
        return schema["description"]
    ref = schema.get("$ref", "")
    return profile_schema()["$defs"].get(ref.rsplit("/", 1)[-1], {}).get("description", "") if ref else ""


def _yaml_float(value: float) -> str:
    """A float as YAML 1.1 reads it as one: 8.0e+12, 2.56e+10."""
    mantissa, exponent = f"{value:.6e}".split("e")
    mantissa = mantissa.rstrip("0")
    return f"{mantissa}{'0' if mantissa.endswith('.') else ''}e{exponent}"


def _lines(error, at) -> list[str]:
    path = list(error.absolute_path)
    kind, value = error.validator, error.instance
    if kind == "additionalProperties" and isinstance(value, dict):
        known = list(error.schema.get("properties", {}))
        expected = f"expected one of {', '.join(known)}" if known else "this mapping takes no keys"
        return [f"{at(path + [k])}: unknown key ({expected})" for k in value if k not in known]
    if kind == "required" and isinstance(value, dict):
        props = error.schema.get("properties", {})
        missing = [k for k in error.validator_value if k not in value]
        return [
            f"{at(path + [k])}: missing" + (f" ({_described(props.get(k, {}))})" if _described(props.get(k, {})) else "") for k in missing
        ]
    if kind == "type":
        types = [error.validator_value] if isinstance(error.validator_value, str) else error.validator_value
        wanted = " or ".join(YAML_TYPES.get(t, t) for t in types)
        hint = ""
        if isinstance(value, str) and _NUMBER_TEXT.match(value) and "e" in value.lower() and {"number", "integer"} & set(types):
            hint = f" (YAML reads {value} as text: write it with a dot and a signed exponent, {_yaml_float(float(value))})"
        return [f"{at(path)}: expected {wanted}, got {value!r}{hint}"]
    if kind == "enum":
        return [f"{at(path)}: expected one of {', '.join(map(str, error.validator_value))}, got {value!r}"]
    if kind in ("exclusiveMinimum", "minimum", "maximum"):
        desc = _described(error.schema)
        bound = {"exclusiveMinimum": ">", "minimum": "≥", "maximum": "≤"}[kind]
        return [f"{at(path)}: expected a number {bound} {error.validator_value}, got {value!r}" + (f" ({desc})" if desc else "")]
    return [f"{at(path)}: {error.message}"]


def _ops_on_two_units(profile: dict, at) -> list[str]:
    """An op type listed on two units (or as free and on a unit): only one of them would run it."""
    units = profile.get("units") if isinstance(profile.get("units"), dict) else {}
    placed: dict[str, list] = {}
    for unit in PLACING_UNITS:
        ops = (units.get(unit) or {}).get("ops") if isinstance(units.get(unit), dict) else None
        for op in ops if isinstance(ops, list) else []:
            placed.setdefault(op, []).append(["units", unit, "ops"])
    for op in profile.get("free_ops") if isinstance(profile.get("free_ops"), list) else []:
        placed.setdefault(op, []).append(["free_ops"])
    return [
        f"{at(lists[1])}: {op} is also listed in {'.'.join(lists[0])} (an op runs on one unit, or is free: list it once)"
        for op, lists in placed.items()
        if len(lists) > 1
    ]


def _without_required(schema):
    """`schema` with no `required` anywhere: what a partial (`base:`-derived) profile must meet."""
    if isinstance(schema, list):
        return [_without_required(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    return {k: _without_required(v) for k, v in schema.items() if k != "required"}


@cache
def _partial_schema() -> dict:
    return _without_required(profile_schema())


def user_profile_problems(profile, where: str) -> list[str]:
    """Problems of a user profile as written, before its `base:` chain is resolved and fitted
    values are applied (which read its `base`, `transfer_from`, `fit` and `fit_parameters` and walk
    its mappings): every key it gives must have the type the profile schema gives it. A derived
    profile lists only what differs from its base, so nothing is required here; the resolved
    profile is checked in full by `profile_problems`."""
    import jsonschema

    def at(path: list) -> str:
        return ".".join([where, field_path(path)]) if path else where

    if not isinstance(profile, dict):
        return [f"{where}: expected a mapping, got {profile!r}"]
    from npuflow.targets import get_path
    from npuflow.targets.fit_parameters import RATE_PATHS

    validator = jsonschema.Draft202012Validator(_partial_schema())
    errors = sorted(validator.iter_errors(profile), key=lambda e: [str(p) for p in e.absolute_path])
    problems = [line for e in errors for line in _lines(e, at)]
    # fitted values are set at their paths before the resolved profile is checked: only at the
    # rates a fit can set (a path into a number, units.tensor.peak_ops_per_s.int8.x, has no place)
    fitted = get_path(profile, "fit.parameters", {})
    problems += [
        f"{at(['fit', 'parameters', path])}: not a rate the fit can set (one of {', '.join(RATE_PATHS)})"
        for path in (fitted if isinstance(fitted, dict) else {})
        if path not in RATE_PATHS
    ]
    return problems


def profile_problems(profile: dict, where: str) -> list[str]:
    """Every problem of a resolved profile, one line each, `where` naming it
    (`target_profiles.my-npu`)."""
    import jsonschema

    def at(path: list) -> str:
        return ".".join([where, field_path(path)]) if path else where

    validator = jsonschema.Draft202012Validator(profile_schema())
    errors = sorted(validator.iter_errors(profile), key=lambda e: [str(p) for p in e.absolute_path])
    return [line for e in errors for line in _lines(e, at)] + _ops_on_two_units(profile, at)
