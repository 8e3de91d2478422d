"""`npuflow audit`: the tiny run's summary.csv, report.html and MLflow runs agree with the stage
reports they come from; a figure changed in any of them, or a stale caption, is found and named."""

import csv
import json

import pytest
import yaml

from conftest import TINY_CONFIG, mlflow_runs, snakemake
from npuflow.core.records import BuildReport, TrackReport
from npuflow.report.audit import audit


def test_the_tiny_run_shows_only_what_its_stage_reports_give(pipeline):
    """And the report stage ran the audit itself: its record says so, with nothing found."""
    assert audit(pipeline) == (2, [])
    complete = json.loads((pipeline / "results" / "report.complete.json").read_text())
    assert complete["audit"] == {"rows_checked": 2, "disagreements": []}


def test_a_figure_changed_anywhere_is_found_and_named(pipeline_copy, capsys):
    from npuflow.cli import main

    results = pipeline_copy / "results"
    track = TrackReport.read(results / "efficientvit_m0" / "track.json")
    build = BuildReport.read(pipeline_copy / track.runs["rdk-x5"].files["build"])
    # summary.csv: rdk-x5's FPS edited by hand
    with open(results / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        if r["target"] == "rdk-x5":
            r["fps"] = str(float(r["fps"]) * 2)
    with open(results / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    # report.html: a caption counting the evaluation's images, not the analysis'
    page = (results / "report.html").read_text()
    (results / "report.html").write_text(page.replace("on 2 held-out images", "on 4 held-out images"))
    # MLflow: a later value of a metric on the ax650n-npu3 run
    client, runs = mlflow_runs(pipeline_copy)
    run = next(r for r in runs if r.data.tags.get("target") == "ax650n-npu3")
    client.log_metric(run.info.run_id, "latency_ms", 123.0, step=1)
    found = audit(pipeline_copy)[1]
    assert f"summary.csv efficientvit_m0@rdk-x5 fps: '{2 * build.fps!r}', its source gives {build.fps!r}" in found
    assert "report.html efficientvit_m0: the per-layer caption does not say 'on 2 held-out images' (the analysis' count)" in found
    assert any(line.startswith("MLflow efficientvit_m0@ax650n-npu3: metric latency_ms is 123.0, its source gives") for line in found)
    assert len(found) == 3, found
    assert main(["audit", str(pipeline_copy)]) == 2
    out, err = capsys.readouterr()
    assert (
        out.splitlines() == found
        and err.strip() == "npuflow audit: error: 3 disagreements with the stage reports, over 2 rows (listed above)"
    )


@pytest.mark.slow
def test_a_derived_profile_runs_end_to_end_headed_as_one_and_audited_clean(pipeline_copy, tmp_path):
    """The tiny run with a third target derived from rdk-x5 (1.5× compute): only its jobs run; it
    builds (its resolved profile passes the build's schema check), the model's rdk-x5 precision
    applies to it, the report heads it with what it changes, and the report stage's audit finds
    nothing over the three rows."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["targets"].append("x5-fast")
    config["target_profiles"] = {"x5-fast": {"base": "rdk-x5", "units": {"tensor": {"peak_ops_per_s": {"int8": 15.0e12}}}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(pipeline_copy, configfile=tmp_path / "c.yaml")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    complete = json.loads((pipeline_copy / "results" / "report.complete.json").read_text())
    assert complete["audit"] == {"rows_checked": 3, "disagreements": []}
    with open(pipeline_copy / "results" / "summary.csv", newline="") as f:
        rows = {r["target"]: r for r in csv.DictReader(f)}
    assert rows["x5-fast"]["precision_recipe"] == "int8_Softmax-int16" and float(rows["x5-fast"]["fps"]) >= float(rows["rdk-x5"]["fps"])
    page = (pipeline_copy / "results" / "report.html").read_text()
    assert "a profile derived from rdk-x5: units.tensor.peak_ops_per_s.int8 1e+13 → 1.5e+13" in page
