"""Hostile input and faults (issue #6): npuflow refuses clearly, never runs untrusted code, and
never loses or corrupts results. Everything offline: hostile files are built by the tests,
anything "downloaded" is served on 127.0.0.1. The cases and their tests: docs/hostile-input.md."""

from __future__ import annotations

import http.server
import io
import itertools
import os
import pickle
import re
import stat
import tarfile
import threading
import time
import zipfile
from pathlib import Path
from typing import ClassVar

import pytest

import background
from npuflow.data.archive import ArchiveError, extract_archive, fetch_archive

# ---------------------------------------------------------------------------------------------
# Downloads (dataset archives and url: checkpoints share one downloader)
# ---------------------------------------------------------------------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; /redirect-* answers 302 to the URL after the prefix, /short/* announces
    more bytes than it sends (a connection dropped mid-transfer), /trickle/* sends a byte every
    0.1 s, /endless/* streams without end. Requests are recorded."""

    requests: ClassVar[list[str]] = []

    def do_GET(self):
        type(self).requests.append(self.path)
        if self.path.startswith("/redirect-"):
            self.send_response(302)
            self.send_header("Location", self.path[len("/redirect-") :].replace("|", "://", 1))
            self.end_headers()
        elif self.path.startswith("/trickle/"):  # a byte every 0.1 s: never idle long enough to time out
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        elif self.path.startswith("/endless/"):  # no Content-Length, and no end
            self.send_response(200)
            self.end_headers()
            while True:
                self.wfile.write(b"x" * 65536)
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
    from npuflow.pipeline.config import model_spec

    http = {"allow_http": True} if source.startswith("url:") else {}  # a url: field; a file: entry may not carry it
    config = make_config(m=classifier_entry(source=source, arch="efficientvit_m0", **http, **extra))
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
    from npuflow.sources.core import FetchError
    from npuflow.sources.fetch import fetch

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

    from npuflow.sources.fetch import fetch

    save_file(state_dict, str(tmp_path / "download"))
    manifest = fetch(checkpoint_spec(f"file:{tmp_path / 'download'}"), tmp_path / "out", tmp_path)
    assert manifest["weights"] == "pretrained"
    fetched = load_file(tmp_path / "out" / "weights.safetensors")
    assert all((fetched[k] == v).all() for k, v in state_dict.items())


def test_file_checkpoint_sha256_mismatch_names_the_field(tmp_path, state_dict):
    import torch

    from npuflow.sources.core import FetchError
    from npuflow.sources.fetch import fetch

    torch.save(state_dict, tmp_path / "m.pth")
    with pytest.raises(FetchError, match=rf"models\.m\.sha256: {tmp_path / 'm.pth'} has sha256 [0-9a-f]{{64}}, expected {'1' * 64}"):
        fetch(checkpoint_spec(f"file:{tmp_path / 'm.pth'}", sha256="1" * 64), tmp_path / "out", tmp_path)
    assert not (tmp_path / "out").exists()


def test_url_checkpoint_broken_off_mid_transfer(server, tmp_path):
    """`pretrained` fails clearly; `auto` falls back to random weights and says why. Neither keeps
    the partial download."""
    from npuflow.sources.core import FetchError
    from npuflow.sources.fetch import fetch

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

    from npuflow.sources.core import FetchError
    from npuflow.sources.fetch import fetch

    start = time.perf_counter()
    with pytest.raises(FetchError, match=r"models\.m: weights: pretrained, but https://127\.0\.0\.1:9/m\.pth is unreachable"):
        fetch(checkpoint_spec("url:https://127.0.0.1:9/m.pth"), tmp_path / "out", tmp_path)
    assert time.perf_counter() - start < 10
    manifest = fetch(checkpoint_spec("url:https://127.0.0.1:9/m.pth", weights="auto"), tmp_path / "auto", tmp_path)
    assert manifest["weights"] == "random" and "unreachable" in manifest["weights_detail"]


def test_url_checkpoint_over_plain_http_is_refused_by_the_fetch_itself(server, tmp_path):
    """The config refuses http without allow_http (test_config.py); a spec that reaches the fetch
    another way (`npuflow fetch --spec …`) is refused there too, before any request."""
    from npuflow.sources.core import FetchError
    from npuflow.sources.fetch import fetch

    url, www = server
    (www / "m.pth").write_bytes(b"x")
    spec = checkpoint_spec(f"url:{url}/m.pth")
    spec["allow_http"] = False
    with pytest.raises(FetchError, match=rf"^models\.m\.source: refusing to download {url}/m\.pth: only https is allowed"):
        fetch(spec, tmp_path / "out", tmp_path)
    assert _Handler.requests == [] and not (tmp_path / "out").exists()


def test_url_naming_no_file_is_stored_under_a_safe_name(server, tmp_path):
    """`…/sub/..` has `..` as its last segment: it must not become the cache path."""
    from npuflow.sources.core import FetchError
    from npuflow.sources.fetch import fetch

    url, _ = server
    with pytest.raises(FetchError, match=r"downloads/m/checkpoint is not a loadable weights-only checkpoint"):
        fetch(checkpoint_spec(f"url:{url}/sub/.."), tmp_path / "out", tmp_path)
    assert [str(p.relative_to(tmp_path)) for p in (tmp_path / "downloads").rglob("*")] == ["downloads/m", "downloads/m/checkpoint"]


# ---------------------------------------------------------------------------------------------
# Archives (calibration / evaluation datasets)
# ---------------------------------------------------------------------------------------------

TAR_MODES = {"tar": "w", "tar.gz": "w:gz", "tgz": "w:gz", "tar.bz2": "w:bz2", "tar.xz": "w:xz"}


def make_tar(path: Path, members: list[tuple[str, bytes | None, dict]]) -> Path:
    """A tar with crafted headers: (name, data or None, TarInfo attributes)."""
    suffix = next(s for s in sorted(TAR_MODES, key=len, reverse=True) if path.name.endswith("." + s))
    with tarfile.open(path, TAR_MODES[suffix], format=tarfile.PAX_FORMAT) as tar:
        for name, data, attrs in members:
            info = tarfile.TarInfo(name)
            for k, v in attrs.items():
                setattr(info, k, v)
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def make_zip(path: Path, members: list[tuple[str, bytes, int]]) -> Path:
    """A zip with crafted entries: (name, data, Unix mode recorded in external_attr, 0 = none)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix, so the mode bits mean what they say
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def sandbox(tmp_path):
    """src/ holds the archive, sentinel/ is dest's parent (must stay empty after a refusal), and
    outside/ is where escaping members aim (must stay empty)."""
    for d in ("src", "sentinel", "outside"):
        (tmp_path / d).mkdir()
    return tmp_path


def assert_refused(archive: Path, sandbox: Path, *expected: str, **limits) -> str:
    before = tree(sandbox)
    dest = sandbox / "sentinel" / "data"
    with pytest.raises(ArchiveError) as e:
        extract_archive(archive, dest, **limits)
    message = str(e.value)
    assert str(archive) in message, message
    for part in expected:
        assert part in message, message
    assert not dest.exists()
    assert list((sandbox / "sentinel").iterdir()) == []  # no temporary folder left either
    assert tree(sandbox) == before  # nothing written anywhere else
    return message


@pytest.mark.parametrize("suffix", [*TAR_MODES, "zip"])
def test_archive_extracts_every_format(sandbox, suffix):
    files = {"imgs/cat/1.jpg": b"cat", "imgs/dog/2.jpg": b"dog" * 1000, "labels.txt": b"cat\ndog\n"}
    archive = sandbox / "src" / f"set.{suffix}"
    if suffix == "zip":
        make_zip(archive, [("imgs/", b"", stat.S_IFDIR | 0o755)] + [(n, d, stat.S_IFREG | 0o644) for n, d in files.items()])
    else:
        make_tar(archive, [("./imgs", None, {"type": tarfile.DIRTYPE})] + [(f"./{n}", d, {}) for n, d in files.items()])
    dest = sandbox / "sentinel" / "data"
    got = extract_archive(archive, dest)
    assert got == [dest / n for n in files]
    assert {n: (dest / n).read_bytes() for n in files} == files
    assert [p.name for p in (sandbox / "sentinel").iterdir()] == ["data"]


def test_archive_kind_is_sniffed_when_the_name_does_not_say(sandbox):
    archive = make_tar(sandbox / "src" / "set.tar.gz", [("a.txt", b"a", {})]).rename(sandbox / "src" / "download")
    assert extract_archive(archive, sandbox / "sentinel" / "data") == [sandbox / "sentinel" / "data" / "a.txt"]


OUTSIDE = "/outside/evil.txt"  # replaced by the absolute path of sandbox/outside/evil.txt

HOSTILE_MEMBERS = {
    # case: (tar members, zip members or None where zip has no such thing (hard links), expected message parts)
    "dotdot": ([("../outside/evil.txt", b"x", {})], [("../outside/evil.txt", b"x", 0)], ["'../outside/evil.txt'", "'..' path component"]),
    "nested-dotdot": ([("a/../../outside/evil.txt", b"x", {})], [("a/../../outside/evil.txt", b"x", 0)], ["'..' path component"]),
    "absolute": ([(OUTSIDE, b"x", {})], [(OUTSIDE, b"x", 0)], ["absolute path"]),
    "drive-letter": ([("C:/evil.txt", b"x", {})], [("C:/evil.txt", b"x", 0)], ["'C:/evil.txt'", "absolute path"]),
    "backslash": ([("..\\outside\\evil.txt", b"x", {})], [("..\\outside\\evil.txt", b"x", 0)], ["backslash"]),
    "symlink": (
        [("imgs", None, {"type": tarfile.SYMTYPE, "linkname": "../outside"})],
        [("imgs", b"../outside", stat.S_IFLNK | 0o777)],
        ["'imgs'", "symbolic link"],
    ),
    "symlink-then-write-through": (
        [("l", None, {"type": tarfile.SYMTYPE, "linkname": "/"}), ("l/outside/evil.txt", b"x", {})],
        [("l", b"/", stat.S_IFLNK | 0o777), ("l/outside/evil.txt", b"x", 0)],
        ["'l'", "symbolic link"],
    ),
    "hardlink": ([("a.txt", b"a", {}), ("h", None, {"type": tarfile.LNKTYPE, "linkname": "/etc/passwd"})], None, ["'h'", "hard link"]),
    "char-device": (
        [("a.txt", b"a", {}), ("tty", None, {"type": tarfile.CHRTYPE, "devmajor": 5, "devminor": 0})],
        [("a.txt", b"a", 0), ("tty", b"", stat.S_IFCHR | 0o600)],
        ["'tty'", "device file"],
    ),
    "block-device": (
        [("sda", None, {"type": tarfile.BLKTYPE, "devmajor": 8, "devminor": 0})],
        [("sda", b"", stat.S_IFBLK | 0o600)],
        ["'sda'", "device file"],
    ),
    "fifo": ([("pipe", None, {"type": tarfile.FIFOTYPE})], [("pipe", b"", stat.S_IFIFO | 0o600)], ["'pipe'", "FIFO"]),
    "duplicate": (
        [("a.txt", b"first", {}), ("a.txt", b"second", {})],
        [("a.txt", b"first", 0), ("a.txt", b"second", 0)],
        ["'a.txt'", "duplicate member"],
    ),
    "file-then-folder": ([("a", b"file", {}), ("a/b.txt", b"x", {})], [("a", b"file", 0), ("a/b.txt", b"x", 0)], ["'a/b.txt'", "collides"]),
}


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize(
    "case, fmt",
    [
        (case, fmt)
        for case, (_, zip_members, _) in HOSTILE_MEMBERS.items()
        for fmt in ("tar.gz", "zip")
        if fmt != "zip" or zip_members is not None
    ],
)
def test_hostile_member_refuses_the_whole_archive(sandbox, case, fmt):
    tar_members, zip_members, expected = HOSTILE_MEMBERS[case]
    members = tar_members if fmt != "zip" else zip_members
    outside = str(sandbox / "outside" / "evil.txt")
    members = [(outside if m[0] == OUTSIDE else m[0], *m[1:]) for m in members]
    archive = sandbox / "src" / f"{case}.{fmt}"
    (make_zip if fmt == "zip" else make_tar)(archive, members)
    assert_refused(archive, sandbox, *expected)
    assert not (sandbox / "outside" / "evil.txt").exists()


@pytest.mark.parametrize("fmt", ["tar.gz", "tar.bz2", "zip"])
def test_decompression_bomb_is_stopped_by_bytes_written(sandbox, fmt):
    """4 MiB of zeros compress to a few KiB; the limit (1 MiB) is met by counting what inflates."""
    archive = sandbox / "src" / f"bomb.{fmt}"
    members = [("ok.txt", b"fine", 0), ("zeros.bin", bytes(4 << 20), 0)]
    if fmt == "zip":
        make_zip(archive, members)
    else:
        make_tar(archive, [(n, d, {}) for n, d, _ in members])
    assert archive.stat().st_size < 64 << 10
    assert_refused(archive, sandbox, "'zeros.bin'", "decompression bomb", max_bytes=1 << 20)


def test_zip_header_claiming_a_small_size_does_not_get_past_the_limit(sandbox):
    """A zip whose headers claim 1 byte for 4 MiB of deflated zeros: zipfile stops at the claimed
    size and the CRC no longer matches; nothing is written."""
    archive = make_zip(sandbox / "src" / "liar.zip", [("zeros.bin", bytes(4 << 20), 0)])
    data = bytearray(archive.read_bytes())
    real = (4 << 20).to_bytes(4, "little")
    assert data.count(real) == 2  # uncompressed size: local header and central directory
    archive.write_bytes(bytes(data).replace(real, (1).to_bytes(4, "little")))
    assert_refused(archive, sandbox, "corrupt or truncated zip archive", "CRC")


def test_tar_pax_header_bomb_is_stopped_before_tarfile_reads_it(sandbox):
    """tarfile reads a pax header into memory before returning its member: the decompressed
    stream itself is bounded, not only the members' data."""
    archive = make_tar(
        sandbox / "src" / "pax.tar.gz", [("a.txt", b"a", {}), ("b.txt", b"b", {"pax_headers": {"comment": "x" * (8 << 20)}})]
    )
    assert_refused(archive, sandbox, "the header after member 'a.txt'", "decompression bomb", max_bytes=1 << 16)


@pytest.mark.parametrize("fmt", ["tar.xz", "zip"])
def test_too_many_members_is_refused(sandbox, fmt):
    archive = sandbox / "src" / f"many.{fmt}"
    names = [f"{i}.txt" for i in range(11)]
    if fmt == "zip":
        make_zip(archive, [(n, b"", 0) for n in names])
    else:
        make_tar(archive, [(n, b"", {}) for n in names])
    assert_refused(archive, sandbox, "'10.txt'", "more than 10 members", max_members=10)


def test_encrypted_zip_member_is_refused(sandbox):
    archive = make_zip(sandbox / "src" / "enc.zip", [("a.txt", b"a", 0)])
    data = bytearray(archive.read_bytes())
    # general-purpose flag bit 0 (encrypted) in the local header and the central directory entry
    for sig, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        i = data.index(sig)
        data[i + offset] |= 0x1
    archive.write_bytes(bytes(data))
    assert_refused(archive, sandbox, "'a.txt'", "encrypted")


@pytest.mark.parametrize(
    "case", ["truncated-tar.gz", "truncated-tar", "truncated-zip", "text-as-tar.xz", "text-as-zip", "text-no-suffix", "empty-zip"]
)
def test_broken_archive_is_refused_clearly(sandbox, case):
    src = sandbox / "src"
    if case.startswith("truncated"):
        fmt = case.split("-", 1)[1]
        good = src / f"good.{fmt}"
        if fmt == "zip":
            make_zip(good, [("a.bin", os.urandom(50_000), 0)])
        else:
            make_tar(good, [("a.bin", os.urandom(50_000), {})])
        archive = src / f"cut.{fmt}"
        archive.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        good.unlink()
        expected = ["corrupt or truncated"]
    elif case == "empty-zip":
        archive = src / "empty.zip"
        archive.write_bytes(b"")
        expected = ["corrupt or truncated zip archive"]
    else:
        name = {"text-as-tar.xz": "set.tar.xz", "text-as-zip": "set.zip", "text-no-suffix": "set"}[case]
        archive = src / name
        archive.write_text("this is not an archive\n" * 50)
        expected = ["not a tar or zip archive"] if case == "text-no-suffix" else ["corrupt or truncated"]
    assert_refused(archive, sandbox, *expected)


def test_refused_archive_leaves_an_existing_extraction_untouched_and_a_good_one_replaces_it(sandbox):
    dest = sandbox / "sentinel" / "data"
    extract_archive(make_tar(sandbox / "src" / "v1.tar", [("old.txt", b"v1", {})]), dest)
    evil = make_tar(sandbox / "src" / "evil.tar", [("new.txt", b"v2", {}), ("../outside/x", b"x", {})])
    with pytest.raises(ArchiveError, match=r"'\.\./outside/x'"):
        extract_archive(evil, dest)
    assert tree(dest) == {"old.txt"} and (dest / "old.txt").read_bytes() == b"v1"
    assert [p.name for p in (sandbox / "sentinel").iterdir()] == ["data"]
    extract_archive(make_tar(sandbox / "src" / "v2.tar", [("new.txt", b"v2", {})]), dest)
    assert tree(dest) == {"new.txt"}
    assert [p.name for p in (sandbox / "sentinel").iterdir()] == ["data"]


def test_dest_that_is_a_symlink_is_replaced_not_followed(sandbox):
    (sandbox / "outside" / "keep.txt").write_text("keep")
    dest = sandbox / "sentinel" / "data"
    dest.symlink_to(sandbox / "outside")
    extract_archive(make_tar(sandbox / "src" / "v.tar", [("a.txt", b"a", {})]), dest)
    assert not dest.is_symlink() and tree(dest) == {"a.txt"}
    assert tree(sandbox / "outside") == {"keep.txt"}


def test_extracted_files_do_not_keep_archive_permission_bits(sandbox):
    archive = make_tar(sandbox / "src" / "modes.tar", [("run.sh", b"#!/bin/sh\n", {"mode": 0o6777})])
    (path,) = extract_archive(archive, sandbox / "sentinel" / "data")
    assert not path.stat().st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_IXUSR | stat.S_IWOTH)


def test_fetch_archive_verifies_sha256_then_extracts(server, tmp_path):
    import hashlib

    url, www = server
    archive = make_tar(www / "set.tar.gz", [("cat/1.jpg", b"cat", {})])
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    dest_file = tmp_path / "cache" / "set.tar.gz"
    assert fetch_archive(f"{url}/set.tar.gz", digest, dest_file, allow_http=True) == digest
    assert extract_archive(dest_file, tmp_path / "data") == [tmp_path / "data" / "cat" / "1.jpg"]
    # A cached file with the expected sha256 is not downloaded again.
    n = len(_Handler.requests)
    fetch_archive(f"{url}/set.tar.gz", digest, dest_file, allow_http=True)
    assert len(_Handler.requests) == n


def test_fetch_archive_sha256_mismatch_removes_the_file(server, tmp_path):
    url, www = server
    make_tar(www / "set.tar.gz", [("cat/1.jpg", b"cat", {})])
    dest_file = tmp_path / "cache" / "set.tar.gz"
    dest_file.parent.mkdir()
    dest_file.write_bytes(b"stale file from an earlier download")
    with pytest.raises(
        ArchiveError, match=f"sha256 mismatch for {url}/set.tar.gz: expected {'0' * 64}, got [0-9a-f]{{64}}; file discarded"
    ):
        fetch_archive(f"{url}/set.tar.gz", "0" * 64, dest_file, allow_http=True)
    assert list(dest_file.parent.iterdir()) == []


def test_plain_http_is_refused_without_allow_http_and_nothing_is_requested(server, tmp_path):
    url, www = server
    make_tar(www / "set.tar.gz", [("a", b"a", {})])
    with pytest.raises(ArchiveError, match=f"refusing to download {url}/set.tar.gz: only https is allowed"):
        fetch_archive(f"{url}/set.tar.gz", None, tmp_path / "set.tar.gz")
    for scheme in ("file:///etc/passwd", "ftp://127.0.0.1/set.tar.gz"):
        with pytest.raises(ArchiveError, match="only https is allowed"):
            fetch_archive(scheme, None, tmp_path / "set.tar.gz", allow_http=True)
    assert _Handler.requests == [] and not (tmp_path / "set.tar.gz").exists()


def test_redirect_to_another_scheme_is_refused(server, tmp_path):
    url, www = server
    with pytest.raises(ArchiveError, match=r"refusing to follow the redirect from .* to ftp://127\.0\.0\.1/x: only https"):
        fetch_archive(f"{url}/redirect-ftp|127.0.0.1/x", None, tmp_path / "x.tar", allow_http=True)
    assert not (tmp_path / "x.tar").exists()


def test_https_to_http_redirect_is_refused():
    """No TLS server offline: the redirect handler is asked directly, as urllib would."""
    import urllib.request

    from npuflow.util.download import DownloadError, _SchemeCheckingRedirect

    req = urllib.request.Request("https://example.org/set.tar.gz")
    with pytest.raises(
        DownloadError, match=re.escape("refusing to follow the redirect from https://example.org/set.tar.gz to http://evil.example/x")
    ):
        _SchemeCheckingRedirect(allow_http=False).redirect_request(req, None, 302, "Found", {}, "http://evil.example/x")
    assert _SchemeCheckingRedirect(allow_http=False).redirect_request(req, None, 302, "Found", {}, "https://mirror.example/x") is not None


def test_transfer_broken_off_is_an_error_and_leaves_no_file(server, tmp_path):
    url, _ = server
    with pytest.raises(ArchiveError, match=r"broke off: 1000 bytes received, 100000 announced"):
        fetch_archive(f"{url}/short/set.tar.gz", None, tmp_path / "cache" / "set.tar.gz", allow_http=True)
    assert list((tmp_path / "cache").iterdir()) == []


def test_trickling_transfer_is_broken_off_and_leaves_no_file(server, tmp_path, monkeypatch):
    """Each byte arrives well within the read timeout; the transfer as a whole is too slow."""
    import npuflow.util.download

    monkeypatch.setattr(npuflow.util.download, "LOW_SPEED_BYTES_PER_S", 100)
    monkeypatch.setattr(npuflow.util.download, "LOW_SPEED_WINDOW_S", 1.0)
    url, _ = server
    with pytest.raises(ArchiveError, match=r"too slow: \d+ bytes in the last 1 s, under 100 bytes/s"):
        fetch_archive(f"{url}/trickle/set.tar.gz", None, tmp_path / "cache" / "set.tar.gz", allow_http=True)
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize(
    "path, message",
    [
        ("set.tar.gz", r"refusing to download .*/set\.tar\.gz: 1000 bytes announced, more than the 500 allowed"),
        ("endless/set.tar.gz", r"download of .*/endless/set\.tar\.gz stopped: more than the 500 bytes allowed"),
    ],
)
def test_download_over_the_size_cap_is_stopped_and_leaves_no_file(server, tmp_path, monkeypatch, path, message):
    import npuflow.util.download

    monkeypatch.setattr(npuflow.util.download, "MAX_DOWNLOAD_BYTES", 500)
    url, www = server
    (www / "set.tar.gz").write_bytes(b"x" * 1000)
    with pytest.raises(ArchiveError, match=message):
        fetch_archive(f"{url}/{path}", None, tmp_path / "cache" / "set.tar.gz", allow_http=True)
    assert list((tmp_path / "cache").iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Offline
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["timm", "hf"])
def test_offline_pretrained_fails_clearly_within_10_s(source, tmp_path, monkeypatch):
    """The hub at a closed local port stands for no network. Timed in-process: what is measured is
    npuflow noticing it is offline (a hub client's own retries take ~50 s), not Python's imports,
    which on a loaded 2-core machine alone take longer than that (test_fetch.py runs the command)."""
    import time

    import huggingface_hub.constants

    from conftest import classifier_entry, make_config, segformer_entry
    from npuflow.pipeline.config import model_spec
    from npuflow.sources.core import FetchError, source_for
    from npuflow.sources.fetch import fetch

    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # fetch flips it when offline
    config = make_config(m=classifier_entry() if source == "timm" else segformer_entry())
    config["weights"] = "pretrained"
    spec = model_spec(config, "m")
    source_for(spec).build(spec)  # imports (torch, timm, transformers) paid before the clock starts
    start = time.perf_counter()
    with pytest.raises(FetchError, match=r"^models\.m: weights: pretrained, but (timm|transformers) could not load pretrained"):
        fetch(spec, tmp_path / "out", tmp_path)
    seconds = time.perf_counter() - start
    print(f"{source}: offline noticed in {seconds:.2f} s")
    assert seconds < 10, f"{seconds:.1f} s"
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Writes cut off by kill -9
# ---------------------------------------------------------------------------------------------

