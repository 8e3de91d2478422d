#!/usr/bin/env bash
# Run by Snakemake in the new environment, once, after it is created: npuflow from this checkout
# (the Snakefile sets NPUFLOW_ROOT), editable so that the environment follows the working tree,
# without dependencies (the environment file lists the ones these rules need).
set -euo pipefail
pip install --no-deps -e "${NPUFLOW_ROOT:?NPUFLOW_ROOT is set by the Snakefile: create the environment with snakemake --sdm conda}"
