"""Stage report: every (model, target) side by side, as results/summary.csv and one self-contained
results/report.html (plots inline as base64 PNG, no external URLs), plus the per-target Pareto plots
as PNG files.

A (model, target) whose chain of stage outputs is incomplete is reported as failed, naming the
first stage whose output is missing and that stage's log: under `--keep-going` the workflow's
`onerror` handler writes the report over what exists."""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from collections import Counter
from pathlib import Path

from .evaluate import EVAL_METRICS
from .io import atomic_path, read_json

# Accuracy needs labelled evaluation images; the Pareto plot uses it when every model on the target
# has it, else the int8-vs-float cosine.
ACCURACY = ("top1", "miou")
COLUMNS = [
    "model",
    "target",
    "status",
    "failed_stage",
    "log",
    "task",
    "weights",
    "precision_recipe",
    "latency_ms",
    "fps",
    "batch",
    "fps_batch1",
    "subgraphs",
    "cpu_ops",
    "ddr_bytes_per_frame",
    "cosine",
    "sqnr_db",
    "top1_agreement",
    "top5_agreement",
    "pixel_agreement",
    "top1",
    "float_top1",
    "top5",
    "float_top5",
    "miou",
    "float_miou",
    "host_fp32_ms",
    "host_int8_ms",
    "params",
    "macs",
    "onnx_bytes",
    "int8_bytes",
    "worst_layer",
    "worst_layer_sqnr_db",
    "worst_layer_cosine",
    "pareto",
    "run_id",
    "registered_model",
    "model_version",
]
# What the per-target table shows, with headings (the CSV has every column).
TABLE = [
    ("model", "model"),
    ("status", "status"),
    ("weights", "weights"),
    ("latency_ms", "latency ms (sim)"),
    ("fps", "FPS (sim)"),
    ("subgraphs", "subgraphs"),
    ("cosine", "cosine"),
    ("sqnr_db", "SQNR dB"),
    ("top1_agreement", "top-1 agr."),
    ("pixel_agreement", "pixel agr."),
    ("float_top1", "float top-1"),
    ("top1", "top-1 acc."),
    ("float_miou", "float mIoU"),
    ("miou", "mIoU"),
    ("host_fp32_ms", "host fp32 ms"),
    ("host_int8_ms", "host int8 ms"),
    ("params", "params"),
    ("macs", "MACs"),
    ("onnx_bytes", "ONNX MB"),
    ("int8_bytes", "int8 MB"),
    ("pareto", "Pareto"),
    ("run_id", "MLflow run"),
]
LAYER_COLUMNS = ("node", "op_type", "tensor", "quantized_dtype", "unit", "cosine", "sqnr_db", "local_sqnr_db", "mse")
UNITS = ("tensor", "vector", "dma", "cpu", "overhead")
TOP_OP_TYPES = 7


# ---------------------------------------------------------------------------------------- data
def _num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return f


