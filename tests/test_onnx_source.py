"""The `onnx:` source: an ONNX file as a model — Constant-node weights lifted, dynamic dimensions
fixed to the entry's shape (or refused in one line), external data kept inside the model's folder,
a URL checked by its sha256 — and `task: features`, fidelity figures without classes."""

import hashlib
import http.server
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import make_config, reference_and_evaluate, run_front
from npuflow.graph.export import export
from npuflow.graph.onnx_import import OnnxImportError
from npuflow.pipeline.config import ConfigError, model_spec
from npuflow.quant.quantize import quantize
from npuflow.sources.core import FetchError
from npuflow.sources.fetch import fetch
from npuflow.sources.onnx_files import write_example_model
from npuflow.util.onnxutil import fixed_input, load, run_onnx


def onnx_spec(path, shape=(1, 3, 32, 32), task="classification", **extra):
    config = make_config(m={"source": f"onnx:{path}", "task": task, "input": {"shape": list(shape)}, **extra})
    return model_spec(config, "m")


def fetch_and_export(spec, root):
    fetch(spec, root / "fetch", root)
    return export(spec, fetch_dir=root / "fetch", out_onnx=root / "m.onnx", out_json=root / "export.json")


def save_model(path, nodes, inputs, outputs, initializers=(), opset=13):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def fixed_size_model(path, size=64):
    """A Conv at a fixed H×W (as many vendor zoo files are)."""
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    return save_model(
        path,
        [helper.make_node("Conv", ["img", "w"], ["out"])],
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, size, size])],
        [w],
    )


def test_constant_weights_are_lifted_and_dynamic_dims_fixed(tmp_path):
    """The example file (dynamic N, H, W; opset 12; weights in Constant nodes) becomes an opset-17
    model with one input `input` of the entry's shape, its weights as initializers, and the same
    outputs as the file run by onnxruntime."""
    write_example_model(tmp_path / "net.onnx")
    spec = onnx_spec(tmp_path / "net.onnx", shape=(1, 3, 40, 48))
    manifest = fetch(spec, tmp_path / "fetch", tmp_path)
    detail = manifest["weights_detail"]
    assert detail["constants_lifted"] == 4 and detail["opset"] == 12
    assert detail["file_sha256"] == hashlib.sha256((tmp_path / "net.onnx").read_bytes()).hexdigest()
    assert manifest["params"] == 8 * 3 * 9 + 8 + 16 * 8 * 9 + 16 * 10 and manifest["family"] == "net"
    report = export(spec, fetch_dir=tmp_path / "fetch", out_onnx=tmp_path / "m.onnx", out_json=tmp_path / "export.json")
    assert report["imported"]["dynamic_dims_fixed"] == {"N": 1, "H": 40, "W": 48}
    assert report["imported"]["renamed"] == {"x": "input", "logits": "output"}
    assert report["output_shape"] == [1, 10] and report["opset"] == 17
    model = load(tmp_path / "m.onnx")
    assert not [n for n in model.graph.node if n.op_type == "Constant"]
    assert {"w1", "b1", "w2", "fc"} <= {t.name for t in model.graph.initializer}
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 40, 48]
    x = fixed_input([1, 3, 40, 48], seed=5)
    np.testing.assert_allclose(run_onnx(tmp_path / "m.onnx", {"input": x})[0], run_onnx(tmp_path / "net.onnx", {"x": x})[0], rtol=1e-6)


def test_a_fixed_dimension_the_entry_contradicts_is_refused_in_one_line(tmp_path):
    spec = onnx_spec(fixed_size_model(tmp_path / "f.onnx"), shape=(1, 3, 96, 64))
    with pytest.raises(OnnxImportError) as e:
        fetch_and_export(spec, tmp_path)
    assert str(e.value) == (
        "models.m.input.shape: the ONNX file's input 'img' is fixed to 64 at dimension 2 (NCHW), input.shape gives 96:"
        " set input.shape: [1, 3, 64, 64]"
    )
    assert not (tmp_path / "m.onnx").exists()


def test_a_graph_that_only_runs_at_its_own_size_is_refused_naming_the_shape(tmp_path):
    """A Reshape to a constant size holds only for the file's own input size."""
    shape = numpy_helper.from_array(np.array([1, 3 * 8 * 8], np.int64), "shape")
    path = save_model(
        tmp_path / "r.onnx",
        [helper.make_node("Reshape", ["x", "shape"], ["out"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 192])],
        [shape],
    )
    with pytest.raises(OnnxImportError, match=r"^models\.m\.input\.shape: the graph does not (take|run with) .*16"):
        fetch_and_export(onnx_spec(path, shape=(1, 3, 16, 16)), tmp_path)
    assert not (tmp_path / "m.onnx").exists()


def test_two_inputs_are_refused_naming_them(tmp_path):
    path = save_model(
        tmp_path / "two.onnx",
        [helper.make_node("Add", ["a", "b"], ["out"])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 8, 8]) for n in ("a", "b")],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    with pytest.raises(OnnxImportError, match=r"models\.m\.source: the ONNX file has 2 inputs \(a, b\)"):
        fetch_and_export(onnx_spec(path, shape=(1, 3, 8, 8)), tmp_path)


