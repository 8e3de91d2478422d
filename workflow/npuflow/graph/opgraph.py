"""The model as the NPU compilers read it: ONNX nodes over logical tensors, with Quantize/
Dequantize pairs seen as precision annotations (not work), and one producer/consumer index.

`Index` is the project's one producer/consumer index: the simulator's graph, the precision
recipes (`npuflow.graph.precision`) and evaluation (`npuflow.evaluation.evaluate`) all use it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

PRECISION_BYTES = {"int8": 1, "int16": 2, "float": 4}
RANK = {"int8": 0, "int16": 1, "float": 2}
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# Initialisers up to this size keep their values when shapes are inferred (Reshape targets, axes);
# larger ones (weights) are shapes only, so shape inference never copies a model's weights.
_SMALL_INIT_ELEMENTS = 1024


def wider(a: str, b: str) -> str:
    return a if RANK[a] >= RANK[b] else b


@dataclass
class Tensor:
    shape: list[int]
    precision: str = "int8"
    weight: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape) if self.shape else 1

    @property
    def bytes(self) -> int:
        return self.numel * PRECISION_BYTES[self.precision]


@dataclass(eq=False)
class Node:
    """One ONNX node (not Q/DQ, not Constant), its tensor names resolved through Q/DQ pairs."""

    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)


def swaps_last_two(node: Node) -> bool:
    """A Transpose that swaps the last two axes only (a matrix transposed)."""
    perm = list(node.attrs.get("perm", []))
    return (
        node.op_type == "Transpose"
        and len(perm) >= 2
        and perm[-2:] == [len(perm) - 1, len(perm) - 2]
        and perm[:-2] == list(range(len(perm) - 2))
    )


class Index:
    """Which node produces each tensor and which nodes read it, over any node list: `of_onnx`
    for an ONNX graph's NodeProtos, the constructor for `Node`s."""

    def __init__(self, nodes, inputs=lambda n: n.inputs, outputs=lambda n: n.outputs):
        self.producer: dict[str, object] = {}
        self.consumers: dict[str, list] = {}
        for n in nodes:
            for t in inputs(n):
                if t:
                    self.consumers.setdefault(t, []).append(n)
            for t in outputs(n):
                if t:
                    self.producer[t] = n

    @classmethod
    def of_onnx(cls, graph) -> Index:
        return cls(graph.node, lambda n: n.input, lambda n: n.output)

    def users(self, tensor: str) -> list:
        return self.consumers.get(tensor, [])

    def single_user(self, tensor: str):
        users = self.users(tensor)
        return users[0] if len(users) == 1 else None


def _light_copy(model):
    """The model with its large initialisers turned into typed graph inputs: what shape inference
    needs (their shapes) without the bytes, so a 500 MB model infers in the time of a small one."""
    import onnx

    light = onnx.ModelProto()  # built field by field: never a copy of the weights
    light.ir_version, light.producer_name = model.ir_version, model.producer_name
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g = light.graph
    g.name = model.graph.name
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    names = {i.name for i in model.graph.input}
    for init in model.graph.initializer:
        if math.prod(init.dims) <= _SMALL_INIT_ELEMENTS and init.data_location != onnx.TensorProto.EXTERNAL:
            g.initializer.append(init)
        elif init.name not in names:
            g.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return light


class Graph:
    """Logical tensors (shapes, precision, weight or activation) and nodes in execution order."""

    def __init__(self, model, shapes: bool = True):
        import onnx

        g = model.graph
        dims: dict[str, list[int]] = {}
        # A dimension shape inference cannot resolve is counted as 1 and reported (build.json's
        # unknown_dims): the exports here are static, so any is a sign the figures are too low.
        self.unknown_dims = 0
        if shapes:
            inferred = onnx.shape_inference.infer_shapes(_light_copy(model)).graph
            for vi in list(inferred.input) + list(inferred.value_info) + list(inferred.output):
                if not vi.type.tensor_type.HasField("shape"):  # rank unknown: counted below, with its node
                    continue
                d = vi.type.tensor_type.shape.dim
                dims[vi.name] = [x.dim_value if x.dim_value > 0 else 1 for x in d]
                self.unknown_dims += sum(x.dim_value <= 0 for x in d)
        constants: dict[str, tuple[list[int], int]] = {i.name: (list(i.dims), i.data_type) for i in g.initializer}
        for n in g.node:  # Constant nodes carry weights too (e.g. after surgery)
            if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR:
                constants[n.output[0]] = (list(n.attribute[0].t.dims), n.attribute[0].t.data_type)
        self.alias: dict[str, str] = {}
        self.tensors: dict[str, Tensor] = {name: Tensor(shape, "float", weight=True) for name, (shape, _) in constants.items()}
        wide = (onnx.TensorProto.INT16, onnx.TensorProto.UINT16)
        precision_of = {}
        for n in g.node:
            if n.op_type in QDQ_OPS:
                zp = n.input[2] if len(n.input) > 2 else None
                dtype = constants[zp][1] if zp in constants else onnx.TensorProto.UINT8
                precision_of[n.output[0] if n.op_type == "QuantizeLinear" else n.input[0]] = "int16" if dtype in wide else "int8"
                self.alias[n.output[0]] = self.resolve(n.input[0])
        for name, p in precision_of.items():
            t = self.resolve(name)
            if t in self.tensors:
                self.tensors[t].precision = p
        self.nodes: list[Node] = []
        for n in g.node:
            if n.op_type in QDQ_OPS or n.op_type == "Constant":
                continue
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            node = Node(
                n.name or f"{n.op_type}_{len(self.nodes)}", n.op_type, [self.resolve(i) for i in n.input if i], list(n.output), attrs
            )
            for o in n.output:
                if o and o not in self.tensors:
                    self.tensors[o] = Tensor(dims.get(o, []), "int8")
                # A node shape inference knows nothing of (a custom domain's) leaves its outputs
                # without even a rank: count it, as the figures downstream of it are guesses.
                self.unknown_dims += bool(shapes and o and o not in dims)
            self.nodes.append(node)
        inits = set(constants)
        for i in g.input:
            if i.name not in inits:
                self.tensors.setdefault(i.name, Tensor(dims.get(i.name, []), "int8"))
        self.inputs = [self.resolve(i.name) for i in g.input if i.name not in inits]
        self.outputs = [self.resolve(o.name) for o in g.output]
        self.index = Index(self.nodes)
        self.by_name = {n.name: n for n in self.nodes}

    def resolve(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def tensor(self, name: str) -> Tensor | None:
        return self.tensors.get(self.resolve(name))

    def is_constant(self, name: str) -> bool:
        t = self.tensors.get(name)
        return t is not None and t.weight

    def activations(self, names) -> list[Tensor]:
        """The non-constant tensors among `names`."""
        return [self.tensors[t] for t in names if t in self.tensors and not self.tensors[t].weight]

    def weights(self, names) -> list[Tensor]:
        return [self.tensors[t] for t in names if t in self.tensors and self.tensors[t].weight]
