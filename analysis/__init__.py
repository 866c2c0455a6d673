"""Stability analysis of rlhf-lab runs: loaders, stability metrics, the collapse detector, plots, report.

Reads run directories (docs/architecture.md, "Run directory") and the W&B runs rlhf-lab logs (``analysis.wandb_runs``:
offline run directories through wandb's command line, or the cloud API); never imports torch or rlhf_lab.
``import analysis`` does not load matplotlib (nor wandb, nor scipy) either: ``write_report``, ``write_figures`` and
``arm_effects`` import them on first use.
"""

import importlib

from analysis.frames import wide_traces
from analysis.load import find_run_dirs, load_runs, load_samples, read_jsonl
from analysis.wandb_runs import load_wandb_runs
from analysis.stability import (CollapseResult, CollapseRules, arm_summary, detect_collapse, run_metrics,
                                run_stability, stability_criteria)

_LAZY = {"write_report": "analysis.report", "write_figures": "analysis.plots", "arm_effects": "analysis.effects"}

__all__ = ["CollapseResult", "CollapseRules", "arm_summary", "detect_collapse", "find_run_dirs", "load_runs",
           "load_samples", "load_wandb_runs", "read_jsonl", "run_metrics", "run_stability", "stability_criteria",
           "wide_traces", *_LAZY]


def __getattr__(name: str):
    """Import the plotting side (matplotlib) only when one of its functions is first used."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