WRITER = """
import os, signal, sys
from npuflow.util.io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half of an output")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_write_killed_mid_way_leaves_no_output_and_its_temporary_is_removed_by_the_next_write(tmp_path):
    import socket
    import subprocess
    import sys

    from npuflow.util.io import write_json

    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-c", WRITER, str(out)], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == -9
    (left,) = tmp_path.iterdir()  # the killed writer's temporary, never the output
    assert not out.exists() and left.name.startswith(".report.json.") and left.name.endswith(".part")
    # Temporaries of live writers and of other hosts (a shared file system) are not touched.
    live = tmp_path / f".report.json.{socket.gethostname()}-{os.getppid()}.abc123.part"
    other_host = tmp_path / ".report.json.elsewhere-1.abc123.part"
    live.write_text("")
    other_host.write_text("")
    write_json(out, {"ok": True})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, live.name, other_host.name])
    assert out.read_text() == '{\n  "ok": true\n}\n'


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)], ids=["umask-022", "umask-002"])
def test_outputs_get_the_umask_permissions_not_mkstemp_0600(tmp_path, umask, mode):
    """Results are shared (a group, a cluster file system): mkstemp's 0600 would hide them."""
    import subprocess
    import sys

    code = "import sys; from npuflow.util.io import write_json; write_json(sys.argv[1], {})"
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "r.json")],
        check=True,
        preexec_fn=lambda: os.umask(umask),
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == mode


