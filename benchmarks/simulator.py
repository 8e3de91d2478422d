"""Simulator accuracy and speed: `sim-validate` on published measurements (MAPE, share within
±20 %, Spearman per target, EfficientViT ordering) and the time of one simulated build per target.
Prints figures; asserts nothing.

    python benchmarks/simulator.py [--csv data/published/npu_latency_calibration.csv] [--cache-dir results/sim-cache]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    import onnx

    from npuflow.simfit import model_onnx, validate
    from npuflow.simulator import analyse, simulate
    from npuflow.targets import load_targets

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--csv", type=Path, default=REPO / "data" / "published" / "npu_latency_calibration.csv")
    parser.add_argument("--cache-dir", type=Path, default=REPO / "results" / "sim-cache")
    args = parser.parse_args()

    out = Path(tempfile.mkdtemp(prefix="npuflow-simval-")) / "report.json"
    start = time.perf_counter()
    report = validate(args.csv, out, args.cache_dir)
    seconds = time.perf_counter() - start
    s = report["summary"]
    print(f"sim-validate {args.csv.name}: {s['rows']} rows, {s['failures']} failures, {seconds:.0f} s (report {out})")
    print(
        f"  all:          MAPE {s['mape_pct']:5.1f} %   within ±20 %: {100 * s['within_20pct_share']:5.1f} %   Spearman: {s['spearman']:.3f}"
    )
    for target, f in s["per_target"].items():
        rho = ", ".join(f"{m} {v:.3f}" for m, v in f["spearman_by_metric"].items())
        print(
            f"  {target:<13} MAPE {f['mape_pct']:5.1f} %   within ±20 %: {100 * f['within_20pct_share']:5.1f} %   "
            f"Spearman: {f['spearman']:.3f} (time per frame; by metric: {rho})"
        )

    targets = load_targets()
    model = onnx.load(str(model_onnx("efficientvit_m5", (224, 224), args.cache_dir)))
    for target in ("ax650n-npu1", "ax650n-npu3"):
        profile = targets.get(target)
        lat = [
            simulate(None, profile, 1, analyse(onnx.load(str(model_onnx(f"efficientvit_m{i}", (224, 224), args.cache_dir))), profile))[
                "total_s"
            ]
            for i in range(6)
        ]
        order = all(a < b for a, b in itertools.pairwise(lat))
        print(
            f"  EfficientViT M0…M5 latency on {target}: {' < '.join(f'{1e3 * v:.3f}' for v in lat)} ms — {'in order' if order else 'OUT OF ORDER'}"
        )

    print("\nsimulated build of efficientvit_m5 (analyse + batch 1 and batch N), per target:")
    for target in targets.names():
        profile = targets.get(target)
        start = time.perf_counter()
        graph = analyse(model, profile)
        simulate(None, profile, int(profile["batch"]), graph)
        simulate(None, profile, 1, graph)
        print(f"  {target:<13} {time.perf_counter() - start:6.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
