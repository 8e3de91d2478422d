"""The one merge rule of npuflow's settings: a more specific block changes only the keys it sets.

`merge_blocks(default, global_, model)` is what a model's `calibration:` (or any block the config
has both at the top level and under a model) resolves to: per key, the last layer that sets it
wins; two mappings under one key are merged the same way, recursively; anything else (a list, a
number, text) is replaced whole. npuflow.pipeline.schema resolves every such block with it, a
target profile's `base:` chain is merged with it (npuflow.targets), and a model's per-target
precision recipe over the profile's (npuflow.graph.precision.merge_recipe, whose subgraph lists
add up instead)."""

from __future__ import annotations

import copy


def merge_blocks(*layers: dict | None) -> dict:
    """The layers merged, least specific first; None or a missing layer counts as empty. The
    result shares nothing with the layers (each value is copied)."""
    out: dict = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge_blocks(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out
