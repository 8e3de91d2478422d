"""The record of the simulated build: its figures, its partition and its top ops."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from npuflow.core.records.base import Record
from npuflow.core.records.metrics import BUILD_METRICS


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
    # a profile with `base:` another target: {"base": name, "changes": {path: {"base": v, "own": v}}}
    derived_from_base: dict | None = None
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
