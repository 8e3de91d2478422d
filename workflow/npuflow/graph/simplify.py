"""Stage simplify: onnxsim (constant folding, shape-op elimination), with outputs checked equal
in onnxruntime."""

from __future__ import annotations

import functools
import time
from pathlib import Path

from npuflow.core.records import SimplifyReport
from npuflow.util.errors import NpuflowError
from npuflow.util.io import atomic_path
from npuflow.util.onnxutil import fixed_input, input_name, load, magnitude, max_abs_diff, op_counts, run_onnx

SIMPLIFY_RTOL = 1e-4  # of the outputs' magnitude


class SimplifyError(NpuflowError):
    pass


@functools.cache
def _onnxsim():
    """onnxsim's simplifier module, imported without running the package's __init__, which imports
    its ~200 modules and torch with them (2.5 s of a 4 s job here; the simplifier needs neither).
    The stand-in package is dropped again, so a later `import onnxsim` is the whole package."""
    import importlib
    import importlib.util
    import sys
    import types

    if "onnxsim" in sys.modules:
        return importlib.import_module("onnxsim.onnx_simplifier")
    spec = importlib.util.find_spec("onnxsim")
    stand_in = types.ModuleType("onnxsim")
    stand_in.__path__ = list(spec.submodule_search_locations)
    sys.modules["onnxsim"] = stand_in
    try:
        return importlib.import_module("onnxsim.onnx_simplifier")
    finally:
        if sys.modules.get("onnxsim") is stand_in:
            del sys.modules["onnxsim"]


def simplify_model(model, where: str, threads: int = 1):
    """onnxsim, with outputs checked on a fixed input. Returns (simplified model, max abs diff)."""
    simplified, ok = _onnxsim().simplify(model, check_n=0)
    if not ok:
        raise SimplifyError(f"{where}: onnxsim could not simplify the model")
    name = input_name(model)
    shape = [d.dim_value for d in next(i for i in model.graph.input if i.name == name).type.tensor_type.shape.dim]
    feeds = {name: fixed_input(shape)}
    before = run_onnx(model, feeds, threads)
    diff = max_abs_diff(before, run_onnx(simplified, feeds, threads))
    if diff > SIMPLIFY_RTOL * magnitude(before):
        raise SimplifyError(f"{where}: onnxsim changed outputs by {diff:.3g} (outputs up to {magnitude(before):.3g})")
    return simplified, diff


def simplify(in_onnx: str | Path, *, out_onnx: str | Path, out_json: str | Path, threads: int = 1) -> dict:
    import onnx

    start = time.perf_counter()
    model = load(in_onnx)
    simplified, diff = simplify_model(model, str(in_onnx), threads)
    with atomic_path(out_onnx) as tmp:
        onnx.save(simplified, str(tmp))
    ops_before, ops_after = op_counts(model), op_counts(simplified)
    report = SimplifyReport(
        ops_before=ops_before,
        ops_after=ops_after,
        nodes_before=sum(ops_before.values()),
        nodes_after=sum(ops_after.values()),
        max_abs_diff=diff,
        onnxsim_version=_onnxsim().version.version,  # the package's __version__
        seconds=round(time.perf_counter() - start, 3),
    )
    report.write(out_json)
    return report.to_json()
