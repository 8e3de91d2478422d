"""`npuflow sim-validate` and `npuflow sim-fit`: the simulator against published measurements.

sim-validate builds every row's model with random weights (latency does not depend on weight
values), in the row's precision recipe, predicts the row's metric and reports per-row error and a
summary (MAPE, shares within ±10 % and ±20 %, Spearman rank correlation; per target and per model
family). With `cross_validate="family"` (or "row"), each model family (or row) is held out in
turn: every target with rows is refitted without it from the profiles' spec values, and the
held-out rows are predicted with that fit — the measure of how the simulator does on models it
was never fitted to. A row that cannot be predicted is a failure with its reason, never dropped.

sim-fit fits each target's declared parameters to the CSV's rows and stores the fit, with its
residuals and the CSV's sha256, in targets/fits/<target>.yaml (never in the authored profile)."""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import numpy as np

from npuflow.calibration.fit import fit_profiles, fitted_profile, predict
from npuflow.calibration.published import METRICS, Row, SimFitError, model_family, model_onnx, model_task, read_published
from npuflow.util.io import atomic_path, write_json
from npuflow.util.progress import log, progress, timed

# How cross-validation holds rows out: a model family at once (every task and size of it); a
# family's task at one resolution (all 640-px detection rows of YOLOv8 at once); a task at one
# resolution across families (all 640-px detection rows at once: the widest extrapolation); a row.
CV_MODES = ("family", "group", "task", "row")


def task_group(row: Row, task: str) -> str:
    """`detect@640`, `classify@224`, …: the row's task (an Ultralytics segmenter or pose model is
    its own task, though npuflow runs it as detection) at its input's larger side."""
    ref = row.name.rpartition(":")[2]
    kind = next((k for k in ("seg", "pose", "cls") if ref.endswith("-" + k)), None)
    name = {"seg": "segment", "pose": "pose", "cls": "classify"}.get(kind) or {"detection": "detect", "classification": "classify"}.get(
        task, task
    )
    return f"{name}@{max(row.hw)}"


class Prepared:
    """Each row's analysis (or why it has none) and family; every model exported and its graph
    read once, shared by the targets that use it."""

    def __init__(self, rows: list[Row], targets, cache_dir, desc: str = "sim-validate"):
        import onnx

        from npuflow.graph.opgraph import Graph
        from npuflow.graph.precision import merge_recipe
        from npuflow.sim import analyse

        self.rows = rows
        self.analyses: dict[int, object] = {}
        self.errors: dict[int, str] = {}
        self.families: dict[int, str] = {}
        self.groups: dict[int, str] = {}  # task_group of each row
        graphs: dict = {}
        for i, row in enumerate(progress(rows, desc, unit="row")):
            if row.error:
                self.errors[i] = row.error
                continue
            if row.target not in targets:
                self.errors[i] = targets.unknown_message(row.target)
            try:
                key = (row.name, row.hw)
                if key not in graphs:
                    model = onnx.load(str(model_onnx(row.name, row.hw, cache_dir)))
                    graphs[key] = (model, Graph(model), model_family(row.name, row.hw, cache_dir))
                model, graph, self.families[i] = graphs[key]
                self.groups[i] = task_group(row, model_task(row.name, row.hw))
                if i in self.errors:
                    continue
                profile = targets.get(row.target)
                recipe = merge_recipe(profile.get("precision"), row.recipe_override())
                self.analyses[i] = analyse(model, profile, graph, recipe)
            except Exception as e:  # a row that cannot be built is a reported failure
                self.errors.setdefault(i, f"{type(e).__name__}: {str(e)[:300]}")

    def usable(self, indices) -> list[int]:
        return [i for i in indices if i in self.analyses]


def _spearman(a, b) -> float | None:
    if len(a) < 3:
        return None
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def ms_per_frame(metric: str, value: float, batch: int) -> float:
    """Latency and FPS rows on one scale (they rank in opposite directions otherwise)."""
    return value / batch if metric == "latency_ms" else 1e3 / value


def figures(rs: list[dict]) -> dict:
    ok = [r for r in rs if r.get("predicted") is not None]
    errs = [abs(r["error_pct"]) for r in ok]
    by_metric = {
        m: _spearman([r["published"] for r in ok if r["metric"] == m], [r["predicted"] for r in ok if r["metric"] == m]) for m in METRICS
    }
    return {
        "rows": len(rs),
        "failures": len(rs) - len(ok),
        "mape_pct": float(np.mean(errs)) if errs else None,
        "within_10pct_share": sum(e <= 10 for e in errs) / len(rs) if rs else None,  # a failure counts as a miss
        "within_20pct_share": sum(e <= 20 for e in errs) / len(rs) if rs else None,
        # rank correlation of the time per frame, published vs predicted, over all rows
        "spearman": _spearman(
            [ms_per_frame(r["metric"], r["published"], r["batch"]) for r in ok],
            [ms_per_frame(r["metric"], r["predicted"], r["batch"]) for r in ok],
        ),
        "spearman_by_metric": {m: v for m, v in by_metric.items() if v is not None},
    }