def test_extraction_killed_mid_way_is_cleaned_by_the_next_one(tmp_path):
    import subprocess
    import sys

    archive = make_tar(tmp_path / "set.tar", [("a.txt", b"a", {})])
    killer = """
import os, signal, sys
import npuflow.data.archive as a
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
a._move_into_place = die
a.extract_archive(sys.argv[1], sys.argv[2])
"""
    dest = tmp_path / "out" / "data"
    proc = subprocess.run(
        [sys.executable, "-c", killer, str(archive), str(dest)], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    )
    assert proc.returncode == -9
    (left,) = (tmp_path / "out").iterdir()
    assert left.name.startswith(".data.") and left.name.endswith(".part") and (left / "a.txt").exists()
    extract_archive(archive, dest)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["data"]


# ---------------------------------------------------------------------------------------------
# Faults mid-run: kill -9, then re-run; logging from parallel jobs (--cores 8)
# ---------------------------------------------------------------------------------------------

# Three small timm test architectures (different families, so different graphs) × two targets,
# at --cores 8 on whatever cores the machine has: the jobs of all models run side by side.
FAULT_CONFIG = {
    "weights": "random",
    "targets": ["ax650n-npu3", "rdk-x5"],
    "mlflow": {"tracking_uri": "sqlite:///results/mlflow.db", "experiment": "npuflow-faults"},
    "calibration": {"method": "minmax", "images": 2},
    "evaluation": {"images": 2, "latency_repeats": 1},
    "models": {
        name: {"source": f"timm:{arch}", "task": "classification", "input": {"shape": [1, 3, 64, 64]}}
        for name, arch in (("resnet", "test_resnet"), ("effnet", "test_efficientnet"), ("convnext", "test_convnext"))
    },
}
PAIRS = sorted((m, t) for m in FAULT_CONFIG["models"] for t in FAULT_CONFIG["targets"])


