"""Install cost: the README's install (`pip install -e .`) into an empty venv in a temporary folder.
Prints the wall time (venv creation and pip separately) and the installed size, then deletes the
venv. Asserts nothing.

    python benchmarks/install.py [--machine-config] [--keep]

By default it measures what a fresh machine sees: pip's cache is not used (`--no-cache-dir`) and
pip's configuration is ignored (PIP_CONFIG_FILE=/dev/null, no PIP_* variables but PIP_CERT), so
every package comes from PyPI over the network, not from a local wheel folder or mirror.
`--machine-config` keeps this machine's pip configuration and cache instead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def tree_bytes(root: Path) -> tuple[int, int]:
    """(bytes, files) under root, links not followed (as `du -s --apparent-size` counts)."""
    total = files = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            total += st.st_size
            files += 1
    return total, files


def largest(site: Path, n: int = 6) -> list[tuple[str, int]]:
    sizes = [(p.name, tree_bytes(p)[0]) for p in site.iterdir() if p.is_dir() and not p.name.endswith((".dist-info", "__pycache__"))]
    return sorted(sizes, key=lambda s: -s[1])[:n]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--machine-config", action="store_true", help="use this machine's pip configuration and cache")
    parser.add_argument("--keep", action="store_true", help="keep the venv (its path is printed)")
    parser.add_argument("--python", default=sys.executable, help="interpreter that creates the venv (default: this one)")
    args = parser.parse_args()

    env = dict(os.environ)
    pip_args = ["install", "-e", str(REPO)]
    if not args.machine_config:
        env = {k: v for k, v in env.items() if not k.startswith("PIP_") or k == "PIP_CERT"}
        env["PIP_CONFIG_FILE"] = os.devnull
        pip_args.insert(1, "--no-cache-dir")
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)

    work = Path(tempfile.mkdtemp(prefix="npuflow-install-"))
    venv = work / "venv"
    free_gb = shutil.disk_usage(work).free / 1e9
    print(
        f"venv: {venv} ({free_gb:.1f} GB free); mode: {'this machine pip config and cache' if args.machine_config else 'fresh machine (no cache, no pip config)'}"
    )
    try:
        t0 = time.perf_counter()
        subprocess.run([args.python, "-m", "venv", str(venv)], check=True, env=env)
        t1 = time.perf_counter()
        proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", *pip_args], env=env, capture_output=True, text=True)
        t2 = time.perf_counter()
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
            print(f"pip install failed (exit {proc.returncode}) after {t2 - t1:.0f} s")
            return 1
        size, files = tree_bytes(venv)
        du_kib = int(subprocess.run(["du", "-sk", str(venv)], capture_output=True, text=True, check=True).stdout.split()[0])
        site = next((venv / "lib").glob("python3*/site-packages"))
        installed = sum(1 for p in site.glob("*.dist-info"))
        print(f"python -m venv:        {t1 - t0:7.1f} s")
        print(f"pip install -e .:      {t2 - t1:7.1f} s  ({installed} distributions)")
        print(f"total:                 {t2 - t0:7.1f} s")
        print(
            f"installed size:        {size / 1e9:7.2f} GB  ({files} files; on disk {du_kib * 1024 / 1e9:.2f} GB = {du_kib / 2**20:.2f} GiB, as du -sh shows it)"
        )
        print("largest packages:      " + ", ".join(f"{name} {b / 1e9:.2f} GB" for name, b in largest(site)))
    finally:
        if args.keep:
            print(f"kept: {venv}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
