"""Fitting the profiles' few physical parameters to published measurements.

Each profile declares its free parameters under `fit_parameters:` (path into the profile → unit,
plausible range, what it is): at most MAX_PARAMETERS, the same kind for every chip of a family,
never one per model. The profile's own value at each path is the prior. Targets that share a
`fit_group` (the modes of one chip) are fitted together to one set of values. A target with
`transfer_from: <target>` takes that target's fitted values as its own prior (the architecture
transfers, the spec figures are its own): its only values when it has no measurements."""

from __future__ import annotations

import copy
import math

import numpy as np

from npuflow.sim.analysis import frames_per_s, simulate
from npuflow.targets import get_path, set_path
from npuflow.targets.fit_parameters import MAX_PARAMETERS, RATE_PATHS, check_fit_parameters, transferred  # noqa: F401

# The prior: one residual per parameter, worth a data residual of log(PRIOR_FACTOR) / sqrt(rows),
# so a parameter the data cannot see (the vector rate, for convolutional models) stays at the
# profile's value instead of running to a bound.
PRIOR_FACTOR = 4.0
# Robust loss: a published figure can be off (a toolchain version, a measurement quirk) and one
# such row must not drag a chip's parameters; a row off by much more than LOSS_SCALE in log terms
# (25 %) counts linearly, not quadratically (soft L1). Cauchy at 10 % gave up whole groups as
# outliers: every 640-px detector on the AX650N came out 40-60 % fast with the 224-px rows fitted
# (held out by group: detect@640 20.7 % MAPE against 15.6 %). With few rows every row counts
# (plain least squares).
LOSS, LOSS_SCALE = "soft_l1", 0.25
ROBUST_MIN_ROWS = 5


def predict(analysis, profile: dict, batch: int, metric: str) -> float:
    sim = simulate(analysis, profile, batch)
    return sim.total_s * 1e3 if metric == "latency_ms" else frames_per_s(sim, profile)


def fit_group(profiles: list[dict], rows_per: list[list], analyses_per: list[list]) -> list[dict]:
    """Least squares on log(predicted / published) over the group's shared parameters (in log
    space, within their ranges, the profiles' values as the prior). Returns a fit per profile."""
    from scipy.optimize import least_squares

    names = fitted_names(profiles[0])
    ranges = np.log([profiles[0]["fit_parameters"][n]["range"] for n in names]).T if names else np.zeros((2, 0))
    prior = np.clip(np.log([float(get_path(profiles[0], n)) for n in names]), ranges[0] + 1e-9, ranges[1] - 1e-9)
    total_rows = sum(map(len, rows_per))
    prior_weight = 1.0 / (math.log(PRIOR_FACTOR) * math.sqrt(max(total_rows, 1)))
    if profiles[0].get("fit_only"):  # the few parameters a target fits alone are its rows' to set
        prior_weight = 0.0
    trials = [copy.deepcopy(p) for p in profiles]

    def data_residuals(x):
        out = []
        for trial, rows, analyses in zip(trials, rows_per, analyses_per):
            for n, v in zip(names, np.exp(x)):
                set_path(trial, n, float(v))
            out += [math.log(predict(a, trial, r.batch, r.metric) / r.value) for r, a in zip(rows, analyses)]
        return np.array(out)

    if names and total_rows:
        sol = least_squares(
            lambda x: np.concatenate([data_residuals(x), prior_weight * (x - prior)]),
            prior,
            bounds=(ranges[0], ranges[1]),
            x_scale=1.0,
            diff_step=1e-3,
            max_nfev=500,
            loss=LOSS if total_rows >= ROBUST_MIN_ROWS else "linear",
            f_scale=LOSS_SCALE,
        )
        x = sol.x
    else:
        x = prior
    fitted = {n: float(f"{v:.6g}") for n, v in zip(names, np.exp(x))}
    res = data_residuals(np.log([fitted[n] for n in names])) if names else data_residuals(x)
    results, start = [], 0
    for rows in rows_per:
        mine = res[start : start + len(rows)]
        start += len(rows)
        results.append(
            {
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
                    for r, e in zip(rows, mine)
                ],
                "rms_log_error": round(float(np.sqrt(np.mean(mine**2))), 4) if len(mine) else None,
            }
        )
    return results


def fitted_names(profile: dict) -> list[str]:
    """The parameters a target fits to its own rows: its declared ones, or those `fit_only` names
    (a target with few rows fits one or two; the rest it takes from `transfer_from`)."""
    declared = list(profile.get("fit_parameters") or {})
    only = profile.get("fit_only")
    return [n for n in declared if n in only] if only else declared


def apply_parameters(profile: dict, parameters: dict) -> None:
    for path, value in parameters.items():
        set_path(profile, path, value)


def fit_order(profiles: dict[str, dict]) -> list[list[str]]:
    """Fit groups (lists of target names), every group after the groups it transfers from."""
    groups: dict[str, list[str]] = {}
    for name, prof in profiles.items():
        groups.setdefault(prof.get("fit_group") or name, []).append(name)
    done: set[str] = set()
    order = []
    pending = list(groups.values())
    while pending:
        ready = [
            g
            for g in pending
            if all((profiles[t].get("transfer_from") in done | set(g)) or not profiles[t].get("transfer_from") for t in g)
        ]
        if not ready:  # a cycle or a missing source: fit the rest without their transfer
            ready = pending[:1]
        for g in ready:
            pending.remove(g)
            order.append(sorted(g))
            done |= set(g)
    return order


def fit_profiles(
    unfitted: dict[str, dict],
    rows_by_target: dict[str, list],
    analyses_by_target: dict[str, list],
    refit: set[str] | None = None,
    stored: dict[str, dict] | None = None,
) -> dict[str, dict]:
    """{target: fit result or a transfer record}. The groups with a target in `refit` (default:
    those with rows) are fitted, after the targets they transfer from; a group without rows takes
    its source's values (a datasheet chip); targets not refitted keep their `stored` fit."""
    refit = {t for t, rows in rows_by_target.items() if rows} if refit is None else refit
    fits: dict[str, dict] = {t: f for t, f in (stored or {}).items() if t not in refit and f}
    values: dict[str, dict] = {t: f["parameters"] for t, f in fits.items()}
    for group in fit_order(unfitted):
        if not set(group) & refit and not any(unfitted[t].get("transfer_from") in refit for t in group):
            continue
        profiles = [copy.deepcopy(unfitted[t]) for t in group]
        source = next((unfitted[t].get("transfer_from") for t in group if unfitted[t].get("transfer_from") in values), None)
        if source is not None:
            for p in profiles:
                apply_parameters(p, transferred(p, values[source]))
        if any(rows_by_target.get(t) for t in group):
            results = fit_group(profiles, [rows_by_target.get(t, []) for t in group], [analyses_by_target.get(t, []) for t in group])
            for t, r in zip(group, results):
                if source is not None:
                    r["prior_from"] = source
                    r["parameters"] = {**transferred(unfitted[t], values[source]), **r["parameters"]}
                if len(group) > 1:
                    r["fit_group"] = group
                fits[t] = r
                values[t] = r["parameters"]
        else:
            for t, p in zip(group, profiles):
                names = list(p.get("fit_parameters") or {})
                values[t] = {n: get_path(p, n) for n in names}
                if source is not None:
                    fits[t] = {"transferred_from": source, "parameters": values[t]}
    return fits


def fitted_profile(unfitted: dict, fit: dict | None) -> dict:
    """The profile with a fit's (or a transfer's) parameter values applied."""
    prof = copy.deepcopy(unfitted)
    if fit:
        apply_parameters(prof, fit["parameters"])
    return prof
