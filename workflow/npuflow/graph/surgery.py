"""Stage surgery: named onnx-graphsurgeon passes applied in the configured order. Each pass states
what it promises about the outputs and the stage checks that promise on a fixed input."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from npuflow.util.errors import NpuflowError
from npuflow.util.io import atomic_path, write_json
from npuflow.util.onnxutil import fixed_input, input_name, load, magnitude, max_abs_diff, op_counts, run_onnx
from npuflow.util.registry import Registry

SURGERY_PASSES: Registry[type[SurgeryPass]] = Registry("surgery pass")


class SurgeryError(NpuflowError):
    pass


class SurgeryPass:
    """A graph rewrite. `apply` returns the new model and what it did; `verify` raises
    SurgeryError unless the new outputs keep the pass's promise."""

    def apply(self, model):
        raise NotImplementedError

    def verify(self, before: list[np.ndarray], after: list[np.ndarray]) -> dict:
        raise NotImplementedError


def _export(graph, like):
    """gs.export_onnx, keeping the original ir_version and opsets (runtimes pin on them)."""
    import onnx_graphsurgeon as gs

    graph.cleanup().toposort()
    model = gs.export_onnx(graph)
    model.ir_version = like.ir_version
    del model.opset_import[:]
    model.opset_import.extend(like.opset_import)
    return model


@SURGERY_PASSES.register("append_argmax")
class AppendArgMax(SurgeryPass):
    """Class id per pixel as the sole output (ArgMax over channels, keepdims, int64), so the NPU
    returns a small int map instead of float logits (the SegFormer-on-AX650N flow)."""

    def apply(self, model):
        import onnx_graphsurgeon as gs

        graph = gs.import_onnx(model)
        if len(graph.outputs) != 1:
            raise SurgeryError(f"append_argmax expects one output, the model has {len(graph.outputs)}")
        logits = graph.outputs[0]
        shape = list(logits.shape) if logits.shape else None
        if shape is not None:
            shape[1] = 1
        class_ids = gs.Variable("class_ids", dtype=np.int64, shape=shape)
        graph.nodes.append(gs.Node("ArgMax", name="append_argmax", inputs=[logits], outputs=[class_ids], attrs={"axis": 1, "keepdims": 1}))
        graph.outputs = [class_ids]
        return _export(graph, model), {"argmax_of": logits.name, "output": "class_ids"}

    def verify(self, before, after):
        expected = np.argmax(before[0], axis=1)[:, None]
        if after[0].dtype != np.int64 or not np.array_equal(after[0], expected):
            raise SurgeryError("append_argmax: output differs from argmax of the original logits")
        return {"class_ids_equal": True}


@SURGERY_PASSES.register("fold_head_bn")
class FoldHeadBN(SurgeryPass):
    """Fold a BatchNormalization that feeds a Gemm (EfficientViT's BN+Linear head) into the Gemm's
    weights and bias, as Pulsar2's graph optimisation does; outputs unchanged."""

    def apply(self, model):
        import onnx_graphsurgeon as gs

        graph = gs.import_onnx(model)
        folded = []
        for bn in [n for n in graph.nodes if n.op == "BatchNormalization"]:
            consumers = bn.outputs[0].outputs
            if len(consumers) != 1 or consumers[0].op != "Gemm" or consumers[0].inputs[0] is not bn.outputs[0]:
                continue
            gemm = consumers[0]
            params = bn.inputs[1:5]
            if not all(isinstance(p, gs.Constant) for p in params) or not isinstance(gemm.inputs[1], gs.Constant):
                continue
            if gemm.attrs.get("transA", 0) or gemm.attrs.get("alpha", 1.0) != 1.0:
                continue
            gamma, beta, mean, var = (p.values.astype(np.float64) for p in params)
            scale = gamma / np.sqrt(var + bn.attrs.get("epsilon", 1e-5))
            shift = beta - mean * scale
            w = gemm.inputs[1].values.astype(np.float64)
            w_out_in = w if gemm.attrs.get("transB", 0) else w.T  # as [out, in]
            bias = np.zeros(w_out_in.shape[0]) if len(gemm.inputs) < 3 else gemm.inputs[2].values.astype(np.float64)
            bias = bias * gemm.attrs.get("beta", 1.0) + w_out_in @ shift
            w_folded = w_out_in * scale[None, :]
            gemm.inputs[1] = gs.Constant(f"{gemm.name}_W_bnfolded", w_folded.astype(np.float32))
            gemm.attrs["transB"] = 1
            gemm.attrs["beta"] = 1.0
            bias_c = gs.Constant(f"{gemm.name}_B_bnfolded", bias.astype(np.float32))
            if len(gemm.inputs) < 3:
                gemm.inputs.append(bias_c)
            else:
                gemm.inputs[2] = bias_c
            gemm.inputs[0] = bn.inputs[0]
            bn.outputs.clear()
            folded.append({"batchnorm": bn.name, "into": gemm.name})
        if not folded:
            raise SurgeryError("fold_head_bn: found no BatchNormalization feeding a Gemm with constant weights")
        return _export(graph, model), {"folded": folded}

    def verify(self, before, after):
        diff = max_abs_diff(before, after)
        if diff > 1e-4 * magnitude(before):
            raise SurgeryError(f"fold_head_bn changed outputs by {diff:.3g}")
        return {"max_abs_diff": diff}


def surgery(in_onnx: str | Path, *, passes: list[str], out_onnx: str | Path, out_json: str | Path, threads: int = 1) -> dict:
    import onnx

    start = time.perf_counter()
    model = load(in_onnx)
    name = input_name(model)
    shape = [d.dim_value for d in next(i for i in model.graph.input if i.name == name).type.tensor_type.shape.dim]
    feeds = {name: fixed_input(shape)}
    steps = []
    outputs = run_onnx(model, feeds, threads)
    for pass_name in passes:
        rewrite = SURGERY_PASSES.get(pass_name)()
        model_after, details = rewrite.apply(model)
        onnx.checker.check_model(model_after)
        outputs_after = run_onnx(model_after, feeds, threads)
        steps.append({"pass": pass_name, **details, "verified": rewrite.verify(outputs, outputs_after)})
        model, outputs = model_after, outputs_after
    with atomic_path(out_onnx) as tmp:
        onnx.save(model, str(tmp))
    report = {
        "passes": steps,
        "ops": op_counts(model),
        "outputs": [o.name for o in model.graph.output],
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_json(out_json, report)
    return report
