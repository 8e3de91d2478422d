"""The metric names runs, summary rows and report columns share, under the names of the reports' keys,
and what each means where it is shown (`METRICS`: heading, rounding, the Pareto axis' label)."""

from __future__ import annotations

from dataclasses import dataclass

# Evaluation figures as runs, summary rows and the report name them. A figure that does not apply
# to a model or an evaluation set is absent, never 0: task accuracy needs labelled images, pixel
# vs top-k agreement depends on the task.
EVAL_METRICS = (
    "cosine",
    "cosine_min",
    "sqnr_db",
    "max_abs_error",
    "top1_agreement",
    "top5_agreement",
    "pixel_agreement",
    "top1",
    "top5",
    "miou",
    "pixel_accuracy",
    "float_top1",
    "float_top5",
    "float_miou",
    "float_pixel_accuracy",
    "host_fp32_ms",
    "host_int8_ms",
    # slowest timed run / fastest: over npuflow.evaluation.timing.NOISY_SPREAD the machine was busy
    "host_fp32_spread",
    "host_int8_spread",
    # the per-layer table's output row, and its gap to the headline cosine (npuflow.evaluation.layers.fidelity_check)
    "layer_table_output_cosine",
    "fidelity_check_gap",
    # detection (npuflow.evaluation.detect_eval): int8 boxes against the float model's, then against labels
    "box_agreement",
    "box_iou_mean",
    "map50_vs_float",
    "map50_95_vs_float",
    "boxes_per_image",
    "float_boxes_per_image",
    "mask_iou_mean",
    "keypoint_oks_mean",
    "map50",
    "map50_95",
    "float_map50",
    "float_map50_95",
    "host_decode_nms_ms",
)
# The per-layer analysis' flagged tensors (npuflow.evaluation.layers.flag_summary): those whose quantised
# value is constant while the float one is not, or whose cosine is below the floor (flagged_tensors
# counts both, collapsed_tensors the first kind), as the layer record and the MLflow run name them.
LAYER_FLAG_METRICS = ("flagged_tensors", "collapsed_tensors")
# Task accuracy of the float model, as the reference stage measures it.
FLOAT_ACCURACY = tuple(m for m in EVAL_METRICS if m.startswith("float_"))
# Figures of the simulated build logged under the report's own key names (all simulated).
BUILD_METRICS = ("latency_ms", "fps", "fps_batch1", "subgraphs", "cpu_ops", "ddr_bytes_per_frame", "macs", "tensor_utilisation")


@dataclass(frozen=True)
class Metric:
    """How a figure is shown: its column heading and rounding in the report's tables (figures
    without a heading are summary.csv's only), and the label of a Pareto axis it can be."""

    name: str
    heading: str = ""
    # rounding (npuflow.report.columns.fmt): ms, fps, count, cosine, db, pct, text
    kind: str = "text"
    # the Pareto quality axis' label, for the figures that can be one
    axis: str = ""
    # int8 measured against float rather than against labels (a fidelity, not an accuracy)
    fidelity: bool = False


METRICS = {
    m.name: m
    for m in (
        Metric("latency_ms", "latency ms (sim)", "ms"),
        Metric("fps", "FPS (sim)", "fps"),
        Metric("subgraphs", "NPU subgraphs", "count"),
        Metric("cosine", "cosine", "cosine", axis="int8 vs float cosine (fidelity)", fidelity=True),
        Metric("sqnr_db", "SQNR dB", "db"),
        Metric("top1_agreement", "top-1 agr. %", "pct"),
        Metric("top5_agreement", "top-5 agr. %", "pct"),
        Metric("pixel_agreement", "pixel agr. %", "pct"),
        Metric("float_top1", "float top-1 %", "pct"),
        Metric("top1", "top-1 %", "pct", axis="top-1 accuracy"),
        Metric("float_top5", "float top-5 %", "pct"),
        Metric("top5", "top-5 %", "pct"),
        Metric("float_miou", "float mIoU %", "pct"),
        Metric("miou", "mIoU %", "pct", axis="mIoU"),
        Metric("host_fp32_ms", "host fp32 ms", "ms"),
        Metric("host_int8_ms", "host int8 ms", "ms"),
        # detection: int8 boxes against the float model's (fidelity), then against labels
        Metric("box_agreement", "box agr. %", "pct"),
        Metric("map50_vs_float", "mAP50 vs float %", "pct", axis="int8 mAP50 vs float boxes (fidelity)", fidelity=True),
        Metric("float_map50", "float mAP50 %", "pct"),
        Metric("map50", "mAP50 %", "pct", axis="mAP50 (against labels)"),
        Metric("host_decode_nms_ms", "host NMS ms", "ms"),
    )
}
