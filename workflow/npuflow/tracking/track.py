"""Stage track: one MLflow run per (model, target) with uniform metric names and tags, so that
"compare every model on one target" is a single filter in the MLflow UI.

The SQLite store is created once (`init_store`) before any logging job: several processes
creating a fresh SQLite database at once corrupt it. Runs are keyed by the hash of their inputs:
an unchanged (model, target) reuses its run; a changed one gets a new run and the old one is
tagged superseded. The quantised model of each run is an MLflow logged model, registered as
`<model>-<target>` with the alias `current` on the version of the current run. The experiment is
marked as a model-training one (so MLflow's UI opens on its runs, not on its GenAI overview), and
each run records its calibration and evaluation images as its dataset inputs."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from npuflow.core.layout import ARTIFACTS, HASHED, STAGES
from npuflow.core.records import (
    EVAL_METRICS,
    BuildReport,
    CalibrationReport,
    EvalReport,
    ExportReport,
    LayerAnalysis,
    Manifest,
    MixedReport,
    PtqReport,
    QuantReport,
    ReferenceReport,
    RunRecord,
    SimplifyReport,
    StoreReport,
    TrackReport,
)
from npuflow.evaluation.layers import fidelity_check_text
from npuflow.tracking.server import answered_text, bound_http_retries, check_store, connection_lost, http_answer, is_server, redacted
from npuflow.util.errors import NpuflowError
from npuflow.util.io import read_json

CURRENT_TAG = "npuflow.current"
HASH_TAG = "npuflow.inputs_hash"
MODEL_ID_TAG = "npuflow.model_id"
ALIAS = "current"
LOGGED_MODEL_NAME = "quantized"
# Part of every run's inputs hash: bump it when what a run holds changes, so runs logged by older
# code are superseded by complete ones instead of being reused.
RUN_FORMAT = 4
# MLflow's UI opens an experiment by its kind: without one it guesses, and opens an experiment
# that has no traces on its GenAI overview. npuflow's runs are model development.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
DATASET_CONTEXT_TAG = "mlflow.data.context"
# MLflow 3.17's UI opens every experiment by the sidebar's workflow switch (GenAI by default, kept
# by the browser), whatever the experiment's kind; a link that names the model-training view
# opens on the runs.
UI_VIEW = "workflowType=machine_learning"


def experiment_url(ui: str, experiment_id: str) -> str:
    """The MLflow UI page of an experiment's runs."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?{UI_VIEW}"