def _run_statuses(db: Path) -> list[str]:
    """Run statuses straight from the SQLite store, read-only (the logging job may be writing)."""
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05)
        try:
            return [row[0] for row in con.execute("SELECT status FROM runs")]
        finally:
            con.close()
    except sqlite3.Error:  # not created yet, or busy this instant
        return []


def _run_then_kill(workdir: Path, config: Path, conditions: dict, log_name: str) -> dict:
    """Start the workflow at --cores 8 in its own process group; SIGKILL the whole group
    (Snakemake and every job: as a power loss or the OOM killer would) as soon as one of
    `conditions` ({label: callable}) holds. Returns what the kill left behind."""
    import signal
    import subprocess
    import time

    from conftest import snakemake_command, snakemake_env

    results = workdir / "results"
    with open(workdir / log_name, "w") as log:
        proc = subprocess.Popen(
            snakemake_command(workdir, configfile=config, cores=8),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=snakemake_env(),
            cwd=workdir,
            start_new_session=True,
        )
        deadline, killed_at = time.monotonic() + 900, None
        while proc.poll() is None and time.monotonic() < deadline and not killed_at:
            killed_at = next((label for label, holds in conditions.items() if holds()), None)
            if killed_at:
                os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.02)
        proc.wait()
    assert killed_at, f"run ended (rc {proc.returncode}) before {list(conditions)}: {(workdir / log_name).read_text()[-2000:]}"
    incomplete = workdir / ".snakemake" / "incomplete"
    return {
        "killed_at": killed_at,
        "running_runs": _run_statuses(results / "mlflow.db").count("RUNNING"),
        "incomplete": sorted(p.name for p in incomplete.iterdir()) if incomplete.exists() else [],
        "temporaries": sorted(str(p.relative_to(workdir)) for p in results.rglob("*.part")),
    }


