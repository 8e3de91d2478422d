"""Post-training quantisation methods beyond choosing ranges: a timm-style registry.

Each method is one entry under its config key (the `quantization:` block, globally or per model):
the value it takes, when a graph can use it, how it transforms the float ONNX model before
calibration, how the transform is verified, and a small example model the tests run. The block's
`weights` (per_channel | per_tensor) is the quantiser's weight granularity, which bias correction
corrects for. Methods run in registry order (equalisation and smoothing first, bias correction on
the weights they leave). A method the graph cannot use is "not applicable" in the report; a
transform that fails its verification stops the stage with the figures."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from npuflow.quant.ptq.graph import Weights, copy_model, outputs_of
from npuflow.util.errors import NpuflowError
from npuflow.util.registry import Registry

WEIGHTS = ("per_channel", "per_tensor")
DEFAULT_SETTINGS = {"weights": "per_channel", "cross_layer_equalization": False, "bias_correction": False, "smoothquant": False}
# A float-equivalent transform may move outputs by float rounding only: this much of their scale.
EQUIVALENCE_RTOL = 1e-4


class PtqError(NpuflowError):
    """A transform that failed its own verification."""


@dataclass(frozen=True)
class Context:
    images: np.ndarray  # calibration images (N, C, H, W)
    per_channel: bool


@dataclass(frozen=True)
class PtqMethod:
    key: str  # its key under `quantization:`
    summary: str
    check: Callable[[object], str | None]  # a value the method cannot take: why ('' / None: fine)
    not_applicable: Callable[[object, Weights], str | None]  # why the graph cannot use it, or None
    apply: Callable[[object, Weights, object, Context], dict]  # transforms the model in place
    verify: Callable[[object, object, dict, Context], dict]  # figures, with "verified": bool
    example: Callable[[], object]  # a small ONNX model the method applies to


PTQ_METHODS: Registry[PtqMethod] = Registry("quantization method")


def float_equivalence(before, after, details: dict, ctx: Context) -> dict:
    """The float model's outputs before and after, on the calibration images."""
    a, b = outputs_of(before, ctx.images), outputs_of(after, ctx.images)
    diff = max(float(np.max(np.abs(x.astype(np.float64) - y))) for x, y in zip(a, b, strict=True))
    scale = max(float(np.max(np.abs(x))) for x in a)
    return {"max_abs_diff": diff, "output_scale": scale, "verified": diff <= EQUIVALENCE_RTOL * max(scale, 1.0)}


def _bool(value) -> str | None:
    return None if isinstance(value, bool) else f"expected true or false, got {value!r}"


def _cle_not_applicable(model, weights: Weights) -> str | None:
    from npuflow.quant.ptq.cle import find_pairs

    return None if find_pairs(model, weights) else "no Conv → Relu/ReLU6 → Conv pairs"


def _cle_apply(model, weights: Weights, value, ctx: Context) -> dict:
    from npuflow.quant.ptq.cle import equalise

    return equalise(model, weights)


def _bc_not_applicable(model, weights: Weights) -> str | None:
    from npuflow.quant.ptq.bias_correction import correctable

    return None if correctable(model, weights) else "no Conv, Gemm or MatMul+bias with constant weights"


def _bc_apply(model, weights: Weights, value, ctx: Context) -> dict:
    from npuflow.quant.ptq.bias_correction import correct

    return correct(model, weights, ctx.images, ctx.per_channel)


def _bc_verify(before, after, details: dict, ctx: Context) -> dict:
    # the shift BC targets, measured with quantised weights (bias_correction.measured_shift)
    return {"verified": details["output_shift_after"] < details["output_shift_before"] or details["output_shift_before"] == 0.0}


def _sq_check(value) -> str | None:
    if value is False:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        return f"expected false or an alpha between 0 and 1 (exclusive), got {value!r}"
    return None


def _sq_not_applicable(model, weights: Weights) -> str | None:
    from npuflow.quant.ptq.smoothquant import find_groups

    return None if find_groups(model, weights) else "no LayerNormalization feeding MatMul/Gemm weights"