def run_url(ui: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of one run."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{UI_VIEW}"


TOOLS = ("torch", "timm", "transformers", "onnx", "onnxruntime", "onnxsim", "mlflow", "npuflow")


def _client(uri: str):
    import mlflow
    from mlflow.tracking import MlflowClient

    bound_http_retries()
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def _artifact_root(uri: str) -> str | None:
    """Artifacts of the embedded SQLite store live beside it (results/mlartifacts)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).resolve().parent / "mlartifacts").as_uri()
    return None


def init_store(*, uri: str, experiment: str, out_json: str | Path) -> StoreReport:
    """Create (and migrate) the tracking store and the experiment, once; mark the experiment as
    model development (an experiment of an older npuflow gets the mark too). A store that is no
    server is checked first (a local one must be writable: MLflow would retry for minutes)."""
    if not is_server(uri):
        check_store(uri)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    try:
        client = _client(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            exp_id = client.create_experiment(
                experiment, artifact_location=_artifact_root(uri), tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        else:
            exp_id = exp.experiment_id
            if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    except Exception as e:
        raise TrackingFailed(uri, f"the experiment {experiment!r} was looked up or created", e) from e
    report = StoreReport(tracking_uri=redacted(uri), experiment=experiment, experiment_id=exp_id)
    report.write(out_json)
    return report


def inputs_hash(spec: dict, files: dict) -> str:
    """What a run is made of: the logged spec fields, the stage reports (timings aside: they differ
    between identical re-runs) and the per-layer table when there is one."""
    h = hashlib.sha256(json.dumps({"format": RUN_FORMAT, "spec": spec}, sort_keys=True).encode())
    for name in (n for n in HASHED if files.get(n)):  # `mixed` only where mixed precision chose the recipe
        if not files[name].endswith(".json"):
            h.update(Path(files[name]).read_bytes())
            continue
        data = read_json(files[name])
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k != "seconds"}
        h.update(json.dumps(data, sort_keys=True).encode())
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


def tool_versions(export: ExportReport, simplify: SimplifyReport) -> dict[str, str]:
    """Versions of the tools: the producing stage's record where it keeps one, else the installed
    package's (the pipeline runs in one environment)."""
    versions = dict(_installed_versions())
    versions.update(export.tool_versions())
    versions["onnxsim"] = simplify.onnxsim_version.lstrip("v")
    return versions


@dataclass(frozen=True)
class RunReports:
    """The stage reports of one (model, target) run, read once."""

    manifest: Manifest
    export: ExportReport
    simplify: SimplifyReport
    calibration: CalibrationReport
    reference: ReferenceReport | None
    quantize: QuantReport
    build: BuildReport
    evaluate: EvalReport
    mixed: MixedReport | None
    ptq: PtqReport | None = None
    analysis: LayerAnalysis | None = None

    @classmethod
    def read(cls, files: dict) -> RunReports:
        return cls(
            manifest=Manifest.read(files["manifest"]),
            export=ExportReport.read(files["export"]),
            simplify=SimplifyReport.read(files["simplify"]),
            calibration=CalibrationReport.read(files["calibration"]),
            reference=ReferenceReport.read(files["reference"]) if files.get("reference") else None,
            quantize=QuantReport.read(files["quantize"]),
            build=BuildReport.read(files["build"]),
            evaluate=EvalReport.read(files["evaluate"]),
            mixed=MixedReport.read(files["mixed"]) if files.get("mixed") else None,
            ptq=PtqReport.read(files["ptq"]) if files.get("ptq") and Path(files["ptq"]).exists() else None,
            analysis=LayerAnalysis.read(files["analysis"]) if files.get("analysis") and Path(files["analysis"]).exists() else None,
        )


def run_params(spec: dict, target: str, reports: RunReports) -> dict[str, str]:
    calib, quant, build = reports.calibration, reports.quantize, reports.build
    params = {
        "source": spec["source"],
        "task": spec["task"],
        "target": target,
        "chip": build.chip,
        "chip_mode": build.mode,
        "opset": reports.export.opset,
        "input_shape": "x".join(map(str, spec["input"]["shape"])),
        "surgery": ",".join(spec.get("surgery", [])) or "none",
        "calibration_method": calib.method,
        "calibration_images": calib.images,
        "calibration_dataset": calib.dataset,
        "calibration_chosen": json.dumps({**calib.chosen, **calib.quantization}, sort_keys=True),
        "precision_recipe": build.precision_recipe,
        "precision_recipe_spec": json.dumps(quant.recipe, sort_keys=True),
        "quant_format": quant.format,
        "quant_weights": quant.weights,
        "quant_activations": quant.activations,
        "evaluation_images": reports.evaluate.images,
        "evaluation_dataset": reports.evaluate.dataset,
        "fidelity_check": fidelity_check_text(reports.analysis.fidelity_check if reports.analysis else None),
        **ptq_params(reports.ptq),
        "sim_batch": build.batch,
        "sim_profile_fitted": build.profile_fitted,
        "sim_profile_basis": build.profile_basis,
        "sim_bits": build.bits or "",
        # what the latency_ms_low/high metrics rest on (absent before a cross-validated fit)
        "sim_interval": (
            f"nominal {build.latency_ms_interval['nominal']:.0%}: {build.latency_ms_interval['basis']}"
            if build.latency_ms_interval
            else "none"
        ),
        **{f"{tool}_version": v for tool, v in tool_versions(reports.export, reports.simplify).items()},
    }
    return {k: str(v) for k, v in params.items()}


def ptq_params(ptq: PtqReport | None) -> dict[str, str]:
    """The `quantization:` settings and what each method did (npuflow.quant.ptq), as run params."""
    if ptq is None:
        return {}
    from npuflow.quant.ptq.report import method_text

    return {
        "quantization": ptq.settings_id,
        "quantization_settings": json.dumps(ptq.settings, sort_keys=True),
        **{f"ptq_{key}": method_text(entry) for key, entry in ptq.methods.items()},
    }


def layer_metrics(layers_csv: str | Path | None) -> dict[str, float]:
    """Summary of the per-layer precision table: the worst layer's figures and the layer count."""
    if not layers_csv:
        return {}
    from npuflow.evaluation.layers import ranked, read_layers_csv

    rows = read_layers_csv(layers_csv)
    out = {"layers_analysed": float(len(rows))}
    for col in ("cosine", "sqnr_db"):
        values = [r[col] for r in ranked(rows) if isinstance(r.get(col), float) and math.isfinite(r[col])]
        if values:
            out[f"layers_min_{col}"] = min(values)
    return out


def mixed_metrics(mixed: MixedReport | None) -> dict[str, float]:
    """What automatic mixed precision chose, when it chose this run's recipe."""
    if mixed is None:
        return {}
    return {
        "mixed_goal_met": float(mixed.goal_met),
        "mixed_steps": float(len(mixed.curve) - 1),
        "mixed_latency_increase_pct": mixed.chosen.latency_increase_pct,
        "mixed_nodes_promoted": float(len(mixed.chosen_point.promoted)),
    }


def run_metrics(reports: RunReports, files: dict) -> dict[str, float]:
    """The run's metrics under uniform names. A figure that does not apply to this model or
    evaluation is absent, never 0; non-finite values (SQNR of an exact match) are left out."""
    export, quant, simplify = reports.export, reports.quantize, reports.simplify
    metrics = {
        **reports.build.metrics(),
        "params": reports.manifest.params,
        "onnx_bytes": export.onnx_bytes,
        "int8_bytes": quant.int8_bytes,
        "quantize_nodes": quant.quantize_nodes,
        "export_max_abs_diff": export.max_abs_diff_vs_torch,
        "nodes_exported": simplify.nodes_before,
        "nodes_simplified": simplify.nodes_after,
        **{k: v for k, v in reports.evaluate.metrics.items() if k in EVAL_METRICS and isinstance(v, (int, float))},
        **layer_metrics(files.get("layers")),
        **fidelity_metrics(reports.analysis),
        **mixed_metrics(reports.mixed),
    }
    return {k: float(v) for k, v in metrics.items() if not isinstance(v, bool) and math.isfinite(float(v))}


def fidelity_metrics(analysis: LayerAnalysis | None) -> dict[str, float]:
    """The per-layer table's output row and its gap to the headline (npuflow.evaluation.layers.fidelity_check)."""
    check = analysis.fidelity_check if analysis else None
    return {"layer_table_output_cosine": check["layer_table_cosine"], "fidelity_check_gap": check["gap"]} if check else {}


def log_model_runs(*, uri: str, experiment: str, spec: dict, runs: dict[str, dict], out_json: str | Path) -> TrackReport:
    """Log (or reuse) the run of each (model, target) in `runs` ({target: files}); one job per
    model, so MLflow's import and connection are paid once, not once per target."""
    start = time.perf_counter()
    try:
        client = _client(uri)
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


class TrackingFailed(NpuflowError):
    """MLflow failed mid-way: one line saying where, what is kept and what to do."""

    def __init__(self, uri: str, doing: str, error: Exception, kept: str = ""):
        answer = http_answer(error) if is_server(uri) else None
        lost = connection_lost(error)
        if answer:
            why = answered_text(uri, *answer, doing)
        elif lost:
            why = f"the MLflow tracking server {redacted(uri)} stopped answering ({lost}) while {doing}"
        else:
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            why = f"MLflow at {redacted(uri)} failed while {doing}: {type(error).__name__}: {lines[0][:300] if lines else ''}"
        # MLflow's and its drivers' messages may quote the URI: redacted whole.
        super().__init__(redacted(f"{why}; {kept}every stage output is kept, and the next snakemake run logs what is missing"))


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


def _run_note(spec: dict, target: str, build: BuildReport, manifest: Manifest) -> str:
    note = f"{spec['name']} on {target}. SIMULATION: latency/FPS come from npuflow's NPU model of {build.chip}, not from a device."
    if manifest.random:
        note += f" Weights are RANDOM ({manifest.weights_detail}): fidelity is real for these weights, accuracy is meaningless."
    return note


def dataset_input(context: str, dataset: str, images: int, sources: list[str]):
    """The images a run was calibrated or evaluated on, as an MLflow dataset input: named by the
    dataset, with a digest of exactly which images, and where they come from (the built-in sample
    photos of scikit-image, or the user dataset's prepared folder)."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import Dataset, DatasetInput, InputTag

    from npuflow.data.datasets import DATASETS

    index = Path(STAGES.dataset.output("index", dataset=dataset))
    identity = {"dataset": dataset, "images": sources}
    if dataset in DATASETS:
        source = CodeDatasetSource(
            {"npuflow.dataset": dataset, "photos": "scikit-image sample photos (skimage.data): " + ", ".join(sources)}
        )
    else:
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": all of them local
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(str(index.parent.resolve()))
        identity["index"] = hashlib.sha256(index.read_bytes()).hexdigest() if index.exists() else ""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    profile = json.dumps({"images": images, "split": context})
    meta = MetaDataset(source, name=dataset, digest=digest).to_dict()
    return DatasetInput(Dataset(**meta, profile=profile), tags=[InputTag(DATASET_CONTEXT_TAG, context)])


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
        "mlflow.note.content": _run_note(spec, target, build, manifest),
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


def run_datasets(reports: RunReports) -> list:
    """The run's calibration images and evaluation images, as MLflow dataset inputs."""
    calib, ref = reports.calibration, reports.reference
    inputs = [dataset_input("calibration", calib.dataset, calib.images, calib.image_sources)]
    if ref is not None:
        inputs.append(dataset_input("evaluation", ref.dataset, ref.images, ref.image_sources))
    return inputs


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
