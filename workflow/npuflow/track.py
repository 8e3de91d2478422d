"""Stage track: one MLflow run per (model, target) with uniform metric names and tags, so that
"compare every model on one target" is a single filter in the MLflow UI.

The SQLite store is created once (`init_store`) before any logging job: several processes
creating a fresh SQLite database at once corrupt it. Runs are keyed by the hash of their inputs:
an unchanged (model, target) reuses its run; a changed one gets a new run and the old one is
tagged superseded. The quantised model of each run is an MLflow logged model, registered as
`<model>-<target>` with the alias `current` on the version of the current run."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import tempfile
import time
from pathlib import Path

from .evaluate import EVAL_METRICS
from .io import read_json, write_json

CURRENT_TAG = "npuflow.current"
HASH_TAG = "npuflow.inputs_hash"
MODEL_ID_TAG = "npuflow.model_id"
ALIAS = "current"
LOGGED_MODEL_NAME = "quantized"
# Part of every run's inputs hash: bump it when what a run holds changes, so runs logged by older
# code are superseded by complete ones instead of being reused.
RUN_FORMAT = 3
# Stage reports whose content (less timings) keys a run; big binaries are summarised by them.
HASHED_REPORTS = ("manifest", "export", "simplify", "surgery", "calibration", "quantize", "build", "evaluate", "mixed")
# Run artifacts: files name -> path in the run. The quantised ONNX is the logged model instead.
ARTIFACTS = {
    "manifest": "reports/manifest.json",
    "export": "reports/export.json",
    "simplify": "reports/simplify.json",
    "surgery": "reports/surgery.json",
    "calibration": "reports/calibration.json",
    "quantize": "reports/quantize.json",
    "evaluate": "reports/evaluate.json",
    "build": "reports/build.json",
    "trace": "reports/trace.json",
    "build_summary": "reports/build_summary.txt",
    "layers": "precision/layers.csv",
    "mixed": "precision/mixed_precision.json",
    "plot": "plots/latency.png",
    "onnx_float": "onnx/model.onnx",
    "onnx_sim": "onnx/model.sim.onnx",
    "onnx_surgery": "onnx/model.surgery.onnx",
}
TOOLS = ("torch", "timm", "transformers", "onnx", "onnxruntime", "onnxsim", "mlflow", "npuflow")


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
        return (Path(uri[len("sqlite:///") :]).resolve().parent / "mlartifacts").as_uri()
    return None


def init_store(uri: str, experiment: str, out_json: str | Path) -> dict:
    """Create (and migrate) the tracking store and the experiment, once."""
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment, artifact_location=_artifact_root(uri))
    report = {"tracking_uri": uri, "experiment": experiment, "experiment_id": exp_id}
    write_json(out_json, report)
    return report


def inputs_hash(spec: dict, files: dict) -> str:
    """What a run is made of: the logged spec fields, the stage reports (timings aside: they differ
    between identical re-runs) and the per-layer table when there is one."""
    h = hashlib.sha256(json.dumps({"format": RUN_FORMAT, "spec": spec}, sort_keys=True).encode())
    for name in (n for n in HASHED_REPORTS if n in files):  # `mixed` only where mixed precision chose the recipe
        data = read_json(files[name])
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k != "seconds"}
        h.update(json.dumps(data, sort_keys=True).encode())
    if files.get("layers"):
        h.update(Path(files["layers"]).read_bytes())
    return h.hexdigest()[:16]


def registered_name(model: str, target: str) -> str:
    return f"{model}-{target}"


@functools.cache
def _installed_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for tool in TOOLS:
        try:
            versions[tool] = version(tool)
        except PackageNotFoundError:
            versions[tool] = "not installed"
    return versions


def tool_versions(export: dict, simplify: dict) -> dict[str, str]:
    """Versions of the tools: the producing stage's record where it keeps one, else the installed
    package's (the pipeline runs in one environment)."""
    versions = dict(_installed_versions())
    versions.update({t: export[f"{t}_version"] for t in ("torch", "timm", "transformers") if f"{t}_version" in export})
    versions["onnxsim"] = simplify.get("onnxsim_version", versions["onnxsim"]).lstrip("v")
    return versions


