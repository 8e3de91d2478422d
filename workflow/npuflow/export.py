"""Stage export: the fetched model to ONNX at batch 1 and the configured opset, checked against
torch on a fixed input."""

from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path

from .errors import NpuflowError
from .fetch import load_model
from .io import atomic_path, write_json
from .onnxutil import fixed_input, magnitude, max_abs_diff, op_counts, run_onnx
from .sources import source_for

INPUT_NAME = "input"
OUTPUT_NAME = "output"
EXPORT_RTOL = 1e-3  # of the outputs' magnitude: float32 reordering noise, not a real difference


class ExportError(NpuflowError):
    pass


def export_module(module, shape, opset: int, out_onnx: str | Path, where: str, threads: int = 1) -> tuple[float, list[int]]:
    """Export a torch module to ONNX (batch as in `shape`) and check it against torch on a fixed
    input. Returns (max abs difference, output shape); nothing is left behind if it fails."""
    import torch

    x = fixed_input(shape)
    with torch.no_grad():
        try:
            expected = module(torch.from_numpy(x)).numpy()
        except Exception as e:  # a size the model cannot take: its library says so in its own words
            raise ExportError(input_size_message(module, shape, where, e)) from e
    with atomic_path(out_onnx) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow are expected
        try:
            # The TorchScript exporter reaches opset 11, which edge toolchains still ask for.
            torch.onnx.export(
                module,
                (torch.from_numpy(x),),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                do_constant_folding=True,
            )
        except Exception as e:
            raise ExportError(f"{where}: ONNX export at opset {opset} failed: {type(e).__name__}: {e}") from e
        (got,) = run_onnx(tmp, {INPUT_NAME: x}, threads=threads)
        max_abs = max_abs_diff([expected], [got])
        if not max_abs <= EXPORT_RTOL * magnitude([expected]):
            raise ExportError(f"{where}: exported ONNX differs from torch by {max_abs:.3g} (outputs up to {magnitude([expected]):.3g})")
    return max_abs, list(expected.shape)


def input_size_message(module, shape, where: str, error: Exception) -> str:
    """One line for a model that does not run on the configured input: the size given, the
    model's own words, and the size it takes where its library records one."""
    from .sources import native_input_size

    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    why = f"{type(error).__name__}: {lines[-1][:200] if lines else ''}"
    native = native_input_size(module)
    given = "×".join(map(str, shape[2:]))
    takes = (
        f"it takes {native[0]}×{native[1]}: set input.shape: [1, 3, {native[0]}, {native[1]}]"
        if native and tuple(native) != tuple(shape[2:])
        else "set input.shape to a size it takes"
    )
    return f"{where}.input.shape: the model does not run on {given} input ({why}); {takes}"


def package_versions(*names: str) -> dict[str, str]:
    """{"<name>_version": version} of the installed packages among `names`: a stage records the
    versions it ran with, as the logging job may run in another environment (`--sdm conda`)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        with contextlib.suppress(PackageNotFoundError):
            found[f"{name}_version"] = version(name)
    return found


def export(spec: dict, *, fetch_dir: str | Path, out_onnx: str | Path, out_json: str | Path, threads: int = 1) -> dict:
    import torch

    torch.set_num_threads(threads)
    start = time.perf_counter()
    module = load_model(spec, fetch_dir)
    if spec.get("reparameterize", True):
        module = source_for(spec).deploy_form(module)
    shape = spec["input"]["shape"]
    max_abs, out_shape = export_module(module, shape, spec["opset"], out_onnx, f"models.{spec['name']}", threads)
    report = {
        "model": spec["name"],
        "opset": spec["opset"],
        "input_shape": shape,
        "output_shape": out_shape,
        "reparameterized": bool(spec.get("reparameterize", True)),
        "max_abs_diff_vs_torch": max_abs,
        "ops": op_counts(out_onnx),
        "onnx_bytes": Path(out_onnx).stat().st_size,
        "torch_version": torch.__version__,
        **package_versions("timm", "transformers"),
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_json(out_json, report)
    return report
