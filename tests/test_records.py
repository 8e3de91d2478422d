"""Typed stage reports: each record reads its stage's JSON report and writes it back unchanged,
keeps keys it does not name, and names a missing one."""

import pytest

from npuflow.core.records import (
    BuildReport,
    CalibrationReport,
    EvalReport,
    ExportReport,
    LayerAnalysis,
    Manifest,
    QuantReport,
    RecordError,
    ReferenceReport,
    SimplifyReport,
    StoreReport,
    SurgeryReport,
    TrackReport,
)
from npuflow.util.io import read_json

REPORTS = {
    "fetch/manifest.json": Manifest,
    "export.json": ExportReport,
    "simplify.json": SimplifyReport,
    "surgery.json": SurgeryReport,
    "calibration.json": CalibrationReport,
    "quant/int8.json": QuantReport,
    "quant/int8_Softmax-int16.json": QuantReport,
    "eval/reference.json": ReferenceReport,
    "eval/int8.json": EvalReport,
    "eval/int8.layers.json": LayerAnalysis,
    "build/rdk-x5/build.json": BuildReport,
    "track.json": TrackReport,
}


@pytest.mark.parametrize("name", REPORTS)
def test_each_stage_report_of_the_pipeline_reads_into_its_record_and_back(pipeline, name):
    path = pipeline / "results" / "efficientvit_m0" / name
    record = REPORTS[name].read(path)
    assert record.to_json() == read_json(path)
    assert record.extra == {}, f"{name}: keys its record does not name: {sorted(record.extra)}"


def test_the_store_record_and_the_builds_typed_parts(pipeline):
    assert StoreReport.read(pipeline / "results" / "mlflow.init.json").experiment == "npuflow-tiny"
    build = BuildReport.read(pipeline / "results" / "efficientvit_m0" / "build" / "rdk-x5" / "build.json")
    assert [p.device for p in build.partition] == ["npu"] and build.metrics()["latency_ms"] == build.latency_ms
    assert build.top_ops[0].time_ms == max(op.time_ms for op in build.top_ops)


def test_a_record_keeps_keys_it_does_not_name_and_names_a_missing_one(tmp_path):
    data = {
        "recipe": {"default": "int8"},
        "recipe_id": "int8",
        "format": "QDQ",
        "opset_in": 17,
        "opset": 17,
        "weights": "int8 per-channel symmetric",
        "activations": "int8 per-tensor asymmetric",
        "node_dtypes": {"int8": 3},
        "calibration_method": "minmax",
        "calibration_images": 4,
        "ops": {"Conv": 3},
        "quantize_nodes": 3,
        "int8_bytes": 100,
        "seconds": 0.1,
        "added_by_a_later_stage": [1, 2],
    }
    record = QuantReport.from_json(data)
    assert record.int8_bytes == 100 and record.extra == {"added_by_a_later_stage": [1, 2]} and record.to_json() == data
    (tmp_path / "q.json").write_text('{"recipe": {"default": "int8"}}')
    with pytest.raises(RecordError, match=r"q\.json: not a QuantReport \(no activations, calibration_images, .*int8_bytes"):
        QuantReport.read(tmp_path / "q.json")


def test_evaluation_figures_are_its_metrics_by_their_names():
    data = {
        "model": "m",
        "recipe": "int8",
        "task": "classification",
        "weights": "random",
        "images": 4,
        "dataset": "samples",
        "cosine": 0.99,
        "top1_agreement": 1.0,
        "host_fp32_ms": 1.5,
        "host_int8_ms": 3.0,
        "host_int8_repeats": 5,
        "host_threads": 2,
        "worst_layers": [],
        "seconds_layer_analysis": 0.5,
        "seconds": 1.0,
    }
    record = EvalReport.from_json(data)
    assert record.metrics == {"cosine": 0.99, "top1_agreement": 1.0, "host_fp32_ms": 1.5, "host_int8_ms": 3.0}
    assert record.to_json() == data and record.metric("miou") is None


def test_every_shown_metric_is_a_named_figure_with_a_known_rounding():
    """One entry per figure in npuflow.core.records.metrics.METRICS: a name the runs and rows use,
    a rounding the report knows, an axis label for each Pareto quality metric."""
    from npuflow.core.records.metrics import BUILD_METRICS, EVAL_METRICS, METRICS
    from npuflow.report.columns import fmt
    from npuflow.report.pareto import QUALITY

    for name, metric in METRICS.items():
        assert metric.name == name and name in (*EVAL_METRICS, *BUILD_METRICS), name
        assert metric.kind in ("ms", "fps", "count", "cosine", "db", "pct", "text") and fmt(0.5, metric.kind) != ""
    assert all(METRICS[key].axis for front in QUALITY.values() for key in front)