def run_params(spec: dict, target: str, files: dict) -> dict[str, str]:
    export, calib, quant = read_json(files["export"]), read_json(files["calibration"]), read_json(files["quantize"])
    build, ev, simplify = read_json(files["build"]), read_json(files["evaluate"]), read_json(files["simplify"])
    params = {
        "source": spec["source"],
        "task": spec["task"],
        "target": target,
        "chip": build["chip"],
        "chip_mode": build["mode"],
        "opset": export["opset"],
        "input_shape": "x".join(map(str, spec["input"]["shape"])),
        "surgery": ",".join(spec.get("surgery", [])) or "none",
        "calibration_method": calib["method"],
        "calibration_images": calib["images"],
        "calibration_dataset": calib["dataset"],
        "calibration_chosen": json.dumps({**calib.get("chosen", {}), **calib.get("quantization", {})}, sort_keys=True),
        "precision_recipe": build["precision_recipe"],
        "precision_recipe_spec": json.dumps(quant["recipe"], sort_keys=True),
        "quant_format": quant["format"],
        "quant_weights": quant["weights"],
        "quant_activations": quant["activations"],
        "evaluation_images": ev["images"],
        "sim_batch": build["batch"],
        "sim_profile_fitted": build["profile_fitted"],
        **{f"{tool}_version": v for tool, v in tool_versions(export, simplify).items()},
    }
    return {k: str(v) for k, v in params.items()}


def layer_metrics(layers_csv: str | Path | None) -> dict[str, float]:
    """Summary of the per-layer precision table: the worst layer's figures and the layer count."""
    if not layers_csv:
        return {}
    from .report import read_layers

    rows = read_layers(layers_csv)
    out = {"layers_analysed": float(len(rows))}
    for col in ("cosine", "sqnr_db"):
        values = [r[col] for r in rows if isinstance(r.get(col), float) and math.isfinite(r[col])]
        if values:
            out[f"layers_min_{col}"] = min(values)
    return out


def mixed_metrics(mixed_json: str | Path | None) -> dict[str, float]:
    """What automatic mixed precision chose, when it chose this run's recipe."""
    if not mixed_json:
        return {}
    mixed = read_json(mixed_json)
    return {
        "mixed_goal_met": float(mixed["goal_met"]),
        "mixed_steps": float(len(mixed["curve"]) - 1),
        "mixed_latency_increase_pct": mixed["chosen"]["latency_increase_pct"],
        "mixed_nodes_promoted": float(len(mixed["curve"][mixed["chosen"]["step"]]["promoted"])),
    }


def run_metrics(files: dict) -> dict[str, float]:
    """The run's metrics under uniform names. A figure that does not apply to this model or
    evaluation is absent, never 0; non-finite values (SQNR of an exact match) are left out."""
    build, ev, manifest = read_json(files["build"]), read_json(files["evaluate"]), read_json(files["manifest"])
    export, quant, simplify = read_json(files["export"]), read_json(files["quantize"]), read_json(files["simplify"])
    metrics = {
        "latency_ms": build["latency_ms"],
        "fps": build["fps"],
        "fps_batch1": build["fps_batch1"],
        "subgraphs": build["subgraphs"],
        "cpu_ops": build["cpu_ops"],
        "ddr_bytes_per_frame": build["ddr_bytes_per_frame"],
        "macs": build["macs"],
        "tensor_utilisation": build["tensor_utilisation"],
        "params": manifest["params"],
        "onnx_bytes": export["onnx_bytes"],
        "int8_bytes": quant["int8_bytes"],
        "quantize_nodes": quant["quantize_nodes"],
        "export_max_abs_diff": export["max_abs_diff_vs_torch"],
        "nodes_exported": simplify["nodes_before"],
        "nodes_simplified": simplify["nodes_after"],
        **{k: ev[k] for k in EVAL_METRICS if isinstance(ev.get(k), (int, float))},
        **{f"unit_ms_{u}": t for u, t in build["unit_time_ms"].items()},
        **{f"unit_share_{u}": s for u, s in build["unit_share"].items()},
        **layer_metrics(files.get("layers")),
        **mixed_metrics(files.get("mixed")),
    }
    return {k: float(v) for k, v in metrics.items() if not isinstance(v, bool) and math.isfinite(float(v))}


def log_model_runs(uri: str, experiment: str, spec: dict, runs: dict[str, dict], out_json: str | Path) -> dict:
    """Log (or reuse) the run of each (model, target) in `runs` ({target: files}); one job per
    model, so MLflow's import and connection are paid once, not once per target."""
    start = time.perf_counter()
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise RuntimeError(f"MLflow experiment {experiment!r} is missing at {uri}: run the init_mlflow job first")
    report = {"model": spec["name"], "experiment_id": exp.experiment_id, "tracking_uri": uri, "runs": {}}
    for target, files in runs.items():
        report["runs"][target] = {**log_run(client, exp.experiment_id, spec, target, files), "files": files}
    report["seconds"] = round(time.perf_counter() - start, 3)
    write_json(out_json, report)
    return report


