"""The Pareto front of each target: simulated FPS against quality, where quality is task accuracy
when every model on the target has it (labelled evaluation images), else int8-vs-float cosine, so
that one axis never mixes the two."""

from __future__ import annotations

# Task accuracy, in order of preference, when every model on the target has it.
ACCURACY = ("top1", "miou")
QUALITY_LABELS = {"cosine": "int8 vs float cosine (fidelity)", "top1": "top-1 accuracy", "miou": "mIoU"}


def quality_metric(rows: list) -> str:
    """The quality axis for one target's rows (`Row`s that are ok)."""
    for key in ACCURACY:
        if rows and all(isinstance(r.figure(key), (int, float)) for r in rows):
            return key
    return "cosine"


def mark_pareto(rows: list) -> None:
    """Per target: `pareto` True on the ok rows no other row beats on both FPS and quality."""
    for target in dict.fromkeys(r.target for r in rows):
        ok = [r for r in rows if r.target == target and r.ok]
        key = quality_metric(ok)
        for r in ok:
            fps, q = r.figure("fps"), r.figure(key)
            r.pareto = not any(
                o is not r and o.figure("fps") >= fps and o.figure(key) >= q and (o.figure("fps") > fps or o.figure(key) > q) for o in ok
            )
