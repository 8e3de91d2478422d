"""What the PTQ transforms share: an ONNX graph's weights as arrays, producers and readers, the
layers with constant weights, the int8 weight quantisation onnxruntime applies, and running a
model with some of its tensors exposed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# onnxruntime's symmetric int8 weights use [-127, 127]: scale = max|w| / 127 (quant_utils).
WEIGHT_QMAX = 127.0


class Weights:
    """A model's constants (initializers and Constant nodes' tensors) as numpy arrays, written
    back on `set`."""

    def __init__(self, model):
        self.model = model
        self.init = {i.name: i for i in model.graph.initializer}
        self.const = {}
        for n in model.graph.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.const[n.output[0]] = n.attribute[0].t

    def __contains__(self, name: str) -> bool:
        return name in self.init or name in self.const

    def get(self, name: str) -> np.ndarray:
        from onnx import numpy_helper

        return numpy_helper.to_array(self.init[name] if name in self.init else self.const[name])

    def set(self, name: str, value: np.ndarray) -> None:
        from onnx import numpy_helper

        new = numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name)
        if name in self.init:
            self.init[name].CopyFrom(new)
        elif name in self.const:
            self.const[name].CopyFrom(new)
        else:
            self.model.graph.initializer.append(new)
            self.init[name] = self.model.graph.initializer[-1]

    def private(self, node, index: int) -> str:
        """The constant at `node.input[index]`, made the node's own first where other inputs
        read it too (onnxsim merges equal initializers: a zero bias may serve every conv), so
        that changing it changes only this node. Returns its (possibly new) name."""
        name = node.input[index]
        uses = sum(t == name for n in self.model.graph.node for t in n.input)
        if uses > 1:
            copy = self.unique_name(f"{name}_{node.name or node.output[0]}")
            self.set(copy, self.get(name))
            node.input[index] = copy
            name = copy
        return name

    def unique_name(self, base: str) -> str:
        taken = set(self.init) | {t for n in self.model.graph.node for t in [*n.input, *n.output]}
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        return name


def readers(model) -> dict[str, list]:
    out: dict[str, list] = {}
    for n in model.graph.node:
        for t in n.input:
            out.setdefault(t, []).append(n)
    for o in model.graph.output:
        out.setdefault(o.name, []).append(None)  # a graph output is read from outside
    return out


def producers(model) -> dict[str, object]:
    return {t: n for n in model.graph.node for t in n.output}


def attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


@dataclass
class Layer:
    """A Conv, Gemm or MatMul with a constant weight: where its output channels lie."""

    node: object
    weight: str
    bias: str | None
    out_axis: int  # the weight's output-channel axis (onnxruntime's per-channel axis)
    groups: int = 1

    @property
    def x(self) -> str:
        return self.node.input[0]


def weighted_layers(model, weights: Weights) -> list[Layer]:
    out = []
    for n in model.graph.node:
        if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in weights:
            bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
            out.append(Layer(n, n.input[1], bias, 0, int(attr(n, "group", 1))))
        elif n.op_type == "Gemm" and n.input[1] in weights and not attr(n, "transA", 0):
            bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
            out.append(Layer(n, n.input[1], bias, 0 if attr(n, "transB", 0) else 1))
        elif n.op_type == "MatMul" and n.input[1] in weights and weights.get(n.input[1]).ndim == 2:
            out.append(Layer(n, n.input[1], None, 1))
    return out


def quantise_weight(w: np.ndarray, axis: int | None) -> np.ndarray:
    """`w` through symmetric int8 quantisation and back: per output channel along `axis`, or
    one scale for the tensor (axis None), as onnxruntime quantises weights."""
    if axis is None:
        absmax = np.max(np.abs(w))
    else:
        absmax = np.max(np.abs(np.moveaxis(w, axis, 0)).reshape(w.shape[axis], -1), axis=1)
        absmax = absmax.reshape([-1 if i == axis else 1 for i in range(w.ndim)])
    scale = np.where(absmax > 0, absmax / WEIGHT_QMAX, 1.0)
    return (np.clip(np.round(w / scale), -WEIGHT_QMAX, WEIGHT_QMAX) * scale).astype(np.float32)


def run_exposing(model, images: np.ndarray, tensors: list[str], reduce) -> dict[str, object]:
    """Run `model` on each image with `tensors` as outputs; fold each tensor's value into
    reduce(name, value, previous) so no image's activations are kept."""
    import onnx

    from npuflow.util.onnxutil import input_name, session

    m = onnx.ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    for t in tensors:
        if t not in present:
            m.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    sess = session(m, 2)
    names = [o.name for o in sess.get_outputs()]
    wanted = [names.index(t) for t in tensors]
    feed = input_name(model)
    acc: dict[str, object] = {}
    for img in images:
        outs = sess.run(None, {feed: img[None]})
        for t, i in zip(tensors, wanted):
            acc[t] = reduce(t, outs[i], acc.get(t))
    return acc


def channel_axis(layer: Layer) -> int:
    """The axis of the layer's input activation that holds its input channels."""
    return 1 if layer.node.op_type in ("Conv", "Gemm") else -1


def outputs_of(model, images: np.ndarray) -> list[np.ndarray]:
    from npuflow.util.onnxutil import input_name, session

    sess = session(model, 2)
    feed = input_name(model)
    runs = [sess.run(None, {feed: img[None]}) for img in images]
    return [np.concatenate([r[i] for r in runs]) for i in range(len(runs[0]))]


def copy_model(model):
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m
