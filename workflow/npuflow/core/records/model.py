"""The records of the stages that make the float model: fetch's manifest, export, simplify, surgery."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from npuflow.core.records.base import Record


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
    # against the model it came from: the torch module, or for an `onnx:` source the file itself
    max_abs_diff_vs_source: float
    # an `onnx:` source: the file, its own opset, the dynamic dimensions fixed, the names changed
    imported: dict | None = None
    ops: dict[str, int]
    onnx_bytes: int
    torch_version: str | None = None
    onnx_version: str | None = None
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
            "onnx": self.onnx_version,
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
