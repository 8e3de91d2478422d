"""Stage export: the fetched model to ONNX at batch 1 and the configured opset, checked against
torch on a fixed input."""

from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path

from npuflow.core.tasks import TASKS
from npuflow.sources.core import source_for
from npuflow.sources.fetch import load_model
from npuflow.util.errors import NpuflowError
from npuflow.util.io import atomic_path, write_json
from npuflow.util.onnxutil import fixed_input, magnitude, max_abs_diff, op_counts, run_onnx

INPUT_NAME = "input"
OUTPUT_NAME = "output"
EXPORT_RTOL = 1e-3  # of the outputs' magnitude: float32 reordering noise, not a real difference


class ExportError(NpuflowError):
    pass


def export_module(
    module,
    shape,
    opset: int,
    out_onnx: str | Path,
    where: str,
    threads: int = 1,
    output_names: list[str] | None = None,
    x=None,
    native_size: tuple[int, int] | None = None,
) -> tuple[float, list[list[int]]]:
    """Export a torch module to ONNX (batch as in `shape`) and check it against torch on a fixed
    input (`x`, default `fixed_input`). Returns (max abs difference, the outputs' shapes); nothing
    is left behind if it fails. `native_size`: the input size the model takes, for the message
    when it does not run on `shape` (its source's `native_input_size`)."""
    import torch

    names = output_names or [OUTPUT_NAME]
    x = fixed_input(shape) if x is None else x
    with torch.no_grad():
        try:
            out = module(torch.from_numpy(x))
        except Exception as e:  # a size the model cannot take: its library says so in its own words
            raise ExportError(input_size_message(native_size, shape, where, e)) from e
    expected = [t.numpy() for t in (out if isinstance(out, (tuple, list)) else [out])]
    if len(expected) != len(names):
        raise ExportError(f"{where}: the module returns {len(expected)} outputs, the export names {len(names)}")
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
                output_names=names,
                do_constant_folding=True,
            )
        except Exception as e:
            raise ExportError(f"{where}: ONNX export at opset {opset} failed: {type(e).__name__}: {e}") from e
        got = run_onnx(tmp, {INPUT_NAME: x}, threads=threads)
        max_abs = max_abs_diff(expected, got)
        if not max_abs <= EXPORT_RTOL * magnitude(expected):
            own = float32_sensitivity(module, x, expected)
            if not max_abs <= SENSITIVITY_FACTOR * own:
                raise ExportError(
                    f"{where}: exported ONNX differs from torch by {max_abs:.3g} (outputs up to {magnitude(expected):.3g};"
                    f" torch itself in float32 vs float64: {own:.3g})"
                )
    return max_abs, [list(e.shape) for e in expected]


# A network can be so sensitive that float32 rounding alone moves its outputs more than the
# tolerance (random weights with saturated attention softmaxes: yolo12's area attention). Then
# the export is judged against torch's own float32-vs-float64 difference on the same input.
SENSITIVITY_FACTOR = 4.0


def float32_sensitivity(module, x, expected: list) -> float:
    """Max abs difference between the module's float32 outputs and its float64 ones."""
    import copy

    import torch

    with torch.no_grad():
        out = copy.deepcopy(module).double()(torch.from_numpy(x).double())
    exact = [t.numpy() for t in (out if isinstance(out, (tuple, list)) else [out])]
    return max_abs_diff(expected, exact)


def input_size_message(native: tuple[int, int] | None, shape, where: str, error: Exception) -> str:
    """One line for a model that does not run on the configured input: the size given, the
    model's own words, and the size it takes where its source knows one (`native`)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    why = f"{type(error).__name__}: {lines[-1][:200] if lines else ''}"
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
    start = time.perf_counter()
    source = source_for(spec)
    if source.carries_graph:
        return _import(spec, fetch_dir, out_onnx, out_json, threads, start)
    import torch

    torch.set_num_threads(threads)
    module = load_model(spec, fetch_dir)
    native = source.native_input_size(module)
    module, output_names = source.export_form(module, spec)
    shape = spec["input"]["shape"]
    where = f"models.{spec['name']}"
    max_abs, out_shapes = export_module(
        module, shape, spec["opset"], out_onnx, where, threads, output_names, source.check_input(shape), native_size=native
    )
    report = {
        "model": spec["name"],
        "opset": spec["opset"],
        "input_shape": shape,
        "output_shape": out_shapes[0],
        **({"outputs": dict(zip(output_names, out_shapes))} if len(out_shapes) > 1 else {}),
        **({"head": spec.get("head", "split")} if TASKS.get(spec["task"]).decoded else {}),
        "reparameterized": bool(spec.get("reparameterize", True)),
        "max_abs_diff_vs_source": max_abs,
        "ops": op_counts(out_onnx),
        "onnx_bytes": Path(out_onnx).stat().st_size,
        "torch_version": torch.__version__,
        **package_versions("timm", "transformers", "torchvision"),
        **{k.replace("-opencv-headless", ""): v for k, v in package_versions("ultralytics-opencv-headless").items()},
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_json(out_json, report)
    return report


def _import(spec: dict, fetch_dir, out_onnx, out_json, threads: int, start: float) -> dict:
    """The export stage of a source that carries its graph (`onnx:`): imported, not traced."""
    from npuflow.graph.onnx_import import import_graph
    from npuflow.sources.fetch import MANIFEST_FILE

    found = import_graph(
        spec,
        manifest_json=Path(fetch_dir) / MANIFEST_FILE,
        fetch_dir=fetch_dir,
        out_onnx=out_onnx,
        io_names=(INPUT_NAME, OUTPUT_NAME),
        threads=threads,
    )
    shapes = found["output_shapes"]
    report = {
        "model": spec["name"],
        "opset": spec["opset"],
        "input_shape": spec["input"]["shape"],
        "output_shape": shapes[0],
        **({"outputs": dict(zip(found["output_names"], shapes))} if len(shapes) > 1 else {}),
        "reparameterized": False,
        "max_abs_diff_vs_source": found["max_abs_diff_vs_source"],
        "imported": found["imported"],
        "ops": op_counts(out_onnx),
        "onnx_bytes": Path(out_onnx).stat().st_size,
        **package_versions("onnx"),
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_json(out_json, report)
    return report