def read_layers(path: str | Path) -> list[dict]:
    """The per-layer precision table (one row per quantised tensor); numeric columns as floats."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for col in ("cosine", "sqnr_db", "mse"):
            if r.get(col) not in (None, ""):
                r[col] = _num(r[col])
    return rows


def worst_layers(rows: list[dict], n: int = 10) -> list[dict]:
    """The n layers furthest from float: lowest SQNR (cosine where a row has no SQNR)."""

    def badness(r):
        s, c = r.get("sqnr_db"), r.get("cosine")
        if isinstance(s, float) and not math.isnan(s):
            return (0, s)
        if isinstance(c, float) and not math.isnan(c):
            return (1, c)
        return (2, 0.0)

    return sorted((r for r in rows if badness(r)[0] < 2), key=badness)[:n]


def latency_by_op_type(trace: dict, build: dict) -> dict[str, float]:
    """Simulated batch-1 time (ms) per op type (a fused group counts under its first op), plus the
    per-op/subgraph overhead; the values sum to the latency."""
    times: Counter = Counter()
    for e in trace["traceEvents"]:
        if e.get("ph") == "X":
            times[e["name"].split("+")[0]] += e["dur"] / 1e3
    out = dict(times.most_common())
    out["overhead"] = build["unit_time_ms"].get("overhead", 0.0)
    return out


def _stage_missing(stages: list, wildcards: dict) -> tuple[str, str] | None:
    """(stage, log) of the first stage in pipeline order with a missing output, or None."""
    for stage, outputs, log in stages:
        try:
            paths = [o.format(**wildcards) for o in outputs]
        except KeyError:  # a pattern with a wildcard this pair doesn't have: not part of its chain
            continue
        if not all(Path(p).exists() for p in paths):
            return stage, log.format(**wildcards) if log else ""
    return None


def collect(pairs: list[tuple[str, ...]], stages: list | None = None, results: str | Path = "results") -> list[dict]:
    """One row per (model, target[, recipe]). `stages`: [stage, [output patterns], log pattern] in
    pipeline order, over {model}, {target}, {recipe}; without it a pair is complete when its
    model's track.json lists it."""
    rows = []
    for pair in pairs:
        model, target = pair[0], pair[1]
        wildcards = {"model": model, "target": target, "recipe": pair[2] if len(pair) > 2 else ""}
        track_json = Path(results) / model / "track.json"
        if stages:
            track_stage = next((s for s in stages if s[0] == "track"), None)
            if track_stage:
                track_json = Path(track_stage[1][0].format(**wildcards))
            missing = _stage_missing(stages, wildcards)
        else:
            missing = None if track_json.exists() else ("track", "")
        run = read_json(track_json)["runs"].get(target) if missing is None else None
        if missing is None and run is None:
            missing = ("track", "")
        if missing is not None:
            # A stage whose job ran and failed leaves its log; one that never started (an earlier
            # stage of the model failed, or Snakemake stopped) leaves none.
            status = "failed" if missing[1] and Path(missing[1]).exists() else "not run"
            rows.append({"model": model, "target": target, "status": status, "failed_stage": missing[0], "log": missing[1]})
            continue
        rows.append(_row(model, target, run))
    return rows


def _row(model: str, target: str, run: dict) -> dict:
    files = run["files"]
    build, ev, manifest = read_json(files["build"]), read_json(files["evaluate"]), read_json(files["manifest"])
    export, quant = read_json(files["export"]), read_json(files["quantize"])
    row = {
        "model": model,
        "target": target,
        "status": "ok",
        "task": ev["task"],
        "weights": manifest["weights"],
        "params": manifest["params"],
        "onnx_bytes": export["onnx_bytes"],
        "int8_bytes": quant["int8_bytes"],
        "run_id": run["run_id"],
        "registered_model": run.get("registered_model", ""),
        "model_version": run.get("version", ""),
        "chip": build["chip"],
        "files": files,
        **{
            k: build[k]
            for k in ("precision_recipe", "latency_ms", "fps", "batch", "fps_batch1", "subgraphs", "cpu_ops", "ddr_bytes_per_frame", "macs")
        },
        **{k: ev[k] for k in EVAL_METRICS if k in ev},
    }
    if files.get("layers") and Path(files["layers"]).exists():
        worst = worst_layers(read_layers(files["layers"]), 1)
        if worst:
            row.update(
                worst_layer=worst[0].get("node") or worst[0].get("tensor", ""),
                worst_layer_sqnr_db=worst[0].get("sqnr_db", ""),
                worst_layer_cosine=worst[0].get("cosine", ""),
            )
    return row


def quality_metric(rows: list[dict]) -> str:
    """The Pareto plot's quality axis for one target's rows: task accuracy when every model has
    it (labelled evaluation images), else int8-vs-float cosine."""
    for key in ACCURACY:
        if rows and all(isinstance(r.get(key), (int, float)) for r in rows):
            return key
    return "cosine"


def mark_pareto(rows: list[dict]) -> None:
    """Per target: pareto=True on the rows no other row beats on both FPS and quality."""
    for target in {r["target"] for r in rows}:
        ok = [r for r in rows if r["target"] == target and r["status"] == "ok"]
        key = quality_metric(ok)
        for r in ok:
            r["pareto"] = not any(
                o is not r and o["fps"] >= r["fps"] and o[key] >= r[key] and (o["fps"] > r["fps"] or o[key] > r[key]) for o in ok
            )


# --------------------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
    return buf.getvalue()


