"""The records of evaluation: the float reference, the int8 evaluation, the per-layer analysis."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from npuflow.core.records.base import Record
from npuflow.core.records.metrics import EVAL_METRICS, FLOAT_ACCURACY, LAYER_FLAG_METRICS


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
    host_fp32_spread: float | None = None  # slowest timed run / fastest (npuflow.evaluation.timing.NOISY_SPREAD)
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
    of lowest cosine, the tensors flagged as having lost their signal, and the stage's seconds."""

    images: int
    rows: list[dict]
    worst_layers: list[dict] | None = None
    fidelity_check: dict | None = None  # npuflow.evaluation.layers.fidelity_check; None: no output row to check
    # npuflow.evaluation.layers.flag_summary: tensors whose quantised value is constant while the float
    # one is not (collapsed) or below the cosine floor, both counted in flagged_tensors; the first
    # few by name, lowest cosine first. None: an analysis written before the flags.
    flagged_tensors: int | None = None
    collapsed_tensors: int | None = None
    flagged_names: list[str] | None = None
    seconds: float | None = None

    def flag_metrics(self) -> dict[str, float]:
        """The flag counts under LAYER_FLAG_METRICS' names (none for an analysis without flags)."""
        return {k: float(getattr(self, k)) for k in LAYER_FLAG_METRICS if getattr(self, k) is not None}
