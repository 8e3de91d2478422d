"""A run's stage records projected onto MLflow: its params, its metrics under uniform names, its note
and its dataset inputs (the calibration and evaluation images)."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

from npuflow.core.layout import STAGES
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
    SimplifyReport,
)
from npuflow.evaluation.layers import fidelity_check_text
from npuflow.targets import changes_text

DATASET_CONTEXT_TAG = "mlflow.data.context"
TOOLS = ("torch", "timm", "transformers", "onnx", "onnxruntime", "onnxsim", "mlflow", "npuflow")


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
        "calibration_percentile": calib.percentile if calib.percentile is not None else "none",
        "calibration_augmented_images": calib.augmented_images if calib.augmented_images is not None else "unrecorded",
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
        "sim_profile_derived": changes_text(build.derived_from_base) or "none",
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
        "export_max_abs_diff": export.max_abs_diff_vs_source,
        "nodes_exported": simplify.nodes_before,
        "nodes_simplified": simplify.nodes_after,
        **{k: v for k, v in reports.evaluate.metrics.items() if k in EVAL_METRICS and isinstance(v, (int, float))},
        **layer_metrics(files.get("layers")),
        **fidelity_metrics(reports.analysis),
        **mixed_metrics(reports.mixed),
    }
    return {k: float(v) for k, v in metrics.items() if not isinstance(v, bool) and math.isfinite(float(v))}


def fidelity_metrics(analysis: LayerAnalysis | None) -> dict[str, float]:
    """The per-layer table's output row and its gap to the headline (npuflow.evaluation.layers.fidelity_check),
    and how many tensors the analysis flagged (LAYER_FLAG_METRICS: 0 is a figure, logged)."""
    if analysis is None:
        return {}
    check = analysis.fidelity_check
    gap = {"layer_table_output_cosine": check["layer_table_cosine"], "fidelity_check_gap": check["gap"]} if check else {}
    return {**gap, **analysis.flag_metrics()}


def run_note(spec: dict, target: str, build: BuildReport, manifest: Manifest) -> str:
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
        source = CodeDatasetSource({"npuflow.dataset": dataset, "photos": f"{DATASETS.get(dataset).description}: " + ", ".join(sources)})
    else:
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": all of them local
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(str(index.parent.resolve()))
        identity["index"] = hashlib.sha256(index.read_bytes()).hexdigest() if index.exists() else ""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    profile = json.dumps({"images": images, "split": context})
    meta = MetaDataset(source, name=dataset, digest=digest).to_dict()
    return DatasetInput(Dataset(**meta, profile=profile), tags=[InputTag(DATASET_CONTEXT_TAG, context)])


def run_datasets(reports: RunReports) -> list:
    """The run's calibration images and evaluation images, as MLflow dataset inputs."""
    calib, ref = reports.calibration, reports.reference
    inputs = [dataset_input("calibration", calib.dataset, calib.images, calib.image_sources)]
    if ref is not None:
        inputs.append(dataset_input("evaluation", ref.dataset, ref.images, ref.image_sources))
    return inputs
