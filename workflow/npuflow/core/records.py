"""Typed stage reports: what each stage's JSON report holds, read by attribute (`BuildReport.read(
path).latency_ms`) by the stages that use it (mixed precision, track, report), and written by the
stages that produce it. The JSON files are the contract (README, "What you get"); a record reads a
file with keys it does not name and keeps them (`extra`), so a stage can add a key before its
record names it.

The metric names runs, summary rows and report columns share are here too: `EVAL_METRICS` and
`BUILD_METRICS`, under the names of the reports' keys."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from npuflow.util.errors import NpuflowError
from npuflow.util.io import read_json, write_json

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
# Task accuracy of the float model, as the reference stage measures it.
FLOAT_ACCURACY = tuple(m for m in EVAL_METRICS if m.startswith("float_"))
# Figures of the simulated build logged under the report's own key names (all simulated).
BUILD_METRICS = ("latency_ms", "fps", "fps_batch1", "subgraphs", "cpu_ops", "ddr_bytes_per_frame", "macs", "tensor_utilisation")


class RecordError(NpuflowError):
    """A stage report without a key its record needs: written by another version of the stage."""


@dataclass(frozen=True, kw_only=True)
class Record:
    """Base of the stage reports. A field with no default is a key every report has (its value may
    be null); a field defaulting to None is written only when set."""

    # Keys of the file the record does not name, kept so that writing it back loses nothing.
    extra: dict = field(default_factory=dict, compare=False, repr=False)
    # Fields holding records: {field: (record type, "one" | "list" | "dict")}.
    NESTED: ClassVar[dict[str, tuple[type[Record], str]]] = {}

    @classmethod
    def from_json(cls, data: dict, where: str = "") -> typing.Self:
        if not isinstance(data, dict):
            raise RecordError(f"{where or cls.__name__}: expected a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls) if f.name != "extra"}
        required = {
            f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - set(data))
        if missing:
            raise RecordError(f"{where or 'report'}: not a {cls.__name__} (no {', '.join(missing)})")
        kwargs = {k: cls._nested(k, v, where) for k, v in data.items() if k in names}
        return cls(**kwargs, extra={k: v for k, v in data.items() if k not in names})

    @classmethod
    def _nested(cls, name: str, value, where: str):
        kind, shape = cls.NESTED.get(name, (None, ""))
        if kind is None or value is None:
            return value
        if shape == "list":
            return [kind.from_json(v, f"{where}.{name}.{i}") for i, v in enumerate(value)]
        if shape == "dict":
            return {k: kind.from_json(v, f"{where}.{name}.{k}") for k, v in value.items()}
        return kind.from_json(value, f"{where}.{name}")

    @classmethod
    def read(cls, path: str | Path) -> typing.Self:
        return cls.from_json(read_json(path), str(path))

    def to_json(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue
            out[f.name] = _plain(value)
        return {**out, **self.extra}

    def write(self, path: str | Path) -> None:
        write_json(path, self.to_json())


def _plain(value):
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# ------------------------------------------------------------------------------- front stages
@dataclass(frozen=True, kw_only=True)
class Manifest(Record):
    """fetch/manifest.json: where the weights came from."""

    model: str
    source: str
    arch: str | None
    task: str
    family: str
    weights: str  # "pretrained" | "random"
    weights_detail: Any  # why random, or what was loaded
    seed: int | None
    hub_reachable: bool | None
    params: int
    weights_sha256: str
    preprocessing: dict
    head: dict | None = None  # detection: the exported head's outputs, strides and decoding (npuflow.evaluation.detect)
    seconds: float

    @property
    def random(self) -> bool:
        return self.weights == "random"


@dataclass(frozen=True, kw_only=True)
class ExportReport(Record):
    model: str
    opset: int
    input_shape: list[int]
    output_shape: list[int]
    outputs: dict[str, list[int]] | None = None  # several outputs (a YOLO's per-scale head): name -> shape
    head: str | None = None  # detection: "split" (the NPU graph ends at the head's outputs) or "full"
    reparameterized: bool
    max_abs_diff_vs_torch: float
    ops: dict[str, int]
    onnx_bytes: int
    torch_version: str
    timm_version: str | None = None
    transformers_version: str | None = None
    torchvision_version: str | None = None
    ultralytics_version: str | None = None
    seconds: float

    def tool_versions(self) -> dict[str, str]:
        """The versions of the model libraries the export ran with (where recorded)."""
        found = {
            "torch": self.torch_version,
            "timm": self.timm_version,
            "transformers": self.transformers_version,
            "torchvision": self.torchvision_version,
            "ultralytics": self.ultralytics_version,
        }
        return {k: v for k, v in found.items() if v}


@dataclass(frozen=True, kw_only=True)
class SimplifyReport(Record):
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    nodes_before: int
    nodes_after: int
    max_abs_diff: float
    onnxsim_version: str
    seconds: float


@dataclass(frozen=True, kw_only=True)
class SurgeryReport(Record):
    passes: list[dict]
    ops: dict[str, int]
    outputs: list[str]
    seconds: float


@dataclass(frozen=True, kw_only=True)
class CalibrationReport(Record):
    method: str
    chosen: dict
    percentile: float | None
    quantization: dict  # the options auto chose, or the configured ones
    dataset: str
    images: int
    image_sources: list[str]
    selection_images: int
    candidates: list[dict]
    weights: str
    tensors: int
    seconds_preprocess: float | None = None
    seconds_collect: float | None = None
    seconds: float


@dataclass(frozen=True, kw_only=True)
class PtqReport(Record):
    """ptq.json: the `quantization:` settings applied to the float model (npuflow.quant.ptq), and per
    method its status (applied, not applicable with the reason, disabled), figures and checks."""

    settings: dict
    settings_id: str
    methods: dict[str, dict]
    calibration_images: int
    seconds: float


# ------------------------------------------------------------------------------ quantisation
@dataclass(frozen=True, kw_only=True)
class RecipeMap(Record):
    """recipes.json (a checkpoint): the model's recipes by id, the identity each resolves to on the
    model (npuflow.pipeline.plan.recipe_identity) and the recipe whose quantised model it uses."""

    model: str
    identities: dict[str, str]
    uses: dict[str, str]
    node_dtypes: dict[str, dict[str, int]]


@dataclass(frozen=True, kw_only=True)
class QuantReport(Record):
    """quant/<recipe>.json: the quantised model and the recipe it carries."""

    recipe: dict
    recipe_id: str
    format: str
    opset_in: int
    opset: int
    weights: str
    activations: str
    node_dtypes: dict[str, int]
    calibration_method: str
    calibration_images: int
    ops: dict[str, int]
    quantize_nodes: int
    int8_bytes: int
    seconds: float


@dataclass(frozen=True, kw_only=True)
class CurvePoint(Record):
    """One step of automatic mixed precision: what it promoted, the fidelity and the latency."""

    step: int
    promoted: dict[str, str]
    nodes_int16: int
    nodes_float: int
    cosine: float
    top1_agreement: float | None = None
    latency_ms: float
    recipe: dict
    within_budget: bool

    def value(self, metric: str) -> float:
        return getattr(self, metric)


@dataclass(frozen=True, kw_only=True)
class MixedStep(Record):
    """mixed/<target>.json's `base` (step 0) and `chosen` step, with the goal metric's value."""

    step: int | None = None
    recipe_id: str | None = None
    recipe: dict | None = None
    cosine: float | None = None
    top1_agreement: float | None = None
    latency_ms: float
    latency_increase_pct: float | None = None


@dataclass(frozen=True, kw_only=True)
class Goal(Record):
    metric: str  # cosine | top1_agreement
    value: float


@dataclass(frozen=True, kw_only=True)
class MixedReport(Record):
    """mixed/<target>.json: the trade-off curve automatic mixed precision walked and its choice."""

    model: str
    target: str
    simulated_latency: bool
    goal: Goal
    goal_met: bool
    base: MixedStep
    chosen: MixedStep
    latency_budget_ms: float
    images: int
    curve: list[CurvePoint]
    seconds: float
    NESTED: ClassVar[dict] = {
        "goal": (Goal, "one"),
        "base": (MixedStep, "one"),
        "chosen": (MixedStep, "one"),
        "curve": (CurvePoint, "list"),
    }

    @property
    def chosen_point(self) -> CurvePoint:
        return self.curve[self.chosen.step]


# --------------------------------------------------------------------------- simulated build
@dataclass(frozen=True, kw_only=True)
class Partition(Record):
    """One NPU subgraph or CPU stretch of the simulated schedule, in execution order."""

    device: str  # "npu" | "cpu"
    ops: int
    first_op: str
    last_op: str
    time_ms: float


@dataclass(frozen=True, kw_only=True)
class TopOp(Record):
    name: str
    op_type: str
    fused: list[str]
    unit: str
    precision: str
    time_ms: float
    bound: str
    padding_waste: float


@dataclass(frozen=True, kw_only=True)
class BuildReport(Record):
    """build/<target>/build.json: the simulated compile of a quantised model for one target."""

    model: str
    target: str
    chip: str
    mode: str
    simulated: bool
    profile_fitted: bool
    profile_basis: str  # what the profile's rates rest on: fitted to N measurements, or datasheet only
    cores: int  # NPU cores the FPS figure uses (latency is one core's)
    weights: str
    precision_recipe: str
    latency_ms: float  # batch 1
    batch: int
    fps: float  # at `batch`
    fps_batch1: float
    macs: int
    tensor_utilisation: float
    subgraphs: int
    cpu_ops: int
    partition: list[Partition]
    ddr_bytes_per_frame: int
    unit_time_ms: dict[str, float]
    unit_share: dict[str, float]
    ops: dict[str, int]
    unknown_dims: int
    patterns: dict[str, int] | None = None  # fusion patterns recognised: {Swish: 77, Attention: 1}
    bits: str | None = None  # int8, w8a16, a16w16 (npuflow.graph.precision.bits_name)
    # nominal-80 % intervals {low, high, nominal, basis} from cross-validated residuals (npuflow.sim.uncertainty)
    latency_ms_interval: dict | None = None
    fps_interval: dict | None = None
    top_ops: list[TopOp]
    seconds: float
    NESTED: ClassVar[dict] = {"partition": (Partition, "list"), "top_ops": (TopOp, "list")}

    def metrics(self) -> dict[str, float]:
        """The build's figures under BUILD_METRICS' names, per-unit time and share added."""
        out = {k: getattr(self, k) for k in BUILD_METRICS}
        out.update({f"unit_ms_{u}": t for u, t in self.unit_time_ms.items()})
        out.update({f"unit_share_{u}": s for u, s in self.unit_share.items()})
        for name in ("latency_ms", "fps"):  # the interval's ends, where a fit measured one
            found = getattr(self, f"{name}_interval")
            if found:
                out.update({f"{name}_low": found["low"], f"{name}_high": found["high"]})
        return out


# -------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True, kw_only=True)
class ReferenceReport(Record):
    """eval/reference.json: the float model on the held-out images, and its host latency."""

    images: int
    dataset: str
    image_sources: list[str]
    accuracy: dict[str, float] = field(default_factory=dict)  # FLOAT_ACCURACY, when labelled
    labelled_images: int | None = None
    host_fp32_ms: float
    host_fp32_repeats: int
    host_threads: int
    seconds: float

    @classmethod
    def from_json(cls, data: dict, where: str = "") -> ReferenceReport:
        rest = {k: v for k, v in data.items() if k not in FLOAT_ACCURACY}
        return dataclasses.replace(super().from_json(rest, where), accuracy={k: data[k] for k in FLOAT_ACCURACY if k in data})

    def to_json(self) -> dict:
        out = super().to_json()
        out.pop("accuracy")
        return {**out, **self.accuracy}


@dataclass(frozen=True, kw_only=True)
class EvalReport(Record):
    """eval/<recipe>.json: a quantised model against the float reference, its host latency."""

    model: str
    recipe: str
    task: str
    weights: str
    images: int
    dataset: str | None
    metrics: dict[str, float] = field(default_factory=dict)  # under EVAL_METRICS' names
    labelled_images: int | None = None
    host_int8_repeats: int
    host_threads: int
    seconds: float

    @classmethod
    def from_json(cls, data: dict, where: str = "") -> EvalReport:
        rest = {k: v for k, v in data.items() if k not in EVAL_METRICS}
        return dataclasses.replace(super().from_json(rest, where), metrics={k: data[k] for k in EVAL_METRICS if k in data})

    def to_json(self) -> dict:
        out = super().to_json()
        out.pop("metrics")
        return {**out, **self.metrics}

    def metric(self, name: str) -> float | None:
        return self.metrics.get(name)


@dataclass(frozen=True, kw_only=True)
class LayerAnalysis(Record):
    """eval/<recipe>.layers.json: the per-layer precision analysis rows (npuflow.evaluation.layers), the five
    of lowest cosine, and the stage's seconds."""

    images: int
    rows: list[dict]
    worst_layers: list[dict] | None = None
    fidelity_check: dict | None = None  # npuflow.evaluation.layers.fidelity_check; None: no output row to check
    seconds: float | None = None


# ----------------------------------------------------------------------------------- tracking
@dataclass(frozen=True, kw_only=True)
class StoreReport(Record):
    """mlflow.init.json: the tracking store and experiment, created once."""

    tracking_uri: str
    experiment: str
    experiment_id: str


@dataclass(frozen=True, kw_only=True)
class RunRecord(Record):
    """One (model, target)'s MLflow run, as the logging job left it."""

    run_id: str
    reused: bool
    inputs_hash: str
    model_id: str | None
    registered_model: str
    version: str | None
    registered: bool
    files: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class TrackReport(Record):
    """<model>/track.json: the runs of one model's targets."""

    model: str
    experiment_id: str
    tracking_uri: str
    runs: dict[str, RunRecord]
    seconds: float
    NESTED: ClassVar[dict] = {"runs": (RunRecord, "dict")}
