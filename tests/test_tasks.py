"""The task registry (npuflow.core.tasks): every entry is a task the schema accepts, some source
serves, whose figures have metric names and whose front has a quality axis."""

import pytest

from npuflow.core.records import EVAL_METRICS
from npuflow.core.tasks import TASKS
from npuflow.pipeline.schema import load_schema
from npuflow.report.pareto import QUALITY
from npuflow.sources.core import SOURCES


@pytest.mark.parametrize("name", [name for name, _ in TASKS.items()])
def test_every_task_is_one_registry_entry(name):
    task = TASKS.get(name)
    field = load_schema()["$defs"]["model"]["properties"]["task"]
    assert name in field["enum"] and f"{name}: {task.description}" in field["description"]
    assert any(name in SOURCES.get(p).tasks for p in SOURCES.names()), f"no model source serves task {name}"
    assert set(task.agreement) <= set(EVAL_METRICS) and set(task.goal_metrics) <= {"cosine", *task.agreement[:1]}
    assert task.front in QUALITY and task.annotations in ("labels", "masks", "boxes", None)
    if task.per_pixel:
        assert task.annotations == "masks" and "pixel_agreement" in task.agreement


def test_an_unknown_task_names_the_known_ones():
    from conftest import make_config
    from npuflow.pipeline.config import ConfigError

    with pytest.raises(ConfigError, match=r"models\.m\.task: .*classification.*features"):
        make_config(m={"source": "timm:resnet18", "task": "clasification", "input": {"shape": [1, 3, 64, 64]}})
