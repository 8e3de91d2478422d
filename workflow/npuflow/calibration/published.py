"""Published device measurements (the calibration CSV) and the models they name, exported once.

A row names a target, a model (`timm_name`: a timm name, or `<source>:<reference>` of one of the
sources in NAME_SCHEMES: `hf:<repo>`, `torchvision:<builder>`, `ultralytics:<name>`, built at the
row's `input_hw`), an input size, a batch,
a metric (latency_ms or fps), the value, optionally the deployment's precision recipe where it
left the vendor default (`precision`: `Softmax=int16;LayerNormalization=int16`, or a whole-model
16-bit deployment `default=int16;weights=int8`; empty: the target's default), and its source. A row that cannot be used keeps its place with the reason
(`error`): reports show it as a failure, never drop it."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from npuflow.util.errors import NpuflowError
from npuflow.util.io import atomic_path, write_json

CSV_COLUMNS = ("target", "model", "timm_name", "input_hw", "batch", "metric", "value", "source")
OPTIONAL_COLUMNS = ("precision",)
METRICS = ("latency_ms", "fps")
SIM_OPSET = 17
# Model name schemes sim-validate builds, each a model source of npuflow.sources.core.SOURCES; a name
# without a scheme is timm's. Accepting another source's names is adding it here.
# The family a row's model is held out with in cross-validation is its source's `family`: timm's
# model module, an hf config's model_type, torchvision's builder module (mobilenetv2, resnet), an
# Ultralytics model's family (yolo11, yolov8).
NAME_SCHEMES = ("timm", "hf", "torchvision", "ultralytics")


class SimFitError(NpuflowError):
    pass


@dataclass(frozen=True)
class Row:
    target: str
    model: str
    name: str  # timm name, or <scheme>:<reference> (NAME_SCHEMES)
    hw: tuple[int, int]
    batch: int
    metric: str
    value: float
    source: str
    precision: str = ""  # `default=int16;weights=int8;OpType=dtype;…` as in the CSV; empty: the target's default recipe
    line: int = 0
    error: str = ""  # why the row cannot be predicted (then the fields it could not parse are zero)

    def recipe_override(self) -> dict:
        """The row's precision column as a recipe override ({} when empty)."""
        return parse_precision(self.precision) if self.precision.strip() else {}


def parse_precision(text: str) -> dict:
    """The row's `precision` in the recipe grammar (`default=int16;weights=int8;Softmax=float`,
    npuflow.graph.precision.parse_recipe_text); raises ValueError naming the word at fault."""
    from npuflow.graph.precision import parse_recipe_text

    return parse_recipe_text(text)


def read_published(path: str | Path) -> list[Row]:
    """Every row of the CSV, in order; a row with a field that does not parse, a non-positive
    value or an unknown metric carries the reason in `error`. Missing columns fail the file."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = set(CSV_COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise SimFitError(f"{path}: missing columns {sorted(missing)} (expected {', '.join(CSV_COLUMNS)}[, precision])")
        return [_row(r, i) for i, r in enumerate(reader, start=2)]


def _row(r: dict, line: int) -> Row:
    fields = {k: (r.get(k) or "").strip() for k in CSV_COLUMNS + OPTIONAL_COLUMNS}
    base = {"target": fields["target"], "model": fields["model"], "name": fields["timm_name"], "source": fields["source"]}
    base.update(metric=fields["metric"], precision=fields["precision"], line=line)
    try:
        h, w = (int(v) for v in fields["input_hw"].lower().split("x"))
        batch, value = int(fields["batch"]), float(fields["value"])
        if fields["metric"] not in METRICS:
            raise ValueError(f"metric {fields['metric']!r}, expected one of {', '.join(METRICS)}")
        if not value > 0 or batch < 1 or h < 1 or w < 1:
            raise ValueError(f"value {fields['value']}, batch {fields['batch']}, input_hw {fields['input_hw']}: expected positive numbers")
        if fields["precision"]:
            parse_precision(fields["precision"])
    except ValueError as e:
        return Row(**base, hw=(0, 0), batch=0, value=0.0, error=f"line {line}: {e}")
    return Row(**base, hw=(h, w), batch=batch, value=value)


def _cache_stem(name: str, hw: tuple[int, int]) -> str:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    return f"{safe}-{hw[0]}x{hw[1]}"


def _source_and_spec(name: str, hw: tuple[int, int]) -> tuple[object, dict]:
    """The row's model source and the spec it builds the model from (the task its name implies)."""
    from npuflow.sources.core import SOURCES

    scheme, sep, ref = name.partition(":")
    if not sep:
        scheme, ref = "timm", name
    if scheme not in NAME_SCHEMES:
        raise SimFitError(f"model {name!r}: sim-validate builds {', '.join(s + ':' for s in NAME_SCHEMES)} names, not {scheme}:")
    source = SOURCES.get(scheme)()
    return source, {"name": ref, "source": f"{scheme}:{ref}", "task": source.task_of(ref), "input": {"shape": [1, 3, *hw]}}


def model_onnx(name: str, hw: tuple[int, int], cache_dir: str | Path) -> Path:
    """Simplified batch-1 ONNX of a model at an input size, with random weights, in the form the
    pipeline exports it (reparameterised; a detector's head split as the vendor zoos deploy it),
    exported once and cached; beside it `<stem>.json` records its family."""
    import onnx
    import torch

    from npuflow.graph.export import export_module
    from npuflow.graph.simplify import simplify_model

    stem = Path(cache_dir) / _cache_stem(name, hw)
    path, meta = stem.with_suffix(".onnx"), stem.with_suffix(".json")
    if path.exists() and meta.exists():
        return path
    source, spec = _source_and_spec(name, hw)
    torch.manual_seed(0)
    # timing does not depend on weight values: where a source has more to do than build the
    # architecture (Ultralytics estimates a random YOLO's BatchNorm statistics on photos, half of
    # a 640-px model's export here), the architecture alone is built
    module = source.architecture(spec)
    if not path.exists():
        raw = stem.with_suffix(".raw.onnx")
        shape = spec["input"]["shape"]
        exported, outputs = source.export_form(module, spec)
        try:
            native = source.native_input_size(module)
            export_module(exported, shape, SIM_OPSET, raw, name, 2, outputs, source.check_input(shape), native_size=native)
            simplified, _ = simplify_model(onnx.load(str(raw)), name, threads=2)
            with atomic_path(path) as tmp:
                onnx.save(simplified, str(tmp))
        finally:
            raw.unlink(missing_ok=True)
    write_json(meta, {"name": name, "input_hw": list(hw), "family": source.family(module), "opset": SIM_OPSET})
    return path


def model_family(name: str, hw: tuple[int, int], cache_dir: str | Path) -> str:
    """The model's architecture family (its source's `family`: see NAME_SCHEMES)."""
    model_onnx(name, hw, cache_dir)
    return json.loads((Path(cache_dir) / f"{_cache_stem(name, hw)}.json").read_text())["family"]


def model_task(name: str, hw: tuple[int, int]) -> str:
    """The npuflow task the row's model name implies (classification, detection, …)."""
    return _source_and_spec(name, hw)[1]["task"]
