"""MLflow logging speed: seconds per (model, target) run logged by the track stage against the
embedded SQLite store, excluding the interpreter's start and MLflow's import. Prints figures;
asserts nothing.

    python benchmarks/tracking.py [--results results] [--model efficientvit_m0] [--runs 8]

It logs into a fresh SQLite store in a temporary folder (the pipeline's store is not touched), from
the stage outputs of a finished pipeline run under --results: the run files recorded in
MODEL/track.json. Each run is logged as new (a nonce in the spec changes its inputs hash), so every
one pays the full price: params, metrics, artifacts (the float, simplified and surgery ONNX among
them), the quantised ONNX as a logged model, and its registration. The first run in a process also
pays MLflow's one-time scan of the installed packages (log_model checks the model's requirements
against the environment); it is printed apart, and amortised over a job's targets.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--model", help="default: the first model under --results with a track.json")
    parser.add_argument("--runs", type=int, default=8)
    args = parser.parse_args()

    t0 = time.perf_counter()
    import mlflow
    import mlflow.onnx  # noqa: F401
    import onnx  # noqa: F401

    from npuflow.tracking.store import init_store, mlflow_client
    from npuflow.tracking.track import log_run
    from npuflow.util.io import read_json

    import_s = time.perf_counter() - t0
    tracks = sorted(args.results.glob("*/track.json"))
    track = args.results / args.model / "track.json" if args.model else (tracks[0] if tracks else None)
    if track is None or not track.exists():
        print(f"no track.json under {args.results}: run the pipeline first (snakemake --cores 2)", file=sys.stderr)
        return 2
    runs = read_json(track)["runs"]
    if not all("files" in r for r in runs.values()):
        print(f"{track} predates the run-files record: re-run the pipeline's track stage", file=sys.stderr)
        return 2
    # Paths in track.json are relative to the pipeline's working directory (the one above results/).
    base = args.results.resolve().parent
    targets = list(runs)
    files = {t: {k: str(base / v) for k, v in r["files"].items()} for t, r in runs.items()}
    manifest = read_json(files[targets[0]]["manifest"])
    export = read_json(files[targets[0]]["export"])
    spec = {
        "name": track.parent.name,
        "task": manifest["task"],
        "source": manifest["source"],
        "input": {"shape": export["input_shape"]},
        "surgery": [],
    }
    artifact_mb = sum(Path(p).stat().st_size for k, p in files[targets[0]].items() if k != "onnx_quant") / 1e6
    quant_mb = Path(files[targets[0]]["onnx_quant"]).stat().st_size / 1e6

    store = Path(tempfile.mkdtemp(prefix="npuflow-trackbench-"))
    try:
        uri = f"sqlite:///{store}/mlflow.db"
        init_store(uri=uri, experiment="bench", out_json=store / "init.json")
        client = mlflow_client(uri)
        exp_id = client.get_experiment_by_name("bench").experiment_id
        times = []
        for i in range(args.runs):
            target = targets[i % len(targets)]
            start = time.perf_counter()
            log_run(client, exp_id, {**spec, "benchmark_nonce": i}, target, files[target])
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        last = args.runs - 1  # the current run of its target: logging it again must reuse it
        reused = log_run(
            client, exp_id, {**spec, "benchmark_nonce": last}, targets[last % len(targets)], files[targets[last % len(targets)]]
        )
        reuse_s = time.perf_counter() - start
        assert reused.reused and not reused.registered
    finally:
        shutil.rmtree(store, ignore_errors=True)
    steady = times[1:] or times
    per_job = (times[0] + statistics.mean(steady) * (len(targets) - 1)) / len(targets)
    print(
        f"{spec['name']}: {len(times)} runs logged to a fresh SQLite store; artifacts {artifact_mb:.1f} MB + quantised model {quant_mb:.1f} MB per run"
    )
    print(f"  import of mlflow, mlflow.onnx, onnx (excluded): {import_s:.2f} s")
    print(f"  first run in the process (with MLflow's one-time package scan): {times[0]:.2f} s")
    print(f"  each further run: mean {statistics.mean(steady):.2f} s, median {statistics.median(steady):.2f} s, max {max(steady):.2f} s")
    print(f"  per run in a track job of this model's {len(targets)} targets: {per_job:.2f} s")
    print(f"  unchanged run reused (no new run, no new model version): {reuse_s:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