def summarise(results: list[dict]) -> dict:
    summary = figures(results)
    summary["per_target"] = {t: figures([r for r in results if r["target"] == t]) for t in sorted({r["target"] for r in results})}
    for field, key in (("per_family", "family"), ("per_task", "task")):
        summary[field] = {}
        for name in sorted({r.get(key) or "(not built)" for r in results}):
            rs = [r for r in results if (r.get(key) or "(not built)") == name]
            errs = [r["error_pct"] for r in rs if r.get("predicted") is not None]
            summary[field][name] = {
                "rows": len(rs),
                "failures": len(rs) - len(errs),
                "mape_pct": float(np.mean(np.abs(errs))) if errs else None,
                "worst_error_pct": max(errs, key=abs) if errs else None,
            }
    return summary


def fold_key(prep: Prepared, i: int, mode: str) -> str:
    if mode == "row":
        return str(i)
    if mode == "family":
        return prep.families[i]
    if mode == "task":
        return prep.groups[i]
    return f"{prep.families[i]}/{prep.groups[i]}"


def _folds(prep: Prepared, mode: str) -> list[list[int]]:
    folds: dict[str, list[int]] = {}
    for i in prep.usable(range(len(prep.rows))):
        folds.setdefault(fold_key(prep, i, mode), []).append(i)
    return list(folds.values())


def _fit_on(prep: Prepared, train: list[int], unfitted, stored: dict, refit: set[str]) -> dict[str, dict]:
    rows_by, analyses_by = {}, {}
    for i in train:
        t = prep.rows[i].target
        rows_by.setdefault(t, []).append(prep.rows[i])
        analyses_by.setdefault(t, []).append(prep.analyses[i])
    profiles = {t: unfitted.get(t) for t in unfitted.names()}
    return fit_profiles(profiles, rows_by, analyses_by, refit, stored)


def cross_validated(prep: Prepared, mode: str, user_profiles: dict | None = None) -> tuple[dict[int, float], dict]:
    """{row index: prediction with a fit that did not see its fold}, and a record of the folds."""
    from npuflow.targets import load_targets

    if mode not in CV_MODES:
        raise SimFitError(f"cross-validation {mode!r}: expected one of {', '.join(CV_MODES)}")
    unfitted = load_targets(user_profiles, apply_fit=False)
    fitted = load_targets(user_profiles)
    stored = {t: fitted.get(t).get("fit") for t in fitted.names()}
    # every target with rows and parameters to fit is refitted, whether or not a fit is stored
    refit = {prep.rows[i].target for i in prep.usable(range(len(prep.rows))) if unfitted.get(prep.rows[i].target).get("fit_parameters")}
    folds = _folds(prep, mode)
    all_rows = [i for fold in folds for i in fold]
    start = time.perf_counter()
    full = _fit_on(prep, all_rows, unfitted, stored, refit)  # a fold without a target's rows reuses its fit
    predictions = {}
    for fold in progress(folds, f"cross-validation by {mode}", unit="fold"):
        held = set(fold)
        touched = {prep.rows[i].target for i in fold}
        train = [i for i in all_rows if i not in held]
        fits = _fit_on(prep, train, unfitted, stored, refit) if touched & refit else full
        for i in fold:
            row = prep.rows[i]
            profile = fitted_profile(unfitted.get(row.target), fits.get(row.target)) if row.target in refit else fitted.get(row.target)
            predictions[i] = predict(prep.analyses[i], profile, row.batch, row.metric)
    record = {"mode": mode, "folds": len(folds), "refitted_targets": sorted(refit), "seconds": round(time.perf_counter() - start, 1)}
    return predictions, record


