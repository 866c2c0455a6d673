#!/usr/bin/env bash
# The main job: set up, run the demo sweep (vanilla vs ppo_max, 2 seeds, toy testbed, CPU), write its report.
# SWEEP=<name> runs another sweep of sweeps/ the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
SWEEP=${SWEEP:-demo}  # SWEEP=reviews_demo: the real-model tier (SmolLM2-135M-Instruct)
SWEEP_DIR=${SWEEP_DIR:-multirun/$SWEEP-$(date +%Y%m%d-%H%M%S)}
.venv/bin/rlhf-train -m sweep="$SWEEP" hydra.sweep.dir="$SWEEP_DIR" "$@"
.venv/bin/rlhf-report "$SWEEP_DIR" -o "$SWEEP_DIR/report"
echo "demo done: open $SWEEP_DIR/report/report.html"
