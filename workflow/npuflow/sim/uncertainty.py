"""Prediction intervals from cross-validated residuals.

`npuflow sim-fit` cross-validates the simulator by group (a family's task at one resolution held
out at once: npuflow.calibration.validate) and keeps each held-out row's log residual on the time per frame,
log(predicted / published time): an FPS row's sign is turned. A prediction's interval is the spread of the residuals of comparable rows (the same
chip family and kind of work: classifiers at their usual sizes, or dense high-resolution
detection/segmentation/pose) between two quantiles; a class with fewer than MIN_CLASS_ROWS rows
takes the chip family's, then all rows'. The quantiles are calibrated, not assumed: residuals of
one held-out group are correlated (a whole family's task misses the same way), so the plain
10-90 % quantiles covered only 59 % of the rows of a group left out of the table. `calibrated`
widens the tails (TAILS) until the interval made without each group covers NOMINAL of its
rows, and that measured coverage is stored beside the table in targets/fits/intervals.yaml."""

from __future__ import annotations

import math

import numpy as np

NOMINAL = 0.8  # the interval's nominal coverage
# The residual quantiles tried, widest last: (tail, 1 - tail).
TAILS = (0.10, 0.075, 0.05, 0.025, 0.0)
MIN_CLASS_ROWS = 8
# A task at or above this input size is dense high-resolution work (what the on-chip buffer no
# longer holds); below it, the 224-px classifier regime most rows come from.
DENSE_SIZE = 512
DENSE_TASKS = ("detect", "segment", "pose", "detection", "segmentation")


def work_kind(task: str, input_size: int) -> str:
    return "dense" if task in DENSE_TASKS or input_size >= DENSE_SIZE else "classify"


def comparable_class(chip_family: str, task: str, input_size: int) -> str:
    """`axera-npu/dense`, `horizon-bpu/classify`: the rows whose residuals set an interval."""
    return f"{chip_family or 'other'}/{work_kind(task, input_size)}"


def _spread(residuals: list[float], tail: float) -> dict:
    low, high = np.quantile(residuals, (tail, 1 - tail))
    return {"rows": len(residuals), "low": round(float(low), 4), "high": round(float(high), 4)}


def interval_table(residuals: list[tuple[str, float]], tail: float = TAILS[0]) -> dict:
    """{nominal, tail, classes: {class: {rows, low, high}}, families: {…}, all: {…}} from
    (class, log residual) pairs; `low`/`high` are the residuals' `tail` and 1 − `tail` quantiles."""
    by_class: dict[str, list[float]] = {}
    by_family: dict[str, list[float]] = {}
    for cls, r in residuals:
        by_class.setdefault(cls, []).append(r)
        by_family.setdefault(cls.split("/")[0], []).append(r)
    return {
        "nominal": NOMINAL,
        "tail": tail,
        "classes": {c: _spread(v, tail) for c, v in sorted(by_class.items()) if len(v) >= MIN_CLASS_ROWS},
        "families": {f: _spread(v, tail) for f, v in sorted(by_family.items()) if len(v) >= MIN_CLASS_ROWS},
        "all": _spread([r for _, r in residuals], tail) if residuals else None,
    }


def spread_for(table: dict, cls: str) -> tuple[dict | None, str]:
    """The residual spread for a class, and what it rests on (`axera-npu/dense, 31 rows`)."""
    for scope, key in (("classes", cls), ("families", cls.split("/")[0])):
        found = (table.get(scope) or {}).get(key)
        if found:
            return found, f"{key}, {found['rows']} held-out rows"
    found = table.get("all")
    return found, (f"all families, {found['rows']} held-out rows" if found else "")


def interval(table: dict | None, cls: str, predicted: float, metric: str) -> dict | None:
    """{low, high, nominal, basis} around a predicted latency (ms) or FPS; None without a table."""
    spread, basis = spread_for(table or {}, cls)
    if not spread:
        return None
    # residual r = log(predicted / measured): the measured time lies in predicted / exp(r)
    times = sorted((predicted / math.exp(spread["high"]), predicted / math.exp(spread["low"])))
    if metric == "fps":  # FPS is the inverse of a time: measured FPS = predicted FPS * exp(r)
        times = sorted((predicted * math.exp(spread["low"]), predicted * math.exp(spread["high"])))
    return {"low": times[0], "high": times[1], "nominal": table["nominal"], "basis": basis}


def coverage(residuals: list[tuple[str, str, float]], tail: float = TAILS[0]) -> float | None:
    """The share of held-out rows inside the interval made without their own group: for each
    (group, class, residual), the table from every other group's residuals."""
    if not residuals:
        return None
    hits = 0
    for group in {g for g, _, _ in residuals}:
        table = interval_table([(c, r) for g, c, r in residuals if g != group], tail)
        for g, c, r in residuals:
            if g == group:
                spread, _ = spread_for(table, c)
                hits += bool(spread) and spread["low"] <= r <= spread["high"]
    return hits / len(residuals)


def calibrated(residuals: list[tuple[str, str, float]]) -> dict:
    """The table from all residuals at the narrowest tail (TAILS) whose interval, made without
    each group in turn, covers NOMINAL of that group's rows (the widest when none does), with
    the coverage measured so."""
    for tail in TAILS:
        covered = coverage(residuals, tail) or 0.0
        if covered >= NOMINAL:
            break
    table = interval_table([(c, r) for _, c, r in residuals], tail)
    table["coverage"] = round(covered, 3)
    return table


def stored_table() -> dict | None:
    """The table `npuflow sim-fit` wrote (targets/fits/intervals.yaml), None before any fit."""
    import yaml

    from npuflow.targets import FIT_DIR

    path = FIT_DIR / "intervals.yaml"
    return (yaml.safe_load(path.read_text()) or {}).get("intervals") if path.exists() else None
