"""Mapping passes: which unit runs each node and at what precision, patterns collapsed into one op,
and the vendor compilers' fusions (conv/matmul + BN/activation/affine/residual add, chains of
data moves, transposes folded into matmuls, channel views). The result is a `Mapping`: the ops the
NPU schedules, in execution order, each covering one or more ONNX nodes."""

from __future__ import annotations

from dataclasses import dataclass, field

from npuflow.graph import patterns
from npuflow.graph.opgraph import RANK, Graph, Node, swaps_last_two, wider

UNITS = ("tensor", "vector", "dma", "cpu")
VIEW_OPS = ("Split", "Slice", "Concat")


@dataclass(eq=False)
class Op:
    """One op as the NPU schedules it: an ONNX node (the anchor), plus the nodes fused into it."""

    name: str
    op_type: str  # the anchor's type, or the pattern's (Gelu) for a collapsed pattern
    node: Node  # the anchor: its attributes and shapes describe the work
    unit: str
    precision: str
    members: list[Node] = field(default_factory=list)  # every node it covers, anchor included
    fused: list[str] = field(default_factory=list)  # op types fused after the anchor
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    head_dim: int = 0  # for the matmuls of a recognised attention core


@dataclass
class Mapping:
    graph: Graph
    ops: list[Op]  # scheduled ops in execution order (free nodes excluded)
    op_of: dict[str, Op]  # node name -> the op that covers it (absent: a free node)
    matches: list = field(default_factory=list)  # the fusion patterns found (patterns.Match)

    def groups(self) -> dict[str, list[str]]:
        """{node: the nodes run together with it as one op} (a free node alone)."""
        out = {n.name: [n.name] for n in self.graph.nodes}
        for op in self.ops:
            for m in op.members:
                out[m.name] = [x.name for x in op.members]
        return out

    def root(self, node_name: str) -> str | None:
        op = self.op_of.get(node_name)
        return op.name if op is not None else None


def _channel_axis(rank: int) -> int:
    """The axis the NPU tiles innermost: C of NCHW, the feature axis of [B, N, C]."""
    return 1 if rank == 4 else rank - 1


def is_aligned_view(graph: Graph, node: Node, tile_c: int) -> bool:
    """Split/Slice/Concat along the channel axis at tile-aligned sizes is an address offset in the
    tiled layout (the compiler makes producers write in place), not a data move."""
    if node.op_type not in VIEW_OPS or not tile_c:
        return False
    parts = [t.shape for t in graph.activations(node.inputs if node.op_type == "Concat" else node.outputs)]
    whole_t = graph.tensors.get(node.outputs[0] if node.op_type == "Concat" else node.inputs[0])
    whole = whole_t.shape if whole_t is not None else []
    if not whole or not parts or any(len(p) != len(whole) for p in parts):
        return False
    axis = _channel_axis(len(whole))
    differing = {i for p in parts for i in range(len(whole)) if p[i] != whole[i]}
    return differing <= {axis} and whole[axis] % tile_c == 0 and all(p[axis] % tile_c == 0 for p in parts)


def _unit_of(op_type: str, units: dict) -> str:
    return next((u for u in ("tensor", "vector", "dma") if op_type in units[u].get("ops", [])), "cpu")


def _place(op_type: str, dtype: str | None, units: dict) -> str:
    """A float op runs on the CPU unless the unit it maps to has a float rate, as the vendor
    compilers leave unquantised ops to the CPU."""
    unit = _unit_of(op_type, units)
    if dtype == "float" and "float" not in units.get(unit, {}).get("peak_ops_per_s", {}):
        return "cpu"
    return unit


def _precision(graph: Graph, node: Node, unit: str, dtype: str | None) -> str:
    if unit == "cpu":
        return "float"
    if dtype is not None and dtype != "float":
        return dtype
    # NPU compilers quantise every op they run: an op without Q/DQ runs at its inputs' precision
    found = max((t.precision for t in graph.activations(node.inputs)), key=RANK.get, default="int8")
    return "int8" if found == "float" else found