def log_run(client, experiment_id: str, spec: dict, target: str, files: dict[str, str | Path]) -> dict:
    """Log (or reuse) the run of one (model, target) and register its quantised model.
    `files` holds the stage reports and artifacts by name (see ARTIFACTS; `layers` is optional)."""
    files = {k: v for k, v in files.items() if v}
    key = inputs_hash(spec, files)
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
        run_id, model_id = reused.info.run_id, reused.data.tags.get(MODEL_ID_TAG)
    else:
        run_id, model_id = _new_run(client, experiment_id, spec, target, files, key)
        for r in current:
            if r.info.run_id != run_id:
                client.set_tag(r.info.run_id, CURRENT_TAG, "false")
                client.set_tag(r.info.run_id, "npuflow.superseded_by", run_id)
    version, registered = register(client, model, target, run_id, model_id, key)
    return {
        "run_id": run_id,
        "reused": reused is not None,
        "inputs_hash": key,
        "model_id": model_id,
        "registered_model": registered_name(model, target),
        "version": version,
        "registered": registered,
    }


def _run_note(spec: dict, target: str, build: dict, manifest: dict) -> str:
    note = f"{spec['name']} on {target}. SIMULATION: latency/FPS come from npuflow's NPU model of {build['chip']}, not from a device."
    if manifest["weights"] == "random":
        note += f" Weights are RANDOM ({manifest['weights_detail']}): fidelity is real for these weights, accuracy is meaningless."
    return note


def _new_run(client, experiment_id: str, spec: dict, target: str, files: dict, key: str) -> tuple[str, str]:
    from mlflow.entities import Metric, Param, RunTag

    manifest, build = read_json(files["manifest"]), read_json(files["build"])
    tags = {
        "model": spec["name"],
        "target": target,
        "task": spec["task"],
        "family": manifest.get("family", "unknown"),
        "weights": manifest["weights"],
        "source": spec["source"],
        CURRENT_TAG: "true",
        HASH_TAG: key,
        "npuflow.latency": "simulated",
        "mlflow.note.content": _run_note(spec, target, build, manifest),
        "mlflow.runName": f"{spec['name']}@{target}",
    }
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    try:
        params = run_params(spec, target, files)
        model_id = _log_quantized(client, experiment_id, run_id, files["onnx_quant"], params, tags)
        # Metrics after the model and linked to it: logged before, MLflow would re-read each
        # metric's history to link it (one query per metric).
        now = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, now, 0, model_id=model_id) for k, v in run_metrics(files).items()],
            params=[Param(k, v) for k, v in params.items()],
            tags=[RunTag(MODEL_ID_TAG, model_id)],
        )
        with tempfile.TemporaryDirectory(prefix="npuflow-artifacts-") as tmp:
            # Symlinks in one tree, one upload: the store copies each file once.
            for name, rel in ARTIFACTS.items():
                if name in files:
                    (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(Path(files[name]).resolve(), Path(tmp) / rel)
            client.log_artifacts(run_id, tmp)
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        client.set_tag(run_id, CURRENT_TAG, "false")
        raise
    return run_id, model_id


def _log_quantized(client, experiment_id: str, run_id: str, onnx_path: str | Path, params: dict, run_tags: dict) -> str:
    """The quantised ONNX as an MLflow logged model of the run (with the run's params); returns
    its model id."""
    from importlib.metadata import version

    import mlflow.onnx
    import onnx

    # Created here, in the run's experiment: left to log_model, the model would go to the fluent
    # API's current experiment (Default, artifacts under ./mlruns).
    tags = {k: run_tags[k] for k in ("model", "target", "task", "weights")}
    logged = client.create_logged_model(experiment_id, name=LOGGED_MODEL_NAME, source_run_id=run_id, tags=tags, params=params)
    info = mlflow.onnx.log_model(
        onnx.load(str(onnx_path)),
        name=LOGGED_MODEL_NAME,
        run_id=run_id,
        model_id=logged.model_id,
        # Given, not inferred: inference loads the model in a subprocess (seconds per run).
        pip_requirements=[f"onnx=={version('onnx')}", f"onnxruntime=={version('onnxruntime')}"],
        save_as_external_data=False,
        onnx_execution_providers=["CPUExecutionProvider"],
    )
    return info.model_id


def register(client, model: str, target: str, run_id: str, model_id: str | None, key: str) -> tuple[str | None, bool]:
    """Register the run's quantised model as `<model>-<target>` and point the alias at it.
    Idempotent: a run that already has a version gets no second one. Returns (version, created)."""
    from mlflow.exceptions import MlflowException

    if not model_id:
        return None, False
    name = registered_name(model, target)
    try:
        registered = client.get_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        registered = client.create_registered_model(
            name,
            tags={"model": model, "target": target},
            description=f"{model} quantised for {target}. Latency figures of its runs are simulated, not measured on a device.",
        )
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    created = not versions
    if versions:
        version = str(max(int(v.version) for v in versions))
    else:
        version = client.create_model_version(
            name, source=f"models:/{model_id}", run_id=run_id, model_id=model_id, tags={HASH_TAG: key}
        ).version
    if str(registered.aliases.get(ALIAS)) != str(version):
        client.set_registered_model_alias(name, ALIAS, str(version))
    return str(version), created
