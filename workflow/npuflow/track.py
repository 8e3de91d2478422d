"""Stage track: one MLflow run per (model, target) with uniform metric names and tags, so that
"compare every model on one target" is a single filter in the MLflow UI.

The SQLite store is created once (`init_store`) before any logging job: several processes
creating a fresh SQLite database at once corrupt it. Runs are keyed by the hash of their inputs:
an unchanged (model, target) reuses its run; a changed one gets a new run and the old one is
tagged superseded."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from .io import read_json, write_json

CURRENT_TAG = "npuflow.current"
HASH_TAG = "npuflow.inputs_hash"


def tracking_uri(configured: str) -> str:
    """MLFLOW_TRACKING_URI wins over the config, so the same pipeline can log to a server."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured


def _client(uri: str):
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def _artifact_root(uri: str) -> str | None:
    """Artifacts of the embedded SQLite store live beside it (results/mlartifacts)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
    return None


def init_store(uri: str, experiment: str, out_json: str | Path) -> dict:
    """Create (and migrate) the tracking store and the experiment, once."""
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment, artifact_location=_artifact_root(uri))
    report = {"tracking_uri": uri, "experiment": experiment, "experiment_id": exp_id}
    write_json(out_json, report)
    return report


def inputs_hash(paths: list[str | Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        data = read_json(p)
        if isinstance(data, dict):  # timings differ between identical re-runs; they are not inputs
            data = {k: v for k, v in data.items() if k not in ("seconds",)}
        h.update(json.dumps(data, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _flat_numbers(prefix: str, obj: dict) -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in obj.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_model_runs(uri: str, experiment: str, spec: dict, runs: dict[str, dict], out_json: str | Path) -> dict:
    """Log (or reuse) the run of each (model, target) in `runs` ({target: files}); one job per
    model, so MLflow's import and connection are paid once, not once per target."""
    start = time.perf_counter()
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise RuntimeError(f"MLflow experiment {experiment!r} is missing at {uri}: run the init_mlflow job first")
    report = {"model": spec["name"], "experiment_id": exp.experiment_id, "tracking_uri": uri,
              "runs": {target: log_run(client, exp.experiment_id, spec, target, files) for target, files in runs.items()}}
    report["seconds"] = round(time.perf_counter() - start, 3)
    write_json(out_json, report)
    return report


def log_run(client, experiment_id: str, spec: dict, target: str, files: dict[str, str | Path]) -> dict:
    """Log (or reuse) the run of one (model, target). `files` holds the stage reports by name:
    manifest, export, simplify, calibration, quantize, build, evaluate, plus artifacts (trace)."""
    key = inputs_hash([files[k] for k in ("manifest", "export", "quantize", "build", "evaluate")])
    model = spec["name"]
    current = client.search_runs(
        [experiment_id],
        filter_string=f"tags.model = '{model}' and tags.target = '{target}' and tags.`{CURRENT_TAG}` = 'true'",
    )
    for r in [r for r in current if r.info.status != "FINISHED"]:
        # A logging job killed mid-run left this run unfinished: it is not a result, retire it.
        client.set_terminated(r.info.run_id, "KILLED")
        client.set_tag(r.info.run_id, CURRENT_TAG, "false")
        current.remove(r)
    reused = next((r for r in current if r.data.tags.get(HASH_TAG) == key), None)
    if reused is not None:
        run_id = reused.info.run_id
    else:
        run_id = _new_run(client, experiment_id, spec, target, files, key)
        for r in current:
            if r.info.run_id != run_id:
                client.set_tag(r.info.run_id, CURRENT_TAG, "false")
                client.set_tag(r.info.run_id, "npuflow.superseded_by", run_id)
    return {"run_id": run_id, "reused": reused is not None, "inputs_hash": key}


def _new_run(client, experiment_id: str, spec: dict, target: str, files: dict, key: str) -> str:
    manifest, export, quant = read_json(files["manifest"]), read_json(files["export"]), read_json(files["quantize"])
    build, ev, calib = read_json(files["build"]), read_json(files["evaluate"]), read_json(files["calibration"])
    weights = manifest["weights"]
    note = (f"{spec['name']} on {target}. Latency/FPS are simulated by npuflow's NPU model ({build['chip']}), not measured on a device."
            + (f" Weights are RANDOM ({manifest['weights_detail']}): fidelity is real for these weights, accuracy is meaningless." if weights == "random" else ""))
    tags = {"model": spec["name"], "target": target, "task": spec["task"], "family": manifest["family"], "weights": weights, "source": spec["source"],
            CURRENT_TAG: "true", HASH_TAG: key, "npuflow.latency": "simulated", "mlflow.note.content": note,
            "mlflow.runName": f"{spec['name']}@{target}"}
    run = client.create_run(experiment_id, tags=tags)
    run_id = run.info.run_id
    try:
        from mlflow.entities import Metric, Param

        params = {"source": spec["source"], "opset": export["opset"], "input_shape": "x".join(map(str, spec["input"]["shape"])),
                  "calibration_method": calib["method"], "calibration_images": calib["images"], "calibration_dataset": calib["dataset"],
                  "quant_format": quant["format"], "quant_weights": quant["weights"], "quant_activations": quant["activations"],
                  "surgery": ",".join(spec.get("surgery", [])) or "none", "sim_batch": build["batch"], "torch": export["torch_version"]}
        metrics = {
            "latency_ms": build["latency_ms"], "fps": build["fps"], "fps_batch1": build["fps_batch1"], "subgraphs": build["subgraphs"],
            "cpu_ops": build["cpu_ops"], "ddr_bytes_per_frame": build["ddr_bytes_per_frame"], "macs": build["macs"],
            "tensor_utilisation": build["tensor_utilisation"], "params": manifest["params"], "onnx_bytes": export["onnx_bytes"],
            "int8_bytes": quant["int8_bytes"], "export_max_abs_diff": export["max_abs_diff_vs_torch"],
            **{k: ev[k] for k in ("cosine", "cosine_min", "sqnr_db", "top1_agreement", "top5_agreement", "pixel_agreement",
                                  "host_fp32_ms", "host_int8_ms") if k in ev},
            **_flat_numbers("unit_ms_", build["unit_time_ms"]),
        }
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if v == v and abs(v) != float("inf")],
                         params=[Param(k, str(v)) for k, v in params.items()])
        with tempfile.TemporaryDirectory(prefix="npuflow-artifacts-") as tmp:
            # Stage reports under their stage's name (reports/build.json …), one upload for all.
            (Path(tmp) / "reports").mkdir()
            for name, path in files.items():
                shutil.copy(path, Path(tmp) / "reports" / f"{name}{Path(path).suffix}")
            client.log_artifacts(run_id, tmp)
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        client.set_tag(run_id, CURRENT_TAG, "false")
        raise
    return run_id
