"""Weights policy and checkpoint sources, offline: a server on 127.0.0.1 and files the test makes."""

import hashlib
import http.server
import os
import pickle
import subprocess
import sys
import threading
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import classifier_entry, make_config
from npuflow.pipeline.config import model_spec
from npuflow.sources.core import FetchError
from npuflow.sources.fetch import fetch


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An efficientvit_m0 checkpoint laid out like the original release: state dict under `model`."""
    import timm

    torch.manual_seed(123)
    state = timm.create_model("efficientvit_m0").state_dict()
    d = tmp_path_factory.mktemp("ckpt")
    path = d / "efficientvit_m0.pth"
    torch.save({"model": state, "epoch": 300}, path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest(), state


@pytest.fixture(scope="module")
def server(checkpoint):
    """A plain HTTP file server on 127.0.0.1 serving the checkpoint's folder."""
    folder = str(checkpoint[0].parent)
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=folder, **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def url_spec(url, **extra):
    entry = classifier_entry(source=f"url:{url}", arch="efficientvit_m0", state_dict_key="model", allow_http=True, **extra)
    config = make_config(m=entry)
    config["weights"] = "pretrained"
    return model_spec(config, "m")


def assert_same_weights(fetched, state):
    for k, v in state.items():
        assert torch.equal(fetched[k], v), k


def test_url_checkpoint_is_downloaded_verified_and_loaded(server, checkpoint, tmp_path):
    path, digest, state = checkpoint
    manifest = fetch(url_spec(f"{server}/{path.name}", sha256=digest), tmp_path / "out", tmp_path)
    assert manifest["weights"] == "pretrained" and manifest["weights_detail"]["file_sha256"] == digest
    assert_same_weights(load_file(tmp_path / "out" / "weights.safetensors"), state)


def test_sha256_mismatch_is_refused_and_nothing_kept(server, checkpoint, tmp_path):
    path, _, _ = checkpoint
    with pytest.raises(FetchError, match="sha256 mismatch"):
        fetch(url_spec(f"{server}/{path.name}", sha256="0" * 64), tmp_path / "out", tmp_path)
    assert not (tmp_path / "out").exists()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_missing_state_dict_key_is_named(server, checkpoint, tmp_path):
    path, digest, _ = checkpoint
    spec = url_spec(f"{server}/{path.name}", sha256=digest)
    spec["state_dict_key"] = "state_dict"
    with pytest.raises(FetchError, match=r"models\.m\.state_dict_key: no key 'state_dict'.*'model'"):
        fetch(spec, tmp_path / "out", tmp_path)


def test_file_checkpoint_and_wrong_architecture(checkpoint, tmp_path):
    path, digest, state = checkpoint
    spec = url_spec("http://unused.invalid/x")
    spec.update(source=f"file:{path}", sha256=digest)
    fetch(spec, tmp_path / "ok", tmp_path)
    assert_same_weights(load_file(tmp_path / "ok" / "weights.safetensors"), state)
    spec["arch"] = "efficientvit_m1"
    with pytest.raises(FetchError, match="does not fit architecture efficientvit_m1"):
        fetch(spec, tmp_path / "bad", tmp_path)
    assert not (tmp_path / "bad").exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_payload_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"model": Payload()}))
    spec = url_spec("http://unused.invalid/x")
    spec.update(source=f"file:{evil}", sha256=None)
    with pytest.raises(FetchError, match="not a loadable weights-only checkpoint"):
        fetch(spec, tmp_path / "out", tmp_path)
    assert not marker.exists()


def run_fetch_cli(tmp_path, weights):
    """The fetch stage as Snakemake runs it: a fresh process, hub pointed at a closed local port."""
    config = {"weights": weights, "models": {"m": classifier_entry()}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_ENDPOINT": "https://127.0.0.1:9"}
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "npuflow.cli",
            "fetch",
            "--config",
            str(tmp_path / "c.yaml"),
            "--model",
            "m",
            "--out-dir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    return proc, time.perf_counter() - start


def test_offline_auto_falls_back_to_labelled_random_weights(tmp_path):
    proc, _ = run_fetch_cli(tmp_path, "auto")
    assert proc.returncode == 0, proc.stderr
    manifest = yaml.safe_load((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["weights"] == "random" and manifest["hub_reachable"] is False and manifest["seed"] == 0
    assert "could not load pretrained" in manifest["weights_detail"]
    assert '"weights": "random"' in proc.stdout  # the command says so too, not only the file


def test_offline_pretrained_fails_clearly_and_fast(tmp_path):
    proc, seconds = run_fetch_cli(tmp_path, "pretrained")
    assert proc.returncode == 2
    assert "models.m: weights: pretrained, but" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    print(f"offline pretrained fetch failed in {seconds:.1f} s")  # timed without imports: test_hostile.py