def _sq_apply(model, weights: Weights, value, ctx: Context) -> dict:
    from npuflow.quant.ptq.smoothquant import smooth

    return smooth(model, weights, ctx.images, float(value))


def _conv_example():
    from npuflow.quant.ptq.examples import conv_chain

    return conv_chain()


def _transformer_example():
    from npuflow.quant.ptq.examples import norm_mlp

    return norm_mlp()


PTQ_METHODS.add(
    "cross_layer_equalization",
    PtqMethod(
        "cross_layer_equalization",
        "rescale channels across Conv → Relu/ReLU6 → Conv pairs (Nagel et al. 2019)",
        _bool,
        _cle_not_applicable,
        _cle_apply,
        float_equivalence,
        _conv_example,
    ),
)
PTQ_METHODS.add(
    "smoothquant",
    PtqMethod(
        "smoothquant",
        "migrate activation outliers into MatMul/Gemm weights (Xiao et al. 2023); the value is alpha",
        _sq_check,
        _sq_not_applicable,
        _sq_apply,
        float_equivalence,
        _transformer_example,
    ),
)
PTQ_METHODS.add(
    "bias_correction",
    PtqMethod(
        "bias_correction",
        "correct each layer's expected output shift from quantised weights, on the calibration images",
        _bool,
        _bc_not_applicable,
        _bc_apply,
        _bc_verify,
        _conv_example,
    ),
)


def resolve_settings(*blocks: dict | None) -> dict:
    """The defaults, then each `quantization:` block over the last (global, model, target)."""
    out = dict(DEFAULT_SETTINGS)
    for block in blocks:
        out.update(block or {})
    return out


def settings_id(settings: dict) -> str:
    """A short, stable name for a settings combination (a folder name)."""
    parts = ["pc" if settings["weights"] == "per_channel" else "pt"]
    abbrev = {"cross_layer_equalization": "cle", "bias_correction": "bc", "smoothquant": "sq"}
    for key, _ in PTQ_METHODS.items():
        value = settings.get(key, False)
        if value is True:
            parts.append(abbrev[key])
        elif value is not False:
            parts.append(f"{abbrev[key]}{value:g}")
    return "_".join(parts)


def check_settings(settings: dict, where: str) -> None:
    """Refuse an unknown key or a value a method cannot take, naming it."""
    from npuflow.util.registry import unknown_name_message

    for key, value in settings.items():
        if key == "weights":
            if value not in WEIGHTS:
                raise PtqError(f"{where}.weights: expected one of {', '.join(WEIGHTS)}, got {value!r}")
            continue
        if key not in PTQ_METHODS:
            raise PtqError(f"{where}: {unknown_name_message('quantization key', key, [*PTQ_METHODS.names(), 'weights'])}")
        why = PTQ_METHODS.get(key).check(value)
        if why:
            raise PtqError(f"{where}.{key}: {why}")


def apply_methods(model, settings: dict, images: np.ndarray) -> tuple[object, dict]:
    """The transformed copy of `model` and a report entry per method (applied, not applicable
    or disabled), each with its seconds and verification figures."""
    check_settings(settings, "quantization")
    model = copy_model(model)
    ctx = Context(images=images, per_channel=settings["weights"] == "per_channel")
    report = {}
    for key, method in PTQ_METHODS.items():
        value = settings.get(key, False)
        if value is False:
            report[key] = {"status": "disabled"}
            continue
        weights = Weights(model)
        why = method.not_applicable(model, weights)
        if why:
            report[key] = {"status": "not applicable", "reason": why}
            continue
        before = copy_model(model)
        start = time.perf_counter()
        details = method.apply(model, weights, value, ctx)
        seconds = time.perf_counter() - start
        check = method.verify(before, model, details, ctx)
        report[key] = {"status": "applied", "value": value, **details, **check, "seconds": round(seconds, 3)}
        if not check["verified"]:
            raise PtqError(f"quantization.{key} failed its verification: {report[key]}")
    return model, report


__all__ = ["PTQ_METHODS", "Context", "PtqError", "PtqMethod", "apply_methods", "check_settings", "resolve_settings", "settings_id"]
