"""The simulator against published device measurements.

`sim-validate PUBLISHED.csv --out report.json`: builds every row's model with random weights
(latency does not depend on weight values), predicts the row's metric and reports per-row error and
the summary (MAPE, share within ±20 %, Spearman rank correlation, per target). A row whose model
cannot be built is a failure, never dropped.

`sim-fit PUBLISHED.csv`: fits each target's few free physical parameters (FREE_PARAMETERS, the same
handful for every target, never one per model) to the rows of that target, and stores them with the
residuals in the target's profile."""

from __future__ import annotations

import csv
import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import NpuflowError
from .io import atomic_path, write_json
from .progress import progress, timed

CSV_COLUMNS = ("target", "model", "timm_name", "input_hw", "batch", "metric", "value", "source")
METRICS = ("latency_ms", "fps")
SIM_OPSET = 17

# The free parameters of a profile, as paths into it, with physical bounds. Peak rates and DDR
# bandwidth stay at their published specs; these say how much of them real code sustains. A bound
# given as a path is that profile value (a vector unit never outruns the tensor unit's peak).
FREE_PARAMETERS = {
    "units.tensor.efficiency": (0.05, 1.0),  # share of the tensor unit's peak sustained on real layers
    "units.vector.peak_ops_per_s.int8": (1e9, "units.tensor.peak_ops_per_s.int8"),  # elementwise/normalisation rate
    "memory.efficiency": (0.05, 1.0),  # share of DDR bandwidth sustained
    "overheads.op_s": (1e-8, 1e-4),  # per fused op: scheduling, synchronisation
    "overheads.subgraph_s": (1e-6, 5e-3),  # per NPU subgraph launch
}
# The profile's own values are a prior: a parameter the data cannot pin down (e.g. the vector rate,
# when the measured models are convolutional) stays near it instead of running to a bound, so
# models unlike the measured ones are still predicted from physics. One prior residual per
# parameter, worth a data residual of log(PRIOR_FACTOR) / sqrt(rows).
PRIOR_FACTOR = 4.0


class SimFitError(NpuflowError):
    pass


@dataclass(frozen=True)
class Row:
    target: str
    model: str
    name: str  # timm name, or hf:<repo>
    hw: tuple[int, int]
    batch: int
    metric: str
    value: float
    source: str


