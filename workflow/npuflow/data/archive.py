"""Dataset archives (tar, tar.gz/tgz, tar.bz2, tar.xz, zip), downloaded and extracted safely.

An archive is untrusted input. Every member is checked before it is written (a zip's, all before
any is, from its central directory): its path must stay inside the destination (no `..`, no absolute or drive-letter paths, no backslashes), and it
must be a regular file or a folder (links, devices and FIFOs are refused: a dataset needs none).
Members are then streamed out one by one while the bytes actually decompressed are counted, so a
zip or tar bomb is stopped at `max_bytes` whatever its headers claim. Extraction goes into a
temporary sibling of `dest` that is renamed into place only when the whole archive succeeded:
a refused or broken archive leaves nothing behind."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from npuflow.util.download import DownloadError, download
from npuflow.util.errors import NpuflowError
from npuflow.util.io import TEMP_SUFFIX, remove_stale_temporaries, temporary_prefix

MAX_BYTES = 2 * 1024**3
MAX_MEMBERS = 100_000
CHUNK = 1 << 20
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
# Headers, padding, long names and pax records a tar stream may hold beyond its members' data
# (per member, plus a fixed allowance for read-ahead): tarfile reads these into memory before a
# member is seen.
TAR_OVERHEAD_PER_MEMBER = 16 * 1024
TAR_OVERHEAD = 4 * 1024**2
_DRIVE = re.compile(r"^[A-Za-z]:")
# What a broken or truncated archive raises from the stdlib readers.
_CORRUPT = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    OSError,
    NotImplementedError,
    ValueError,
)


class ArchiveError(NpuflowError):
    """A refused or unreadable archive; the message names the archive, the member and why."""


class _Refused(Exception):
    """A member is refused: (member name, reason); `where` replaces the name when none is known."""

    def __init__(self, name: str, reason: str, where: str | None = None):
        super().__init__(name, reason)
        self.where = where or f"member {name!r}"


def extract_archive(archive: str | Path, dest: str | Path, *, max_bytes: int = MAX_BYTES, max_members: int = MAX_MEMBERS) -> list[Path]:
    """Extract `archive` into the folder `dest` (replacing it if it exists, only on success) and
    return the extracted files' paths, in archive order. Raise ArchiveError, leaving `dest` as it
    was and nothing else behind, on the first refused member, a bomb, or a broken archive."""
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise ArchiveError(f"{archive}: no such archive file")
    kind = archive_kind(archive)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(dest)  # left by an extraction killed mid-way
    tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(dest), suffix=TEMP_SUFFIX, dir=dest.parent))
    try:
        extractor = _extract_zip if kind == "zip" else _extract_tar
        try:
            rel_files = extractor(archive, tmp, max_bytes, max_members)
        except _Refused as e:
            raise ArchiveError(f"{archive}: {e.where}: {e.args[1]}") from None
        except _CORRUPT as e:
            raise ArchiveError(f"{archive}: corrupt or truncated {kind} archive ({type(e).__name__}: {e})") from e
        _move_into_place(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [dest / rel for rel in rel_files]


def archive_kind(archive: Path) -> str:
    """'zip' or 'tar' (any compression), from the name, else from the content."""
    name = archive.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    if zipfile.is_zipfile(archive):
        return "zip"
    with contextlib.suppress(*_CORRUPT):
        if tarfile.is_tarfile(archive):
            return "tar"
    raise ArchiveError(f"{archive}: not a tar or zip archive (expected .tar, .tar.gz/.tgz, .tar.bz2, .tar.xz or .zip)")


def fetch_archive(url: str, sha256: str | None, dest_file: str | Path, allow_http: bool = False) -> str:
    """Download a dataset archive over https to `dest_file` (atomically) and verify its sha256
    when given: a mismatching file is removed. Returns the file's sha256."""
    try:
        return download(url, Path(dest_file), sha256, allow_http)
    except DownloadError as e:
        raise ArchiveError(f"dataset archive: {e}") from e


def safe_member_path(name: str) -> PurePosixPath:
    """The member's path relative to the destination; raise _Refused if it could land outside."""
    if not name or "\x00" in name:
        raise _Refused(name, "empty name or NUL byte in the name")
    if "\\" in name:
        raise _Refused(name, "backslash in the name (a Windows path separator): refused")
    if name.startswith("/") or _DRIVE.match(name):
        raise _Refused(name, "absolute path: refused (members must be relative to the archive root)")
    parts = PurePosixPath(name).parts
    if ".." in parts:
        raise _Refused(name, "'..' path component: refused (it would write outside the destination)")
    parts = [p for p in parts if p != "."]
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


class _Budget:
    """Counts members and the bytes actually written against the limits."""

    def __init__(self, max_bytes: int, max_members: int):
        self.max_bytes, self.max_members = max_bytes, max_members
        self.bytes = self.members = 0
        self.last_name = ""

    def member(self, name: str) -> None:
        self.members += 1
        self.last_name = name
        if self.members > self.max_members:
            raise _Refused(name, f"more than {self.max_members} members: refused (max_members)")

    def copy(self, src, dst, name: str) -> int:
        written = 0
        while block := src.read(CHUNK):
            self.bytes += len(block)
            written += len(block)
            if self.bytes > self.max_bytes:
                raise _Refused(name, f"archive expands beyond {self.max_bytes} bytes: refused as a decompression bomb (max_bytes)")
            try:
                dst.write(block)
            except OSError as e:  # a full disk is not a corrupt archive: say which it is
                raise _Refused(name, f"cannot be written ({e.strerror or e})") from None
        return written


