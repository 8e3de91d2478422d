"""Simulator accuracy and speed: `sim-validate` on the published measurements as fitted, and
cross-validated by model family, by group (a family's task at one resolution), by task (a task at
one resolution across families) and optionally by row (MAPE, shares within ±10 % / ±20 %,
Spearman per target, per task, the worst families, the seed deployments' rows by name), the
prediction intervals' measured coverage, EfficientViT M0…M5 ordering, and the time of a
simulated build per target and of sim-validate itself. Prints figures; asserts nothing.

    python benchmarks/simulator.py [--csv data/published/npu_latency_calibration.csv]
        [--cache-dir results/sim-cache] [--cold]   # --cold: export every model into a fresh cache first
        [--modes fit family group task row]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The deployments npuflow is modelled on (shared/docs/background.md) that have published rows.
SEEDS = ("efficientvit_m5", "swin_tiny_patch4_window7_224")


def _figures(label: str, report: dict, seconds: float) -> None:
    s = report["summary"]
    print(
        f"\n{label}: {s['rows']} rows, {s['failures']} failures, {seconds:.1f} s\n"
        f"  all           MAPE {s['mape_pct']:5.1f} %   within ±10 %: {100 * s['within_10pct_share']:5.1f} %   "
        f"within ±20 %: {100 * s['within_20pct_share']:5.1f} %   Spearman {s['spearman']:.3f}"
    )
    for target, f in s["per_target"].items():
        rho = f"{f['spearman']:.3f}" if f["spearman"] is not None else "  -  "
        print(
            f"  {target:<13} MAPE {f['mape_pct']:5.1f} %   within ±10 %: {100 * f['within_10pct_share']:5.1f} %   "
            f"within ±20 %: {100 * f['within_20pct_share']:5.1f} %   Spearman {rho} ({f['rows']} rows)"
        )
    print("  per task: " + "; ".join(f"{t} {f['mape_pct']:.1f} % ({f['rows']} rows)" for t, f in s["per_task"].items()))
    seeds = [r for r in report["rows"] if r["timm_name"] in SEEDS and r.get("predicted") is not None]
    print(
        "  seed deployments: "
        + "; ".join(f"{r['timm_name']} {r['target']} {r['metric']}@{r['batch']} {r['error_pct']:+.1f} %" for r in seeds)
    )
    worst = sorted(s["per_family"].items(), key=lambda kv: -(kv[1]["mape_pct"] or 0))[:5]
    print(
        "  worst families: "
        + "; ".join(f"{fam} {f['mape_pct']:.0f} % ({f['rows']} rows, worst {f['worst_error_pct']:+.0f} %)" for fam, f in worst)
    )


def main() -> int:
    import onnx

    from npuflow.calibration.published import model_onnx
    from npuflow.calibration.validate import validate
    from npuflow.sim import analyse, simulate
    from npuflow.targets import load_targets

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--csv", type=Path, default=REPO / "data" / "published" / "npu_latency_calibration.csv")
    parser.add_argument("--cache-dir", type=Path, default=REPO / "results" / "sim-cache")
    parser.add_argument("--cold", action="store_true", help="export into a fresh cache (the first run's time)")
    parser.add_argument("--modes", nargs="+", default=["fit", "family", "group", "task"], help="fit and cross-validation modes")
    args = parser.parse_args()

    out = Path(tempfile.mkdtemp(prefix="npuflow-simval-"))
    cache = out / "cache" if args.cold else args.cache_dir
    for mode in [None if m == "fit" else m for m in args.modes]:
        start = time.perf_counter()
        report = validate(args.csv, out / f"{mode or 'fit'}.json", cache, cross_validate=mode)
        seconds = time.perf_counter() - start
        label = (
            "as fitted (the rows were used to fit)"
            if mode is None
            else f"cross-validated by {mode} (held-out rows predicted by a fit without them)"
        )
        _figures(f"sim-validate {args.csv.name}, {label}", report, seconds)
        if mode:
            print(f"  of which refits: {report['cross_validation']['seconds']:.1f} s over {report['cross_validation']['folds']} folds")
    print(f"(reports in {out}; exports {'cold, into ' + str(cache) if args.cold else 'from the cache ' + str(cache)})")

    from npuflow.sim.uncertainty import stored_table

    table = stored_table()
    if table:
        print(
            f"\nprediction intervals (targets/fits/intervals.yaml): nominal {table['nominal']:.0%}, residual quantiles "
            f"{table['tail']:.3f}-{1 - table['tail']:.3f}, cover {table['coverage']:.1%} of {table['rows']} rows held out by {table['cv_mode']}"
        )
    targets = load_targets()
    print()
    for target in ("ax650n-npu1", "ax650n-npu3", "rdk-x5", "j5"):
        profile = targets.get(target)
        lat = []
        for i in range(6):
            model = onnx.load(str(model_onnx(f"efficientvit_m{i}", (224, 224), cache)))
            lat.append(simulate(analyse(model, profile), profile, 1).total_s)
        order = all(a < b for a, b in itertools.pairwise(lat))
        print(
            f"EfficientViT M0…M5 latency on {target:<12} {' < '.join(f'{1e3 * v:.3f}' for v in lat)} ms — {'in order' if order else 'OUT OF ORDER'}"
        )

    model = onnx.load(str(model_onnx("efficientvit_m5", (224, 224), cache)))
    print("\nsimulated build of efficientvit_m5 (analyse + batch 1 and batch N), per target:")
    for target in targets.names():
        profile = targets.get(target)
        start = time.perf_counter()
        analysis = analyse(model, profile)
        simulate(analysis, profile, int(profile["batch"]))
        simulate(analysis, profile, 1)
        print(f"  {target:<13} {time.perf_counter() - start:6.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
