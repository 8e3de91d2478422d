"""Fusion patterns: groups of ONNX nodes that the vendor compilers treat as one operation
(GELU written out with Erf, SiLU as x·sigmoid(x), a LayerNorm decomposed below opset 17, the
attention core). Each is recognised once, here, and used both by the precision recipes (a recipe's
`op_types: {Gelu: int16}` covers every node of each GELU) and by the simulator's fusion (a
collapsing pattern becomes one op on one unit).

A pattern is one registry entry: the op type its members become, whether it collapses into one
op, a matcher anchored on one node type, and an example model (`example()`) the tests run."""

from __future__ import annotations

from dataclasses import dataclass

from npuflow.graph.opgraph import Graph, Node, swaps_last_two
from npuflow.util.registry import Registry


@dataclass(frozen=True, eq=False)
class Match:
    pattern: str  # the op type the members become (e.g. Gelu)
    members: tuple[Node, ...]  # in graph order; the last one writes the result
    x: str  # the tensor the pattern reads
    info: tuple = ()  # pattern-specific facts, e.g. (("head_dim", 16),) for attention
    collapse: bool = True  # one op to the NPU (else its members stay ops, only annotated)

    @property
    def root(self) -> Node:
        return self.members[-1]


class Pattern:
    op_type: str = ""
    anchor: str = ""  # the node type a match starts from
    collapse: bool = True  # becomes one op (else its members stay ops and are only annotated)

    def match(self, graph: Graph, node: Node) -> Match | None:
        raise NotImplementedError

    @staticmethod
    def example():
        """A small ONNX model holding one instance of the pattern (for the tests)."""
        raise NotImplementedError


PATTERNS: Registry[Pattern] = Registry("fusion pattern")


def _user(graph: Graph, node: Node, op_types: tuple[str, ...]) -> Node | None:
    user = graph.index.single_user(node.outputs[0])
    return user if user is not None and user.op_type in op_types else None


def _scaled_by_constant(graph: Graph, node: Node | None) -> bool:
    return node is not None and node.op_type in ("Mul", "Div", "Add", "Sub") and any(graph.is_constant(i) for i in node.inputs)


def _other_input(node: Node, known: str) -> str | None:
    return next((i for i in node.inputs if i != known), None)


def _ordered(graph: Graph, members) -> tuple[Node, ...]:
    position = {id(n): i for i, n in enumerate(graph.nodes)}
    return tuple(sorted(members, key=lambda n: position[id(n)]))


def _model(nodes, inits, shape=(1, 8, 4, 4), opset=17):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        "pattern",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@PATTERNS.register("Gelu")
class Gelu(Pattern):
    """x·½(1 + erf(x/√2)), as torch exports GELU below opset 20 (the ½ taken first or last)."""

    op_type, anchor = "Gelu", "Erf"

    def match(self, graph, node):
        pre = graph.index.producer.get(node.inputs[0])
        if pre is None or pre.op_type not in ("Div", "Mul") or not _scaled_by_constant(graph, pre):
            return None
        x = next(i for i in pre.inputs if not graph.is_constant(i))
        add = _user(graph, node, ("Add",))
        mul = _user(graph, add, ("Mul",)) if add is not None else None
        if mul is None:
            return None
        members, other = [pre, node, add, mul], _other_input(mul, add.outputs[0])
        if other != x:  # ½·x taken first
            half = graph.index.producer.get(other)
            if half is None or half.op_type != "Mul" or x not in half.inputs:
                return None
            members.append(half)
        else:
            scale = _user(graph, mul, ("Mul",))
            if scale is not None and _scaled_by_constant(graph, scale):
                members.append(scale)
        return Match(self.op_type, _ordered(graph, members), x)

    @staticmethod
    def example():
        from onnx import helper

        nodes = [
            helper.make_node("Div", ["x", "sqrt2"], ["d"], name="div"),
            helper.make_node("Erf", ["d"], ["e"], name="erf"),
            helper.make_node("Add", ["e", "one"], ["a"], name="add"),
            helper.make_node("Mul", ["x", "a"], ["m"], name="mul"),
            helper.make_node("Mul", ["m", "half"], ["y"], name="half"),
        ]
        return _model(nodes, {"sqrt2": 1.4142135, "one": 1.0, "half": 0.5})


class _GatedBy(Pattern):
    """x·f(x) for a gate f (the anchor): SiLU/Swish = x·sigmoid(x), HardSwish = x·hardsigmoid(x)."""

    def match(self, graph, node):
        x = node.inputs[0]
        mul = _user(graph, node, ("Mul",))
        if mul is None or set(mul.inputs) != {x, node.outputs[0]}:
            return None
        return Match(self.op_type, (node, mul), x)

    @classmethod
    def example(cls):
        from onnx import helper

        nodes = [helper.make_node(cls.anchor, ["x"], ["g"], name="gate"), helper.make_node("Mul", ["x", "g"], ["y"], name="mul")]
        return _model(nodes, {})


@PATTERNS.register("Swish")
class Swish(_GatedBy):
    op_type, anchor = "Swish", "Sigmoid"


@PATTERNS.register("HardSwish")
class HardSwish(_GatedBy):
    op_type, anchor = "HardSwish", "HardSigmoid"