def _write_file(root: Path, rel: PurePosixPath, src, budget: _Budget, name: str) -> int:
    target = root / rel
    _make_dirs(root, rel.parent, name)
    try:
        # O_EXCL: a second member of the same name (or one differing only in case, on such file
        # systems) is refused rather than silently replacing the first.
        dst = open(target, "xb")  # noqa: SIM115 (closed by the `with dst:` below, once the open is known to have worked)
    except FileExistsError:
        raise _Refused(name, "duplicate member (a file or folder of that name was already extracted)") from None
    except (NotADirectoryError, IsADirectoryError):
        raise _Refused(name, "its path collides with another member (a file where a folder is, or the reverse)") from None
    except OSError as e:  # a full disk or a read-only folder is not a corrupt archive
        raise _Refused(name, f"cannot be written ({e.strerror or e})") from None
    with dst:
        return budget.copy(src, dst, name)


def _make_dirs(root: Path, rel: PurePosixPath, name: str) -> None:
    try:
        (root / rel).mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise _Refused(name, "its path collides with another member (a file where a folder is)") from None
    except OSError as e:
        raise _Refused(name, f"cannot be written ({e.strerror or e})") from None


def _extract_zip(archive: Path, root: Path, max_bytes: int, max_members: int) -> list[PurePosixPath]:
    budget, files = _Budget(max_bytes, max_members), []
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        if len(infos) > max_members:  # the central directory is known up front: refuse early
            raise _Refused(infos[max_members].filename, f"more than {max_members} members: refused (max_members)")
        for info in infos:  # all checked before anything is written
            _check_zip_member(info)
        for info in infos:
            budget.member(info.filename)
            rel = safe_member_path(info.filename)
            if info.is_dir():
                _make_dirs(root, rel, info.filename)
                continue
            # ZipExtFile stops at the header's size and checks the CRC: a lying header fails the
            # CRC; the budget counts what is really inflated.
            with zf.open(info) as src:
                _write_file(root, rel, src, budget, info.filename)
            files.append(rel)
    return files


def _check_zip_member(info: zipfile.ZipInfo) -> None:
    rel = safe_member_path(info.filename)
    if rel == PurePosixPath(".") and not info.is_dir():
        raise _Refused(info.filename, "a file without a name")
    mode = info.external_attr >> 16  # Unix mode, when the archiver recorded one
    kind = stat.S_IFMT(mode)
    if stat.S_ISLNK(mode):
        raise _Refused(info.filename, "symbolic link: refused (a dataset needs no links)")
    if kind and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise _Refused(info.filename, "device file, FIFO or socket: refused (a dataset holds only files and folders)")
    if info.flag_bits & 0x1:
        raise _Refused(info.filename, "encrypted member: not supported")


class _CountingReader:
    """The decompressed tar stream, counted: tarfile reads headers and pax records into memory
    before we see the member they describe, so the whole stream is bounded, not only the members'
    data. The allowance beyond the data grows with the members extracted so far."""

    def __init__(self, raw, budget: _Budget):
        self.raw, self.budget, self.count = raw, budget, 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size if size is not None and size >= 0 else CHUNK)
        self.count += len(data)
        limit = self.budget.max_bytes + (self.budget.members + 1) * TAR_OVERHEAD_PER_MEMBER + TAR_OVERHEAD
        if self.count > limit:
            last = self.budget.last_name
            raise _Refused(
                "",
                f"tar stream expands beyond {limit} bytes (headers and pax records included): refused as a decompression bomb (max_bytes)",
                f"the header after member {last!r}" if last else "the first member's header",
            )
        return data


def _open_decompressed(archive: Path):
    with open(archive, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(archive, "rb")
    if magic.startswith(b"BZh"):
        return bz2.open(archive, "rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.open(archive, "rb")
    return open(archive, "rb")


def _extract_tar(archive: Path, root: Path, max_bytes: int, max_members: int) -> list[PurePosixPath]:
    budget, files = _Budget(max_bytes, max_members), []
    with _open_decompressed(archive) as raw:
        stream = _CountingReader(raw, budget)
        # Stream mode ("r|"): members are read in order, each extracted before the next header,
        # so nothing relies on seeking or on sizes given up front.
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                budget.member(member.name)
                rel = safe_member_path(member.name)
                if member.issym() or member.islnk():
                    kind = "symbolic" if member.issym() else "hard"
                    raise _Refused(member.name, f"{kind} link to {member.linkname!r}: refused (a dataset needs no links)")
                if member.ischr() or member.isblk() or member.isfifo():
                    raise _Refused(member.name, "device file or FIFO: refused (a dataset holds only files and folders)")
                if member.isdir():
                    _make_dirs(root, rel, member.name)
                elif member.isreg():
                    if rel == PurePosixPath("."):
                        raise _Refused(member.name, "a file without a name")
                    src = tar.extractfile(member)
                    written = _write_file(root, rel, src, budget, member.name)
                    if written != member.size:
                        raise _Refused(member.name, f"truncated: {written} of {member.size} bytes")
                    files.append(rel)
                else:
                    raise _Refused(member.name, f"unsupported member type {member.type!r}: refused")
    return files


def _move_into_place(tmp: Path, dest: Path) -> None:
    """Rename the finished extraction to `dest`; an existing `dest` is replaced only now."""
    if not (dest.exists() or dest.is_symlink()):
        os.rename(tmp, dest)
        return
    aside = Path(tempfile.mkdtemp(prefix=temporary_prefix(dest), suffix=TEMP_SUFFIX, dir=dest.parent))
    old = aside / "old"
    os.rename(dest, old)  # a symlink is moved, never followed
    try:
        os.rename(tmp, dest)
    except BaseException:
        os.rename(old, dest)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)  # the old tree (a symlink in it is unlinked, not followed)
