#!/usr/bin/env bash
# Set up and run the whole test suite (slow tests included; SLURM tests run when a cluster answers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
