"""One Snakemake run at a time in a working folder, whatever `snakemake --unlock` removes.

Snakemake's own lock is a set of files: it outlives a killed run (hence `--unlock`), and
`--unlock` removes it just as well while the run that holds it goes on, after which a second run
would write the same outputs and log the same MLflow runs. npuflow's lock is a kernel lock
(flock) that the run holds from its first job to its end: no command removes it, and the kernel
releases it when the process ends, however it ends (kill -9 included), so it never needs
unlocking."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path

from npuflow.util.errors import NpuflowError

LOCK_FILE = Path(".snakemake") / "npuflow.run.lock"
# The open lock file of this process (holding it is holding the lock).
_held = None


class RunningElsewhere(NpuflowError):
    """Another run holds the folder."""


def hold_run_lock(folder: str | Path = ".") -> bool:
    """Take the folder's run lock for the life of this process, or raise RunningElsewhere naming
    the run that holds it. False where the file system has no locks (some cluster file systems):
    then Snakemake's lock is the only one."""
    global _held
    if _held is not None:
        return True
    path = Path(folder) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")  # noqa: SIM115 (held open for the life of the process: it is the lock). Not truncated: it names the holder
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise RunningElsewhere(
            f"another Snakemake run ({holder}) is working in {Path(folder).resolve()}: two runs in one folder would write the "
            "same files and log the same MLflow runs; wait for it to end or stop it, then run again "
            "(snakemake --unlock does not stop it, and is never needed for npuflow's own lock)"
        ) from None
    except OSError as e:
        f.close()
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return False
        raise
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    _held = f
    return True


def release_run_lock() -> None:
    global _held
    if _held is not None:
        _held.close()  # closing the file releases the lock
        _held = None


def remove_incomplete_outputs(folder: str | Path = ".", keep: tuple[str, ...] = ()) -> list[str]:
    """Remove the outputs that carry Snakemake's "incomplete" mark (the job was stopped, e.g. by
    Ctrl-C as it ended), so that their jobs run again: Snakemake 9.27's --rerun-incomplete loses
    them once a checkpoint's dependencies are updated (the `recipes` checkpoint), and the run
    would leave them marked and stale. Those matching a `keep` pattern (fnmatch) stay: files an
    interrupted job replaces whole or not at all, of which the earlier version is worth keeping
    (the report's, whose job another output of it, removed here, makes run again). Call only while
    holding the run lock: no job of another run is writing them. Returns the paths removed."""
    from base64 import urlsafe_b64decode
    from fnmatch import fnmatchcase

    marks = Path(folder) / ".snakemake" / "incomplete"
    removed = []
    for mark in sorted(marks.iterdir()) if marks.is_dir() else []:
        try:
            name = urlsafe_b64decode(mark.name.encode()).decode()
        except ValueError:
            continue  # not a mark of an output file
        if any(fnmatchcase(name, pattern) for pattern in keep):
            continue
        path = Path(folder) / name
        if path.is_file() or path.is_symlink():
            path.unlink()
            removed.append(str(path))
    return removed
