"""Stage fetch: get the model's weights by the weights policy and store them as safetensors with a
manifest saying where they came from — pretrained, or seeded random (and why)."""

from __future__ import annotations

import time
from pathlib import Path

from npuflow.sources.core import FetchError, WeightsUnavailable, reference, source_for
from npuflow.util.io import atomic_path, sha256_file, write_json

WEIGHTS_FILE = "weights.safetensors"
MANIFEST_FILE = "manifest.json"


def build_model(spec: dict, seed: int):
    """The model's architecture with seeded random weights (deterministic for a given seed)."""
    import torch

    torch.manual_seed(seed)
    return source_for(spec).build(spec)


def fetch(spec: dict, out_dir: str | Path, cache_dir: str | Path = "results") -> dict:
    """Write out_dir/weights.safetensors and out_dir/manifest.json; return the manifest."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    policy = spec["weights"]
    source = source_for(spec)
    if source.carries_graph:
        return _fetch_graph(spec, source, out_dir, Path(cache_dir), start)
    hub_online = source.probe_hub() if policy != "random" else None
    details, reason = {}, None
    module = None
    if policy in ("pretrained", "auto"):
        try:
            module, details = source.load_pretrained(spec, Path(cache_dir))
        except WeightsUnavailable as e:
            if policy == "pretrained":
                raise FetchError(f"models.{spec['name']}: weights: pretrained, but {e}") from e
            reason = str(e)
    if module is None:
        module = build_model(spec, spec["seed"])
        reason = reason or "weights: random in the config"
    weights = "random" if reason else "pretrained"

    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(out_dir / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
    manifest = {
        "model": spec["name"],
        "source": spec["source"],
        "arch": spec.get("arch"),
        "task": spec["task"],
        "family": source.family(module),
        "weights": weights,
        "weights_detail": reason if weights == "random" else details,
        "seed": spec["seed"] if weights == "random" else None,
        "hub_reachable": hub_online,
        "params": int(sum(v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))),
        "weights_sha256": sha256_file(out_dir / WEIGHTS_FILE),
        "preprocessing": _preprocessing(spec, source, module),
        **({"head": head} if (head := source.head(module)) is not None else {}),
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_json(out_dir / MANIFEST_FILE, manifest)
    return manifest


def _fetch_graph(spec: dict, source, out_dir: Path, cache_dir: Path, start: float) -> dict:
    """An ONNX file's weights (Constant-node weights lifted to initializers) as safetensors; the
    export stage imports the graph from the file the manifest names."""
    from safetensors.numpy import save_file

    from npuflow.sources.onnx_files import URL_PREFIXES, load_onnx_file
    from npuflow.util.onnxutil import lift_constants

    path, digest = source.graph_file(spec, cache_dir)
    model = load_onnx_file(path, f"models.{spec['name']}", downloaded=reference(spec).startswith(URL_PREFIXES))
    lifted = lift_constants(model)
    arrays = onnx_weights(model)
    with atomic_path(out_dir / WEIGHTS_FILE) as tmp:
        save_file(arrays, str(tmp))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    manifest = {
        "model": spec["name"],
        "source": spec["source"],
        "arch": None,
        "task": spec["task"],
        "family": Path(path).stem,
        "weights": "pretrained",
        "weights_detail": {
            "from": spec["source"],
            "file": str(Path(path).resolve()),
            "file_sha256": digest,
            "opset": opset,
            "producer": " ".join(filter(None, (model.producer_name, model.producer_version))) or None,
            "constants_lifted": lifted,
            # the file is the model: there is no architecture to initialise at random
            **(
                {"note": "weights: random does not apply to an onnx: source; the file's own weights are used"}
                if spec["weights"] == "random"
                else {}
            ),
        },
        "seed": None,
        "hub_reachable": None,
        "params": int(sum(a.size for a in arrays.values() if a.dtype.kind == "f")),
        "weights_sha256": sha256_file(out_dir / WEIGHTS_FILE),
        "preprocessing": _preprocessing(spec, source, None),
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_json(out_dir / MANIFEST_FILE, manifest)
    return manifest


def onnx_weights(model) -> dict:
    """The numeric initializers of an ONNX model by name (strings have no safetensors form)."""
    from onnx import numpy_helper

    arrays = {t.name: numpy_helper.to_array(t).copy(order="C") for t in model.graph.initializer}  # ascontiguousarray makes 0-d 1-d
    return {name: a for name, a in arrays.items() if a.dtype.kind in "fiub"}


def _preprocessing(spec, source, module) -> dict:
    default = source.preprocessing(spec, module)
    given = spec["input"]
    return {
        "mean": given.get("mean", default["mean"]),
        "std": given.get("std", default["std"]),
        "crop_pct": default.get("crop_pct", 1.0),
        "interpolation": default.get("interpolation", "bilinear"),
        "resize": default.get("resize", "crop"),
        **({"pad": default["pad"]} if "pad" in default else {}),
        "layout": "NCHW",
        "color": "RGB",
        "scale": "0..1",
    }


def load_model(spec: dict, fetch_dir: str | Path):
    """The fetched model: architecture rebuilt offline, weights from the stage's safetensors."""
    import torch
    from safetensors.torch import load_file

    torch.manual_seed(spec["seed"])
    module = source_for(spec).architecture(spec)
    module.load_state_dict(load_file(str(Path(fetch_dir) / WEIGHTS_FILE)), strict=True)
    return module.eval()