@PATTERNS.register("LayerNormalization")
class LayerNorm(Pattern):
    """(x − mean) / √(var + ε) · γ + β written out (exports below opset 17, e.g. SegFormer's)."""

    op_type, anchor = "LayerNormalization", "ReduceMean"

    def match(self, graph, node):
        x = node.inputs[0]
        sub = next((u for u in graph.index.users(node.outputs[0]) if u.op_type == "Sub" and u.inputs == [x, node.outputs[0]]), None)
        if sub is None:
            return None
        users = graph.index.users(sub.outputs[0])
        square = next((u for u in users if u.op_type == "Pow" or (u.op_type == "Mul" and u.inputs == [sub.outputs[0]] * 2)), None)
        var = _user(graph, square, ("ReduceMean",)) if square is not None else None
        eps = _user(graph, var, ("Add",)) if var is not None else None
        sqrt = _user(graph, eps, ("Sqrt",)) if eps is not None else None
        div = _user(graph, sqrt, ("Div",)) if sqrt is not None else None
        if div is None or div.inputs != [sub.outputs[0], sqrt.outputs[0]] or len(users) != 2:
            return None
        members = [node, sub, square, var, eps, sqrt, div]
        for op_type in ("Mul", "Add"):  # γ, β
            nxt = _user(graph, members[-1], (op_type,))
            if nxt is not None and _scaled_by_constant(graph, nxt):
                members.append(nxt)
        return Match(self.op_type, tuple(members), x)

    @staticmethod
    def example():
        from onnx import helper

        nodes = [
            helper.make_node("ReduceMean", ["x"], ["mu"], axes=[-1], name="mean"),
            helper.make_node("Sub", ["x", "mu"], ["d"], name="sub"),
            helper.make_node("Pow", ["d", "two"], ["sq"], name="pow"),
            helper.make_node("ReduceMean", ["sq"], ["var"], axes=[-1], name="var"),
            helper.make_node("Add", ["var", "eps"], ["ve"], name="eps"),
            helper.make_node("Sqrt", ["ve"], ["sd"], name="sqrt"),
            helper.make_node("Div", ["d", "sd"], ["n"], name="div"),
            helper.make_node("Mul", ["n", "gamma"], ["g"], name="gamma"),
            helper.make_node("Add", ["g", "beta"], ["y"], name="beta"),
        ]
        return _model(nodes, {"two": 2.0, "eps": 1e-5, "gamma": [1.0] * 4, "beta": [0.0] * 4}, opset=13)


@PATTERNS.register("Attention")
class Attention(Pattern):
    """softmax(Q·Kᵀ · s [+ bias]) · V, the probabilities read by the second matmul directly
    (`attn @ v`, timm's and transformers' attention) or transposed (`v @ attnᵀ`, Ultralytics'
    C2PSA and YOLO12's area attention). Not collapsed: its matmuls run on the tensor unit and its
    softmax where the recipe puts it; the match records the head dimension (Q·Kᵀ's depth) on its
    matmuls and lets a recipe set the precision of the whole attention core."""

    op_type, anchor, collapse = "Attention", "Softmax", False

    def match(self, graph, node):
        members = [node]
        pre = graph.index.producer.get(node.inputs[0])
        # back through the scale, a bias or mask, and the reshapes around a mask (Swin's shifted windows)
        while pre is not None and pre.op_type in ("Mul", "Div", "Add", "Reshape") and len(graph.index.users(pre.outputs[0])) == 1:
            members.append(pre)
            nxt = [i for i in pre.inputs if not graph.is_constant(i)]
            pre = graph.index.producer.get(nxt[0]) if nxt else None
        probs = node.outputs[0]
        moved = _user(graph, node, ("Transpose",))
        if moved is not None and swaps_last_two(moved):  # v @ attnᵀ
            members.append(moved)
            probs = moved.outputs[0]
        av = graph.index.single_user(probs)
        if pre is None or pre.op_type != "MatMul" or av is None or av.op_type != "MatMul" or probs not in av.inputs:
            return None
        q = graph.tensors.get(pre.inputs[0])
        head_dim = q.shape[-1] if q is not None and q.shape else 0
        return Match(self.op_type, _ordered(graph, [pre, *members, av]), pre.inputs[0], (("head_dim", head_dim),), collapse=False)

    @staticmethod
    def example():
        from onnx import helper

        nodes = [
            helper.make_node("Transpose", ["x"], ["kt"], perm=[0, 1, 3, 2], name="kt"),
            helper.make_node("MatMul", ["x", "kt"], ["s"], name="qk"),
            helper.make_node("Mul", ["s", "scale"], ["ss"], name="scale"),
            helper.make_node("Softmax", ["ss"], ["p"], axis=-1, name="softmax"),
            helper.make_node("MatMul", ["p", "x"], ["y"], name="av"),
        ]
        return _model(nodes, {"scale": 0.25}, shape=(1, 2, 16, 8))


def find(graph: Graph) -> list[Match]:
    """Every match in the graph, each node in at most one (registry order decides a tie)."""
    taken: set[int] = set()
    found = []
    for name in PATTERNS.names():
        pattern = PATTERNS.get(name)()
        for node in graph.nodes:
            if node.op_type != pattern.anchor or id(node) in taken:
                continue
            m = pattern.match(graph, node)
            if m is not None and not any(id(n) in taken for n in m.members):
                taken.update(id(n) for n in m.members)
                found.append(m)
    return found