def validate(
    csv_path: str | Path, out_json: str | Path, cache_dir: str | Path, user_profiles: dict | None = None, cross_validate: str | None = None
) -> dict:
    from npuflow.sim.build import profile_basis
    from npuflow.targets import load_targets

    start = time.perf_counter()
    targets = load_targets(user_profiles)
    rows = read_published(csv_path)
    prep = Prepared(rows, targets, cache_dir)
    cv = None
    if cross_validate:
        preds, cv = cross_validated(prep, cross_validate, user_profiles)
    else:
        preds = {i: predict(a, targets.get(rows[i].target), rows[i].batch, rows[i].metric) for i, a in prep.analyses.items()}
    results = []
    for i, row in enumerate(rows):
        rec = {
            "target": row.target,
            "model": row.model,
            "timm_name": row.name,
            "family": prep.families.get(i, ""),
            "task": prep.groups.get(i, ""),
            "input_hw": f"{row.hw[0]}x{row.hw[1]}",
            "batch": row.batch,
            "metric": row.metric,
            "precision": row.precision,
            "published": row.value,
            "source": row.source,
        }
        if i in prep.errors:
            rec.update(predicted=None, error=prep.errors[i])
        else:
            rec.update(predicted=preds[i], error_pct=100.0 * (preds[i] - row.value) / row.value)
        results.append(rec)
    named = sorted({r.target for r in rows if r.target in targets})
    report = {
        "csv": str(csv_path),
        "simulated": True,
        "cross_validation": cv,
        "rows": results,
        "summary": summarise(results),
        "profiles_fitted": {t: bool(targets.get(t).get("fit")) for t in named},
        "profile_basis": {t: profile_basis(targets.get(t)) for t in named},
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(out_json, report)
    return report


def fit(csv_path: str | Path, cache_dir: str | Path, profile_dir: str | Path | None = None, user_profiles: dict | None = None) -> dict:
    """Fit every target of the CSV (built-in profiles, and the user's `target_profiles`) and write
    each fit to `profile_dir` (default: the built-in targets/fits/), one `<target>.yaml` each,
    beside the authored profiles. Targets the CSV has no rows of keep their stored fits, so a
    few-shot profile (`transfer_from`, `fit_only`) fitted to a user's own three rows starts from
    its family's fitted architecture."""
    import yaml

    from npuflow.targets import FIT_DIR, load_targets

    targets = load_targets(user_profiles, apply_fit=False)  # start from the spec values, not an earlier fit
    fitted = load_targets(user_profiles)
    rows = read_published(csv_path)
    bad = [f"{r.model or r.line}: {r.error or targets.unknown_message(r.target)}" for r in rows if r.error or r.target not in targets]
    if bad:
        raise SimFitError(f"{csv_path}: rows that cannot be fitted:\n  " + "\n  ".join(bad))
    digest = hashlib.sha256(Path(csv_path).read_bytes()).hexdigest()
    prep = Prepared(rows, targets, cache_dir, "sim-fit")
    if prep.errors:
        raise SimFitError(f"{csv_path}: cannot build " + "; ".join(f"{rows[i].model}: {e}" for i, e in prep.errors.items()))
    with timed(f"sim-fit: least squares over {len(rows)} rows"):
        stored = {t: fitted.get(t).get("fit") for t in fitted.names()}
        fits = _fit_on(prep, list(range(len(rows))), targets, stored, {r.target for r in rows})
    out = {}
    fit_dir = Path(profile_dir) if profile_dir else FIT_DIR
    fit_dir.mkdir(parents=True, exist_ok=True)
    for target, result in fits.items():
        if "residuals" not in result or target not in {r.target for r in rows}:  # a transfer, or a stored fit kept
            continue
        result["data"] = {"csv": Path(csv_path).name, "sha256": digest, "rows": len(result["residuals"])}
        text = (
            f"# {target}: fitted by `npuflow sim-fit` to {len(result['residuals'])} published rows (do not edit by hand; re-run the fit)\n"
        )
        text += yaml.safe_dump({"fit": result}, sort_keys=False, width=120)
        with atomic_path(fit_dir / f"{target}.yaml") as tmp:
            tmp.write_text(text)
        log(f"sim-fit {target}: rms log error {result['rms_log_error']}, parameters {result['parameters']}")
        out[target] = result
    if len(rows) < MIN_INTERVAL_ROWS:
        log(f"sim-fit: {len(rows)} rows, too few to measure prediction intervals (at least {MIN_INTERVAL_ROWS}): kept as they were")
        return out
    with timed("sim-fit: prediction intervals from the cross-validation by group"):
        table = intervals(prep, targets)
    text = "# Prediction intervals from `npuflow sim-fit`'s cross-validation by group (npuflow.sim.uncertainty)\n"
    with atomic_path(fit_dir / INTERVALS_FILE) as tmp:
        tmp.write_text(text + yaml.safe_dump({"intervals": table}, sort_keys=False, width=120))
    log(f"sim-fit: {table['nominal']:.0%} intervals cover {table['coverage']:.0%} of held-out rows ({table['rows']} rows)")
    return out


MIN_INTERVAL_ROWS = 20  # fewer held-out rows than this say little about an interval's coverage
INTERVALS_FILE = "intervals.yaml"  # beside the fits; not a target (npuflow.targets reads fits by target name)


def time_residual(row: Row, predicted: float) -> float:
    """log(predicted / measured time per frame): latency and FPS rows on one scale (an FPS
    predicted too high is a time predicted too low)."""
    r = math.log(predicted / row.value)
    return -r if row.metric == "fps" else r


def row_class(prep: Prepared, i: int, targets) -> str:
    from npuflow.sim.uncertainty import comparable_class

    row = prep.rows[i]
    return comparable_class(targets.get(row.target).get("family", ""), prep.groups[i].split("@")[0], max(row.hw))


def intervals(prep: Prepared, targets, mode: str = "group") -> dict:
    """The interval table (npuflow.sim.uncertainty) from the cross-validated residuals, with its
    coverage measured on held-out rows and the data it rests on."""
    from npuflow.sim.uncertainty import calibrated

    preds, _ = cross_validated(prep, mode)
    residuals = [(fold_key(prep, i, mode), row_class(prep, i, targets), time_residual(prep.rows[i], p)) for i, p in preds.items()]
    table = calibrated(residuals)
    table.update(cv_mode=mode, rows=len(residuals))
    return table