@background.fixture(scope="module")
def killed_then_rerun(tmp_path_factory):
    """FAULT_CONFIG killed twice, then finished: first while the stage jobs run (as soon as one
    export is done, the other models' jobs are mid-way), then while a logging job has its MLflow
    run open. Each time it is recovered as the README says: `snakemake --unlock`, then the same
    command (the profile re-runs the jobs the kill cut off)."""
    import yaml

    from conftest import snakemake

    workdir = tmp_path_factory.mktemp("kill9")
    config = workdir / "c.yaml"
    config.write_text(yaml.safe_dump(FAULT_CONFIG))
    results = workdir / "results"
    kills = [_run_then_kill(workdir, config, {"an export finished": lambda: any(results.glob("*/model.onnx"))}, "run1.log")]
    assert snakemake(workdir, "--unlock", configfile=config).returncode == 0
    kills.append(
        _run_then_kill(
            workdir,
            config,
            {
                "an MLflow run open": lambda: "RUNNING" in _run_statuses(results / "mlflow.db"),
                "a logging job finished": lambda: any(results.glob("*/track.json")),
            },
            "run2.log",
        )
    )
    assert snakemake(workdir, "--unlock", configfile=config).returncode == 0
    rerun = snakemake(workdir, configfile=config, cores=8)
    print(f"kills: {kills}")
    return workdir, config, kills, rerun