def pareto_png(target: str, rows: list[dict]) -> bytes:
    plt = _pyplot()
    ok = [r for r in rows if r["status"] == "ok"]
    key = quality_metric(ok)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in ok:
        ax.scatter(r["fps"], r[key], s=45, color="#d62728" if r.get("pareto") else "#7f7f7f", zorder=3)
        ax.annotate(r["model"], (r["fps"], r[key]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    front = sorted((r for r in ok if r.get("pareto")), key=lambda r: r["fps"])
    if len(front) > 1:
        ax.plot([r["fps"] for r in front], [r[key] for r in front], color="#d62728", lw=1, ls="--", zorder=2, label="Pareto front")
        ax.legend(loc="lower left", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(f"FPS at batch {ok[0]['batch'] if ok else '?'} (SIMULATED)")
    ax.set_ylabel({"cosine": "int8 vs float cosine (fidelity)", "top1": "top-1 accuracy", "miou": "mIoU"}[key])
    ax.set_title(f"{target}: simulated throughput vs {'fidelity' if key == 'cosine' else 'accuracy'}")
    ax.grid(True, which="both", alpha=0.3)
    return _png(fig)


def latency_png(model: str, builds: dict[str, tuple[dict, dict]]) -> bytes:
    """One model's simulated latency per target, split by unit and by op type (shares of the
    batch-1 latency; the total is in the bar's label)."""
    plt = _pyplot()
    targets = list(builds)
    by_type = {t: latency_by_op_type(trace, build) for t, (build, trace) in builds.items()}
    overall: Counter = Counter()
    for t, d in by_type.items():
        for k, v in d.items():
            if k != "overhead":
                overall[k] += v / builds[t][0]["latency_ms"]
    top = [k for k, _ in overall.most_common(TOP_OP_TYPES)]
    classes = top + ["other", "overhead"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.6 * len(targets) + 1.6), sharey=True)
    labels = [f"{t}\n{builds[t][0]['latency_ms']:.3g} ms" for t in targets]
    cmap = plt.get_cmap("tab10")
    for ax, parts, title in ((axes[0], UNITS, "by unit"), (axes[1], classes, "by op type")):
        left = [0.0] * len(targets)
        for i, part in enumerate(parts):
            shares = []
            for t in targets:
                build, lat = builds[t][0], builds[t][0]["latency_ms"]
                if title == "by unit":
                    v = build["unit_time_ms"].get(part, 0.0)
                elif part == "other":
                    v = sum(x for k, x in by_type[t].items() if k not in top and k != "overhead")
                else:
                    v = by_type[t].get(part, 0.0)
                shares.append(100 * v / lat if lat else 0.0)
            ax.barh(labels, shares, left=left, color="#bbbbbb" if part == "overhead" else cmap(i % 10), label=part)
            left = [a + b for a, b in zip(left, shares)]
        ax.set_xlim(0, 100)
        ax.set_xlabel("% of simulated batch-1 latency")
        ax.set_title(f"{model}: {title}")
        # Below the x label, at a fixed distance whatever the number of targets.
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.5 / (0.6 * len(targets) + 0.4)), ncol=5, frameon=False)
    axes[0].invert_yaxis()  # targets top to bottom in config order (the y axis is shared)
    fig.suptitle("SIMULATED by npuflow's NPU model, not measured", fontsize=8, y=1.02)
    return _png(fig)


def plot_model(model: str, runs: dict[str, dict], out_png: str | Path) -> None:
    """`npuflow plot`: the latency breakdown of one model over its targets ({target: files})."""
    builds = {t: (read_json(f["build"]), read_json(f["trace"])) for t, f in runs.items()}
    data = latency_png(model, builds)
    with atomic_path(out_png) as tmp:
        tmp.write_bytes(data)


# ---------------------------------------------------------------------------------------- HTML
def _fmt(v, col: str = "") -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, bool):
        return "★" if v else ""
    if col in ("onnx_bytes", "int8_bytes") and isinstance(v, (int, float)):
        return f"{v / 1e6:.3g}"
    if col in ("params", "macs") and isinstance(v, (int, float)):
        return f"{v / 1e6:.3g} M"
    if col == "run_id":
        return str(v)[:8]
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _img(data: bytes, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>"


def _table(head: list[str], body: list[list[str]], cls: str = "") -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    b = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body)
    return f"<table class='{cls}'><thead><tr>{h}</tr></thead><tbody>{b}</tbody></table>"


