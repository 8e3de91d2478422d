"""Stage build: an analytical simulation of the vendor NPU compile and run of the quantised model.

The quantised (QDQ) graph is read as the NPU sees it: Quantize/Dequantize pairs are precision
annotations, not work. Each remaining op gets its work (MACs, elementwise ops, bytes), is fused the
way the vendor compilers fuse (conv/gemm + BN/activation/residual add), mapped to a unit of the
target profile (tensor, vector, DMA, or CPU fallback), and costed by a roofline: the larger of
compute time (with tile-alignment padding) and memory time (weights and spilled activations over
DDR), plus per-op overhead. CPU ops split the graph into NPU subgraphs with a DDR round trip each.
All figures are simulations, never measurements."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io import atomic_path, write_json
from .precision import DEFAULT_RECIPE, embedded_precision, recipe_id, resolve_precision

PRECISION_BYTES = {"int8": 1, "int16": 2, "float": 4}
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
RANK = {"int8": 0, "int16": 1, "float": 2}


@dataclass
class Tensor:
    shape: list[int]
    precision: str = "int8"
    weight: bool = False

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def bytes(self) -> int:
        return self.numel * PRECISION_BYTES[self.precision]


@dataclass
class Op:
    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict
    unit: str = ""
    precision: str = "int8"
    fused: list[str] = field(default_factory=list)
    fused_into: str | None = None
    macs: int = 0
    spill_bytes: int = 0
    reorder_bytes: int = 0
    work: float = 0.0  # unit operations after alignment padding
    work_unpadded: float = 0.0
    weight_bytes: int = 0
    act_bytes: int = 0
    ddr_bytes: int = 0
    compute_s: float = 0.0
    memory_s: float = 0.0
    time_s: float = 0.0


LAYOUT_UNITS = ("tensor", "vector")
VIEW_OPS = ("Split", "Slice", "Concat")
REDUCING_OPS = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "GlobalAveragePool", "GlobalMaxPool", "AveragePool", "MaxPool")


def _pad(x: int, tile: int) -> int:
    return int(math.ceil(x / tile) * tile) if tile else x


class Graph:
    """The quantised model as the NPU sees it: logical tensors (Q/DQ transparent) and ops."""

    def __init__(self, model):
        import onnx
        from onnx import numpy_helper

        model = onnx.shape_inference.infer_shapes(model)
        g = model.graph
        shapes = {}
        # A dimension shape inference cannot resolve is counted as 1 and reported (build.json's
        # unknown_dims): the exports here are static, so any is a sign the figures are too low.
        self.unknown_dims = 0
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            if not vi.type.tensor_type.HasField("shape"):  # rank unknown: counted below, with its op
                continue
            dims = vi.type.tensor_type.shape.dim
            shapes[vi.name] = [d.dim_value if d.dim_value > 0 else 1 for d in dims]
            self.unknown_dims += sum(d.dim_value <= 0 for d in dims)
        inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        for n in g.node:  # Constant nodes carry weights too (e.g. after surgery)
            if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR:
                inits[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.alias: dict[str, str] = {}
        self.tensors: dict[str, Tensor] = {}
        for name, arr in inits.items():
            self.tensors[name] = Tensor(list(arr.shape), "float", weight=True)
        precision_of = {}
        for n in g.node:
            if n.op_type in QDQ_OPS:
                zp = n.input[2] if len(n.input) > 2 else None
                dtype = inits[zp].dtype if zp in inits else np.dtype(np.uint8)
                precision_of[n.output[0] if n.op_type == "QuantizeLinear" else n.input[0]] = "int16" if dtype.itemsize == 2 else "int8"
                self.alias[n.output[0]] = self.resolve(n.input[0])
        for name, p in precision_of.items():
            t = self.resolve(name)
            if t in self.tensors:
                self.tensors[t].precision = p
        self.ops: list[Op] = []
        for n in g.node:
            if n.op_type in QDQ_OPS or n.op_type == "Constant":
                continue
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            op = Op(n.name or f"{n.op_type}_{len(self.ops)}", n.op_type, [self.resolve(i) for i in n.input if i], list(n.output), attrs)
            for o in n.output:
                if o not in self.tensors:
                    self.tensors[o] = Tensor(shapes.get(o, []), "int8")
                # An op shape inference knows nothing of (a custom domain's) leaves its outputs
                # without even a rank: count it, as the figures downstream of it are guesses.
                self.unknown_dims += bool(o) and o not in shapes
            self.ops.append(op)
        for name in [i.name for i in g.input if i.name not in inits]:
            self.tensors.setdefault(name, Tensor(shapes.get(name, []), "int8"))
        self.inputs = [self.resolve(i.name) for i in g.input if i.name not in inits]
        self.outputs = [self.resolve(o.name) for o in g.output]
        self.consumers: dict[str, list[Op]] = {}
        self.producer: dict[str, Op] = {}
        self.by_name: dict[str, Op] = {}
        for op in self.ops:
            self.by_name[op.name] = op
            for i in op.inputs:
                self.consumers.setdefault(i, []).append(op)
            for o in op.outputs:
                self.producer[self.resolve(o)] = op
        for name in shapes:
            t = self.resolve(name)
            if t not in self.tensors:
                self.tensors[t] = Tensor(shapes[name], "int8")

    def resolve(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name


def _activations(graph: Graph, op: Op) -> list[Tensor]:
    return [graph.tensors[i] for i in op.inputs if i in graph.tensors and not graph.tensors[i].weight]


def _weights(graph: Graph, op: Op) -> list[Tensor]:
    return [graph.tensors[i] for i in op.inputs if i in graph.tensors and graph.tensors[i].weight]


def _channel_axis(rank: int) -> int:
    """The axis the NPU tiles innermost: C of NCHW, the feature axis of [B, N, C]."""
    return 1 if rank == 4 else rank - 1


def _is_aligned_view(graph: Graph, op: Op, tile_c: int) -> bool:
    """Split/Slice/Concat along the channel axis at tile-aligned sizes is an address offset in the
    tiled layout (the compiler makes producers write in place), not a data move."""
    if op.op_type not in VIEW_OPS or not tile_c:
        return False
    parts = [
        graph.tensors[graph.resolve(t)].shape
        for t in (op.inputs if op.op_type == "Concat" else op.outputs)
        if graph.resolve(t) in graph.tensors and not graph.tensors[graph.resolve(t)].weight
    ]
    whole = graph.tensors[graph.resolve(op.outputs[0] if op.op_type == "Concat" else op.inputs[0])].shape
    if not whole or any(len(p) != len(whole) for p in parts) or not parts:
        return False
    axis = _channel_axis(len(whole))
    differing = {i for p in parts for i in range(len(whole)) if p[i] != whole[i]}
    return differing <= {axis} and whole[axis] % tile_c == 0 and all(p[axis] % tile_c == 0 for p in parts)


def assign_units(graph: Graph, profile: dict, node_precision: dict[str, str] | None = None) -> None:
    """Each op's unit and precision. `node_precision` is the recipe resolved per node (what the
    quantiser applied); a float op runs on the CPU unless one of the target's NPU units has a float
    rate, as the vendor compilers leave unquantised ops to the CPU."""
    units = profile["units"]
    free = set(profile.get("free_ops", []))
    tile_c = units["tensor"].get("tile", {}).get("c", 0)
    node_precision = node_precision or {}
    for op in graph.ops:
        dtype = node_precision.get(op.name)
        if op.op_type in free or _is_aligned_view(graph, op, tile_c):
            op.unit = "free"
        else:
            op.unit = next((u for u in ("tensor", "vector", "dma") if op.op_type in units[u].get("ops", [])), "cpu")
            if dtype == "float" and "float" not in units.get(op.unit, {}).get("peak_ops_per_s", {}):
                op.unit = "cpu"
        if op.unit == "cpu":
            op.precision = "float"
        elif dtype is not None:
            op.precision = dtype
        else:
            op.precision = max((t.precision for t in _activations(graph, op)), key=RANK.get, default="int8")
            if op.precision == "float":  # NPU compilers quantise every op they run
                op.precision = "int8"


def _single_user(graph: Graph, op: Op) -> Op | None:
    return users[0] if len(users := graph.consumers.get(graph.resolve(op.outputs[0]), [])) == 1 else None


def _constant_operand(graph: Graph, op: Op) -> bool:
    return any(graph.tensors.get(i) is not None and graph.tensors[i].weight for i in op.inputs)


def _collapse(graph: Graph, group: list[Op], root: Op, op_type: str, x: str) -> None:
    for op in group:
        if op is not root:
            op.fused_into = root.name
    root.op_type, root.inputs = op_type, [x]


def recognise_activations(graph: Graph) -> None:
    """Activations exported as several ONNX ops are one activation to the NPU compilers (a lookup
    table or a fused function): SiLU/Swish = x·sigmoid(x), and GELU = x·½(1 + erf(x/√2)) as torch
    writes it below opset 20."""
    for op in graph.ops:
        if op.fused_into:
            continue
        if op.op_type == "Sigmoid" and op.unit != "cpu":
            x = op.inputs[0]
            mul = _single_user(graph, op)
            if mul is not None and mul.op_type == "Mul" and set(mul.inputs) == {x, graph.resolve(op.outputs[0])}:
                _collapse(graph, [op, mul], mul, "Swish", x)
        elif op.op_type == "Erf" and op.unit != "cpu":
            pre = graph.producer.get(op.inputs[0])
            if pre is None or pre.op_type not in ("Div", "Mul") or not _constant_operand(graph, pre):
                continue
            x = next(i for i in pre.inputs if not (i in graph.tensors and graph.tensors[i].weight))
            add = _single_user(graph, op)
            mul = _single_user(graph, add) if add is not None and add.op_type == "Add" else None
            if mul is None or mul.op_type != "Mul":
                continue
            group, other = [pre, op, add, mul], next((i for i in mul.inputs if i != graph.resolve(add.outputs[0])), None)
            if other != x:  # the ½·x factor taken first
                half = graph.producer.get(other)
                if half is None or half.op_type != "Mul" or x not in half.inputs:
                    continue
                group.append(half)
            root = mul
            scale = _single_user(graph, mul)
            if scale is not None and scale.op_type == "Mul" and _constant_operand(graph, scale):
                group.append(scale)
                root = scale
            _collapse(graph, group, root, "Gelu", x)


def _root(graph: Graph, op: Op) -> Op:
    while op.fused_into:
        op = graph.by_name[op.fused_into]
    return op


def fuse(graph: Graph, profile: dict) -> None:
    """conv/gemm/matmul + following BN/activation (+ one residual Add) become one op, as the
    vendor compilers do: the fused ops cost neither time nor a round trip of their own."""
    fusable = set(profile.get("fusable_activations", []))
    for op in graph.ops:
        if op.unit != "tensor" or op.fused_into:
            continue
        out = op.outputs[0]
        added_residual = False
        while True:
            # Users that are parts of one recognised activation count as that activation.
            roots = {id(r): r for r in (_root(graph, u) for u in graph.consumers.get(graph.resolve(out), []))}
            if len(roots) != 1:
                break
            (nxt,) = roots.values()
            if nxt is op or nxt.unit == "cpu":
                break
            if nxt.unit == "free":  # metadata-only ops (reshape) do not stop a fusion
                out = nxt.outputs[0]
                continue
            # Fusable: activations, a constant per-channel scale or bias (folded into the output's
            # requantisation like BN), and one residual Add.
            affine = nxt.op_type in ("Mul", "Add", "Sub", "Div") and len(_activations(graph, nxt)) == 1 and _constant_operand(graph, nxt)
            if nxt.op_type in fusable or affine or (nxt.op_type == "Add" and not added_residual and len(_activations(graph, nxt)) == 2):
                added_residual |= nxt.op_type == "Add"
                nxt.fused_into = op.name
                op.fused.append(nxt.op_type)
                op.precision = max(op.precision, nxt.precision, key=RANK.get)  # a wider fused output widens the op
                out = nxt.outputs[0]
            else:
                break
    merge_moves(graph, set(profile.get("mergeable_moves", [])))
    fold_operand_transposes(graph)


def fold_operand_transposes(graph: Graph) -> None:
    """A Transpose of the last two axes that only feeds a MatMul is the MatMul reading its
    operand transposed (as Gemm's transA/transB): no data move."""
    for op in graph.ops:
        if op.op_type != "Transpose" or op.fused_into or op.unit != "dma":
            continue
        perm = list(op.attrs.get("perm", []))
        if len(perm) < 2 or perm[:-2] != list(range(len(perm) - 2)) or perm[-2:] != [len(perm) - 1, len(perm) - 2]:
            continue
        users = [_root(graph, u) for u in graph.consumers.get(graph.resolve(op.outputs[0]), [])]
        if users and all(u.op_type in ("MatMul", "Gemm") and u.unit == "tensor" for u in users):
            op.unit = "free"


def merge_moves(graph: Graph, moves: set[str]) -> None:
    """A chain of data moves (e.g. Transpose → Reshape → Transpose, window partition/reverse)
    is done as one move: the compilers merge consecutive permutes; metadata reshapes pass through."""
    for op in graph.ops:
        if op.unit != "dma" or op.op_type not in moves or op.fused_into:
            continue
        out = op.outputs[0]
        while True:
            users = graph.consumers.get(graph.resolve(out), [])
            if len(users) != 1 or users[0].fused_into:
                break
            nxt = users[0]
            if nxt.unit != "free" and nxt.op_type not in moves:
                break
            if nxt.unit != "free":
                nxt.fused_into = op.name
                op.fused.append(nxt.op_type)
                op.precision = max(op.precision, nxt.precision, key=RANK.get)  # a wider fused output widens the op
            out = nxt.outputs[0]


def _producer_unit(graph: Graph, tensor: str) -> str | None:
    """The unit that wrote a tensor, looking through metadata-only ops."""
    op = graph.producer.get(graph.resolve(tensor))
    while op is not None and op.unit == "free" and op.inputs:
        op = graph.producer.get(op.inputs[0])
    return None if op is None else _root(graph, op).unit


def _tensor_work(graph: Graph, op: Op, tile: dict) -> tuple[int, float]:
    """(MACs, padded MACs) of a conv-like op; tiles pad output H, W, C and input channels."""
    th, tw, tc = tile.get("h", 1), tile.get("w", 1), tile.get("c", 1)
    out = graph.tensors[graph.resolve(op.outputs[0])].shape
    operands = [graph.tensors[i].shape if i in graph.tensors else [] for i in op.inputs[:2]]
    conv = op.op_type in ("Conv", "ConvTranspose")
    if len(operands) < 2 or len(out) < (3 if conv else 1) or min(map(len, operands)) < (2 if conv or op.op_type == "Gemm" else 1):
        return 0, 0.0  # shapes unknown (after an op shape inference can't see into): in unknown_dims
    if conv:
        w = operands[1]
        n, co = out[0], out[1]
        spatial = out[2:] + [1] * (2 - len(out[2:]))
        cin_g, kernel = w[1], int(np.prod(w[2:])) if len(w) > 2 else 1
        macs = n * co * spatial[0] * spatial[1] * cin_g * kernel
        padded = n * _pad(co, tc) * _pad(spatial[0], th) * _pad(spatial[1], tw) * _pad(cin_g, tc) * kernel
        return macs, padded
    a, b = operands
    if op.op_type == "Gemm":
        m = a[1] if op.attrs.get("transA", 0) else a[0]
        k = a[0] if op.attrs.get("transA", 0) else a[1]
        nn_ = b[0] if op.attrs.get("transB", 0) else b[1]
        batch = 1
    else:  # MatMul, numpy broadcasting over leading dims
        a2, b2 = (a if len(a) > 1 else [1] + a), (b if len(b) > 1 else b + [1])
        m, k, nn_ = a2[-2], a2[-1], b2[-1]
        batch = int(np.prod(out[:-2])) if len(out) > 2 else 1
    return batch * m * k * nn_, batch * _pad(m, tw) * _pad(k, tc) * _pad(nn_, tc)


def _elements(shape: list[int], tile_c: int) -> tuple[int, int]:
    """(elements, elements with the vector lanes' axis padded to the tile). The compiler puts the
    channel axis (NCHW) or the last axis (attention scores [B, heads, N, M], [B, N, C]) in the
    lanes, whichever wastes less."""
    if not shape:
        return 1, 1
    numel = int(np.prod(shape))
    axes = {1, len(shape) - 1} if len(shape) == 4 else {len(shape) - 1}
    padded = min(numel // shape[a] * _pad(shape[a], tile_c) for a in axes) if all(shape[a] for a in axes) else numel
    return numel, padded


def measure(graph: Graph, profile: dict) -> None:
    """Fill each op's work (unit operations, alignment-padded) and bytes: everything that does not
    depend on the rates being fitted, so a fit re-times ops without re-reading the graph."""
    units = profile["units"]
    per_elem = profile.get("vector_ops_per_element", {})
    onchip = profile["memory"]["onchip_bytes"]
    vtile = units["vector"].get("tile", {}).get("c", 1)
    for op in graph.ops:
        if op.fused_into or op.unit == "free":
            continue
        acts = _activations(graph, op)
        outs = [graph.tensors[graph.resolve(o)] for o in op.outputs if graph.resolve(o) in graph.tensors]
        elem_bytes = PRECISION_BYTES[op.precision]
        op.act_bytes = sum(t.numel for t in acts + outs) * elem_bytes
        op.weight_bytes = sum(t.numel for t in _weights(graph, op)) * (1 if op.unit != "cpu" else 4)
        # Activations stay on chip unless they don't fit; weights stream from DDR once per batch.
        op.spill_bytes = sum(t.numel * elem_bytes for t in acts + outs if t.numel * elem_bytes > onchip)
        # Tensor and vector units keep different tile layouts: an input made by the other one is
        # reordered first (a data move).
        if op.unit in LAYOUT_UNITS:
            op.reorder_bytes = sum(
                graph.tensors[i].numel * elem_bytes
                for i in op.inputs
                if i in graph.tensors
                and not graph.tensors[i].weight
                and _producer_unit(graph, i) in LAYOUT_UNITS
                and _producer_unit(graph, i) != op.unit
            )
        if op.unit == "tensor":
            macs, padded = _tensor_work(graph, op, units["tensor"].get("tile", {}))
            op.macs, op.work_unpadded, op.work = macs, 2.0 * macs, 2.0 * padded
        elif op.unit == "vector":
            out_shape = outs[0].shape if outs else []
            numel, padded = _elements(out_shape, vtile)
            k = per_elem.get(op.op_type, 1)
            if op.op_type in REDUCING_OPS:
                numel, padded = _elements(acts[0].shape if acts else out_shape, vtile)
                k *= int(np.prod(op.attrs.get("kernel_shape", [1])))
            op.work_unpadded, op.work = float(numel * k), float(padded * k)
        elif op.unit == "dma":
            op.work_unpadded = op.work = float(op.act_bytes)
        else:  # CPU fallback: float math, and its tensors go through DDR
            numel = sum(t.numel for t in outs) or 1
            op.work_unpadded = op.work = float(numel * per_elem.get(op.op_type, 1))
            op.spill_bytes = sum(t.numel for t in acts + outs) * 4


def unit_rate(profile: dict, unit: str, precision: str) -> float:
    """Sustained rate of a unit in its work units per second (ops, or bytes for DMA)."""
    u = profile["units"][unit]
    if unit == "dma":
        return u["bytes_per_s"]
    if unit == "cpu":
        return u["peak_ops_per_s"]["float"]
    peaks = u["peak_ops_per_s"]
    peak = peaks.get(precision) or peaks["int8"] / (2 if precision == "int16" else 4)
    return peak * u.get("efficiency", 1.0)


def time_ops(graph: Graph, profile: dict, batch: int = 1) -> None:
    """Roofline time of each op for a batch: the larger of compute and DDR traffic, plus overhead."""
    ddr = profile["memory"]["ddr_bytes_per_s"] * profile["memory"].get("efficiency", 1.0)
    dma = profile["units"]["dma"]["bytes_per_s"]
    ovh = profile["overheads"]
    for op in graph.ops:
        if op.fused_into or op.unit == "free":
            op.time_s = op.compute_s = op.memory_s = 0.0
            continue
        op.ddr_bytes = op.weight_bytes + batch * op.spill_bytes
        op.compute_s = batch * op.work / unit_rate(profile, op.unit, op.precision) + batch * op.reorder_bytes / dma
        op.memory_s = op.ddr_bytes / ddr
        # Each frame of a batch is its own pass through the op (its own command); the weights
        # stay loaded across the batch.
        op.time_s = max(op.compute_s, op.memory_s) + batch * (ovh["cpu_op_s"] if op.unit == "cpu" else ovh["op_s"])


def subgraphs(graph: Graph) -> list[dict]:
    """Maximal runs of NPU ops between CPU ops, in execution order."""
    parts: list[dict] = []
    for op in graph.ops:
        if op.fused_into or op.unit == "free":
            continue
        device = "cpu" if op.unit == "cpu" else "npu"
        if not parts or parts[-1]["device"] != device:
            parts.append({"device": device, "ops": 0, "time_s": 0.0, "first_op": op.name})
        parts[-1]["ops"] += 1
        parts[-1]["time_s"] += op.time_s
        parts[-1]["last_op"] = op.name
    return parts


def analyse(model, profile: dict) -> Graph:
    """The rate-independent part of a build: graph, unit mapping, fusion, work per op. The node
    precision is the one the quantised model carries, else the profile's recipe resolved here."""
    graph = Graph(model)
    node_precision = embedded_precision(model)
    if node_precision is None:
        node_precision = resolve_precision(model, profile.get("precision", DEFAULT_RECIPE))
    assign_units(graph, profile, node_precision)
    recognise_activations(graph)
    fuse(graph, profile)
    measure(graph, profile)
    return graph


def simulate(model, profile: dict, batch: int = 1, graph: Graph | None = None) -> dict:
    """Simulate one batch of frames; returns the timing and the per-op records."""
    graph = graph or analyse(model, profile)
    time_ops(graph, profile, batch)
    parts = subgraphs(graph)
    npu_parts = [p for p in parts if p["device"] == "npu"]
    ddr = profile["memory"]["ddr_bytes_per_s"] * profile["memory"].get("efficiency", 1.0)
    io_bytes = batch * sum(graph.tensors[t].bytes for t in graph.inputs + graph.outputs if t in graph.tensors)
    # Every NPU subgraph is a launch; the DDR round trip of a hand-over to the CPU is in the CPU
    # op's traffic (it reads and writes its tensors through DDR).
    overhead_s = len(npu_parts) * profile["overheads"]["subgraph_s"] + io_bytes / ddr
    total_s = sum(op.time_s for op in graph.ops) + overhead_s
    return {"graph": graph, "parts": parts, "total_s": total_s, "overhead_s": overhead_s, "io_bytes": io_bytes}


def _recipe(model, profile: dict) -> dict:
    import json

    carried = next((p.value for p in model.metadata_props if p.key == "npuflow.recipe"), None)
    return json.loads(carried) if carried else profile.get("precision", DEFAULT_RECIPE)


def layer_table(rows: list[dict], graph: Graph) -> list[dict]:
    """The precision analysis rows with where each layer runs on this target and its simulated
    time (a fused op's time is its group's root's: `fused_into` names it)."""
    out = []
    for r in rows:
        op = graph.by_name.get(r["node"])
        if op is None:
            out.append({**r, "unit": "", "fused_into": "", "sim_time_us": ""})
            continue
        out.append({**r, "unit": op.unit, "fused_into": op.fused_into or "", "sim_time_us": 0.0 if op.fused_into else op.time_s * 1e6})
    return out


def build(
    quant_onnx: str | Path,
    profile: dict,
    out_dir: str | Path,
    model_name: str = "",
    weights: str = "",
    layer_rows: list[dict] | None = None,
    layers_csv: str | Path | None = None,
) -> dict:
    """Simulated compile: build.json, trace.json, summary.txt in `out_dir`; with the precision
    analysis rows, also the per-layer table for this target (`layers_csv`)."""
    import onnx

    start = time.perf_counter()
    model = onnx.load(str(quant_onnx))
    graph = analyse(model, profile)
    n = int(profile["batch"])
    many = simulate(model, profile, n, graph)
    one = simulate(model, profile, 1, graph)  # last, so the per-op records are batch 1's
    live = [op for op in graph.ops if not op.fused_into and op.unit != "free"]
    unit_time = {u: sum(op.time_s for op in live if op.unit == u) for u in ("tensor", "vector", "dma", "cpu")}
    unit_time["overhead"] = one["overhead_s"]
    latency_s = one["total_s"]
    peak = profile["units"]["tensor"]["peak_ops_per_s"]["int8"]
    macs = sum(op.macs for op in graph.ops)
    top = sorted(live, key=lambda o: o.time_s, reverse=True)[:10]
    report = {
        "model": model_name,
        "target": profile["name"],
        "chip": profile.get("chip", ""),
        "mode": profile.get("mode", ""),
        "simulated": True,
        "profile_fitted": bool(profile.get("fit")),
        "weights": weights,
        "precision_recipe": recipe_id(_recipe(model, profile)),
        "latency_ms": latency_s * 1e3,
        "batch": n,
        "fps": n / many["total_s"],
        "fps_batch1": 1.0 / latency_s,
        "macs": macs,
        "tensor_utilisation": (2.0 * macs / peak) / latency_s,
        "subgraphs": len([p for p in one["parts"] if p["device"] == "npu"]),
        "cpu_ops": sum(1 for op in live if op.unit == "cpu"),
        "partition": [{**p, "time_ms": p.pop("time_s") * 1e3} for p in one["parts"]],
        "ddr_bytes_per_frame": int(sum(op.ddr_bytes for op in live) + one["io_bytes"]),
        "unit_time_ms": {u: t * 1e3 for u, t in unit_time.items()},
        "unit_share": {u: t / latency_s for u, t in unit_time.items()},
        "ops": {
            "total": len(graph.ops),
            "fused": sum(1 for op in graph.ops if op.fused_into),
            "free": sum(1 for op in graph.ops if op.unit == "free"),
        },
        "unknown_dims": graph.unknown_dims,
        "top_ops": [
            {
                "name": op.name,
                "op_type": op.op_type,
                "fused": op.fused,
                "unit": op.unit,
                "precision": op.precision,
                "time_ms": op.time_s * 1e3,
                "bound": "memory" if op.memory_s > op.compute_s else "compute",
                "padding_waste": 1.0 - op.work_unpadded / op.work if op.work else 0.0,
            }
            for op in top
        ],
        "seconds": 0.0,
    }
    out_dir = Path(out_dir)
    if layer_rows is not None and layers_csv:
        from .layers import write_layers_csv

        write_layers_csv(layer_table(layer_rows, graph), layers_csv, ["unit", "fused_into", "sim_time_us"])
    write_json(out_dir / "trace.json", chrome_trace(graph, profile["name"]))
    report["seconds"] = round(time.perf_counter() - start, 3)
    with atomic_path(out_dir / "summary.txt") as tmp:
        tmp.write_text(readable_summary(report))
    write_json(out_dir / "build.json", report)
    return report


def readable_summary(report: dict) -> str:
    """The build at a glance, in the spirit of Horizon's hb_perf output."""
    lines = [
        f"npuflow simulated build — {report['model']} on {report['target']} ({report['chip']}, {report['mode']})",
        "SIMULATION: figures come from npuflow's analytical model of the chip, not from a device"
        + ("" if report["profile_fitted"] else " (profile not fitted to measurements)")
        + ".",
        "",
        f"latency (batch 1)      {report['latency_ms']:10.3f} ms",
        f"throughput (batch {report['batch']})   {report['fps']:10.1f} FPS",
        f"NPU subgraphs          {report['subgraphs']:10d}   CPU ops: {report['cpu_ops']}",
        f"DDR traffic per frame  {report['ddr_bytes_per_frame'] / 1e6:10.2f} MB",
        f"MACs                   {report['macs'] / 1e6:10.1f} M    tensor-unit utilisation: {100 * report['tensor_utilisation']:.1f} %",
        "",
        f"{'unit':<10}{'time ms':>10}{'share':>8}",
    ]
    lines += [f"{u:<10}{t:>10.3f}{100 * report['unit_share'][u]:>7.1f}%" for u, t in report["unit_time_ms"].items()]
    lines += ["", "partition (execution order):"]
    lines += [
        f"  {p['device']:<4} {p['ops']:>4} ops {p['time_ms']:>9.3f} ms   {p['first_op']} … {p['last_op']}" for p in report["partition"]
    ]
    lines += ["", f"{'costliest ops':<48}{'unit':<8}{'ms':>8}  bound    padding"]
    for op in report["top_ops"]:
        name = op["op_type"] + ("+" + "+".join(op["fused"]) if op["fused"] else "")
        lines.append(
            f"  {(op['name'] or name)[:44]:<46}{op['unit']:<8}{op['time_ms']:>8.4f}  {op['bound']:<8} {100 * op['padding_waste']:4.0f} %"
        )
    return "\n".join(lines) + "\n"


def chrome_trace(graph: Graph, target: str) -> dict:
    """The simulated batch-1 timeline in Chrome/Perfetto trace format, one lane per unit."""
    lanes = {"tensor": 1, "vector": 2, "dma": 3, "cpu": 4}
    events = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": f"{target} (simulated)"}}]
    events += [{"ph": "M", "name": "thread_name", "pid": 1, "tid": tid, "args": {"name": unit}} for unit, tid in lanes.items()]
    t_us = 0.0
    for op in graph.ops:
        if op.fused_into or op.unit == "free":
            continue
        dur = op.time_s * 1e6
        events.append(
            {
                "ph": "X",
                "name": op.op_type + ("+" + "+".join(op.fused) if op.fused else ""),
                "pid": 1,
                "tid": lanes[op.unit],
                "ts": t_us,
                "dur": dur,
                "args": {"node": op.name, "precision": op.precision, "work": op.work},
            }
        )
        t_us += dur
    return {"traceEvents": events, "displayTimeUnit": "ms"}
