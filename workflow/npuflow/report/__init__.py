"""Stage report: every (model, target) side by side, as results/summary.csv and one self-contained
results/report.html, plus the per-target Pareto plots as PNG files.

`collect` reads the rows (a pair whose chain of stage outputs is incomplete is marked failed at
the first missing one, with that stage's log: under `--keep-going` the workflow's `onerror`
handler writes the report over what exists), `pareto` marks the fronts, `plots` draws, `html`
renders the page from its Jinja2 template, `columns` names the CSV's and the tables' columns."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from npuflow.report.collect import Row, collect, worst_layers
from npuflow.report.columns import COLUMNS, csv_value
from npuflow.report.pareto import mark_pareto, quality_metric
from npuflow.util.errors import INTERRUPTED
from npuflow.util.io import atomic_path

__all__ = ["Row", "collect", "failure_lines", "mark_pareto", "quality_metric", "report", "worst_layers", "write_summary"]


def write_summary(rows: list[Row], out_csv: str | Path) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    columns = [c for c in COLUMNS if c.csv]
    w.writerow([c.key for c in columns])
    for r in rows:
        w.writerow([csv_value(c.get(r)) for c in columns])
    with atomic_path(out_csv) as tmp:
        tmp.write_text(buf.getvalue())


def report(
    *,
    pairs: list,
    out_csv: str | Path,
    out_html: str | Path,
    plots_dir: str | Path | None = None,
    mlflow_ui: str = "http://127.0.0.1:5000",
    published_csv: str | Path | None = None,
    target_profiles: dict | None = None,
    partial: bool = False,
) -> list[Row]:
    """summary.csv, report.html and (with plots_dir) pareto.<target>.png for every target.
    `published_csv`: device measurements to show beside the simulated figures (the simulator's fit
    data); `target_profiles`: the config's own profiles (for which ops a recipe can move);
    `partial`: the report of a run that stopped early (the page says so)."""
    from npuflow.report.html import write_html
    from npuflow.report.plots import pareto_png
    from npuflow.targets import load_targets

    published = []
    if published_csv and Path(published_csv).exists():
        from npuflow.calibration.published import read_published

        published = read_published(published_csv)
    rows = collect(pairs, published, load_targets(target_profiles or {}))
    mark_pareto(rows)
    models = list(dict.fromkeys(r.model for r in rows))
    targets = list(dict.fromkeys(r.target for r in rows))
    pareto = {t: pareto_png(t, [r for r in rows if r.target == t], models) for t in targets if any(r.ok for r in rows if r.target == t)}
    if plots_dir is not None:
        Path(plots_dir).mkdir(parents=True, exist_ok=True)
        for target in targets:
            with atomic_path(Path(plots_dir) / f"pareto.{target}.png") as tmp:
                # A target where every model failed still gets its (empty) plot: the file is an output.
                tmp.write_bytes(pareto.get(target) or pareto_png(target, [], models))
    latency = {}
    for r in rows:
        plot = r.files.get("plot")
        if r.ok and plot and Path(plot).exists():
            latency.setdefault(r.model, Path(plot).read_bytes())
    write_summary(rows, out_csv)
    write_html(rows, out_html, pareto, latency, mlflow_ui, partial=partial)
    return rows


def _last_line(log: str) -> str:
    lines = [line for line in Path(log).read_text(errors="replace").splitlines() if line.strip()] if Path(log).exists() else []
    return lines[-1] if lines else ""


def interrupted(summary_csv: str | Path) -> bool:
    """Whether the run stopped because of Ctrl-C: every failed (model, target)'s log ends with the
    line an interrupted npuflow command prints (none failed of itself)."""
    with open(summary_csv, newline="") as f:
        failed = [r for r in csv.DictReader(f) if r["status"] == "failed"]
    return bool(failed) and all(_last_line(r["log"]).endswith(INTERRUPTED) for r in failed)


def failure_lines(summary_csv: str | Path) -> list[str]:
    """From a summary CSV: one line per failed stage (its targets together) with the last line of
    its log, and a count of the pairs whose jobs never ran; what the terminal shows when a run
    stops early."""
    with open(summary_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    lines, failed, not_run = [], {}, []
    for r in rows:
        if r["status"] == "failed":
            failed.setdefault((r["model"], r["failed_stage"], r["log"]), []).append(r["target"])
        elif r["status"] != "ok":
            not_run.append(r)
    for (model, stage, log), targets in failed.items():
        lines.append(f"{model} ({', '.join(targets)}) failed at {stage}: {_last_line(log) or '(empty log)'} [{log}]")
    if not_run:
        stages = ", ".join(dict.fromkeys(r["failed_stage"] for r in not_run))
        lines.append(f"{len(not_run)} (model, target) pairs not run: the run stopped before their jobs (at {stages})")
    return lines
