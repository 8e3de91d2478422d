"""Simulator accuracy and speed: `sim-validate` on the published measurements as fitted, and
cross-validated by model family and by row (MAPE, shares within ±10 % / ±20 %, Spearman per
target, the worst families), EfficientViT M0…M5 ordering, and the time of a simulated build per
target and of sim-validate itself. Prints figures; asserts nothing.

    python benchmarks/simulator.py [--csv data/published/npu_latency_calibration.csv]
        [--cache-dir results/sim-cache] [--cold]   # --cold: export every model into a fresh cache first
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


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
    worst = sorted(s["per_family"].items(), key=lambda kv: -(kv[1]["mape_pct"] or 0))[:5]
    print(
        "  worst families: "
        + "; ".join(f"{fam} {f['mape_pct']:.0f} % ({f['rows']} rows, worst {f['worst_error_pct']:+.0f} %)" for fam, f in worst)
    )


def main() -> int:
    import onnx

    from npuflow.sim import analyse, simulate
    from npuflow.sim.published import model_onnx
    from npuflow.sim.validate import validate
    from npuflow.targets import load_targets

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--csv", type=Path, default=REPO / "data" / "published" / "npu_latency_calibration.csv")
    parser.add_argument("--cache-dir", type=Path, default=REPO / "results" / "sim-cache")
    parser.add_argument("--cold", action="store_true", help="export into a fresh cache (the first run's time)")
    args = parser.parse_args()

    out = Path(tempfile.mkdtemp(prefix="npuflow-simval-"))
    cache = out / "cache" if args.cold else args.cache_dir
    for mode in (None, "family", "row"):
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
