"""The export stage of an `onnx:` model: the file's graph, made into what every other export is —
one float32 NCHW input named `input` at batch 1 and the entry's shape, its weights as initializers
(those the fetch stage stored), the configured opset — and checked against the file itself run by
onnxruntime on the same input."""

from __future__ import annotations

import copy
from pathlib import Path

from npuflow.core.records import Manifest
from npuflow.sources.fetch import WEIGHTS_FILE
from npuflow.sources.onnx_files import load_onnx_file
from npuflow.util.errors import NpuflowError
from npuflow.util.io import atomic_path, sha256_file
from npuflow.util.onnxutil import fixed_input, lift_constants, magnitude, max_abs_diff, run_onnx

# Opset conversion and constant lifting change no arithmetic: what is left is onnxruntime picking
# other kernels for the fixed shapes (float32 reordering), far below this share of the outputs.
IMPORT_RTOL = 1e-4


class OnnxImportError(NpuflowError):
    pass


def graph_inputs(model) -> list:
    """The graph's real inputs (older exporters also list every initializer as an input)."""
    weights = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in weights]


def fix_input_shape(model, shape: list[int], where: str) -> dict[str, int]:
    """Give the single image input the entry's shape, in place: each dynamic dimension takes the
    entry's size, a fixed one must already equal it. Returns {dimension (N, C, H or W): size} fixed."""
    import onnx

    inputs = graph_inputs(model)
    if len(inputs) != 1:
        raise OnnxImportError(
            f"{where}.source: the ONNX file has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); npuflow feeds one image tensor"
        )
    (inp,) = inputs
    tensor = inp.type.tensor_type
    if tensor.elem_type != onnx.TensorProto.FLOAT:
        kind = onnx.TensorProto.DataType.Name(tensor.elem_type)
        raise OnnxImportError(f"{where}.source: the ONNX file's input {inp.name!r} is {kind}; npuflow feeds float32 images")
    dims = tensor.shape.dim
    if len(dims) != len(shape):
        raise OnnxImportError(
            f"{where}.input.shape: the ONNX file's input {inp.name!r} has {len(dims)} dimensions, input.shape {len(shape)} (NCHW)"
        )
    fixed = {}
    for axis, (dim, size) in enumerate(zip(dims, shape)):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            if dim.dim_value != size:
                raise OnnxImportError(
                    f"{where}.input.shape: the ONNX file's input {inp.name!r} is fixed to {dim.dim_value} at dimension {axis} (NCHW),"
                    f" input.shape gives {size}: set input.shape: {[d.dim_value or s for d, s in zip(dims, shape)]}"
                )
            continue
        fixed["NCHW"[axis] if len(dims) == 4 else str(axis)] = size
        dim.Clear()
        dim.dim_value = size
    # Shapes recorded for the dynamic sizes would now contradict the fixed ones: inference redoes them.
    del model.graph.value_info[:]
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    return fixed


def rename_io(model, names: dict[str, str]) -> None:
    """Rename graph inputs/outputs (old -> new) everywhere they are referenced, in place."""
    graph = model.graph
    for value in list(graph.input) + list(graph.output):
        if value.name in names:
            value.name = names[value.name]
    for node in graph.node:
        for field in (node.input, node.output):
            for i, name in enumerate(field):
                if name in names:
                    field[i] = names[name]


def load_weights(model, fetch_dir: Path, where: str) -> None:
    """Put the fetch stage's weights into the model's initializers, in place; every name and shape
    must match (they are the same file's, unless the file changed)."""
    from onnx import numpy_helper
    from safetensors.numpy import load_file

    stored = load_file(str(Path(fetch_dir) / WEIGHTS_FILE))
    for i, tensor in enumerate(model.graph.initializer):
        if tensor.name not in stored:
            continue  # a string initializer: not in safetensors, kept from the file
        array = stored.pop(tensor.name)
        if list(array.shape) != list(tensor.dims):
            raise OnnxImportError(f"{where}: fetched weight {tensor.name!r} has shape {list(array.shape)}, the graph {list(tensor.dims)}")
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(array, tensor.name))
    if stored:
        raise OnnxImportError(
            f"{where}: {len(stored)} fetched weights are not in the graph (first: {next(iter(stored))!r}); run fetch again"
        )


def import_graph(
    spec: dict, *, manifest_json: str | Path, fetch_dir: str | Path, out_onnx: str | Path, io_names: tuple[str, str], threads: int = 1
) -> dict:
    """Write the model of an `onnx:` entry to `out_onnx` as the export stage's model, its input
    and (single) output named as `io_names` says; return the export report's fields for it."""
    import onnx

    input_name, output_name = io_names
    where = f"models.{spec['name']}"
    detail = Manifest.read(manifest_json).weights_detail
    path = Path(detail["file"])
    if not path.is_file() or sha256_file(path) != detail["file_sha256"]:
        raise OnnxImportError(
            f"{where}.source: {path} is gone or changed since the fetch stage read it; run fetch again (snakemake -R fetch)"
        )
    original = load_onnx_file(path, where)
    model = copy.deepcopy(original)
    lift_constants(model)
    load_weights(model, Path(fetch_dir), where)
    shape = list(spec["input"]["shape"])
    fixed = fix_input_shape(model, shape, where)
    source_opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if source_opset != spec["opset"]:
        try:
            model = onnx.version_converter.convert_version(model, spec["opset"])
        except Exception as e:  # the converter raises bare RuntimeErrors naming the op it can't adapt
            raise OnnxImportError(
                f"{where}.opset: onnx's version converter cannot take this file from opset {source_opset} to {spec['opset']}"
                f" ({type(e).__name__}: {str(e).splitlines()[0][:160]}); set opset: {source_opset}"
            ) from e
    (inp,) = graph_inputs(model)
    outputs = [o.name for o in model.graph.output]
    renames = {inp.name: input_name, **({outputs[0]: output_name} if len(outputs) == 1 else {})}
    rename_io(model, renames)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as e:
        raise OnnxImportError(
            f"{where}.input.shape: the graph does not take a {'×'.join(map(str, shape))} input ({str(e).splitlines()[0][:200]})"
        ) from e
    x = fixed_input(shape)
    expected = _run(original, {graph_inputs(original)[0].name: x}, threads, where, shape)
    with atomic_path(out_onnx) as tmp:
        onnx.save(model, str(tmp))
        got = _run(tmp, {input_name: x}, threads, where, shape)
        max_abs = max_abs_diff(expected, got)
        if not max_abs <= IMPORT_RTOL * magnitude(expected):
            raise OnnxImportError(
                f"{where}: the imported graph differs from the file by {max_abs:.3g} (outputs up to {magnitude(expected):.3g})"
            )
    out_names = [renames.get(o, o) for o in outputs]
    return {
        "max_abs_diff_vs_source": max_abs,
        "output_shapes": [list(g.shape) for g in got],
        "output_names": out_names,
        "imported": {
            "file": str(path),
            "file_opset": source_opset,
            "dynamic_dims_fixed": fixed,
            "renamed": renames,
        },
    }


def _run(model, feeds: dict, threads: int, where: str, shape: list[int]):
    try:
        return run_onnx(model, feeds, threads=threads)
    except Exception as e:  # e.g. a Reshape to a size that held only for the file's own input size
        status = str(e).split("Status Message:")[-1].strip().splitlines()[0]
        raise OnnxImportError(
            f"{where}.input.shape: the graph does not run with its input fixed to {'×'.join(map(str, shape))} ({status[-240:]})"
        ) from e