def test_kill9_mid_run_then_rerun_completes_with_whole_outputs(killed_then_rerun):
    """Temporaries of writes the kill cut off are removed when their output is written again."""
    import base64
    import csv

    import numpy as np
    import onnx

    from conftest import snakemake
    from npuflow.util.io import read_json

    workdir, config, kills, rerun = killed_then_rerun
    assert all(kill["incomplete"] for kill in kills), f"a kill found nothing running: {kills}"
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    # Each job cut off by a kill was re-run; its outputs exist whole.
    for marker in {m for kill in kills for m in kill["incomplete"]}:
        path = workdir / base64.b64decode(marker).decode()
        assert path.is_file() and path.stat().st_size > 0, path
    results = workdir / "results"
    for path in results.rglob("*.json"):
        read_json(path)  # every report parses
    for path in results.rglob("*.onnx"):
        onnx.checker.check_model(onnx.load(str(path)))
    for path in results.rglob("*.npz"):
        assert len(np.load(path).files) > 0
    assert not list(results.rglob("*.part")), "a temporary file of a killed write was left behind"
    assert not any((workdir / ".snakemake" / "incomplete").iterdir())
    with open(results / "summary.csv") as f:
        assert sorted((r["model"], r["target"]) for r in csv.DictReader(f)) == PAIRS
    # Nothing left to do, nothing done twice.
    again = snakemake(workdir, "-n", configfile=config, cores=8)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_mlflow_after_kill9_has_one_finished_current_run_per_pair(killed_then_rerun):
    from mlflow.tracking import MlflowClient

    from npuflow.tracking.track import CURRENT_TAG

    workdir, _, kills, rerun = killed_then_rerun
    assert rerun.returncode == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/results/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("npuflow-faults").experiment_id], max_results=1000)
    current = [r for r in runs if r.data.tags.get(CURRENT_TAG) == "true"]
    assert sorted((r.data.tags["model"], r.data.tags["target"]) for r in current) == PAIRS  # one each, no duplicates
    assert all(r.info.status == "FINISHED" for r in current)
    retired = [r for r in runs if r.data.tags.get(CURRENT_TAG) != "true"]
    assert all(r.info.status == "KILLED" for r in retired), [(r.data.tags.get("model"), r.info.status) for r in retired]
    assert len(retired) == sum(kill["running_runs"] for kill in kills)  # exactly the runs the kills left open, retired
    assert "RUNNING" not in [r.info.status for r in runs]


