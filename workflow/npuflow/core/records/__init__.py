"""Typed stage reports: what each stage's JSON report holds, read by attribute (`BuildReport.read(
path).latency_ms`) by the stages that use it (mixed precision, track, report), and written by the
stages that produce it. The JSON files are the contract (README, "What you get"); a record reads a
file with keys it does not name and keeps them (`extra`), so a stage can add a key before its
record names it.

The metric names runs, summary rows and report columns share are here too: `EVAL_METRICS` and
`BUILD_METRICS`, under the names of the reports' keys.

Every record and metric name is imported from here (`from npuflow.core.records import BuildReport`);
the modules behind it hold one group each: `base` (the Record class), `metrics`, and the records of
`model` (fetch to surgery), `quant`, `build`, `evaluation` and `tracking`."""

from npuflow.core.records.base import Record, RecordError
from npuflow.core.records.build import BuildReport, Partition, TopOp
from npuflow.core.records.evaluation import EvalReport, LayerAnalysis, ReferenceReport
from npuflow.core.records.metrics import BUILD_METRICS, EVAL_METRICS, FLOAT_ACCURACY, LAYER_FLAG_METRICS
from npuflow.core.records.model import ExportReport, Manifest, SimplifyReport, SurgeryReport
from npuflow.core.records.quant import CalibrationReport, CurvePoint, Goal, MixedReport, MixedStep, PtqReport, QuantReport, RecipeMap
from npuflow.core.records.tracking import RunRecord, StoreReport, TrackReport

__all__ = [
    "BUILD_METRICS",
    "EVAL_METRICS",
    "FLOAT_ACCURACY",
    "LAYER_FLAG_METRICS",
    "BuildReport",
    "CalibrationReport",
    "CurvePoint",
    "EvalReport",
    "ExportReport",
    "Goal",
    "LayerAnalysis",
    "Manifest",
    "MixedReport",
    "MixedStep",
    "Partition",
    "PtqReport",
    "QuantReport",
    "RecipeMap",
    "Record",
    "RecordError",
    "ReferenceReport",
    "RunRecord",
    "SimplifyReport",
    "StoreReport",
    "SurgeryReport",
    "TopOp",
    "TrackReport",
]
