"""Memory each job needs, so that Snakemake never starts more jobs than the machine holds.

Without it `snakemake --cores 8` on a 24 GB machine starts SegFormer's three per-layer analyses at
once (13 GB each) and the kernel kills them. The rules declare `resources: mem_mb` from `job_mem_mb`,
and a local run is limited to the memory free when it starts (`local_mem_mb`), unless the user
gives `--resources mem_mb=…`. A job needing more than the limit still runs, alone.

The estimates grow with the input's pixels, which is what drives activation memory: a straight
line through two measured peaks per stage (max_rss of results/benchmarks/, default config, one
run on the 2-core machine), with a margin. `benchmarks/memory.py` compares them to the peaks of
any finished run."""

from __future__ import annotations

import math
from pathlib import Path

# Measured peak RSS in MB, by the stage table's memory keys: (megapixels, MB) of swin_tiny (224², the largest 224² model) and
# segformer_b0_cityscapes (640×1280), the larger of two full default runs of 2026-11-21.
MEASURED_PEAKS_MB = {
    "export": ((0.0502, 1117), (0.8192, 1806)),
    "simplify": ((0.0502, 1246), (0.8192, 1936)),
    "calibrate": ((0.0502, 1474), (0.8192, 9532)),
    "reference": ((0.0502, 556), (0.8192, 1683)),
    # The analysis's own jobs (sessions without an arena, outputs in reused buffers): the largest
    # peak of any recipe on 2026-12-02 (max_rss of a default run; SegFormer's: ru_maxrss of its
    # analysis run alone, 7704 MB, above the run's 7480).
    "analyse": ((0.0502, 1967), (0.8192, 7704)),
}
# Peaks vary with the image content, the number of images and the library's allocator.
MARGIN = 1.25
# What Snakemake would assume for a job that declares nothing (its default mem_mb).
FLOOR_MB = 1000
# The container's memory controller (cgroup v2), where there is one.
CGROUP = Path("/sys/fs/cgroup")


def megapixels(spec: dict) -> float:
    """Input pixels of one forward pass, in millions (batch included)."""
    return math.prod(spec["input"]["shape"][i] for i in (0, 2, 3)) / 1e6


def job_mem_mb(stage: str, spec: dict) -> int:
    """Estimated peak memory of one job of `stage` for the model `spec` (npuflow.pipeline.spec.model_spec),
    from the measured peaks its entry in the stage table names (npuflow.core.layout: `memory`)."""
    from npuflow.core.layout import STAGES

    (x0, y0), (x1, y1) = MEASURED_PEAKS_MB[STAGES[stage].memory]
    slope = (y1 - y0) / (x1 - x0)
    estimate = y0 + slope * (megapixels(spec) - x0)
    return max(FLOOR_MB, math.ceil(MARGIN * estimate))


def local_mem_mb() -> int:
    """Memory available to new jobs on this machine now: the kernel's MemAvailable, or the
    container's (cgroup v2) limit less its usage where that is smaller."""
    import psutil  # a Snakemake dependency

    available = psutil.virtual_memory().available
    try:
        limit = (CGROUP / "memory.max").read_text().strip()
        if limit != "max":
            available = min(available, int(limit) - int((CGROUP / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return max(FLOOR_MB, available // 2**20)
