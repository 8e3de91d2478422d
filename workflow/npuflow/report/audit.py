"""`npuflow audit`: every figure one run shows, checked against the stage output it comes from.

A run's figures are in four places: the stage reports (build.json, eval/<recipe>.json, …), the
MLflow runs, summary.csv and report.html. The last three are written from the first, by different
code at different times; a stale file, a report of another run, a hand edit or a bug in any of
that code shows a number nothing backs. The audit reads the stage reports of every `ok` row of
summary.csv again and checks that
- every summary.csv column holds what the report stage computes from them now,
- every metric the MLflow run holds is the one they give (and none is missing),
- report.html shows each row's simulated latency, FPS and headline fidelity as they format, and
  each per-layer caption counts the images the analysis used.
It prints what disagrees; the report stage runs it (without the MLflow part, ~5 s) after writing
the report."""

from __future__ import annotations

import contextlib
import csv
import html
import math
import re
from pathlib import Path

from npuflow.core.layout import STAGES
from npuflow.core.records import TrackReport
from npuflow.report.collect import Row, good_row
from npuflow.report.columns import COLUMNS, csv_value, fmt
from npuflow.report.pareto import mark_pareto

# Columns whose source is outside the run (the published measurements): checked only when the
# audit is given the same CSV the report was.
PUBLISHED_COLUMNS = ("published_latency_ms", "published_fps", "sim_error_pct")
# The figures the report's per-target table must show for every row.
SHOWN = ("latency_ms", "fps", "cosine")


def _same(written: str, expected) -> bool:
    expected = csv_value(expected)
    if str(written) == str(expected):
        return True
    try:
        a, b = float(written), float(expected)
    except (TypeError, ValueError):
        return False
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _rows(published: list, profiles) -> tuple[list[dict], list[Row], list[str]]:
    """(summary.csv's rows, the `ok` ones rebuilt from their stage reports, problems)."""
    from npuflow.pipeline.plan import Pair

    with open(STAGES.report.output("csv"), newline="") as f:
        written = list(csv.DictReader(f))
    rebuilt, problems, tracks = [], [], {}
    for w in written:
        if w["status"] != "ok":
            continue
        where = f"summary.csv {w['model']}@{w['target']}"
        path = Path(STAGES.track.output("runs", model=w["model"]))
        if not path.exists():
            problems.append(f"{where}: status ok, but {path} is missing")
            continue
        track = tracks.setdefault(w["model"], TrackReport.read(path))
        if w["target"] not in track.runs:
            problems.append(f"{where}: status ok, but {path} has no run for {w['target']}")
            continue
        pair = Pair(w["model"], w["target"], w["precision_recipe"], w["precision_recipe"])
        rebuilt.append(good_row(pair, track, published, profiles))
    mark_pareto(rebuilt)
    return written, rebuilt, problems


def check_summary(written: list[dict], rebuilt: list[Row], with_published: bool) -> list[str]:
    by_pair = {(r.model, r.target): r for r in rebuilt}
    problems = []
    for w in written:
        row = by_pair.get((w["model"], w["target"]))
        if row is None:
            continue
        for c in (c for c in COLUMNS if c.csv):
            if c.key in PUBLISHED_COLUMNS and not with_published:
                continue
            expected = c.get(row)
            if c.key not in w:
                problems.append(f"summary.csv: no column {c.key}")
                return problems
            if not _same(w[c.key], expected):
                problems.append(f"summary.csv {row.model}@{row.target} {c.key}: {w[c.key]!r}, its source gives {csv_value(expected)!r}")
    return problems


def check_mlflow(rebuilt: list[Row]) -> list[str]:
    """Each row's MLflow run against the metrics its stage reports give."""
    from mlflow.tracking import MlflowClient

    from npuflow.tracking.projection import RunReports, run_metrics
    from npuflow.tracking.uri import redacted

    problems = []
    for r in rebuilt:
        try:
            logged = MlflowClient(tracking_uri=_absolute(r.tracking_uri)).get_run(r.run.run_id).data.metrics
        except Exception as e:  # a run that is gone, a store that moved or changed: what the audit is for
            why = " ".join(str(e).split())[:160]
            problems.append(
                f"MLflow run {r.run.run_id} ({r.model}@{r.target}) in {redacted(r.tracking_uri)}: cannot be read ({type(e).__name__}: {why})"
            )
            continue
        for name, value in run_metrics(RunReports.read(r.files), r.files).items():
            if name not in logged:
                problems.append(f"MLflow {r.model}@{r.target}: metric {name} missing (its source gives {value!r})")
            elif not math.isclose(logged[name], value, rel_tol=1e-6, abs_tol=1e-12):
                problems.append(f"MLflow {r.model}@{r.target}: metric {name} is {logged[name]!r}, its source gives {value!r}")
    return problems


def _absolute(uri: str) -> str:
    """A local store's URI with its path made absolute: MLflow keeps one database engine per URI
    for the life of the process, so `sqlite:///results/mlflow.db` would go on reading the first
    run's database after the audit moved to another run's folder."""
    from npuflow.tracking.server import local_store

    found = local_store(uri)
    if found is None:
        return uri
    path, kind = found
    return f"sqlite:///{path.resolve()}" if kind == "database" else str(path.resolve())


def _text(fragment: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment.replace("<wbr>", ""))).split())


def check_html(page: str, rebuilt: list[Row]) -> list[str]:
    """Each row's headline figures in its target's table; each per-layer caption's image count."""
    problems, captioned = [], set()
    sections = re.split(r'(?=<h2 id=")', page)
    by_id = {m[1]: s for s in sections if (m := re.match(r'<h2 id="([^"]+)"', s))}
    columns = {c.key: c for c in COLUMNS}
    for r in rebuilt:
        section = by_id.get(f"target-{r.target}")
        if section is None:
            problems.append(f"report.html: no section for target {r.target}")
            continue
        text = _text(section)
        for key in SHOWN:
            c = columns[key]
            shown = fmt(c.get(r), c.kind)
            if shown and shown not in text:
                problems.append(f"report.html {r.model}@{r.target}: {c.heading or key} {shown} (from its source) is not shown")
        model = by_id.get(f"model-{r.model}")
        if r.analysis and model is not None and "Worst layers" in model and r.model not in captioned:
            captioned.add(r.model)
            caption = f"on {r.analysis.images} held-out images"
            if caption not in _text(model):
                problems.append(f"report.html {r.model}: the per-layer caption does not say {caption!r} (the analysis' count)")
    return problems


def audit(
    run_dir: str | Path = ".", *, published_csv: str | Path | None = None, mlflow: bool = True, target_profiles=None
) -> tuple[int, list[str]]:
    """(how many rows were checked, what disagrees) for the run whose results/ is in `run_dir`."""
    from npuflow.targets import load_targets

    published_csv = Path(published_csv).resolve() if published_csv else None
    with contextlib.chdir(run_dir):  # the stage reports' paths are relative to the run's folder
        for output in ("csv", "html"):
            if not Path(STAGES.report.output(output)).exists():
                return 0, [f"{STAGES.report.output(output)}: missing (no report to audit in {Path(run_dir).resolve()})"]
        published = []
        if published_csv:
            from npuflow.calibration.published import read_published

            published = read_published(published_csv)
        written, rebuilt, problems = _rows(published, load_targets(target_profiles or {}))
        problems += check_summary(written, rebuilt, bool(published_csv))
        problems += check_html(Path(STAGES.report.output("html")).read_text(), rebuilt)
        if mlflow:
            problems += check_mlflow(rebuilt)
    return len(rebuilt), problems
