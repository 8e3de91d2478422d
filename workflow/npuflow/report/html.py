"""report.html: the rows, plots and simulator fit rendered with the Jinja2 template beside this
module (templates/report.html.j2). One self-contained page: plots inline, nothing loaded from
elsewhere; links go to each row's files (relative to the page) and its MLflow run."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from npuflow.core.records import EVAL_METRICS
from npuflow.core.records.quant import calibration_text
from npuflow.core.tasks import TASKS
from npuflow.evaluation.layers import COSINE_FLOOR
from npuflow.report.collect import Row, worst_layers
from npuflow.report.columns import COLUMNS, fmt, interval_text, sig
from npuflow.report.pareto import QUALITY_LABELS, quality_groups
from npuflow.report.plots import UNITS, latency_by_op_type, top_op_types
from npuflow.targets import changes_text
from npuflow.util.io import atomic_path, read_json

TEMPLATES = Path(__file__).resolve().parent / "templates"
LAYER_COLUMNS = (
    ("node", "node", "text"),
    ("op_type", "op type", "text"),
    ("quantized_dtype", "quantised as", "text"),
    ("unit", "unit", "text"),
    ("cosine", "cosine", "cosine"),
    ("sqnr_db", "SQNR dB", "db"),
    ("local_sqnr_db", "local SQNR dB", "db"),
    ("mse", "MSE", "sci"),
    ("flag", "flag", "text"),  # npuflow.evaluation.layers.flag_text
)


def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["breakable"] = breakable
    return env


def breakable(text) -> str:
    """Escaped text that may wrap after _ / . (long model and tensor names), and nowhere else;
    numbers stay whole."""
    import re

    from markupsafe import Markup, escape

    text = str(escape(text))
    return Markup(re.sub(r"([_/.])", r"\1<wbr>", text) if re.search(r"[A-Za-z]", text) else text)


def _png(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode() if data else None


def _table(head: list[str], body: list[list], keep_empty: tuple[int, ...] = (0,)) -> dict:
    """A table without the columns that are empty on every row (column indices in `keep_empty`
    stay, e.g. the row's name)."""
    keep = [i for i in range(len(head)) if i in keep_empty or any(_text(row[i]) for row in body)]
    return {"head": [head[i] for i in keep], "rows": [[row[i] for i in keep] for row in body]}


def _text(cell) -> str:
    return cell.get("text", "") if isinstance(cell, dict) else str(cell or "")


def mlflow_run_url(row: Row, ui: str) -> str | None:
    """The row's run in the MLflow UI: the tracking server's own, or `ui` for a local store."""
    from npuflow.tracking.store import run_url

    if not row.run:
        return None
    base = row.tracking_uri if row.tracking_uri.startswith(("http://", "https://")) else ui
    return run_url(base, row.experiment_id, row.run.run_id)


def _links(row: Row, page_dir: Path, ui: str) -> dict:
    links = []
    for name, label in (("build_summary", "summary"), ("trace", "trace")):
        if row.files.get(name):
            links.append({"text": label, "href": os.path.relpath(Path(row.files[name]).resolve(), page_dir.resolve())})
    url = mlflow_run_url(row, ui)
    if url:
        links.append({"text": "MLflow run", "href": url})
    return {"links": links, "text": " ".join(link["text"] for link in links)}


def target_section(target: str, rows: list[Row], pareto_png: bytes | None, page_dir: Path, ui: str) -> dict:
    ok = sorted((r for r in rows if r.ok), key=lambda r: r.figure("latency_ms"))
    failed = [r for r in rows if not r.ok]
    shown = [c for c in COLUMNS if c.heading]
    body = []
    for r in ok + failed:
        cells = []
        for c in shown:
            if c.key == "status":
                cells.append({"text": "ok"} if r.ok else {"text": f"{r.status.upper()} at {r.failed_stage}", "cls": "failed"})
            elif c.key == "cosine" and flag_cell(r):  # the analysis' flagged tensors beneath the headline
                cells.append({**flag_cell(r), "text": fmt(c.get(r), c.kind)})
            elif c.key == "latency_ms" and interval_text(r):  # its 80 % range beneath: no column of its own (width)
                cells.append({"text": fmt(c.get(r), c.kind), "sub": interval_text(r)})
            elif c.key in ("host_fp32_ms", "host_int8_ms") and noisy_text(r, c.key):
                cells.append({"text": fmt(c.get(r), c.kind), "sub": "⚠", "title": noisy_text(r, c.key)})
            else:
                cells.append(fmt(c.get(r), c.kind))
        cells.append(_links(r, page_dir, ui))
        body.append(cells)
    table = _table([c.heading for c in shown] + ["files and run"], body)
    first = ok[0] if ok else None
    groups = quality_groups(ok)
    slower_int8 = [r.model for r in ok if (r.figure("host_int8_ms") or 0) > (r.figure("host_fp32_ms") or float("inf"))]
    return {
        "target": target,
        "chip": chip_heading(first.build) if first else "",
        "batch": first.build.batch if first else "",
        "table": table,
        "quality": quality_text(groups),
        "pareto_png": _png(pareto_png),
        "cpu": [{"model": r.model, "cpu": r.cpu} for r in ok if r.cpu and r.cpu.dominates],
        "slower_int8": slower_int8,
        "detection": any(TASKS.get(r.evaluate.task).decoded for r in ok),
        "published": any(r.published for r in ok),
    }


def noisy_text(r: Row, key: str) -> str | None:
    """The tooltip of a host latency whose timed runs spread past NOISY_SPREAD (the cell shows a
    `⚠` beneath the figure: one character, so the table still fits 1400 px); else None."""
    from npuflow.evaluation.timing import NOISY_SPREAD

    spread = r.figure(key.replace("_ms", "_spread"))
    if not (isinstance(spread, (int, float)) and spread > NOISY_SPREAD):
        return None
    return (
        f"Its timed runs varied ×{spread:.1f} (slowest over fastest): the machine was busy (other jobs on the same cores),"
        " so the median is uncertain; re-measure on an idle machine (npuflow evaluate) before comparing."
    )


def chip_heading(build) -> str:
    """What a target section's heading says of the chip: its name; for a profile derived from
    another target (`base:`), that it is one and what it changes — it is not the base chip."""
    derived = changes_text(build.derived_from_base)
    return f"a profile {derived} ({build.chip})" if derived else build.chip


def flag_cell(r: Row) -> dict | None:
    """The headline cosine cell's warning when the per-layer analysis flagged tensors (constant in
    int8, or below npuflow.evaluation.layers.COSINE_FLOOR): the count beneath the figure, the first
    flagged tensor named in the cell's tooltip; None when nothing is flagged."""
    analysis = r.analysis if r.ok else None
    if not analysis or not analysis.flagged_tensors:
        return None
    n, names = analysis.flagged_tensors, analysis.flagged_names or []
    more = f" and {n - len(names)} more" if n > len(names) else ""
    title = (
        f"{n} tensor{'s' if n != 1 else ''} lost their float signal in the quantised model "
        f"({analysis.collapsed_tensors or 0} constant, or cosine below {COSINE_FLOOR}): {', '.join(names)}{more}"
    )
    return {"sub": f"⚠ {n} layer{'s' if n != 1 else ''} lost", "cls": "failed", "title": title}


def quality_text(groups: dict[str, list[Row]]) -> str:
    """What the target's Pareto fronts measure quality by: one metric, or the detectors' apart."""
    parts = []
    for key, group in groups.items():
        apart = len(groups) > 1 and all(TASKS.get(r.evaluate.task).decoded for r in group)
        parts.append(QUALITY_LABELS[key] + (" for the detection models, on a front of their own" if apart else ""))
    return "; ".join(parts) or QUALITY_LABELS["cosine"]


def model_section(model: str, rows: list[Row], latency_png: bytes | None) -> dict:
    ok = [r for r in rows if r.ok]
    failed = [r for r in rows if not r.ok]
    out = {"model": model, "failed": [_failure(r) for r in failed], "ok": bool(ok)}
    if not ok:
        return out
    first = ok[0]
    out.update(task=first.evaluate.task, source=first.manifest.source, weights=first.manifest.weights, latency_png=_png(latency_png))
    out["calibration"] = calibration_text(first.calibration) if first.calibration else None
    builds = {r.target: (r.build, read_json(r.files["trace"])) for r in ok}
    out["units"] = _table(
        ["target", *UNITS, "total"],
        [[t, *[sig(b.unit_time_ms.get(u, 0.0)) for u in UNITS], sig(b.latency_ms)] for t, (b, _) in builds.items()],
    )
    by_type = {t: latency_by_op_type(trace, b) for t, (b, trace) in builds.items()}
    top = top_op_types(by_type, {t: b for t, (b, _) in builds.items()})
    out["op_types"] = _table(
        ["target", *top, "other", "overhead"],
        [
            [
                t,
                *[sig(d.get(k, 0.0)) for k in top],
                sig(sum(v for k, v in d.items() if k not in top and k != "overhead")),
                sig(d["overhead"]),
            ]
            for t, d in by_type.items()
        ],
    )
    # Worst layers of the precision analysis, once per distinct table (targets sharing a
    # quantised model share its errors; the unit column is the first target's).
    from npuflow.evaluation.layers import flag_text, read_layers_csv

    tables: dict[str, list[str]] = {}
    for r in ok:
        if r.files.get("layers") and Path(r.files["layers"]).exists():
            tables.setdefault(r.build.precision_recipe, []).append(r.target)
    layer_tables = []
    for r in ok:
        targets = tables.get(r.build.precision_recipe)
        if not targets or targets[0] != r.target:
            continue
        worst = [{**w, "flag": flag_text(w)} for w in worst_layers(read_layers_csv(r.files["layers"]), 10)]
        layer_tables.append(
            {
                "targets": targets,
                "path": r.files["layers"],
                # the analysis' own count (evaluation.analysis_images), not the evaluation's
                "images": r.analysis.images if r.analysis else None,
                "table": _table([h for _, h, _ in LAYER_COLUMNS], [[fmt(w.get(k), kind) for k, _, kind in LAYER_COLUMNS] for w in worst]),
            }
        )
    out["layers"] = layer_tables
    out["ptq"] = _ptq(first)
    from npuflow.evaluation.layers import fidelity_check_text

    out["fidelity_warnings"] = [
        f"{r.target} ({r.build.precision_recipe}): {fidelity_check_text(r.analysis.fidelity_check if r.analysis else None)}"
        for r in ok
        if r.analysis and r.analysis.fidelity_check and not r.analysis.fidelity_check["agrees"]
    ]
    out["collapse_warnings"] = collapse_warnings(ok)
    out["mixed"] = [_mixed(r) for r in ok if r.mixed]
    return out


# A layer whose quantised output keeps less than this cosine to the float one has lost its signal
# (all zeros, or noise): however good the output's headline figure, that part of the model is gone.
# The per-layer analysis' floor, the one number for both.
COLLAPSED_COSINE = COSINE_FLOOR


def collapse_warnings(rows: list[Row]) -> list[str]:
    """One line per quantised model (recipe) whose worst ranked layer has collapsed: the headline
    cosine of a model can stay at 0.99 while every attention map is exactly zero."""
    seen, out = set(), []
    for r in rows:
        worst = r.worst_layer or {}
        cosine = worst.get("cosine")
        if r.build.precision_recipe in seen or not isinstance(cosine, float) or not cosine < COLLAPSED_COSINE:
            continue
        seen.add(r.build.precision_recipe)
        headline = r.figure("cosine")
        out.append(
            f"{r.target} ({r.build.precision_recipe}): layer {worst.get('node') or worst.get('tensor')} has cosine {cosine:.3f} "
            f"to the float model" + (f" (output cosine {headline:.4f})" if isinstance(headline, float) else "")
        )
    return out


def _ptq(r: Row) -> dict | None:
    """The model's `quantization:` settings and what each method did (the ptq stage's report)."""
    from npuflow.core.records import PtqReport
    from npuflow.quant.ptq import resolve_settings, settings_id
    from npuflow.quant.ptq.report import method_text

    path = r.files.get("ptq")
    if not path or not Path(path).exists():
        return None
    ptq = PtqReport.read(path)
    if ptq.settings_id == settings_id(resolve_settings()):  # the defaults: nothing to show
        return None
    settings = ", ".join(f"{k}: {v}" for k, v in ptq.settings.items())
    return {"settings": settings, "table": _table(["method", "result"], [[k, method_text(e)] for k, e in ptq.methods.items()])}


def _mixed(r: Row) -> dict:
    m = r.mixed
    metric = m.goal.metric
    body = [
        [
            str(p.step),
            str(p.nodes_int16),
            str(p.nodes_float),
            f"{p.value(metric):.5f}",
            sig(p.latency_ms),
            "chosen" if p.step == m.chosen.step else "",
        ]
        for p in m.curve
    ]
    return {
        "target": r.target,
        "metric": metric,
        "goal": m.goal.value,
        "met": m.goal_met,
        "increase": m.chosen.latency_increase_pct,
        "table": _table(["step", "int16 nodes", "float nodes", metric, "latency ms (sim)", ""], body, keep_empty=(0, 1, 2, 3, 4)),
    }


def _failure(r: Row) -> dict:
    tail = None
    if r.log and Path(r.log).exists():
        tail = "\n".join(Path(r.log).read_text(errors="replace").splitlines()[-12:])
    return {"target": r.target, "model": r.model, "status": r.status, "stage": r.failed_stage, "log": r.log, "tail": tail}


def simulator_section(targets: list[str]) -> list[dict]:
    """Per target: the simulator's predictions against the published measurements it was fitted
    to (stored in the profile by `npuflow sim-fit`), or why there are none."""
    from npuflow.targets import load_targets

    profiles = load_targets()
    out = []
    for target in targets:
        fit = profiles.get(target).get("fit") if target in profiles else None
        if not fit:
            from npuflow.sim.build import profile_basis

            basis = profile_basis(profiles.get(target)) if target in profiles else "a profile of the config's own"
            out.append({"target": target, "fitted": False, "basis": basis})
            continue
        errs = [abs(r["error_pct"]) for r in fit["residuals"]]
        body = [
            [r["model"], r["metric"], str(r["batch"]), sig(r["published"]), sig(r["predicted"]), f"{r['error_pct']:+.1f}"]
            for r in fit["residuals"]
        ]
        out.append(
            {
                "target": target,
                "fitted": True,
                "csv": fit["data"]["csv"],
                "count": len(errs),
                "mape": sum(errs) / len(errs),
                "within": sum(e <= 20 for e in errs),
                "table": _table(["model", "metric", "batch", "published", "simulated (fit's export)", "error %"], body),
            }
        )
    return out


def write_html(
    rows: list[Row], out_html: str | Path, pareto: dict[str, bytes], latency: dict[str, bytes], mlflow_ui: str, partial: bool = False
) -> None:
    from npuflow.sim.uncertainty import stored_table

    page_dir = Path(out_html).parent
    targets = list(dict.fromkeys(r.target for r in rows))
    models = list(dict.fromkeys(r.model for r in rows))
    context = {
        "targets": targets,
        "models": models,
        "random_models": sorted({r.model for r in rows if r.ok and r.manifest.random}),
        "failed": [_failure(r) for r in rows if not r.ok],
        "total": len(rows),
        "partial": partial,
        "target_sections": [target_section(t, [r for r in rows if r.target == t], pareto.get(t), page_dir, mlflow_ui) for t in targets],
        "model_sections": [model_section(m, [r for r in rows if r.model == m], latency.get(m)) for m in models],
        "simulator": simulator_section(targets),
        "eval_metrics": EVAL_METRICS,
        "intervals": stored_table(),  # the simulator's prediction intervals, with their measured coverage
    }
    page = _environment().get_template("report.html.j2").render(**context)
    with atomic_path(out_html) as tmp:
        tmp.write_text(page)