def test_external_data_beside_the_file_is_read_and_outside_it_refused(tmp_path):
    model = onnx.load(str(fixed_size_model(tmp_path / "src.onnx", 8)))
    folder = tmp_path / "zoo"
    folder.mkdir()
    onnx.save(model, str(folder / "ext.onnx"), save_as_external_data=True, location="ext.data", size_threshold=0)
    report = fetch_and_export(onnx_spec(folder / "ext.onnx", shape=(1, 3, 8, 8)), tmp_path / "ok")
    assert report["max_abs_diff_vs_source"] == 0.0
    outside = onnx.load(str(folder / "ext.onnx"), load_external_data=False)
    assert outside.graph.initializer[0].external_data  # the test's file does keep its weight outside
    for entry in outside.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../secret.data"
    (tmp_path / "secret.data").write_bytes((folder / "ext.data").read_bytes())
    onnx.save(outside, str(folder / "escape.onnx"))
    with pytest.raises(FetchError, match=r"names external data '\.\./secret\.data' outside the model's folder"):
        fetch(onnx_spec(folder / "escape.onnx", shape=(1, 3, 8, 8)), tmp_path / "bad", tmp_path)
    assert not (tmp_path / "bad").exists()


@pytest.fixture
def served(tmp_path):
    write_example_model(tmp_path / "www" / "net.onnx")
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path / "www"), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/net.onnx", hashlib.sha256((tmp_path / "www" / "net.onnx").read_bytes()).hexdigest()
    httpd.shutdown()
    httpd.server_close()


def test_a_url_needs_its_sha256_and_is_checked_against_it(served, tmp_path):
    url, digest = served
    with pytest.raises(ConfigError, match=r"models\.m\.sha256: an onnx: URL needs the file's sha256"):
        onnx_spec(url, allow_http=True)
    manifest = fetch(onnx_spec(url, allow_http=True, sha256=digest), tmp_path / "ok", tmp_path / "cache")
    assert manifest["weights_detail"]["file_sha256"] == digest
    assert manifest["weights_detail"]["file"].startswith(str(tmp_path / "cache" / "downloads" / "m"))
    with pytest.raises(FetchError, match=r"^models\.m\.sha256: .*mismatch"):
        fetch(onnx_spec(url, allow_http=True, sha256="0" * 64), tmp_path / "bad", tmp_path / "cache2")
    assert not (tmp_path / "bad").exists()


def test_an_unreachable_url_fails_without_random_fallback(tmp_path):
    """There is no architecture to initialise without the file: `weights: auto` cannot fall back."""
    spec = onnx_spec("https://127.0.0.1:9/net.onnx", sha256="0" * 64)
    spec["weights"] = "auto"
    with pytest.raises(FetchError, match=r"^models\.m\.source: "):
        fetch(spec, tmp_path / "out", tmp_path)
    assert not (tmp_path / "out").exists()


def test_a_changed_file_after_fetch_is_caught_by_export(tmp_path):
    write_example_model(tmp_path / "net.onnx")
    spec = onnx_spec(tmp_path / "net.onnx")
    fetch(spec, tmp_path / "fetch", tmp_path)
    fixed_size_model(tmp_path / "net.onnx", 32)
    with pytest.raises(OnnxImportError, match=r"models\.m\.source: .* changed since the fetch stage read it"):
        export(spec, fetch_dir=tmp_path / "fetch", out_onnx=tmp_path / "m.onnx", out_json=tmp_path / "e.json")


def test_features_models_get_fidelity_figures_and_no_accuracy(tmp_path):
    """`task: features` (outputs without classes): cosine, SQNR and the per-layer table; no
    agreement or accuracy figure."""
    write_example_model(tmp_path / "net.onnx")
    spec = onnx_spec(tmp_path / "net.onnx", task="features")
    paths = run_front(spec, tmp_path / "r")
    quantize(
        paths["surgery_onnx"],
        ranges_json=paths["ranges"],
        calibration_json=paths["calibration"],
        recipe={"default": "int8"},
        out_onnx=tmp_path / "q.onnx",
        out_json=tmp_path / "q.json",
    )
    ref, report = reference_and_evaluate(tmp_path / "q.onnx", spec, paths, tmp_path)
    assert report["task"] == "features" and 0.5 < report["cosine"] <= 1 and np.isfinite(report["sqnr_db"])
    assert not {"top1_agreement", "top5_agreement", "pixel_agreement", "top1", "miou", "float_top1"} & set(report)
    assert not [k for k in ref if k.startswith("float_")] and "labelled_images" not in ref


def test_features_models_refuse_a_top1_goal(tmp_path):
    write_example_model(tmp_path / "net.onnx")
    with pytest.raises(
        ConfigError, match=r"models\.m\.mixed_precision\.goal\.metric: top1_agreement is not a goal for task: features; use cosine"
    ):
        onnx_spec(tmp_path / "net.onnx", task="features", mixed_precision={"goal": {"metric": "top1_agreement", "value": 0.9}})
