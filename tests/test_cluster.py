"""On a Slurm cluster no job asks for more CPUs or memory than a node of its partition has
(npuflow.pipeline.cluster); the caps themselves, without a cluster (tests/test_slurm.py runs on one)."""

import subprocess

from npuflow.pipeline import cluster
from npuflow.pipeline.cluster import JobLimits, Node, job_limits, largest_node, parse_sinfo, partition_name

# `sinfo --noheader --Node --format=%N|%P|%c|%m` on a cluster of two partitions, one node in both.
SINFO = """\
small1|cpu*|2|23000
small2|cpu*|4|16000
big1|cpu*|64|256000
big1|highmem|64|256000
fat1|highmem|128|1024000
"""


def test_sinfo_is_read_per_node_and_partition():
    nodes = parse_sinfo(SINFO + "\n")
    assert nodes[0] == Node("small1", "cpu", True, 2, 23000)
    assert [(n.name, n.partition, n.default_partition) for n in nodes[2:4]] == [("big1", "cpu", True), ("big1", "highmem", False)]
    # Figures sinfo aggregates over differing nodes end in "+" (the smallest value).
    assert parse_sinfo("n[1-2]|cpu*|8+|64000+")[0] == Node("n[1-2]", "cpu", True, 8, 64000)


def test_the_cap_is_one_node_of_the_partition_the_jobs_go_to():
    nodes = parse_sinfo(SINFO)
    assert largest_node(nodes).name == "big1"  # the default partition, when none is named
    assert largest_node(nodes, "highmem").name == "fat1"
    assert largest_node(nodes, "gpu") is None
    # The node with the most memory, not the most CPUs of one node with the memory of another:
    # every capped job must fit a node that exists.
    mixed = parse_sinfo("wide|p*|96|64000\ndeep|p*|8|512000")
    assert largest_node(mixed) == Node("deep", "p", True, 8, 512000)


def test_requests_are_capped_by_the_node_or_a_lower_limit_of_the_user():
    node = Node("vm", "main", True, 2, 24105)
    # This machine: the profile's 4 threads and any estimate above 24 GB are held to the node.
    assert job_limits(node, None, None) == JobLimits(2, 24105)
    assert job_limits(node, 1, 8000) == JobLimits(1, 8000)  # --max-threads 1, --resources mem_mb=8000
    assert job_limits(node, 16, 100_000) == JobLimits(2, 24105)
    # No Slurm here (or no node answering): the user's limits, or none.
    assert job_limits(None, None, None) == JobLimits(None, None)
    assert job_limits(None, 4, 8000) == JobLimits(4, 8000)


def test_partition_names_from_a_profile():
    assert partition_name("cpu") == partition_name("'cpu'") == partition_name('"cpu"') == "cpu"
    assert partition_name(None) is None and partition_name("''") is None


def test_no_node_without_slurm(monkeypatch):
    monkeypatch.setattr(cluster.shutil, "which", lambda name: None)
    assert cluster.slurm_node() is None

    def unreachable(*args, **kwargs):  # sinfo there, its controller not answering
        raise subprocess.CalledProcessError(1, args[0], stderr="Unable to contact slurm controller")

    monkeypatch.setattr(cluster.shutil, "which", lambda name: "/usr/bin/sinfo")
    monkeypatch.setattr(cluster.subprocess, "run", unreachable)
    assert cluster.slurm_node() is None