def _log_tail(path: str, lines: int = 12) -> str:
    p = Path(path)
    if not path or not p.exists():
        return "<p>(no log was written: the job did not start, or an earlier stage failed)</p>"
    text = "\n".join(p.read_text(errors="replace").splitlines()[-lines:])
    return f"<details><summary>last lines of <code>{html.escape(path)}</code></summary><pre>{html.escape(text)}</pre></details>"


def simulator_accuracy_html(targets: list[str]) -> str:
    """Per target: the simulator's predictions against the published measurements it was fitted
    to (stored in the profile by `npuflow sim-fit`), or why there are none."""
    from .targets import load_targets

    profiles = load_targets()
    parts = [
        "<h2 id='simulator'>Simulator accuracy</h2><p>Predicted (simulated) against published device measurements, as stored by the last "
        "<code>npuflow sim-fit</code>; <code>npuflow sim-validate</code> re-checks any CSV of measurements.</p>"
    ]
    for target in targets:
        fit = profiles.get(target).get("fit") if target in profiles else None
        if not fit:
            from .sim.build import profile_basis

            basis = profile_basis(profiles.get(target)) if target in profiles else "unknown target"
            parts.append(f"<h3>{html.escape(target)}</h3><p>No published measurements fitted: {html.escape(basis)}.</p>")
            continue
        errs = [abs(r["error_pct"]) for r in fit["residuals"]]
        body = [
            [
                html.escape(r["model"]),
                r["metric"],
                str(r["batch"]),
                f"{r['published']:.4g}",
                f"{r['predicted']:.4g}",
                f"{r['error_pct']:+.1f}",
            ]
            for r in fit["residuals"]
        ]
        parts.append(
            f"<h3>{html.escape(target)}</h3><p>{len(errs)} measurements ({html.escape(fit['data']['csv'])}): MAPE "
            f"{sum(errs) / len(errs):.1f} %, {sum(e <= 20 for e in errs)} of {len(errs)} within ±20 %.</p>"
            + _table(["model", "metric", "batch", "published", "predicted", "error %"], body)
        )
    return "".join(parts)


def _target_section(target: str, rows: list[dict], pareto: bytes | None) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    key = quality_metric(ok)
    body = []
    for r in sorted(ok, key=lambda r: r["latency_ms"]) + [r for r in rows if r["status"] != "ok"]:
        cells = []
        for col, _ in TABLE:
            if col == "status" and r["status"] != "ok":
                cells.append(f"<span class='failed'>{r['status'].upper()} at {html.escape(r['failed_stage'])}</span>")
            else:
                cells.append(html.escape(_fmt(r.get(col, ""), col)))
        body.append(cells)
    chip = ok[0]["chip"] if ok else ""
    batch = ok[0]["batch"] if ok else ""
    out = (
        f"<h2 id='target-{html.escape(target)}'>{html.escape(target)} <small>{html.escape(chip)} — SIMULATED</small></h2>"
        f"<p>Latency at batch 1 and FPS at batch {batch}, simulated. Sorted by latency. ★ = on the Pareto front of FPS and "
        f"{'task accuracy' if key != 'cosine' else 'fidelity (cosine)'}.</p>" + _table([h for _, h in TABLE], body, "num")
    )
    if pareto:
        out += _img(pareto, f"Pareto plot for {target}")
    return out


