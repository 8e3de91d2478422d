"""MkDocs hook (mkdocs.yml `hooks:`): the pages generated when the site is built, so that none of
them is committed and none can drift from what it describes.

- `index.md`: README.md, its links into docs/ made relative to the site;
- `reference/configuration.md`: every field of the config file and of a target profile, from the
  JSON Schemas in workflow/schemas/ as npuflow loads them (`npuflow.pipeline.schema.load_schema`, which adds
  each model source's own fields; `npuflow.targets.schema.profile_schema`);
- `reference/stages.md`: the stage table of `npuflow.core.layout` (each stage's rule, command, outputs,
  log, the spec fields it reads, its memory estimate) and the files of an MLflow run.

The page functions need npuflow only (tests/test_docs.py calls them without MkDocs installed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "workflow" / "schemas"
CONFIG_REFERENCE = "reference/configuration.md"
STAGES_REFERENCE = "reference/stages.md"

# The placeholder a mapping's keys get in a field path, by the mapping's own name.
KEY_NAMES = {
    "models": "<model>",
    "datasets": "<dataset>",
    "target_profiles": "<target>",
    "precision": "<target>",
    "op_types": "<op type>",
    "layers": "<layer>",
    "vector_ops_per_element": "<op type>",
    "sources": "<figure>",
    "fit_parameters": "<parameter>",
    "parameters": "<parameter>",
}


# --- README as the site's home page ---------------------------------------------------------------


def index_page() -> str:
    """README.md with its `docs/…` links relative to the site (docs/ is the site's root)."""
    text = (ROOT / "README.md").read_text()
    return re.sub(r"\]\(docs/", "](", text)


# --- configuration reference ----------------------------------------------------------------------


def _resolve(node: dict, root: dict) -> dict:
    """`node` with its `$ref` (a local `#/$defs/…`) merged in; the node's own keys win."""
    seen = set()
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if ref in seen or not ref.startswith("#/"):
            break
        seen.add(ref)
        target = root
        for part in ref[2:].split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _type(node: dict, root: dict) -> str:
    node = _resolve(node, root)
    if "const" in node:
        return json.dumps(node["const"])
    for alt in ("anyOf", "oneOf"):
        if alt in node and all(isinstance(a, dict) and ("type" in a or "const" in a or "$ref" in a) for a in node[alt]):
            return " or ".join(_type(a, root) for a in node[alt])
    t = node.get("type")
    if t is None and "enum" in node:
        kinds = sorted({type(v).__name__ for v in node["enum"]})
        t = "string" if kinds == ["str"] else "/".join(kinds)
    if isinstance(t, list):
        t = " or ".join(t)
    if t == "array" and isinstance(node.get("items"), dict):
        return f"list of {_type(node['items'], root)}"
    if t == "object" and isinstance(node.get("additionalProperties"), dict) and not node.get("properties"):
        return f"mapping of {_type(node['additionalProperties'], root)}"
    return t or "any"


def _yaml(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def _allowed(node: dict, required: bool) -> str:
    notes = []
    if required:
        notes.append("**required**")
    if "enum" in node:
        notes.append(" · ".join(f"`{_yaml(v)}`" for v in node["enum"]))
    if "pattern" in node:
        notes.append(f"pattern `{node['pattern']}`")
    for key, word in (
        ("minimum", "≥"),
        ("exclusiveMinimum", ">"),
        ("maximum", "≤"),
        ("exclusiveMaximum", "<"),
        ("minItems", "items ≥"),
        ("maxItems", "items ≤"),
        ("minLength", "length ≥"),
        ("minProperties", "entries ≥"),
    ):
        if key in node:
            notes.append(f"{word} {node[key]}")
    if node.get("uniqueItems"):
        notes.append("no repeats")
    alternatives = node.get("oneOf", [])
    if alternatives and all(isinstance(a, dict) and list(a) == ["required"] for a in alternatives):
        notes.append("one of: " + " · ".join(" + ".join(f"`{r}`" for r in a["required"]) for a in alternatives))
    items = node.get("items")
    if isinstance(items, dict):
        inner = _allowed(items, False)
        if inner:
            notes.append(f"each: {inner}")
    return "; ".join(notes)


def _cell(text: str) -> str:
    """One table cell: on one line, its pipes escaped, and outside code spans `<`, `>` and `*`
    as text (the schemas' descriptions write `file:<path>`, `targets/*.yaml`)."""
    parts = re.split(r"(`[^`]*`)", " ".join(str(text).split()))
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*")
    return "".join(parts).replace("|", "\\|")


def schema_rows(schema: dict, prefix: str = "", root: dict | None = None) -> list[tuple[str, str, str, str, str]]:
    """(field path, type, default, allowed values, description) of every property under `schema`,
    depth first: `models.<model>.input.shape`, `fit.residuals[].model`."""
    root = schema if root is None else root
    node = _resolve(schema, root)
    rows = []
    required = set(node.get("required", []))
    for name, prop in (node.get("properties") or {}).items():
        path = f"{prefix}.{name}" if prefix else name
        prop = _resolve(prop, root)
        default = f"`{_yaml(prop['default'])}`" if "default" in prop else ""
        rows.append((path, _type(prop, root), default, _allowed(prop, name in required), prop.get("description", "")))
        rows += _children(prop, path, root)
    return rows


def _children(prop: dict, path: str, root: dict) -> list:
    rows = []
    if prop.get("properties"):
        rows += schema_rows(prop, path, root)
    extra = prop.get("additionalProperties")
    if isinstance(extra, dict):
        extra = _resolve(extra, root)
        key = KEY_NAMES.get(path.rsplit(".", 1)[-1], "<name>")
        if extra.get("properties"):
            desc = extra.get("description", "")
            rows.append((f"{path}.{key}", _type(extra, root), "", _allowed(extra, False), desc))
            rows += schema_rows(extra, f"{path}.{key}", root)
    items = prop.get("items")
    if isinstance(items, dict) and _resolve(items, root).get("properties"):
        rows += schema_rows(_resolve(items, root), f"{path}[]", root)
    return rows


def _table(rows) -> list[str]:
    out = ["| field | type | default | allowed | description |", "|---|---|---|---|---|"]
    for path, typ, default, allowed, desc in rows:
        # `allowed` is markdown already: values in code spans, the required mark in bold.
        out.append(f"| `{path}` | {_cell(typ)} | {_cell(default)} | {allowed} | {_cell(desc)} |")
    return out


def config_schemas() -> tuple[dict, dict]:
    """The config schema and the target-profile schema, as npuflow validates with them."""
    from npuflow.pipeline.schema import load_schema
    from npuflow.targets.schema import profile_schema

    return load_schema(), profile_schema()


def configuration_reference() -> str:
    config, profile = config_schemas()
    lines = [
        "# Configuration reference",
        "",
        "Generated when this site is built, from the JSON Schemas in `workflow/schemas/` as npuflow",
        "loads them (each model source adds its own fields), so it lists exactly the fields the config",
        "check accepts. A field path's `<model>`, `<target>`, … stand for a key of your choosing;",
        "`[]` is each item of a list. How the fields fit together: [Configuration](../configuration.md).",
        "",
        "## The config file (`config.yaml`)",
        "",
        f"From `workflow/schemas/config.schema.yaml`: {_cell(config.get('description', ''))}",
        "",
        *_table(schema_rows(config)),
        "",
        "## A target profile (`target_profiles.<target>`, `workflow/npuflow/targets/*.yaml`)",
        "",
        "From `workflow/schemas/target_profile.schema.yaml`, after the profile's `base:` chain is resolved "
        f"(see [Adding a target profile](../targets.md)): {_cell(profile.get('description', ''))}",
        "",
        *_table(schema_rows(profile)),
        "",
    ]
    return "\n".join(lines)


# --- stages and artifacts -------------------------------------------------------------------------


def stages_reference() -> str:
    from npuflow.core import layout
    from npuflow.pipeline.memory import job_mem_mb

    def shape(h, w):
        return {"input": {"shape": [1, 3, h, w]}}

    lines = [
        "# Stages and artifacts",
        "",
        "Generated when this site is built, from the stage table `npuflow.core.layout.STAGES`",
        "(`workflow/npuflow/core/layout.py`), which the rules, the MLflow runs, the report's failure chain",
        "and the tests derive from. Patterns are relative to the folder Snakemake runs in, over the",
        "wildcards `{model}`, `{target}`, `{recipe}` (a precision recipe id) and `{dataset}`.",
        "",
        "## Stages, in pipeline order",
        "",
        "| stage (rule) | command | outputs | log | benchmark | spec fields it reads | memory (224×224 / 640×1280) |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in layout.STAGES:
        outputs = "<br>".join(f"{name}: `{p}`" for name, p in s.outputs.items())
        fields = ", ".join(f"`{f}`" for f in s.fields) if s.fields is not None else "—"
        memory = f"`{s.memory}`: {job_mem_mb(s.name, shape(224, 224))} / {job_mem_mb(s.name, shape(640, 1280))} MB" if s.memory else "—"
        command = f"`npuflow {s.command}`" if s.command else "—"
        bench = f"`{s.benchmark_pattern}`" if s.benchmark_pattern else "—"
        lines.append(f"| `{s.name}` | {command} | {outputs} | `{s.log}` | {bench} | {fields} | {memory} |")
    lines += [
        "",
        "## The files of an MLflow run",
        "",
        "One run per (model, target): the stage outputs it holds, where it keeps them, and whether their",
        "content keys the run (a change to a keyed file makes a new run). `{recipe}` is the quantised",
        "model the target builds.",
        "",
        "| name | stage output | path | artifact | keys the run |",
        "|---|---|---|---|---|",
    ]
    for f in layout.RUN_FILES:
        path = layout.STAGES[f.stage].outputs[f.output]
        artifact = f"`{f.artifact}`" if f.artifact else "the run's logged model `quantized`" if f.name == "onnx_quant" else "—"
        note = " (mixed precision only)" if f.mixed_only else ""
        lines.append(f"| `{f.name}` | {f.stage}: {f.output} | `{path}` | {artifact}{note} | {'yes' if f.hashed else 'no'} |")
    lines += [
        "",
        "## Other entries of `results/`",
        "",
        "No stage's output, and so never a model's name (`npuflow.core.layout.reserved_names`):",
        "",
        *(f"- `{p}`" for p in layout.OTHER_ENTRIES),
        "",
        "Reserved model names: " + ", ".join(f"`{n}`" for n in layout.reserved_names()) + ".",
        "",
    ]
    return "\n".join(lines)


# --- MkDocs events --------------------------------------------------------------------------------

PAGES = {"index.md": index_page, CONFIG_REFERENCE: configuration_reference, STAGES_REFERENCE: stages_reference}


def on_files(files, config):
    from mkdocs.structure.files import File

    for uri, make in PAGES.items():
        if files.get_file_from_path(uri) is not None:
            raise ValueError(f"docs/{uri} is generated by docs/hooks.py: remove the file")
        files.append(File.generated(config, uri, content=make()))
    return files


def on_config(config):
    # README.md and the sources of the generated pages: `mkdocs serve` rebuilds when they change.
    for path in (ROOT / "README.md", SCHEMAS, ROOT / "workflow" / "npuflow" / "layout.py"):
        config.watch.append(str(path))
    return config
