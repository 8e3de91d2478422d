"""Stage report: every (model, target) side by side, as results/summary.csv and a self-contained
results/report.html."""

from __future__ import annotations

import csv
import html
import io
from pathlib import Path

from .io import atomic_path, read_json

COLUMNS = ["model", "target", "task", "weights", "precision_recipe", "latency_ms", "fps", "subgraphs", "cpu_ops", "ddr_bytes_per_frame",
           "cosine", "sqnr_db", "top1_agreement", "top5_agreement", "pixel_agreement", "host_fp32_ms", "host_int8_ms",
           "params", "macs", "run_id"]


def collect(pairs: list[tuple[str, str]], results: str | Path = "results") -> list[dict]:
    results = Path(results)
    rows = []
    for model, target in pairs:
        build = read_json(results / model / "build" / target / "build.json")
        ev = read_json(results / model / "eval" / f"{build['precision_recipe']}.json")
        manifest = read_json(results / model / "fetch" / "manifest.json")
        track = read_json(results / model / "track.json")["runs"][target]
        row = {"model": model, "target": target, "task": ev["task"], "weights": manifest["weights"], "params": manifest["params"],
               "run_id": track["run_id"], **{k: build[k] for k in ("precision_recipe", "latency_ms", "fps", "subgraphs", "cpu_ops", "ddr_bytes_per_frame", "macs")},
               **{k: ev.get(k, "") for k in ("cosine", "sqnr_db", "top1_agreement", "top5_agreement", "pixel_agreement", "host_fp32_ms", "host_int8_ms")}}
        rows.append(row)
    return rows


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_summary(rows: list[dict], out_csv: str | Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in COLUMNS})
    with atomic_path(out_csv) as tmp:
        tmp.write_text(buf.getvalue())


def simulator_accuracy_html(targets: list[str]) -> str:
    """Per target: the simulator's predictions against the published measurements it was fitted
    to (stored in the profile by `npuflow sim-fit`), or why there are none."""
    from .targets import load_targets

    profiles = load_targets()
    parts = ["<h2>Simulator accuracy</h2><p>Predicted (simulated) against published device measurements, as stored by the last "
             "<code>npuflow sim-fit</code>; <code>npuflow sim-validate</code> re-checks any CSV of measurements.</p>"]
    for target in targets:
        fit = profiles.get(target).get("fit") if target in profiles else None
        if not fit:
            parts.append(f"<h3>{html.escape(target)}</h3><p>No published measurements fitted: the profile comes from the chip's specs only.</p>")
            continue
        errs = [abs(r["error_pct"]) for r in fit["residuals"]]
        body = "".join(f"<tr><td>{html.escape(r['model'])}</td><td>{r['metric']}</td><td>{r['batch']}</td><td>{r['published']:.4g}</td>"
                       f"<td>{r['predicted']:.4g}</td><td>{r['error_pct']:+.1f}</td></tr>" for r in fit["residuals"])
        parts.append(f"<h3>{html.escape(target)}</h3><p>{len(errs)} measurements ({html.escape(fit['data']['csv'])}): MAPE "
                     f"{sum(errs) / len(errs):.1f} %, {sum(e <= 20 for e in errs)} of {len(errs)} within ±20 %.</p>"
                     "<table><thead><tr><th>model</th><th>metric</th><th>batch</th><th>published</th><th>predicted</th><th>error %</th></tr></thead>"
                     f"<tbody>{body}</tbody></table>")
    return "".join(parts)


def write_html(rows: list[dict], out_html: str | Path) -> None:
    random_models = sorted({r["model"] for r in rows if r["weights"] == "random"})
    banner = ""
    if random_models:
        banner = ("<p class='banner'>Random weights (no pretrained checkpoint could be fetched) for: "
                  + html.escape(", ".join(random_models))
                  + ". Fidelity figures compare float and int8 for these weights; they say nothing about task accuracy.</p>")
    sections = []
    for target in sorted({r["target"] for r in rows}):
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c, '')))}</td>" for c in COLUMNS if c != "target") + "</tr>"
            for r in sorted((r for r in rows if r["target"] == target), key=lambda r: r["latency_ms"])
        )
        head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS if c != "target")
        sections.append(f"<h2>{html.escape(target)}</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>npuflow report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:2em}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#eee}}
.banner{{background:#fff3cd;border:1px solid #e0c060;padding:.6em}}</style></head>
<body><h1>npuflow: models × NPU targets</h1>
<p>latency_ms, fps (at the target's batch), subgraphs and ddr_bytes_per_frame are <b>simulated</b> by npuflow's analytical
NPU model, not measured on a device. Fidelity (cosine, SQNR, agreement) compares the int8 model with the float model on
held-out images; host_*_ms are onnxruntime CPU latencies measured on this machine.</p>
{banner}{''.join(sections)}{simulator_accuracy_html(sorted({r["target"] for r in rows}))}</body></html>
"""
    with atomic_path(out_html) as tmp:
        tmp.write_text(page)


def report(pairs: list[tuple[str, str]], out_csv: str | Path, out_html: str | Path, results: str | Path = "results") -> list[dict]:
    rows = collect(pairs, results)
    write_summary(rows, out_csv)
    write_html(rows, out_html)
    return rows
