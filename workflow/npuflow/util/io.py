"""File helpers shared by every stage: an output appears whole or not at all."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

TEMP_SUFFIX = ".part"
# The process's umask, read once (os.umask can only be read by setting it): mkstemp creates 0600
# files, and an output should get the permissions any other file written here gets.
_UMASK = os.umask(0)
os.umask(_UMASK)


def temporary_prefix(path: Path) -> str:
    """Prefix of a temporary written beside `path`. It names the writer (host and pid), so that a
    later writer can tell a temporary left by a killed process from one still being written."""
    return f".{path.name}.{socket.gethostname()}-{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(path: Path) -> None:
    """Remove the temporaries beside `path` whose writer, on this host, no longer runs (a job
    killed mid-write, e.g. by kill -9, never reaches its own clean-up). Others are left alone."""
    lead, host = f".{path.name}.", socket.gethostname()
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return
    for name in names:
        if not (name.startswith(lead) and name.endswith(TEMP_SUFFIX)):
            continue
        owner = name[len(lead) : -len(TEMP_SUFFIX)].rsplit(".", 1)[0]  # <host>-<pid>.<random>
        writer_host, _, pid = owner.rpartition("-")
        if writer_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        stale = path.parent / name
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if os.path.isfile(tmp):
            os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
