"""The records of quantisation: calibration, PTQ methods, the recipe map, quantize, and automatic mixed
precision's report and curve."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from npuflow.core.records.base import Record


@dataclass(frozen=True, kw_only=True)
class CalibrationReport(Record):
    method: str
    chosen: dict
    percentile: float | None
    quantization: dict  # the options auto chose, or the configured ones
    dataset: str
    images: int
    image_sources: list[str]
    # of `images`, seeded augmented copies (the dataset's calibration split holds fewer images)
    augmented_images: int | None = None
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


def calibration_text(calib: CalibrationReport) -> str:
    """The calibration settings in one line, as the report and MLflow show them: method (and what
    auto chose), percentile, images, dataset, augmented copies."""
    method, chosen = calib.method, calib.chosen
    if chosen.get("method") and chosen["method"] != method:
        at = f" {chosen['percentile']:g}" if chosen.get("percentile") is not None else ""
        method = f"{method} (chose {chosen['method']}{at})"
    elif calib.percentile is not None:
        method += f" {calib.percentile:g}"  # "percentile 99.999"
    copies = f", {calib.augmented_images} of them augmented copies" if calib.augmented_images else ""
    return f"{method}, {calib.images} images of dataset {calib.dataset}{copies}"
