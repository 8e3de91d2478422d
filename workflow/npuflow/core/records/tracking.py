"""The records of MLflow tracking: the store, and each model's runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from npuflow.core.records.base import Record


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
