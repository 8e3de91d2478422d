"""The `onnx:` source: a model that arrives as an ONNX file (a vendor zoo's `…_deploy.onnx`, a
package's bundled model), local or downloaded with its sha256. There is no torch module: the fetch
stage stores the file's weights (Constant-node weights lifted to initializers) and the export stage
imports the graph (npuflow.graph.onnx_import) instead of exporting one."""

from __future__ import annotations

import copy
import urllib.parse
from pathlib import Path
from typing import ClassVar

from npuflow.sources.core import SOURCES, FetchError, ModelSource, reference
from npuflow.sources.files import ALLOW_HTTP_FIELD, SHA256_FIELD, local_file_problem, local_path, missing_file_problem
from npuflow.util.download import ChecksumMismatch, DownloadError, download
from npuflow.util.io import sha256_file

URL_PREFIXES = ("https://", "http://")


@SOURCES.register("onnx")
class OnnxFileSource(ModelSource):
    syntax = "onnx:<path>, onnx:pkg:<package>/<path> or onnx:<https URL> (with sha256)"
    fields: ClassVar[dict[str, dict]] = {"sha256": SHA256_FIELD, "allow_http": ALLOW_HTTP_FIELD}
    # features: outputs without classes (a backbone's feature map, a saliency map, sequence logits)
    tasks = ("classification", "segmentation", "features")
    carries_graph = True
    example: ClassVar[dict] = {
        "source": "onnx:/nonexistent/tiny_convnet.onnx",
        "task": "classification",
        "input": {"shape": [1, 3, 32, 32]},
    }

    @classmethod
    def example_entry(cls, folder: Path) -> dict:
        path = Path(folder) / "tiny_convnet.onnx"
        write_example_model(path)
        return {**copy.deepcopy(cls.example), "source": f"onnx:{path}"}

    def check(self, entry, where):
        ref = reference(entry)
        if ref.startswith(URL_PREFIXES):
            problems = []
            if ref.startswith("http://") and not entry.get("allow_http", False):
                problems.append(f"{where}.source: plain http is refused; use https, or set allow_http: true")
            if "sha256" not in entry:
                problems.append(f"{where}.sha256: an onnx: URL needs the file's sha256 (the model is the file: it must be the one meant)")
            return problems
        problem = local_file_problem(ref, f"{where}.source")
        return [problem] if problem else []

    def graph_file(self, spec: dict, cache_dir: Path) -> tuple[Path, str]:
        """(the ONNX file, its sha256): downloaded into the cache for a URL, else the local file."""
        ref, where = reference(spec), f"models.{spec['name']}"
        if ref.startswith(URL_PREFIXES):
            name = Path(urllib.parse.urlsplit(ref).path).name
            dest = Path(cache_dir) / "downloads" / spec["name"] / (name if name not in ("", ".", "..") else "model.onnx")
            try:
                return dest, download(ref, dest, spec["sha256"], spec.get("allow_http", False))
            except ChecksumMismatch as e:
                raise FetchError(f"{where}.sha256: {e}") from e
            except DownloadError as e:  # unavailable included: there is no architecture without the file
                raise FetchError(f"{where}.source: {e}") from e
        path = local_path(ref, f"{where}.source")
        problem = missing_file_problem(path, f"{where}.source")
        if problem:
            raise FetchError(problem)
        digest = sha256_file(path)
        if spec.get("sha256") and digest != spec["sha256"].lower():
            raise FetchError(f"{where}.sha256: {path} has sha256 {digest}, expected {spec['sha256'].lower()}")
        return path, digest


def load_onnx_file(path: str | Path, where: str, downloaded: bool = False):
    """The ONNX model in `path` with its external data, which must lie in the file's own folder
    (a `location` of `../../etc/…` is refused, not followed)."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends: the file is not an ONNX model
        raise FetchError(f"{where}.source: {path} is not a readable ONNX model ({type(e).__name__}: {e})") from e
    external = [t for t in _all_tensors(model) if uses_external_data(t)]
    if external and downloaded:
        raise FetchError(
            f"{where}.source: the downloaded file keeps {len(external)} tensors in external data files, which a URL does not bring;"
            " download them beside it and give the local file (onnx:/path/model.onnx)"
        )
    base = path.parent.resolve()
    for tensor in external:
        location = next(e.value for e in tensor.external_data if e.key == "location")
        data = (base / location).resolve()
        if base not in data.parents:
            raise FetchError(f"{where}.source: tensor {tensor.name!r} names external data {location!r} outside the model's folder {base}")
        if not data.is_file():
            raise FetchError(f"{where}.source: tensor {tensor.name!r} needs external data file {data}, which is missing")
    if external:
        load_external_data_for_model(model, str(base))
    return model


def _all_tensors(model):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t


def write_example_model(path: Path) -> None:
    """A tiny ONNX classifier the way exporters outside torch write them: a dynamic batch, opset 12,
    and its convolution weights in Constant nodes (what the `onnx:` source must handle)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def constant(name, shape, scale=0.3):
        value = (rng.standard_normal(shape) * scale).astype(np.float32)
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))

    nodes = [
        constant("w1", (8, 3, 3, 3)),
        constant("b1", (8,)),
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        constant("w2", (16, 8, 3, 3), 0.2),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        constant("fc", (16, 10)),
        helper.make_node("MatMul", ["flat", "fc"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_convnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)], producer_name="npuflow-example")
    model.ir_version = 7
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