def _model_section(model: str, rows: list[dict], latency_plot: bytes | None) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] != "ok"]
    first = ok[0] if ok else {}
    out = f"<h2 id='model-{html.escape(model)}'>{html.escape(model)}</h2>"
    if first:
        manifest = read_json(first["files"]["manifest"])
        out += (
            f"<p>{html.escape(first['task'])}, source <code>{html.escape(manifest['source'])}</code>, weights "
            f"<b>{html.escape(first['weights'])}</b>"
            + (" — RANDOM: fidelity is real for these weights, accuracy is meaningless" if first["weights"] == "random" else "")
            + ".</p>"
        )
    for r in failed:
        out += (
            f"<p class='failed'>{html.escape(r['target'])}: {r['status'].upper()} at stage <b>{html.escape(r['failed_stage'])}</b>"
            + (f" (log <code>{html.escape(r['log'])}</code>)" if r.get("log") else "")
            + "</p>"
        )
    for log in dict.fromkeys(r.get("log", "") for r in failed):
        out += _log_tail(log)
    if not ok:
        return out
    if latency_plot:
        out += _img(latency_plot, f"latency breakdown of {model}")
    # Unit and op-type breakdown as numbers (ms), per target.
    builds = {r["target"]: (read_json(r["files"]["build"]), read_json(r["files"]["trace"])) for r in ok}
    unit_rows = [
        [html.escape(t)] + [f"{b['unit_time_ms'].get(u, 0.0):.4g}" for u in UNITS] + [f"{b['latency_ms']:.4g}"]
        for t, (b, _) in builds.items()
    ]
    out += "<h3>Simulated latency by unit (ms, batch 1)</h3>" + _table(["target", *UNITS, "total"], unit_rows, "num")
    by_type = {t: latency_by_op_type(tr, b) for t, (b, tr) in builds.items()}
    overall: Counter = Counter()
    for t, d in by_type.items():
        overall.update({k: v / builds[t][0]["latency_ms"] for k, v in d.items() if k != "overhead"})
    top = [k for k, _ in overall.most_common(TOP_OP_TYPES)]
    type_rows = [
        [html.escape(t)]
        + [f"{d.get(k, 0.0):.4g}" for k in top]
        + [f"{sum(v for k, v in d.items() if k not in top and k != 'overhead'):.4g}", f"{d['overhead']:.4g}"]
        for t, d in by_type.items()
    ]
    out += "<h3>Simulated latency by op type (ms, batch 1; a fused group counts under its first op)</h3>" + _table(
        ["target", *top, "other", "overhead"], type_rows, "num"
    )
    # Worst layers of the precision analysis, once per distinct table (targets sharing a
    # quantised model share it).
    tables: dict[str, list[str]] = {}
    for r in ok:
        if r["files"].get("layers") and Path(r["files"]["layers"]).exists():
            tables.setdefault(r["files"]["layers"], []).append(r["target"])
    if not tables:
        out += "<p>No per-layer precision table for this model.</p>"
    for path, targets in tables.items():
        worst = worst_layers(read_layers(path), 10)
        body = [[html.escape(_fmt(w.get(c, ""))) for c in LAYER_COLUMNS] for w in worst]
        out += (
            f"<h3>Worst layers, quantised vs float ({html.escape(', '.join(targets))})</h3><p>Lowest SQNR first, from "
            f"<code>{html.escape(path)}</code>.</p>" + _table(list(LAYER_COLUMNS), body, "num")
        )
    # Automatic mixed precision: the accuracy/latency trade-off it walked, per searched target.
    for r in ok:
        if r["files"].get("mixed") and Path(r["files"]["mixed"]).exists():
            mixed = read_json(r["files"]["mixed"])
            metric = mixed["goal"]["metric"]
            body = [
                [
                    str(p["step"]),
                    str(p["nodes_int16"]),
                    str(p["nodes_float"]),
                    f"{p[metric]:.5f}",
                    f"{p['latency_ms']:.4g}",
                    "chosen" if p["step"] == mixed["chosen"]["step"] else "",
                ]
                for p in mixed["curve"]
            ]
            out += (
                f"<h3>Mixed precision on {html.escape(r['target'])}: goal {html.escape(metric)} ≥ {mixed['goal']['value']} "
                f"({'met' if mixed['goal_met'] else 'NOT met'}; simulated latency +{mixed['chosen']['latency_increase_pct']:.1f} %)</h3>"
                + _table(["step", "int16 nodes", "float nodes", metric, "latency ms (sim)", ""], body, "num")
            )
    return out


def write_summary(rows: list[dict], out_csv: str | Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("true" if r.get(k) is True else "false" if r.get(k) is False else r.get(k, "")) for k in COLUMNS})
    with atomic_path(out_csv) as tmp:
        tmp.write_text(buf.getvalue())


