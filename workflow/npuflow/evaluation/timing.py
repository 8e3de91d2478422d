"""Host timing of an onnxruntime session: each held-out image's run timed as it is evaluated, and
the median over a bounded number of runs (a measurement on this machine's CPU, not the NPU's)."""

from __future__ import annotations

import time

import numpy as np

from npuflow.util.progress import progress

# Host latency is a median of timed runs; long models get fewer runs, never fewer than this.
MIN_REPEATS = 3
LATENCY_BUDGET_S = 5.0


def timed_runs(sess, feed: str, images: np.ndarray) -> tuple[list[list[np.ndarray]], list[float]]:
    """Each image's outputs (a run of its own, batch 1) and the wall time of each run: the runs on
    the held-out images are host_latency_ms's samples too, so no model runs only to be timed."""
    runs, seconds = [], []
    for img in progress(images, "held-out images", unit="img"):
        start = time.perf_counter()
        runs.append(sess.run(None, {feed: img[None]}))
        seconds.append(time.perf_counter() - start)
    return runs, seconds


# Timed runs whose slowest took this many times the fastest were measured on a busy machine (other
# jobs on the same cores): the median is then flagged, not trusted silently. In the default run on
# 2 cores (two jobs of two threads at once) most spreads were 1.2–2.5; 2 flags the worst ones.
NOISY_SPREAD = 2.0


def host_latency_ms(sess, feeds: dict, repeats: int, run_seconds: list[float] = ()) -> tuple[float, int, float]:
    """(median wall time in ms, how many runs, slowest run / fastest run) of `sess.run` over up to
    `repeats` timed runs: the runs the session just made (`run_seconds`, from timed_runs: every
    image has the same shape) after the first, which warms it up, then runs of `feeds` within
    LATENCY_BUDGET_S, never fewer than MIN_REPEATS."""
    times = list(run_seconds[1 : repeats + 1])
    if not run_seconds:
        sess.run(None, feeds)  # warm-up
    spent = sum(times)
    while len(times) < repeats and (len(times) < MIN_REPEATS or spent < LATENCY_BUDGET_S):
        start = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return float(np.median(times) * 1e3), len(times), float(max(times) / max(min(times), 1e-9))
