"""Hostile input and faults (issue #6): npuflow refuses clearly, never runs untrusted code, and
never loses or corrupts results. Everything offline: hostile files are built by the tests,
anything "downloaded" is served on 127.0.0.1. The cases and their tests: docs/hostile-input.md."""

from __future__ import annotations

import http.server
import os
import pickle
import threading
from pathlib import Path

import pytest

# ---------------------------------------------------------------------------------------------
# Downloads (dataset archives and url: checkpoints share one downloader)
# ---------------------------------------------------------------------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; /redirect-* answers 302 to the URL after the prefix, /short/* announces
    more bytes than it sends (a connection dropped mid-transfer). Requests are recorded."""

    requests: list[str] = []

    def do_GET(self):
        type(self).requests.append(self.path)
        if self.path.startswith("/redirect-"):
            self.send_response(302)
            self.send_header("Location", self.path[len("/redirect-"):].replace("|", "://", 1))
            self.end_headers()
        elif self.path.startswith("/short/"):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            self.close_connection = True
        else:
            super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www."""
    www = tmp_path / "www"
    www.mkdir()
    _Handler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a, **k: _Handler(*a, directory=str(www), **k))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", www
    httpd.shutdown()
    httpd.server_close()


# ---------------------------------------------------------------------------------------------
# Checkpoints (url: and file: sources)
# ---------------------------------------------------------------------------------------------


def checkpoint_spec(source: str, weights: str = "pretrained", **extra) -> dict:
    from conftest import classifier_entry, make_config
    from npuflow.config import model_spec

    config = make_config(m=classifier_entry(source=source, arch="efficientvit_m0", allow_http=True, **extra))
    config["weights"] = weights
    return model_spec(config, "m")


@pytest.fixture(scope="module")
def state_dict():
    import timm
    import torch

    torch.manual_seed(0)
    return timm.create_model("efficientvit_m0").state_dict()


def _write_broken_checkpoint(kind: str, folder: Path, state: dict) -> Path:
    import torch
    from safetensors.torch import save_file

    small = {"w": torch.ones(256, 256)}
    if kind == "text.pth":
        (path := folder / "model.pth").write_text("<html>404 Not Found</html>\n" * 20)
    elif kind == "empty.pth":
        (path := folder / "model.pth").write_bytes(b"")
    elif kind == "truncated-zip.pth":
        torch.save(small, path := folder / "model.pth")
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "truncated-legacy.pth":
        torch.save(small, path := folder / "model.pth", _use_new_zipfile_serialization=False)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "truncated.safetensors":
        save_file(small, str(path := folder / "model.safetensors"))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "text.safetensors":
        (path := folder / "model.safetensors").write_text("not safetensors\n")
    elif kind == "code-in-torch-zip.pth":

        class Payload:
            def __reduce__(self):
                return (os.system, (f"touch {folder / 'pwned'}",))

        torch.save({"model": state, "hook": Payload()}, path := folder / "model.pth")
    elif kind.startswith("code-in-pickle"):

        class Payload:
            def __reduce__(self):
                return (os.system, (f"touch {folder / 'pwned'}",))

        (path := folder / "model.pth").write_bytes(pickle.dumps({"model": Payload()}, protocol=int(kind[-5])))
    elif kind == "tensor-not-state-dict.pth":
        torch.save(torch.ones(3), path := folder / "model.pth")
    return path


BROKEN_CHECKPOINTS = {
    "text.pth": "is not a loadable weights-only checkpoint: truncated, corrupt, not a weights file, or holding more than tensors",
    "empty.pth": "is not a loadable weights-only checkpoint: truncated, corrupt or not a weights file",
    "truncated-zip.pth": "is not a loadable weights-only checkpoint: truncated, corrupt or not a weights file",
    "truncated-legacy.pth": "is not a loadable weights-only checkpoint: truncated, corrupt or not a weights file",
    "truncated.safetensors": "is not a loadable safetensors file: truncated, corrupt or not a weights file",
    "text.safetensors": "is not a loadable safetensors file: truncated, corrupt or not a weights file",
    "code-in-torch-zip.pth": "is not a loadable weights-only checkpoint: it would import and run code",
    "code-in-pickle-2.pth": "is not a loadable weights-only checkpoint: it would import and run code",
    "code-in-pickle-5.pth": "is not a loadable weights-only checkpoint: truncated, corrupt, not a weights file, or holding more than tensors",
    "tensor-not-state-dict.pth": "is not a state dict of tensors",
}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", BROKEN_CHECKPOINTS)
def test_broken_or_hostile_checkpoint_is_refused_naming_the_file(kind, tmp_path, state_dict):
    from npuflow.fetch import fetch
    from npuflow.sources import FetchError

    (tmp_path / "in").mkdir()
    path = _write_broken_checkpoint(kind, tmp_path / "in", state_dict)
    with pytest.raises(FetchError) as e:
        fetch(checkpoint_spec(f"file:{path}", **({"state_dict_key": "model"} if "code" in kind else {})), tmp_path / "out", tmp_path)
    message = str(e.value)
    assert message.startswith("models.m") and f"{path} {BROKEN_CHECKPOINTS[kind]}" in message, message
    assert "weights_only=False" not in message and "Traceback" not in message
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "in" / "pwned").exists()


