#!/usr/bin/env bash
# The main job: set up, run the demo sweep (vanilla vs ppo_max, 2 seeds, toy testbed, CPU), write its report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
SWEEP_DIR=${SWEEP_DIR:-multirun/demo-$(date +%Y%m%d-%H%M%S)}
.venv/bin/rlhf-train -m sweep=demo hydra.sweep.dir="$SWEEP_DIR" "$@"
.venv/bin/rlhf-report "$SWEEP_DIR" -o "$SWEEP_DIR/report"
echo "demo done: open $SWEEP_DIR/report/report.html"