def write_html(rows: list[dict], out_html: str | Path, pareto: dict[str, bytes], latency: dict[str, bytes]) -> None:
    targets = list(dict.fromkeys(r["target"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    banners = ""
    random_models = sorted({r["model"] for r in rows if r.get("weights") == "random"})
    if random_models:
        banners += (
            "<p class='banner'>RANDOM WEIGHTS (no pretrained checkpoint could be fetched, or the config asks for random) for: "
            + html.escape(", ".join(random_models))
            + ". Fidelity figures compare float and int8 for these weights; they say nothing about task accuracy.</p>"
        )
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        items = "".join(
            f"<li>{html.escape(r['model'])} on {html.escape(r['target'])}: {r['status']} at <b>{html.escape(r['failed_stage'])}</b>"
            + (f", log <code>{html.escape(r['log'])}</code>" if r.get("log") else "")
            + "</li>"
            for r in failed
        )
        banners += (
            f"<div class='banner failed'><b>{len(failed)} of {len(rows)} (model, target) pairs FAILED or not run</b> "
            f"(no MLflow run, no figures)<ul>{items}</ul></div>"
        )
    nav = (
        "<p>Targets: "
        + " · ".join(f"<a href='#target-{html.escape(t)}'>{html.escape(t)}</a>" for t in targets)
        + "<br>Models: "
        + " · ".join(f"<a href='#model-{html.escape(m)}'>{html.escape(m)}</a>" for m in models)
        + " · <a href='#simulator'>simulator accuracy</a></p>"
    )
    sections = [_target_section(t, [r for r in rows if r["target"] == t], pareto.get(t)) for t in targets]
    sections += [_model_section(m, [r for r in rows if r["model"] == m], latency.get(m)) for m in models]
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>npuflow report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}table{{border-collapse:collapse;margin-bottom:1.5em}}
td,th{{border:1px solid #ccc;padding:3px 8px}}table.num td{{text-align:right}}th{{background:#eee}}
.banner{{background:#fff3cd;border:1px solid #e0c060;padding:.6em}}.failed{{color:#a00}}div.failed{{background:#fde2e2;border-color:#d88}}
.sim{{background:#e8f0fe;border:1px solid #9ab;padding:.6em}}small{{color:#666;font-weight:normal}}img{{max-width:100%}}</style></head>
<body><h1>npuflow: models × NPU targets</h1>
<p class='sim'><b>SIMULATION.</b> latency, FPS (at the target's batch), subgraphs and DDR traffic come from npuflow's analytical
NPU model of each chip, not from a device (see <a href='#simulator'>simulator accuracy</a>). Fidelity (cosine, SQNR, agreement)
compares the int8 model with the float model on held-out images; host_*_ms are onnxruntime CPU latencies measured on this
machine. Every (model, target) is one MLflow run (the run id is in the table).</p>
{banners}{nav}{"".join(sections)}{simulator_accuracy_html(targets)}</body></html>
"""
    with atomic_path(out_html) as tmp:
        tmp.write_text(page)


def report(
    pairs: list[tuple[str, ...]],
    out_csv: str | Path,
    out_html: str | Path,
    results: str | Path = "results",
    stages: list | None = None,
    plots_dir: str | Path | None = None,
) -> list[dict]:
    """summary.csv, report.html and (with plots_dir) pareto.<target>.png for every target."""
    rows = collect(pairs, stages, results)
    mark_pareto(rows)
    pareto = {}
    for target in dict.fromkeys(r["target"] for r in rows):
        target_rows = [r for r in rows if r["target"] == target]
        if any(r["status"] == "ok" for r in target_rows):
            pareto[target] = pareto_png(target, target_rows)
    if plots_dir is not None:
        Path(plots_dir).mkdir(parents=True, exist_ok=True)
        for target in dict.fromkeys(r["target"] for r in rows):
            with atomic_path(Path(plots_dir) / f"pareto.{target}.png") as tmp:
                # A target where every model failed still gets its (empty) plot: the file is an output.
                tmp.write_bytes(pareto.get(target) or pareto_png(target, []))
    latency = {}
    for r in rows:
        plot = r.get("files", {}).get("plot")
        if r["status"] == "ok" and plot and Path(plot).exists():
            latency.setdefault(r["model"], Path(plot).read_bytes())
    write_summary(rows, out_csv)
    write_html(rows, out_html, pareto, latency)
    return rows
