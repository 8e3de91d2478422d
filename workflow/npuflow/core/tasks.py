"""The tasks a model serves (`task:` in the config), one registry entry each, carrying what the
rest of npuflow asks of a task: what an evaluation set's annotations give it, which agreement
figures compare its int8 outputs with float, which mixed-precision goals it allows, how the report
ranks it on a Pareto front. The config schema's `task` values and their description come from
here; evaluation, config checks and the report read the entry, not `if task == …` chains."""

from __future__ import annotations

from dataclasses import dataclass

from npuflow.util.registry import Registry


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    # what an evaluation set's annotations give it: "labels" (class folders), "masks", "boxes" or None
    annotations: str | None
    # its agreement figures (int8 vs float on the same images), first the one a mixed-precision goal may name
    agreement: tuple[str, ...]
    # mixed-precision goal metrics it allows (empty: the search is not available for it)
    goal_metrics: tuple[str, ...]
    # the report's Pareto front its rows join on a target (npuflow.report.pareto.QUALITY: its axis)
    front: str = "other"
    # outputs a class score per pixel (append_argmax applies)
    per_pixel: bool = False
    # outputs decoded on the host into boxes (and NMS): evaluated by npuflow.evaluation.detect_eval
    decoded: bool = False


TASKS: Registry[Task] = Registry("task")
for _task in (
    Task(
        "classification",
        "one class per image (top-1/top-5 against class-folder labels)",
        annotations="labels",
        agreement=("top1_agreement", "top5_agreement"),
        goal_metrics=("cosine", "top1_agreement"),
    ),
    Task(
        "segmentation",
        "a class per pixel (mIoU against masks)",
        annotations="masks",
        agreement=("pixel_agreement",),
        goal_metrics=("cosine",),
        per_pixel=True,
    ),
    Task(
        "detection",
        "boxes, with the head's masks or keypoints for YOLO -seg and -pose models (mAP against box labels)",
        annotations="boxes",
        agreement=("box_agreement",),
        goal_metrics=(),
        front="detection",
        decoded=True,
    ),
    Task(
        "features",
        "outputs without classes: a backbone's feature map, a saliency map, a recogniser's sequence logits (fidelity only)",
        annotations=None,
        agreement=(),
        goal_metrics=("cosine",),
    ),
):
    TASKS.add(_task.name, _task)


def task(name: str) -> Task:
    return TASKS.get(name)
