"""The columns of summary.csv and of the report's per-target tables, in one list. A figure's column
is its metric's own name (records.EVAL_METRICS, records.BUILD_METRICS), as in the MLflow runs;
the table shows the columns that have a heading, rounded to what they mean."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from npuflow.core.records import BUILD_METRICS, EVAL_METRICS
from npuflow.core.records.metrics import METRICS
from npuflow.report.collect import Row


@dataclass(frozen=True)
class Column:
    key: str  # the CSV column
    get: Callable[[Row], Any]
    heading: str = ""  # the table's heading ("": in the CSV only)
    kind: str = "text"  # how the table rounds it: see `fmt`
    csv: bool = True  # False: in the table only


def _metric(name: str) -> Callable[[Row], Any]:
    return lambda r: r.figure(name)


def _ok(get: Callable[[Row], Any]) -> Callable[[Row], Any]:
    return lambda r: get(r) if r.ok else None


def _published(metric: str, part: str) -> Callable[[Row], Any]:
    def get(r: Row):
        p = next((p for p in r.published if p.metric == metric), None)
        return None if p is None else getattr(p, part)

    return get


def _published_text(r: Row) -> str | None:
    return "; ".join(f"{sig(p.value)} {'ms' if p.metric == 'latency_ms' else f'FPS@{p.batch}'}" for p in r.published) or None


def _interval(name: str, end: str) -> Callable[[Row], Any]:
    """An end of the simulated figure's nominal-80 % interval (npuflow.sim.uncertainty)."""
    return _ok(lambda r: (getattr(r.build, f"{name}_interval") or {}).get(end))


def interval_text(r: Row) -> str | None:
    """The simulated latency's 80 % range as the table shows it under the figure (`0.55–1.2`)."""
    found = r.build.latency_ms_interval if r.ok else None
    return f"{sig(found['low'], 2)}–{sig(found['high'], 2)}" if found else None


def _sim_error(r: Row) -> float | None:
    return r.published[0].error_pct if r.published else None


# Headings and rounding of the figures the per-target table shows (the others are CSV only):
# each metric's own (npuflow.core.records.metrics.METRICS).
METRIC_HEADINGS = {name: (m.heading, m.kind) for name, m in METRICS.items() if m.heading}


def _metric_column(name: str) -> Column:
    heading, kind = METRIC_HEADINGS.get(name, ("", "text"))
    return Column(name, _metric(name), heading, kind)


COLUMNS = [
    Column("model", lambda r: r.model, "model"),
    Column("target", lambda r: r.target),
    Column("status", lambda r: r.status, "status", "status"),
    Column("failed_stage", lambda r: r.failed_stage),
    Column("log", lambda r: r.log),
    Column("task", _ok(lambda r: r.evaluate.task)),
    Column("weights", _ok(lambda r: r.manifest.weights)),
    Column("precision_recipe", _ok(lambda r: r.build.precision_recipe)),
    *[_metric_column(m) for m in BUILD_METRICS if m in ("latency_ms", "fps")],
    Column("latency_ms_low", _interval("latency_ms", "low")),
    Column("latency_ms_high", _interval("latency_ms", "high")),
    Column("fps_low", _interval("fps", "low")),
    Column("fps_high", _interval("fps", "high")),
    Column("bits", _ok(lambda r: r.build.bits)),
    Column("batch", _ok(lambda r: r.build.batch)),
    Column("published", _published_text, "published", csv=False),
    Column("published_latency_ms", _published("latency_ms", "value")),
    Column("published_fps", _published("fps", "value")),
    Column("sim_error_pct", _sim_error, "sim. error %", "err"),
    *[_metric_column(m) for m in BUILD_METRICS if m not in ("latency_ms", "fps", "macs")],
    Column("cpu_share", _ok(lambda r: r.build.unit_share.get("cpu", 0.0)), "CPU % (sim)", "pct_nonzero"),
    *[_metric_column(m) for m in EVAL_METRICS],
    Column("params", _ok(lambda r: r.manifest.params), "params M", "M"),
    Column("macs", _metric("macs"), "MACs G", "G"),
    Column("onnx_bytes", _ok(lambda r: r.export.onnx_bytes), "ONNX MB", "MB"),
    Column("int8_bytes", _ok(lambda r: r.quant.int8_bytes), "int8 MB", "MB"),
    Column("worst_layer", lambda r: (r.worst_layer or {}).get("node") or (r.worst_layer or {}).get("tensor")),
    Column("worst_layer_sqnr_db", lambda r: (r.worst_layer or {}).get("sqnr_db")),
    Column("worst_layer_cosine", lambda r: (r.worst_layer or {}).get("cosine")),
    Column("flagged_tensors", lambda r: r.analysis.flagged_tensors if r.ok and r.analysis else None),
    Column("first_flagged_tensor", lambda r: next(iter(r.analysis.flagged_names or []), None) if r.ok and r.analysis else None),
    Column("pareto", lambda r: r.pareto, "Pareto", "flag"),
    Column("run_id", lambda r: r.run.run_id if r.run else None),
    Column("registered_model", lambda r: r.run.registered_model if r.run else None),
    Column("model_version", lambda r: r.run.version if r.run else None),
]


def sig(value: float, digits: int = 3) -> str:
    """`value` to `digits` significant digits, without an exponent (1.61, 0.0243, 4,220)."""
    if value == 0:
        return "0"
    if not math.isfinite(value):
        return "∞" if value > 0 else "−∞" if value < 0 else ""
    decimals = digits - 1 - math.floor(math.log10(abs(value)))
    rounded = round(value, decimals)
    return f"{rounded:,.{decimals}f}" if decimals > 0 else f"{rounded:,.0f}"


def fmt(value, kind: str) -> str:
    """A figure as the table shows it: ms and FPS to 3 significant digits, sizes in MB, MACs in
    G, parameters in M, shares and accuracies in %, SQNR to 0.1 dB, cosine to 4 decimals."""
    if value is None or value == "":
        return ""
    if kind == "flag":
        return "★" if value else ""
    if isinstance(value, str) or kind == "text":
        return str(value)
    if kind in ("ms", "fps"):
        return sig(value)
    if kind == "count":
        return f"{int(value):d}"
    if kind == "cosine":
        return f"{value:.4f}"
    if kind == "db":
        return ("∞" if value > 0 else "−∞") if math.isinf(value) else f"{value:.1f}"
    if kind in ("pct", "pct_nonzero"):
        return "" if kind == "pct_nonzero" and value == 0 else f"{100 * value:.1f}"
    if kind in ("M", "MB"):
        return sig(value / 1e6)
    if kind == "G":
        return sig(value / 1e9)
    if kind == "err":
        return f"{value:+.1f}"
    return f"{value:.4g}"


def csv_value(value) -> str:
    if value is True or value is False:
        return "true" if value else "false"
    return "" if value is None else value
