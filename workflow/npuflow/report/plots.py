"""The report's plots as PNG: per target the Pareto plot, per model its simulated latency broken
down by unit and by op type. Points and bars are told apart by a legend, never by labels placed
on the plot (with nine models, names on the points sat on top of each other)."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

from npuflow.core.records import BuildReport
from npuflow.core.tasks import TASKS
from npuflow.report.pareto import FIDELITY, QUALITY_LABELS, quality_groups
from npuflow.util.io import atomic_path, read_json

UNITS = ("tensor", "vector", "dma", "cpu", "overhead")
TOP_OP_TYPES = 7
MARKERS = "osD^vP*Xph<>"


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


def latency_by_op_type(trace: dict, build: BuildReport) -> dict[str, float]:
    """Simulated batch-1 time (ms) per op type (a fused group counts under its first op), plus the
    per-op/subgraph overhead; the values sum to the latency."""
    times: Counter = Counter()
    for e in trace["traceEvents"]:
        if e.get("ph") == "X":
            times[e["name"].split("+")[0]] += e["dur"] / 1e3
    out = dict(times.most_common())
    out["overhead"] = build.unit_time_ms.get("overhead", 0.0)
    return out


def top_op_types(by_type: dict[str, dict[str, float]], builds: dict[str, BuildReport]) -> list[str]:
    """The op types taking the largest share of latency over a model's targets."""
    overall: Counter = Counter()
    for t, d in by_type.items():
        overall.update({k: v / builds[t].latency_ms for k, v in d.items() if k != "overhead"})
    return [k for k, _ in overall.most_common(TOP_OP_TYPES)]


def pareto_png(target: str, rows: list, models: list[str]) -> bytes:
    """One target's simulated FPS against quality, one panel per quality metric (detectors apart
    from classifiers unless both are measured by cosine); each model its own colour and marker
    (the same on every target: `models` is the report's model order), named in the legend."""
    plt = _pyplot()
    ok = [r for r in rows if r.ok]
    groups = quality_groups(ok) or {"cosine": []}
    fig, axes = plt.subplots(1, len(groups), figsize=(8.5 if len(groups) == 1 else 12, 4.5), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, (key, group) in zip(axes[0], groups.items()):
        for r in group:
            i = models.index(r.model)
            ax.scatter(
                r.figure("fps"),
                r.figure(key),
                s=60,
                marker=MARKERS[i % len(MARKERS)],
                color=cmap(i % 10),
                edgecolors="black" if r.pareto else "none",
                linewidths=1.5,
                zorder=3,
                label=f"{r.model}{' ★' if r.pareto else ''}",
            )
        front = sorted((r for r in group if r.pareto), key=lambda r: r.figure("fps"))
        if len(front) > 1:
            ax.plot(
                [r.figure("fps") for r in front],
                [r.figure(key) for r in front],
                color="#d62728",
                lw=1,
                ls="--",
                zorder=2,
                label="Pareto front",
            )
        ax.set_xscale("log")
        ax.set_xlabel(f"FPS at batch {ok[0].build.batch if ok else '?'} (SIMULATED)")
        ax.set_ylabel(QUALITY_LABELS[key])
        apart = " (detection models)" if len(groups) > 1 and all(TASKS.get(r.evaluate.task).decoded for r in group) else ""
        ax.set_title(f"{target}: simulated throughput vs {'fidelity' if key in FIDELITY else 'accuracy'}{apart}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    # One legend for every panel, right of the last (a panel's own would lie over the next one).
    legend = {label: handle for ax in axes[0] for handle, label in zip(*ax.get_legend_handles_labels())}
    if legend:
        axes[0][-1].legend(
            legend.values(),
            legend.keys(),
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            fontsize=8,
            frameon=False,
            title="model (★ on the front)",
            title_fontsize=8,
        )
    return _png(fig)


def latency_png(model: str, builds: dict[str, tuple[BuildReport, dict]]) -> bytes:
    """One model's simulated latency per target, split by unit and by op type (shares of the
    batch-1 latency; the total is in the bar's label)."""
    plt = _pyplot()
    targets = list(builds)
    reports = {t: b for t, (b, _) in builds.items()}
    by_type = {t: latency_by_op_type(trace, build) for t, (build, trace) in builds.items()}
    top = top_op_types(by_type, reports)
    classes = top + ["other", "overhead"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.6 * len(targets) + 1.6), sharey=True)
    labels = [f"{t}\n{reports[t].latency_ms:.3g} ms" for t in targets]
    cmap = plt.get_cmap("tab10")
    for ax, parts, title in ((axes[0], UNITS, "by unit"), (axes[1], classes, "by op type")):
        left = [0.0] * len(targets)
        for i, part in enumerate(parts):
            shares = []
            for t in targets:
                build, lat = reports[t], reports[t].latency_ms
                if title == "by unit":
                    v = build.unit_time_ms.get(part, 0.0)
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


def plot_model(*, model: str, runs: dict[str, dict], out_png: str | Path) -> None:
    """`npuflow plot`: the latency breakdown of one model over its targets ({target: files})."""
    builds = {t: (BuildReport.read(f["build"]), read_json(f["trace"])) for t, f in runs.items()}
    data = latency_png(model, builds)
    with atomic_path(out_png) as tmp:
        tmp.write_bytes(data)
