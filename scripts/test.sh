#!/usr/bin/env bash
# Set up and run the whole test suite (slow tests included; SLURM tests run when a cluster answers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# two workers (pytest-xdist), one module per worker at a time in tests/conftest.py's order, one thread each
.venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadscope --no-loadscope-reorder "$@"
