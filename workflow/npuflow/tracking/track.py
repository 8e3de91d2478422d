"""Stage track: one MLflow run per (model, target) with uniform metric names and tags, so that
"compare every model on one target" is a single filter in the MLflow UI.

The SQLite store is created once (`store.init_store`) before any logging job: several processes
creating a fresh SQLite database at once corrupt it. Runs are keyed by the hash of their inputs:
an unchanged (model, target) reuses its run; a changed one gets a new run and the old one is
tagged superseded. The quantised model of each run is an MLflow logged model, registered as
`<model>-<target>` with the alias `current` on the version of the current run. The experiment is
marked as a model-training one (so MLflow's UI opens on its runs, not on its GenAI overview), and
each run records its calibration and evaluation images as its dataset inputs."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import time
from pathlib import Path

from npuflow.core.layout import ARTIFACTS
from npuflow.core.records import RunRecord, TrackReport
from npuflow.tracking.answers import connection_lost, http_answer
from npuflow.tracking.identity import inputs_hash, registered_name
from npuflow.tracking.projection import RunReports, run_datasets, run_metrics, run_note, run_params
from npuflow.tracking.store import TrackingFailed, mlflow_client
from npuflow.tracking.uri import redacted
from npuflow.util.errors import NpuflowError

CURRENT_TAG = "npuflow.current"
HASH_TAG = "npuflow.inputs_hash"
MODEL_ID_TAG = "npuflow.model_id"
ALIAS = "current"
LOGGED_MODEL_NAME = "quantized"


def log_model_runs(*, uri: str, experiment: str, spec: dict, runs: dict[str, dict], out_json: str | Path) -> TrackReport:
    """Log (or reuse) the run of each (model, target) in `runs` ({target: files}); one job per
    model, so MLflow's import and connection are paid once, not once per target."""
    start = time.perf_counter()
    try:
        client = mlflow_client(uri)
        exp = client.get_experiment_by_name(experiment)
    except Exception as e:
        raise TrackingFailed(uri, f"the experiment {experiment!r} was looked up", e) from e
    if exp is None:
        raise NpuflowError(f"MLflow experiment {experiment!r} is missing at {redacted(uri)}: run the init_mlflow job first")
    logged = {}
    for target, files in runs.items():
        try:
            logged[target] = dataclasses.replace(log_run(client, exp.experiment_id, spec, target, files), files=files)
        except Exception as e:
            done = [f"{spec['name']}@{t}" for t in logged]
            kept = f"the runs of {', '.join(done)} are logged; " if done else ""
            raise TrackingFailed(uri, f"{spec['name']}@{target} was logged", e, kept) from e
    report = TrackReport(
        model=spec["name"],
        experiment_id=exp.experiment_id,
        tracking_uri=redacted(uri),
        runs=logged,
        seconds=round(time.perf_counter() - start, 3),
    )
    report.write(out_json)
    return report


def log_run(client, experiment_id: str, spec: dict, target: str, files: dict[str, str | Path]) -> RunRecord:
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
    return RunRecord(
        run_id=run_id,
        reused=reused is not None,
        inputs_hash=key,
        model_id=model_id,
        registered_model=registered_name(model, target),
        version=version,
        registered=registered,
    )


def _new_run(client, experiment_id: str, spec: dict, target: str, files: dict, key: str) -> tuple[str, str]:
    from mlflow.entities import Metric, Param, RunTag

    reports = RunReports.read(files)
    manifest, build = reports.manifest, reports.build
    tags = {
        "model": spec["name"],
        "target": target,
        "task": spec["task"],
        "family": manifest.family,
        "weights": manifest.weights,
        "source": spec["source"],
        CURRENT_TAG: "true",
        HASH_TAG: key,
        "npuflow.latency": "simulated",
        "mlflow.note.content": run_note(spec, target, build, manifest),
        "mlflow.runName": f"{spec['name']}@{target}",
    }
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    try:
        params = run_params(spec, target, reports)
        model_id = _log_quantized(client, experiment_id, run_id, files["onnx_quant"], params, tags)
        # Metrics after the model and linked to it: logged before, MLflow would re-read each
        # metric's history to link it (one query per metric).
        now = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, now, 0, model_id=model_id) for k, v in run_metrics(reports, files).items()],
            params=[Param(k, v) for k, v in params.items()],
            tags=[RunTag(MODEL_ID_TAG, model_id)],
        )
        client.log_inputs(run_id, datasets=run_datasets(reports))
        with tempfile.TemporaryDirectory(prefix="npuflow-artifacts-") as tmp:
            # Symlinks in one tree, one upload: the store copies each file once.
            for name, rel in ARTIFACTS.items():
                if name in files:
                    (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(Path(files[name]).resolve(), Path(tmp) / rel)
            client.log_artifacts(run_id, tmp)
        client.set_terminated(run_id, "FINISHED")
    except BaseException as e:
        # A server that went away, or fails (5xx), cannot be told (each request would retry for
        # seconds); the next logging job retires a run left unfinished either way.
        answer = http_answer(e)
        if connection_lost(e) is None and (answer is None or answer[0] < 500):
            with contextlib.suppress(Exception):
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
