"""A model's spec: the config resolved for one model, the part each stage reads, a hand-written one's problems."""

from __future__ import annotations

import copy

import jsonschema

from npuflow.core.layout import STAGES
from npuflow.pipeline.schema import error_field, error_order, load_schema, resolved_block, shared_blocks

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
    for e in sorted(jsonschema.Draft202012Validator(spec_schema).iter_errors(spec), key=error_order):
        if e.validator == "required":
            where = "".join(f"{p}." for p in e.absolute_path)
            problems += [f"missing field {where}{k}" for k in e.validator_value if k not in e.instance]
        else:
            problems.append(f"{error_field(e)}: {e.message}")
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
