"""A model's graph cut into segments, one per group of tensors to expose, each run from the
tensors the segments before it computed: exposing a big model's activations in bounded groups
(npuflow.evaluation.layers) then runs each node once per image, not once per group.

Segment k holds the nodes that compute its group's tensors and are in no earlier segment; it reads
the graph input and the tensors earlier segments computed, and returns its group's tensors and
those a later segment or group reads. Every value comes from nodes whose outputs were exposed, as
in one session exposing every tensor."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Segment:
    model: object  # onnx.ModelProto of its nodes and the initializers they read; None: no node
    inputs: tuple[str, ...]  # what a run feeds: the graph input, tensors earlier segments kept
    outputs: tuple[str, ...]  # the group's tensors it computes, then those it keeps for later
    group: tuple[str, ...]  # the tensors of the group (computed here or kept from earlier)
    keep: frozenset[str]  # the tensors held after it for later segments and groups

    def step(self, run, feeds: dict[str, np.ndarray], kept: dict[str, np.ndarray]) -> tuple[dict, dict]:
        """({group tensor: value}, what is kept after it) for one image: `run` runs this segment's
        session on its feeds (onnxutil.ReusedOutputs.run: views valid until its next run), `feeds`
        holds the graph input, `kept` what the segment before it kept for this image."""
        got = dict(zip(self.outputs, run({t: feeds[t] if t in feeds else kept[t] for t in self.inputs}))) if self.model else {}
        values = {t: got[t] if t in got else kept[t] for t in self.group}
        after = {t: kept[t] if t in kept else np.array(got[t]) for t in self.keep}
        return values, after


def cut(model, groups: list[list[str]]) -> list[Segment] | None:
    """The segments of `model` computing `groups` (tensor names, in graph order), or None where the
    graph cannot be cut (a node with a subgraph, which may read outer-scope tensors; a tensor at a
    cut of unknown type): the caller then runs the whole model for each group."""
    import onnx

    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return None
    inferred = onnx.shape_inference.infer_shapes(model).graph
    types = {vi.name: vi.type for vi in [*inferred.input, *inferred.value_info, *inferred.output]}
    inits = {i.name: i for i in graph.initializer}
    fed = {i.name for i in graph.input if i.name not in inits}
    producer = {t: i for i, n in enumerate(graph.node) for t in n.output}
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(graph.node):
        for t in n.input:
            consumers.setdefault(t, []).append(i)
    # A Constant goes into every segment that reads it, as an initializer would: fed as an input
    # instead, an empty Resize `scales` (opset 11: "not given") reads as given.
    constant = {t for n in graph.node if n.op_type == "Constant" for t in n.output}
    done: set[int] = set()
    kept: set[str] = set()
    out = []
    for k, group in enumerate(groups):
        available = fed | kept
        nodes, stack = set(), [t for t in group if t not in available]
        while stack:
            i = producer.get(stack.pop())
            if i is not None and i not in nodes:
                nodes.add(i)
                stack.extend(x for x in graph.node[i].input if x and (x in constant or x not in available) and x not in inits)
        made = {t for i in nodes for t in graph.node[i].output}
        reads = sorted({x for i in nodes for x in graph.node[i].input if x and x not in inits and x not in made})
        done |= nodes
        later = {t for g in groups[k + 1 :] for t in g}
        keep = {t for t in (made | kept) - constant if t in later or any(c not in done for c in consumers.get(t, ()))}
        outputs = [t for t in group if t in made] + sorted(keep & made - set(group))
        if any(t not in types or not types[t].HasField("tensor_type") for t in [*reads, *outputs]):
            return None
        if not nodes:  # the group was computed and kept before
            out.append(Segment(None, (), (), tuple(group), frozenset(keep)))
            kept = keep
            continue
        sub = onnx.helper.make_graph(
            [graph.node[i] for i in sorted(nodes)],
            f"{graph.name}_segment{k}",
            [onnx.helper.make_value_info(t, types[t]) for t in reads],
            # with the shapes inference found: onnxutil.ReusedOutputs preallocates those it states
            [onnx.helper.make_value_info(t, types[t]) for t in outputs],
            [inits[x] for x in sorted({x for i in nodes for x in graph.node[i].input if x in inits})],
        )
        m = onnx.helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)
        m.functions.extend(model.functions)
        out.append(Segment(m, tuple(reads), tuple(outputs), tuple(group), frozenset(keep)))
        kept = keep
    return out
