"""What a Slurm cluster's nodes offer, so that no job asks for more than a node has.

Slurm accepts a job that no node of its partition can hold and leaves it pending for ever
(reason `PartitionConfig`): seen with the Slurm profile's 4 threads on a 2-CPU node, where
Snakemake then waited without end. So on a cluster the workflow caps every job's threads and
memory at the largest node of the partition its jobs go to, read from `sinfo` when the run
starts (`job_limits`), and hands the caps to Snakemake's own per-job limits: `--max-threads`
and the `mem_mb` resource (local in scope, so on a cluster it bounds each job's request and is
not summed over the jobs).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

# One line per (node, partition): name, partition (the default one marked `*`), CPUs, memory (MB).
SINFO = ["sinfo", "--noheader", "--Node", "--format=%N|%P|%c|%m"]


@dataclass(frozen=True)
class Node:
    name: str
    partition: str
    default_partition: bool
    cpus: int
    mem_mb: int


def parse_sinfo(text: str) -> list[Node]:
    """The nodes in `sinfo --Node --format=%N|%P|%c|%m` output."""
    nodes = []
    for line in text.splitlines():
        if not line.strip():
            continue
        name, partition, cpus, mem = line.strip().split("|")
        # Aggregated figures end in "+" (the smallest value of several); with --Node there are none.
        nodes.append(Node(name, partition.rstrip("*"), partition.endswith("*"), int(cpus.rstrip("+")), int(mem.rstrip("+"))))
    return nodes


def largest_node(nodes: list[Node], partition: str | None = None) -> Node | None:
    """The node that caps the jobs: the one with the most memory (then CPUs) in `partition`, or in
    the default partition when none is named. One node, not the largest figures of two, so that
    every capped request fits a node that exists."""
    candidates = [n for n in nodes if (n.default_partition if partition is None else n.partition == partition)]
    return max(candidates, key=lambda n: (n.mem_mb, n.cpus), default=None)


def partition_name(raw) -> str | None:
    """The partition a `slurm_partition` resource names (a profile may quote it: "'cpu'")."""
    if raw is None:
        return None
    name = str(raw).strip().strip("'\"")
    return name or None


def slurm_node(partition: str | None = None) -> Node | None:
    """The largest node of the cluster this machine submits to, or None when there is no Slurm
    here (no `sinfo`, or no controller answering)."""
    if shutil.which(SINFO[0]) is None:
        return None
    try:
        out = subprocess.run(SINFO, capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return largest_node(parse_sinfo(out), partition)


@dataclass(frozen=True)
class JobLimits:
    max_threads: int | None
    mem_mb: int | None


def job_limits(node: Node | None, max_threads: int | None, mem_mb: int | None) -> JobLimits:
    """Per-job limits on a cluster: the node's CPUs and memory, or the user's own limits
    (`--max-threads`, `--resources mem_mb=…`) where those are lower."""
    if node is None:
        return JobLimits(max_threads, mem_mb)
    return JobLimits(min(node.cpus, max_threads or node.cpus), min(node.mem_mb, mem_mb or node.mem_mb))