def test_safetensors_checkpoint_is_recognised_whatever_its_name(tmp_path, state_dict):
    """A URL's last segment need not say the format: safetensors is recognised by its header."""
    from safetensors.torch import load_file, save_file

    from npuflow.fetch import fetch

    save_file(state_dict, str(tmp_path / "download"))
    manifest = fetch(checkpoint_spec(f"file:{tmp_path / 'download'}"), tmp_path / "out", tmp_path)
    assert manifest["weights"] == "pretrained"
    fetched = load_file(tmp_path / "out" / "weights.safetensors")
    assert all((fetched[k] == v).all() for k, v in state_dict.items())


def test_file_checkpoint_sha256_mismatch_names_the_field(tmp_path, state_dict):
    import torch

    from npuflow.fetch import fetch
    from npuflow.sources import FetchError

    torch.save(state_dict, tmp_path / "m.pth")
    with pytest.raises(FetchError, match=rf"models\.m\.sha256: {tmp_path / 'm.pth'} has sha256 [0-9a-f]{{64}}, expected {'1' * 64}"):
        fetch(checkpoint_spec(f"file:{tmp_path / 'm.pth'}", sha256="1" * 64), tmp_path / "out", tmp_path)
    assert not (tmp_path / "out").exists()


def test_url_checkpoint_broken_off_mid_transfer(server, tmp_path):
    """`pretrained` fails clearly; `auto` falls back to random weights and says why. Neither keeps
    the partial download."""
    from npuflow.fetch import fetch
    from npuflow.sources import FetchError

    url, _ = server
    with pytest.raises(FetchError, match=r"models\.m: weights: pretrained, but download of .*/short/m\.pth broke off"):
        fetch(checkpoint_spec(f"url:{url}/short/m.pth"), tmp_path / "out", tmp_path)
    assert not (tmp_path / "out").exists()
    manifest = fetch(checkpoint_spec(f"url:{url}/short/m.pth", weights="auto"), tmp_path / "auto", tmp_path)
    assert manifest["weights"] == "random" and "broke off" in manifest["weights_detail"]
    assert list((tmp_path / "downloads" / "m").iterdir()) == []


def test_url_checkpoint_of_an_unreachable_host(tmp_path):
    """Nothing listens on 127.0.0.1:9: `pretrained` fails within the probe's few seconds, `auto`
    falls back to labelled random weights."""
    import time

    from npuflow.fetch import fetch
    from npuflow.sources import FetchError

    start = time.perf_counter()
    with pytest.raises(FetchError, match=r"models\.m: weights: pretrained, but https://127\.0\.0\.1:9/m\.pth is unreachable"):
        fetch(checkpoint_spec("url:https://127.0.0.1:9/m.pth"), tmp_path / "out", tmp_path)
    assert time.perf_counter() - start < 10
    manifest = fetch(checkpoint_spec("url:https://127.0.0.1:9/m.pth", weights="auto"), tmp_path / "auto", tmp_path)
    assert manifest["weights"] == "random" and "unreachable" in manifest["weights_detail"]


def test_url_naming_no_file_is_stored_under_a_safe_name(server, tmp_path):
    """`…/sub/..` has `..` as its last segment: it must not become the cache path."""
    from npuflow.fetch import fetch
    from npuflow.sources import FetchError

    url, _ = server
    with pytest.raises(FetchError, match=r"downloads/m/checkpoint is not a loadable weights-only checkpoint"):
        fetch(checkpoint_spec(f"url:{url}/sub/.."), tmp_path / "out", tmp_path)
    assert [str(p.relative_to(tmp_path)) for p in (tmp_path / "downloads").rglob("*")] == ["downloads/m", "downloads/m/checkpoint"]
