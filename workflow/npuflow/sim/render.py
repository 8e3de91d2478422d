"""What a build shows: the readable summary (in the spirit of Horizon's hb_perf output) and the
simulated batch-1 timeline in Chrome/Perfetto trace format, whose spans add up to the latency."""

from __future__ import annotations

from npuflow.sim.analysis import Simulation

LANES = {"tensor": 1, "vector": 2, "dma": 3, "cpu": 4, "overhead": 5}


def _range(interval: dict | None, unit: str, digits: int) -> str:
    return f"   [{interval['low']:.{digits}f} – {interval['high']:.{digits}f} {unit}]" if interval else ""


def _interval_note(report: dict) -> str:
    found = report.get("latency_ms_interval")
    if not found:
        return "no prediction interval: no cross-validated fit (run `npuflow sim-fit`)"
    return f"[…]: nominal {found['nominal']:.0%} interval from cross-validated residuals ({found['basis']}); precision {report.get('bits', '')}"


def readable_summary(report: dict) -> str:
    lines = [
        f"npuflow simulated build — {report['model']} on {report['target']} ({report['chip']}, {report['mode']})",
        "SIMULATION: figures come from npuflow's analytical model of the chip, not from a device"
        + f" (profile {report['profile_basis']})"
        + ".",
        "",
        f"latency (batch 1)      {report['latency_ms']:10.3f} ms" + _range(report.get("latency_ms_interval"), "ms", 3),
        f"throughput (batch {report['batch']})   {report['fps']:10.1f} FPS"
        + (f" ({report['cores']} cores)" if report["cores"] > 1 else "")
        + _range(report.get("fps_interval"), "FPS", 1),
        "  " + _interval_note(report),
        f"NPU subgraphs          {report['subgraphs']:10d}   CPU ops: {report['cpu_ops']}",
        f"DDR traffic per frame  {report['ddr_bytes_per_frame'] / 1e6:10.2f} MB",
        f"MACs                   {report['macs'] / 1e6:10.1f} M    tensor-unit utilisation: {100 * report['tensor_utilisation']:.1f} %",
        "fusion patterns        " + (", ".join(f"{k} ×{n}" for k, n in report.get("patterns", {}).items()) or "none"),
        "",
        f"{'unit':<10}{'time ms':>10}{'share':>8}",
    ]
    lines += [f"{u:<10}{t:>10.3f}{100 * report['unit_share'][u]:>7.1f}%" for u, t in report["unit_time_ms"].items()]
    lines += ["", "partition (execution order):"]
    lines += [
        f"  {p['device']:<4} {p['ops']:>4} ops {p['time_ms']:>9.3f} ms   {p['first_op']} … {p['last_op']}" for p in report["partition"]
    ]
    lines += ["", f"{'costliest ops':<48}{'unit':<8}{'ms':>8}  bound    padding"]
    for op in report["top_ops"]:
        name = op["op_type"] + ("+" + "+".join(op["fused"]) if op["fused"] else "")
        lines.append(
            f"  {(op['name'] or name)[:44]:<46}{op['unit']:<8}{op['time_ms']:>8.4f}  {op['bound']:<8} {100 * op['padding_waste']:4.0f} %"
        )
    return "\n".join(lines) + "\n"


def chrome_trace(sim: Simulation, target: str) -> dict:
    """One lane per unit plus one for overheads (each op's dispatch, each subgraph's launch, the
    input and output transfers), laid end to end: the last span ends at the simulated latency."""
    events = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": f"{target} (simulated)"}}]
    events += [{"ph": "M", "name": "thread_name", "pid": 1, "tid": tid, "args": {"name": unit}} for unit, tid in LANES.items()]
    c, ops, d = sim.costs, sim.analysis.ops, sim.analysis.demands
    t_us = 0.0

    def span(name: str, lane: str, seconds: float, args: dict) -> None:
        nonlocal t_us
        if seconds > 0:
            events.append({"ph": "X", "name": name, "pid": 1, "tid": LANES[lane], "ts": t_us, "dur": seconds * 1e6, "args": args})
            t_us += seconds * 1e6

    span("overhead", "overhead", c.input_s, {"kind": "input transfer"})
    for i, op in enumerate(ops):
        if i == 0 or d.part[i] != d.part[i - 1]:
            span("overhead", "overhead", c.part_overhead_s[d.part[i]], {"kind": "subgraph launch", "subgraph": int(d.part[i])})
        name = op.op_type + ("+" + "+".join(op.fused) if op.fused else "")
        span(name, op.unit, c.busy_s[i], {"node": op.name, "precision": op.precision})
        span("overhead", "overhead", c.overhead_s[i], {"kind": "op dispatch", "node": op.name})
    span("overhead", "overhead", c.output_s, {"kind": "output transfer"})
    return {"traceEvents": events, "displayTimeUnit": "ms"}