def test_parallel_logging_at_8_cores_is_serialised_without_database_errors(killed_then_rerun):
    """The re-run logged the remaining models from jobs started side by side at --cores 8: the
    profile's mlflow=1 resource keeps their SQLite writes apart."""
    from mlflow.tracking import MlflowClient

    from npuflow.tracking.track import CURRENT_TAG

    workdir, _, _, rerun = killed_then_rerun
    out = rerun.stdout + rerun.stderr
    assert out.count("rule track:") >= 2, out[-3000:]
    logs = "".join(p.read_text() for p in (workdir / "results" / "logs" / "track").glob("*.log"))
    logs += (workdir / "results" / "logs" / "init_mlflow.log").read_text()
    for bad in ("database is locked", "OperationalError", "IntegrityError", "Traceback"):
        assert bad not in logs and bad not in out
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/results/mlflow.db")
    runs = client.search_runs(
        [client.get_experiment_by_name("npuflow-faults").experiment_id], filter_string=f"tags.`{CURRENT_TAG}` = 'true'", max_results=1000
    )
    spans = {}  # one logging job per model: its runs' first start to last end
    for r in runs:
        start, end = spans.get(r.data.tags["model"], (r.info.start_time, r.info.end_time))
        spans[r.data.tags["model"]] = (min(start, r.info.start_time), max(end, r.info.end_time))
    ordered = sorted(spans.values())
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(ordered)), ordered
