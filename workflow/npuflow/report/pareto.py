"""The Pareto fronts of each target: simulated FPS against quality. Classifiers and segmenters are
measured by task accuracy when every one of them on the target has it (labelled evaluation
images), else by int8-vs-float cosine; detectors by mAP50 against labels, else by the detection
fidelity metric (int8's mAP50 with the float model's boxes as reference), else, when no boxes
were found to compare (random weights), by the head outputs' cosine. Rows measured by one metric
share an axis and a front, so one axis never mixes two metrics."""

from __future__ import annotations

from npuflow.core.records.metrics import METRICS
from npuflow.core.tasks import TASKS

# Per Pareto front (a task's `front`, npuflow.core.tasks), the quality metrics in order of
# preference: the first every model of the front on the target has is theirs.
QUALITY = {
    "other": ("top1", "miou", "cosine"),
    "detection": ("map50", "map50_vs_float", "cosine"),
}
# Each quality metric's axis label, and which are fidelity figures (npuflow.core.records.metrics.METRICS).
QUALITY_LABELS = {key: METRICS[key].axis for front in QUALITY.values() for key in front}
FIDELITY = {key for key in QUALITY_LABELS if METRICS[key].fidelity}


def _kind(row) -> str:
    return TASKS.get(row.evaluate.task).front


def quality_metric(rows: list) -> str:
    """The quality axis of rows of one kind (`Row`s that are ok)."""
    kinds = {_kind(r) for r in rows}
    for key in QUALITY[kinds.pop() if len(kinds) == 1 else "other"]:
        if rows and all(isinstance(r.figure(key), (int, float)) for r in rows):
            return key
    return "cosine"


def quality_groups(rows: list) -> dict[str, list]:
    """One target's ok rows by the metric that measures them ({metric: rows}): the classifiers'
    and segmenters' first, then the detectors' (joining the first when both are by cosine)."""
    groups: dict[str, list] = {}
    for kind in QUALITY:
        kind_rows = [r for r in rows if r.ok and _kind(r) == kind]
        if kind_rows:
            groups.setdefault(quality_metric(kind_rows), []).extend(kind_rows)
    return groups


def mark_pareto(rows: list) -> None:
    """Per target and quality metric: `pareto` True on the ok rows no other row beats on both FPS
    and quality."""
    for target in dict.fromkeys(r.target for r in rows):
        for key, group in quality_groups([r for r in rows if r.target == target]).items():
            for r in group:
                fps, q = r.figure("fps"), r.figure(key)
                r.pareto = not any(
                    o is not r and o.figure("fps") >= fps and o.figure(key) >= q and (o.figure("fps") > fps or o.figure(key) > q)
                    for o in group
                )
