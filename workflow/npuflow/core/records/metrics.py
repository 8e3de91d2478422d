"""The metric names runs, summary rows and report columns share, under the names of the reports' keys."""

from __future__ import annotations

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