def map_graph(graph: Graph, profile: dict, node_precision: dict[str, str]) -> Mapping:
    """Every node to an op: free, or on a unit at a precision, patterns collapsed, then fused."""
    units = profile["units"]
    free = set(profile.get("free_ops", []))
    tile = units["tensor"].get("tile", {})
    # The channel block a producer writes its output in: `c`, or the output lanes where the tile
    # sets input and output channels apart (the BPUs write 32-channel blocks; 8 was worse held out
    # by family: 12.1 % MAPE against 11.6 %, see the design notes)
    tile_c = tile.get("c", tile.get("cout", 0))
    op_of: dict[str, Op] = {}
    ops: list[Op] = []
    head_dims: dict[int, int] = {}
    matches = patterns.find(graph)
    for m in matches:
        if not m.collapse:
            hd = dict(m.info).get("head_dim", 0)
            head_dims.update({id(n): hd for n in m.members if n.op_type == "MatMul"})
            continue
        # a collapsed pattern runs at the widest precision the recipe gives any of its nodes
        given = [node_precision[n.name] for n in m.members if n.name in node_precision]
        dtype = max(given, key=RANK.get) if given else None
        unit = _place(m.pattern, dtype, units)
        op = Op(
            m.root.name, m.pattern, m.root, unit, _precision(graph, m.root, unit, dtype), list(m.members), [], [m.x], list(m.root.outputs)
        )
        op_of.update({n.name: op for n in m.members})
    for node in graph.nodes:
        if node.name in op_of:
            if op_of[node.name].node is node:
                ops.append(op_of[node.name])
            continue
        if node.op_type in free or is_aligned_view(graph, node, tile_c):
            continue
        dtype = node_precision.get(node.name)
        unit = _place(node.op_type, dtype, units)
        op = Op(
            node.name, node.op_type, node, unit, _precision(graph, node, unit, dtype), [node], [], list(node.inputs), list(node.outputs)
        )
        op.head_dim = head_dims.get(id(node), 0)
        op_of[node.name] = op
        ops.append(op)
    mapping = Mapping(graph, ops, op_of, matches)
    fuse_into_tensor_ops(mapping, profile)
    merge_moves(mapping, set(profile.get("mergeable_moves", [])))
    fold_operand_transposes(mapping)
    mapping.ops = [op for op in mapping.ops if op.unit != "free" and mapping.op_of.get(op.name) is op]
    return mapping


def _consumer_ops(mapping: Mapping, tensor: str) -> list[Op | None]:
    """The ops reading a tensor (None for a free node, e.g. a reshape)."""
    seen, out = set(), []
    for user in mapping.graph.index.users(tensor):
        op = mapping.op_of.get(user.name)
        if id(op) not in seen:
            seen.add(id(op))
            out.append(op)
    return out


def _absorb(mapping: Mapping, into: Op, op: Op) -> None:
    produced = {o for n in into.members for o in n.outputs}
    into.inputs += [i for i in op.inputs if i not in produced and i not in into.inputs]
    into.members += op.members
    into.fused.append(op.op_type)
    into.outputs = list(op.outputs)
    into.precision = wider(into.precision, op.precision)  # a wider fused output widens the op
    for n in op.members:
        mapping.op_of[n.name] = into


def _follow_free(mapping: Mapping, tensor: str) -> tuple[list[Op | None], str]:
    """Consumers of `tensor`, looking through free nodes of one input and one output (reshape,
    an aligned slice) that are its only user."""
    graph = mapping.graph
    while True:
        users = graph.index.users(tensor)
        if (
            len(users) == 1
            and users[0].name not in mapping.op_of
            and len(users[0].outputs) == 1
            and len(graph.activations(users[0].inputs)) == 1
        ):
            tensor = users[0].outputs[0]
            continue
        return _consumer_ops(mapping, tensor), tensor


def fuse_into_tensor_ops(mapping: Mapping, profile: dict) -> None:
    """conv/gemm/matmul + following BN/activation, constant scale or bias, and one residual Add
    become one op, as the vendor compilers do."""
    graph = mapping.graph
    fusable = set(profile.get("fusable_activations", []))
    for op in list(mapping.ops):
        if op.unit != "tensor" or mapping.op_of[op.name] is not op:
            continue
        added_residual = False
        while True:
            users, _ = _follow_free(mapping, op.outputs[0])
            if len(users) != 1 or users[0] is None:
                break
            nxt = users[0]
            if nxt is op or nxt.unit != "vector":
                break
            acts = graph.activations(nxt.inputs)
            affine = nxt.op_type in ("Mul", "Add", "Sub", "Div") and len(acts) == 1 and any(graph.is_constant(i) for i in nxt.inputs)
            residual = nxt.op_type == "Add" and not added_residual and len(acts) == 2
            if not (nxt.op_type in fusable or affine or residual):
                break
            added_residual |= residual
            _absorb(mapping, op, nxt)


def merge_moves(mapping: Mapping, moves: set[str]) -> None:
    """A chain of data moves (e.g. Transpose → Reshape → Transpose, window partition/reverse)
    is done as one move: the compilers merge consecutive permutes; metadata reshapes pass through."""
    for op in list(mapping.ops):
        if op.unit != "dma" or op.op_type not in moves or mapping.op_of[op.name] is not op:
            continue
        while True:
            users, _ = _follow_free(mapping, op.outputs[0])
            if len(users) != 1 or users[0] is None or users[0].op_type not in moves or users[0] is op:
                break
            _absorb(mapping, op, users[0])


def fold_operand_transposes(mapping: Mapping) -> None:
    """A Transpose of the last two axes that only feeds MatMuls is the MatMul reading its
    operand transposed (as Gemm's transB): no data move."""
    for op in mapping.ops:
        if op.op_type != "Transpose" or op.fused or op.unit != "dma":
            continue
        if not swaps_last_two(op.node):
            continue
        users, _ = _follow_free(mapping, op.outputs[0])
        if users and all(u is not None and u.node.op_type in ("MatMul", "Gemm") and u.unit == "tensor" for u in users):
            op.unit = "free"
            for n in op.members:
                mapping.op_of.pop(n.name, None)
