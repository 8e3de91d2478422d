"""The cost model. `demands` turns a mapping into what each op asks of the chip (tensor-unit and
vector-unit operations with alignment padding, data-move bytes, DDR bytes, CPU operations): none
of it depends on the rates a fit adjusts. `costs` times those demands with a profile's rates:
cheap, so a fit can call it thousands of times. Each op's time is a roofline (the busiest of its
units and its DDR traffic, which overlap) plus the layout reorder it waits for and its dispatch
overhead; each NPU subgraph adds a launch, each NPU↔CPU hand-over a conversion on the CPU."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from npuflow.graph.opgraph import PRECISION_BYTES
from npuflow.sim.passes import Mapping, Op

UNIT_CODES = {"tensor": 0, "vector": 1, "dma": 2, "cpu": 3}
PRECISIONS = ("int8", "int16", "float")
LAYOUT_UNITS = ("tensor", "vector")
REDUCING_OPS = (
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceL2",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "AveragePool",
    "MaxPool",
)


def pad(x: int, tile: int) -> int:
    return int(math.ceil(x / tile) * tile) if tile else x


@dataclass
class Demands:
    """Per scheduled op (arrays aligned with `Mapping.ops`), rate-independent."""

    unit: np.ndarray  # UNIT_CODES
    precision: np.ndarray  # index into PRECISIONS
    macs: np.ndarray
    tensor_ops: np.ndarray  # tensor-unit operations after alignment padding (2 per MAC), a grouped conv's input lanes unpadded
    grouped_cin: np.ndarray  # a grouped conv's input channels per group (0: not grouped): padded to its lanes in costs
    cout: np.ndarray  # a tensor op's output channels (0: padded already): padded to the output lanes in costs
    tensor_useful: np.ndarray
    vector_ops: np.ndarray  # vector-unit operations after lane padding (incl. activations a tensor op pipes through it)
    vector_useful: np.ndarray
    move_bytes: np.ndarray  # data moved by the DMA unit (Transpose, Concat, …)
    reorder_bytes: np.ndarray  # layout reorders before the op (the other layout unit made its input)
    weight_bytes: np.ndarray  # from DDR once per batch
    spill_bytes: np.ndarray  # activations through DDR whatever the buffer (CPU ops), per frame
    act_bytes: np.ndarray  # an NPU op's input and output activations, per frame
    working_bytes: np.ndarray  # what an NPU op must hold at once: its activations and weights
    wide_weights: np.ndarray  # 1 where a tensor op's weights are int16 (a16w16), 0 for int8 (w8a16, int8)
    cpu_ops: np.ndarray  # CPU fallback work, including the conversions at its NPU hand-overs
    part: np.ndarray  # index of the op's subgraph
    parts: list[dict]  # {device, first_op, last_op} in execution order
    input_bytes: int  # the model's inputs, per frame (DDR to the NPU)
    output_bytes: int  # its outputs, per frame


def _tensor_work(mapping: Mapping, op: Op, tile: dict) -> tuple[int, int, int, int]:
    """(MACs, MACs after padding to the tensor unit's tile, e.g. 2H16W8C, the input channels per
    group of a grouped conv, else 0, and the output channels) of a conv or matmul. A grouped conv's
    input channels and every op's output channels are left unpadded here: the lanes they occupy
    (`tile.cin_grouped`, `cout_lanes`) are fitted rates, applied in `costs`."""
    graph, node = mapping.graph, op.node
    th, tw = tile.get("h", 1), tile.get("w", 1)
    tci, tco = tile.get("cin", tile.get("c", 1)), tile.get("cout", tile.get("c", 1))  # input / output channel lanes
    operands = [graph.tensors[i].shape for i in node.inputs[:2] if i in graph.tensors]
    out = graph.tensors[node.outputs[0]].shape if node.outputs[0] in graph.tensors else []
    conv = node.op_type in ("Conv", "ConvTranspose")
    if len(operands) < 2 or len(out) < (3 if conv else 1) or min(map(len, operands)) < (2 if conv or node.op_type == "Gemm" else 1):
        return 0, 0, 0, 0  # shapes unknown (after an op shape inference can't see into): in unknown_dims
    if conv:
        w = operands[1]
        kernel = math.prod(w[2:]) if len(w) > 2 else 1
        if node.op_type == "ConvTranspose":  # each input pixel scatters into Co/g × kernel outputs
            x = operands[0]
            spatial = x[2:] + [1] * (2 - len(x[2:]))
            macs = x[0] * x[1] * spatial[0] * spatial[1] * w[1] * kernel
            return macs, x[0] * pad(x[1], tci) * pad(spatial[0], th) * pad(spatial[1], tw) * pad(w[1], tco) * kernel, 0, 0
        n, co = out[0], out[1]
        spatial = out[2:] + [1] * (2 - len(out[2:]))
        cin_g = w[1]
        macs = n * co * spatial[0] * spatial[1] * cin_g * kernel
        # a depthwise/grouped conv leaves the unused input-channel lanes idle (cin_g pads to the
        # lanes it occupies: costs applies them)
        grouped = node.attrs.get("group", 1) > 1
        cin = cin_g if grouped else pad(cin_g, tci)
        return macs, n * co * pad(spatial[0], th) * pad(spatial[1], tw) * cin * kernel, cin_g if grouped else 0, co
    a, b = operands
    if node.op_type == "Gemm":
        m = a[1] if node.attrs.get("transA", 0) else a[0]
        k = a[0] if node.attrs.get("transA", 0) else a[1]
        n = b[0] if node.attrs.get("transB", 0) else b[1]
        batch = 1
    else:  # MatMul, numpy broadcasting over leading dims
        a2, b2 = (a if len(a) > 1 else [1, *a]), (b if len(b) > 1 else [*b, 1])
        m, k, n = a2[-2], a2[-1], b2[-1]
        batch = math.prod(out[:-2]) if len(out) > 2 else 1
    # rows lie along the spatial tile, the depth along the input lanes, columns along the output lanes
    return batch * m * k * n, batch * pad(m, tw) * pad(k, tci) * n, 0, n


def _elements(shape: list[int], lanes: int) -> tuple[int, int]:
    """(elements, elements with the vector lanes' axis padded to the tile). The compiler puts the
    channel axis (NCHW) or the last axis (attention scores [B, heads, N, M], [B, N, C]) in the
    lanes, whichever wastes less."""
    if not shape:
        return 1, 1
    numel = math.prod(shape)
    axes = {1, len(shape) - 1} if len(shape) == 4 else {len(shape) - 1}
    padded = min(numel // shape[a] * pad(shape[a], lanes) for a in axes) if all(shape[a] for a in axes) else numel
    return numel, padded


def demands(mapping: Mapping, profile: dict, weights: str = "int8") -> Demands:
    """`weights`: the recipe's weight type (int8 or int16; npuflow.graph.precision.weight_dtype)."""
    graph = mapping.graph
    units = profile["units"]
    per_elem = profile.get("vector_ops_per_element", {})
    lut = set(profile.get("lut_activations", []))
    # quantise/dequantise and layout conversion (tiled ↔ NCHW) on the CPU, per element handed over
    boundary_ops = float(units["cpu"].get("boundary_ops_per_element", 0.0))
    lanes = units["vector"].get("tile", {}).get("c", 1)
    ttile = units["tensor"].get("tile", {})
    n = len(mapping.ops)
    cols = {k: np.zeros(n) for k in Demands.__dataclass_fields__ if k not in ("parts", "input_bytes", "output_bytes", "part")}
    producer_unit = {o: op.unit for op in mapping.ops for o in op.outputs}
    parts: list[dict] = []
    part = np.zeros(n, dtype=int)
    for i, op in enumerate(mapping.ops):
        acts = graph.activations(op.inputs)
        outs = graph.activations(op.outputs)
        eb = PRECISION_BYTES[op.precision]
        cols["unit"][i] = UNIT_CODES[op.unit]
        cols["precision"][i] = PRECISIONS.index(op.precision)
        tensors = acts + outs
        wide = weights == "int16" and op.precision == "int16" and op.unit == "tensor"
        cols["wide_weights"][i] = float(wide)
        cols["weight_bytes"][i] = sum(t.numel for t in graph.weights(op.inputs)) * (4 if op.unit == "cpu" else 2 if wide else 1)
        # Activations stay on chip while the op's working set fits the buffer; the share that does
        # not fit goes out to DDR and back (costs: the buffer's usable share is fitted). Weights
        # stream from DDR once per batch.
        cols["act_bytes"][i] = sum(t.numel * eb for t in tensors)
        cols["working_bytes"][i] = cols["act_bytes"][i] + cols["weight_bytes"][i]
        out_shape = outs[0].shape if outs else []
        if op.unit in LAYOUT_UNITS and profile.get("layout_reorder", True):  # tensor and vector units keep different tile layouts
            cols["reorder_bytes"][i] = sum(
                graph.tensors[t].numel * eb
                for t in op.inputs
                if t in graph.tensors
                and not graph.tensors[t].weight
                and producer_unit.get(t, op.unit) in LAYOUT_UNITS
                and producer_unit.get(t, op.unit) != op.unit
            )
        if op.unit == "tensor":
            macs, padded, cols["grouped_cin"][i], cols["cout"][i] = _tensor_work(mapping, op, ttile)
            cols["macs"][i], cols["tensor_useful"][i], cols["tensor_ops"][i] = macs, 2.0 * macs, 2.0 * padded
            piped = [a for a in op.fused if a in lut]  # activations the vector unit evaluates on the output
            if piped:
                numel, padded_el = _elements(out_shape, lanes)
                k = sum(per_elem.get(a, 1) for a in piped)
                cols["vector_useful"][i], cols["vector_ops"][i] = numel * k, padded_el * k
        elif op.unit == "vector":
            numel, padded_el = _elements(out_shape, lanes)
            k = per_elem.get(op.op_type, 1)
            if op.op_type in REDUCING_OPS:
                numel, padded_el = _elements(acts[0].shape if acts else out_shape, lanes)
                k *= math.prod(op.node.attrs.get("kernel_shape", [1]))
            cols["vector_useful"][i], cols["vector_ops"][i] = numel * k, padded_el * k
        elif op.unit == "dma":
            cols["move_bytes"][i] = sum(t.numel * eb for t in tensors)
        else:  # CPU fallback: float math; its tensors go through DDR and are converted at each hand-over
            numel = sum(t.numel for t in outs) or 1
            handed = sum(graph.tensors[t].numel for t in op.inputs if producer_unit.get(t, "cpu") != "cpu" and not graph.is_constant(t))
            handed += sum(graph.tensors[t].numel for t in op.outputs if t in graph.tensors and _feeds_npu(mapping, t))
            cols["cpu_ops"][i] = numel * per_elem.get(op.op_type, 1) + handed * boundary_ops
            cols["spill_bytes"][i] = sum(t.numel for t in tensors) * 4
        device = "cpu" if op.unit == "cpu" else "npu"
        if not parts or parts[-1]["device"] != device:
            parts.append({"device": device, "first_op": op.name})
        parts[-1]["last_op"] = op.name
        part[i] = len(parts) - 1
    io = [sum(graph.tensors[t].bytes for t in names if t in graph.tensors) for names in (graph.inputs, graph.outputs)]
    cols["unit"], cols["precision"] = cols["unit"].astype(int), cols["precision"].astype(int)
    return Demands(**cols, part=part, parts=parts, input_bytes=io[0], output_bytes=io[1])


def _feeds_npu(mapping: Mapping, tensor: str) -> bool:
    return any(mapping.op_of.get(u.name) is not None and mapping.op_of[u.name].unit != "cpu" for u in mapping.graph.index.users(tensor))


@dataclass
class Costs:
    """Per op seconds for one batch (arrays aligned with `Mapping.ops`), and the totals. An op's
    span of the timeline is busy_s + overhead_s; the spans, launches and transfers add up to
    total_s."""

    busy_s: np.ndarray  # the op's work, including any wait for its weights
    compute_s: np.ndarray  # the busiest unit
    memory_s: np.ndarray  # its own DDR traffic (weights and spills)
    stall_s: np.ndarray  # waiting for weights beyond its own work
    overhead_s: np.ndarray  # dispatch
    part_overhead_s: np.ndarray  # per subgraph: its launch (NPU parts)
    spill_bytes: np.ndarray  # activations through DDR per frame: the CPU ops' and what the buffer does not hold
    input_s: float  # the inputs' transfer before the first op, the outputs' after the last
    output_s: float
    total_s: float


def rates(profile: dict) -> dict:
    """Sustained rates (work units per second) of each unit by precision, from the profile. A
    tensor unit's int16 column is int16 activations × int8 weights (w8a16: `w8a16_share` of the
    int8 rate, half unless fitted), its a16w16 rate int16 × int16 (the `int16` peak, else a
    quarter of int8): a MAC array's usual ratios, where a chip publishes no figure."""
    u = profile["units"]

    def peak(unit: str, precision: str) -> float:
        peaks = u[unit]["peak_ops_per_s"]
        if unit == "tensor" and precision == "int16":
            value = peaks["int8"] * u[unit].get("w8a16_share", 0.5)
        elif unit == "tensor" and precision == "a16w16":
            value = peaks.get("int16") or peaks["int8"] / 4
        else:
            value = peaks.get(precision) or peaks["int8"] / (2 if precision == "int16" else 4)
        return value * u[unit].get("efficiency", 1.0)

    table = np.ones((4, len(PRECISIONS)))
    for p, name in enumerate(PRECISIONS):
        table[0, p] = peak("tensor", name)
        table[1, p] = peak("vector", name)
    table[2, :] = u["dma"]["bytes_per_s"] * u["dma"].get("efficiency", 1.0)
    table[3, :] = u["cpu"]["peak_ops_per_s"]["float"]
    ddr = profile["memory"]["ddr_bytes_per_s"] * profile["memory"].get("efficiency", 1.0)
    return {"table": table, "ddr": ddr, "tensor_a16w16": peak("tensor", "a16w16")}


def grouped_lanes(profile: dict) -> float:
    """The input lanes a depthwise/grouped conv occupies per output channel (fitted)."""
    tile = profile["units"]["tensor"].get("tile", {})
    return float(tile.get("cin_grouped", tile.get("cin", tile.get("c", 1))))


def cout_lanes(profile: dict) -> float:
    """The output channels the tensor unit computes at once (fitted; the tile's before a fit)."""
    unit = profile["units"]["tensor"]
    tile = unit.get("tile", {})
    return float(unit.get("cout_lanes", tile.get("cout", tile.get("c", 1))))


def _padded(channels: np.ndarray, lanes: float) -> np.ndarray:
    """The work factor of `channels` on `lanes` lanes (1 where channels is 0): lanes / channels
    for fewer channels than lanes, else 1. The ragged last block of a wide layer is left out: a
    step in the fitted lane count would make the fit's landscape flat with local minima."""
    return np.where(channels > 0, np.maximum(1.0, lanes / np.maximum(channels, 1.0)), 1.0)


def tensor_ops(d: Demands, profile: dict) -> np.ndarray:
    """Tensor-unit operations with the output channels padded to the unit's output lanes (a
    16-channel layer on a 64-lane array wastes three quarters of it: why a thin, high-resolution
    network such as YOLOv8n runs far below the chip's peak) and a grouped conv's input channels
    to the lanes it keeps busy: one input lane per output channel of `cin_grouped` (32 on
    AXERA's NPU, 64 on the BPUs before a fit) — why depthwise convs cost so much."""
    return d.tensor_ops * _padded(d.grouped_cin, grouped_lanes(profile)) * _padded(d.cout, cout_lanes(profile))


def costs(d: Demands, profile: dict, batch: int = 1) -> Costs:
    """Seconds of one batch of `batch` frames: each frame is its own pass through the command
    stream (compute and dispatch per frame); weights stay loaded across the batch."""
    r = rates(profile)
    table, ddr = r["table"], r["ddr"]
    ovh = profile["overheads"]
    tensor_rate = np.where(d.wide_weights > 0, r["tensor_a16w16"], table[0, d.precision])
    tensor_s = batch * tensor_ops(d, profile) / tensor_rate
    vector_s = batch * d.vector_ops / table[1, d.precision]
    move_s = batch * d.move_bytes / table[2, 0]
    cpu_s = batch * d.cpu_ops / table[3, 0]
    compute_s = np.maximum(np.maximum(tensor_s, vector_s), np.maximum(move_s, cpu_s))
    npu = d.unit != UNIT_CODES["cpu"]
    buffer = profile["memory"]["onchip_bytes"] * profile["memory"].get("onchip_share", 1.0)
    # the share of an op's working set the buffer cannot hold streams through DDR (in and out)
    spilled = np.where(npu, d.act_bytes * np.clip(1.0 - buffer / np.maximum(d.working_bytes, 1.0), 0.0, 1.0), 0.0)
    spill_bytes = d.spill_bytes + spilled
    spill_s = batch * spill_bytes / ddr
    weight_s = d.weight_bytes / ddr
    own_s = np.maximum(compute_s, spill_s) + batch * d.reorder_bytes / table[2, 0]
    cpu = d.unit == UNIT_CODES["cpu"]
    overhead_s = batch * np.where(cpu, ovh["cpu_op_s"], ovh["op_s"])
    # an op's weights and spills stream during its own compute (double-buffered tiles)
    stall_s = np.maximum(weight_s + spill_s, compute_s) - np.maximum(compute_s, spill_s)
    busy_s = own_s + stall_s
    part_overhead_s = np.array([ovh["subgraph_s"] if p["device"] == "npu" else 0.0 for p in d.parts])
    input_s, output_s = batch * d.input_bytes / ddr, batch * d.output_bytes / ddr
    total_s = float(busy_s.sum() + overhead_s.sum() + part_overhead_s.sum() + input_s + output_s)
    return Costs(busy_s, compute_s, spill_s + weight_s, stall_s, overhead_s, part_overhead_s, spill_bytes, input_s, output_s, total_s)
