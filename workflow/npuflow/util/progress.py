"""Progress and timings of the long stages, in the job logs.

Snakemake sends each job's stdout and stderr to `results/logs/<stage>/….log`. A terminal progress
bar redraws itself ten times a second with carriage returns, which would fill a log file with
redraws; so when stderr is not a terminal, `progress` writes one plain line every LOG_INTERVAL
seconds (and a last one with the count, elapsed time and rate), and `timed` one line per stage
with its seconds. On a terminal (`npuflow calibrate …` by hand) the bar is tqdm's usual one.

`TQDM_DISABLE=1` silences the bars (tqdm's own override); `TQDM_MININTERVAL=1` logs a progress
line every second instead of every LOG_INTERVAL."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

LOG_INTERVAL = 10.0  # seconds between two progress lines in a log file


class _Lines:
    """A file for tqdm that turns its carriage-return redraws into whole lines."""

    def __init__(self, stream):
        self.stream = stream
        self.encoding = getattr(stream, "encoding", None) or "utf-8"
        self.last = ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line and line != self.last:  # closing redraws the last state once more
            self.stream.write(line + "\n")
            self.last = line

    def flush(self) -> None:
        self.stream.flush()


def _to_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def progress(iterable: Iterable | None = None, desc: str = "", total: int | None = None, unit: str = "it"):
    """tqdm over `iterable` on stderr, suited to log files: `for img in progress(images, "calibrate", unit="image")`.
    Without an iterable, a bar to `.update()` by hand (and `.close()`)."""
    from tqdm import tqdm

    stream = sys.stderr
    if _to_terminal(stream):
        return tqdm(iterable, desc=desc, total=total, unit=unit, file=stream)
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        file=_Lines(stream),
        ascii=True,
        mininterval=float(os.environ.get("TQDM_MININTERVAL", LOG_INTERVAL)),
        dynamic_ncols=False,
        ncols=100,
    )


def log(message: str) -> None:
    """One line on stderr with the wall-clock time, flushed at once."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Timing:
    seconds: float = 0.0


@contextmanager
def timed(stage: str) -> Iterator[Timing]:
    """`with timed("sim-fit rdk-x5"):` logs when the stage starts and how many seconds it took
    (also when it fails); the yielded object's `.seconds` holds the figure afterwards."""
    timing = Timing()
    start = time.perf_counter()
    log(f"{stage}: started")
    try:
        yield timing
    except BaseException:
        timing.seconds = time.perf_counter() - start
        log(f"{stage}: failed after {timing.seconds:.1f} s")
        raise
    timing.seconds = time.perf_counter() - start
    log(f"{stage}: done in {timing.seconds:.1f} s")
