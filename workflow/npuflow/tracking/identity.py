"""What identifies a (model, target) run: the hash of its inputs (an unchanged run is reused) and its
registered model's name."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from npuflow.core.layout import HASHED
from npuflow.util.io import read_json

# Part of every run's inputs hash: bump it when what a run holds changes, so runs logged by older
# code are superseded by complete ones instead of being reused.
RUN_FORMAT = 4


def inputs_hash(spec: dict, files: dict) -> str:
    """What a run is made of: the logged spec fields, the stage reports (timings aside: they differ
    between identical re-runs) and the per-layer table when there is one."""
    h = hashlib.sha256(json.dumps({"format": RUN_FORMAT, "spec": spec}, sort_keys=True).encode())
    for name in (n for n in HASHED if files.get(n)):  # `mixed` only where mixed precision chose the recipe
        if not files[name].endswith(".json"):
            h.update(Path(files[name]).read_bytes())
            continue
        data = read_json(files[name])
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k != "seconds"}
        h.update(json.dumps(data, sort_keys=True).encode())
    return h.hexdigest()[:16]


def registered_name(model: str, target: str) -> str:
    return f"{model}-{target}"