def read_published(path: str | Path) -> list[Row]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = set(CSV_COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise SimFitError(f"{path}: missing columns {sorted(missing)} (expected {', '.join(CSV_COLUMNS)})")
        rows = []
        for i, r in enumerate(reader, start=2):
            try:
                h, w = (int(v) for v in r["input_hw"].lower().split("x"))
                row = Row(r["target"], r["model"], r["timm_name"], (h, w), int(r["batch"]), r["metric"], float(r["value"]), r["source"])
            except ValueError as e:
                raise SimFitError(f"{path}:{i}: {e}") from None
            if row.metric not in METRICS:
                raise SimFitError(f"{path}:{i}: metric {row.metric!r}, expected one of {METRICS}")
            rows.append(row)
    return rows


def _cache_name(name: str, hw: tuple[int, int]) -> str:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    return f"{safe}-{hw[0]}x{hw[1]}.onnx"


def _module(name: str):
    """The architecture with random weights, in its deploy (reparameterised) form where timm has one."""
    import torch

    torch.manual_seed(0)
    if name.startswith("hf:"):
        from .sources import HFSource

        return HFSource().build({"name": name, "source": name})
    from .sources import TimmSource

    source = TimmSource()
    return source.deploy_form(source.build({"name": name, "source": f"timm:{name}"}))


def model_onnx(name: str, hw: tuple[int, int], cache_dir: str | Path) -> Path:
    """Simplified batch-1 ONNX of a model at an input size, exported once and cached."""
    import onnx

    from .export import export_module
    from .simplify import simplify_model

    path = Path(cache_dir) / _cache_name(name, hw)
    if path.exists():
        return path
    raw = path.with_suffix(".raw.onnx")
    try:
        export_module(_module(name), [1, 3, *hw], SIM_OPSET, raw, name, threads=2)
        simplified, _ = simplify_model(onnx.load(str(raw)), name, threads=2)
        with atomic_path(path) as tmp:
            onnx.save(simplified, str(tmp))
    finally:
        raw.unlink(missing_ok=True)
    return path


def predict(graph, profile: dict, batch: int, metric: str) -> float:
    from .simulator import simulate

    total_s = simulate(None, profile, batch, graph)["total_s"]
    return total_s * 1e3 if metric == "latency_ms" else batch / total_s


def _analysed(rows: list[Row], targets, cache_dir, desc: str) -> tuple[dict, dict]:
    """Graphs per (row index) and errors per row index; each model exported once."""
    import onnx

    from .simulator import analyse

    graphs, errors, models = {}, {}, {}
    for i, row in enumerate(progress(rows, desc, unit="row")):
        try:
            key = (row.name, row.hw)
            if key not in models:
                models[key] = onnx.load(str(model_onnx(row.name, row.hw, cache_dir)))
            graphs[i] = analyse(models[key], targets.get(row.target))
        except Exception as e:  # a row that cannot be built is a reported failure
            errors[i] = f"{type(e).__name__}: {str(e)[:300]}"
    return graphs, errors


def _spearman(a, b) -> float | None:
    if len(a) < 3:
        return None
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def ms_per_frame(metric: str, value: float, batch: int) -> float:
    """Latency and FPS rows on one scale (they rank in opposite directions otherwise)."""
    return value / batch if metric == "latency_ms" else 1e3 / value


def summarise(results: list[dict]) -> dict:
    def figures(rs):
        ok = [r for r in rs if r.get("predicted") is not None]
        errs = [abs(r["error_pct"]) for r in ok]
        by_metric = {
            m: _spearman([r["published"] for r in ok if r["metric"] == m], [r["predicted"] for r in ok if r["metric"] == m])
            for m in METRICS
        }
        return {
            "rows": len(rs),
            "failures": len(rs) - len(ok),
            "mape_pct": float(np.mean(errs)) if errs else None,
            "within_20pct_share": sum(e <= 20 for e in errs) / len(rs) if rs else None,
            # Rank correlation of the time per frame, published vs predicted, over all rows.
            "spearman": _spearman(
                [ms_per_frame(r["metric"], r["published"], r["batch"]) for r in ok],
                [ms_per_frame(r["metric"], r["predicted"], r["batch"]) for r in ok],
            ),
            "spearman_by_metric": {m: v for m, v in by_metric.items() if v is not None},
        }

    summary = figures(results)
    summary["per_target"] = {t: figures([r for r in results if r["target"] == t]) for t in sorted({r["target"] for r in results})}
    return summary


def validate(csv_path: str | Path, out_json: str | Path, cache_dir: str | Path, user_profiles: dict | None = None) -> dict:
    from .targets import load_targets

    start = time.perf_counter()
    targets = load_targets(user_profiles)
    rows = read_published(csv_path)
    graphs, errors = _analysed(rows, targets, cache_dir, "sim-validate")
    results = []
    for i, row in enumerate(rows):
        rec = {
            "target": row.target,
            "model": row.model,
            "timm_name": row.name,
            "input_hw": f"{row.hw[0]}x{row.hw[1]}",
            "batch": row.batch,
            "metric": row.metric,
            "published": row.value,
            "source": row.source,
        }
        if row.target not in targets:
            rec.update(predicted=None, error=targets.unknown_message(row.target))
        elif i in errors:
            rec.update(predicted=None, error=errors[i])
        else:
            pred = predict(graphs[i], targets.get(row.target), row.batch, row.metric)
            rec.update(predicted=pred, error_pct=100.0 * (pred - row.value) / row.value)
        results.append(rec)
    report = {
        "csv": str(csv_path),
        "simulated": True,
        "rows": results,
        "summary": summarise(results),
        "profiles_fitted": {t: bool(targets.get(t).get("fit")) for t in sorted({r.target for r in rows}) if t in targets},
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(out_json, report)
    return report


def fit_target(profile: dict, rows: list[Row], graphs: list) -> dict:
    """Least squares on log(predicted / published) over the free parameters (in log space)."""
    import copy

    from scipy.optimize import least_squares

    from .targets import get_path, set_path

    names = list(FREE_PARAMETERS)

    def bound(b):
        return float(get_path(profile, b)) if isinstance(b, str) else b

    lo = np.log([bound(FREE_PARAMETERS[n][0]) for n in names])
    hi = np.log([bound(FREE_PARAMETERS[n][1]) for n in names])
    prior = np.clip(np.log([float(get_path(profile, n, 1.0)) for n in names]), lo + 1e-9, hi - 1e-9)
    prior_weight = 1.0 / (math.log(PRIOR_FACTOR) * math.sqrt(len(rows)))
    trial = copy.deepcopy(profile)

    def data_residuals(x):
        for n, v in zip(names, np.exp(x)):
            set_path(trial, n, float(v))
        return np.array([math.log(predict(g, trial, r.batch, r.metric) / r.value) for r, g in zip(rows, graphs)])

    def residuals(x):
        return np.concatenate([data_residuals(x), prior_weight * (x - prior)])

    sol = least_squares(residuals, prior, bounds=(lo, hi), x_scale=1.0, diff_step=1e-3, max_nfev=400)
    fitted = {n: float(f"{v:.6g}") for n, v in zip(names, np.exp(sol.x))}
    res = data_residuals(np.log([fitted[n] for n in names]))
    return {
        "parameters": fitted,
        "residuals": [
            {
                "model": r.model,
                "metric": r.metric,
                "batch": r.batch,
                "published": r.value,
                "predicted": float(f"{r.value * math.exp(e):.6g}"),
                "error_pct": round(float(100 * (math.exp(e) - 1)), 2),
            }
            for r, e in zip(rows, res)
        ],
        "rms_log_error": round(float(np.sqrt(np.mean(res**2))), 4),
    }


def fit(csv_path: str | Path, cache_dir: str | Path, profile_dir: str | Path | None = None) -> dict:
    """Fit every target of the CSV that has a built-in profile; write the fit into the profile."""
    import yaml

    from .targets import PROFILE_DIR, load_targets

    profile_dir = Path(profile_dir or PROFILE_DIR)
    targets = load_targets(apply_fit=False)  # start from the spec values, not an earlier fit
    rows = read_published(csv_path)
    digest = hashlib.sha256(Path(csv_path).read_bytes()).hexdigest()
    out = {}
    for target in sorted({r.target for r in rows}):
        if target not in targets:
            raise SimFitError(f"{csv_path}: {targets.unknown_message(target)}")
        trows = [r for r in rows if r.target == target]
        unfitted = targets.get(target)
        graphs, errors = _analysed(trows, targets, cache_dir, f"sim-fit {target}")
        if errors:
            raise SimFitError(f"{target}: cannot build {[trows[i].model for i in errors]}: {next(iter(errors.values()))}")
        with timed(f"sim-fit {target}: least squares over {len(trows)} rows"):
            result = fit_target(unfitted, trows, [graphs[i] for i in range(len(trows))])
        result["data"] = {"csv": Path(csv_path).name, "sha256": digest, "rows": len(trows)}
        path = profile_dir / f"{target}.yaml"
        text = path.read_text()
        marker = "\n# --- fitted by `npuflow sim-fit`"
        text = text.split(marker)[0].rstrip("\n") + "\n"
        text += marker + " (do not edit by hand; re-run the fit) ---\n" + yaml.safe_dump({"fit": result}, sort_keys=False, width=120)
        with atomic_path(path) as tmp:
            tmp.write_text(text)
        out[target] = result
    return out
