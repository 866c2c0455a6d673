"""The atlas results page's tables (docs/results/atlas.md): for each ablation sweep, every arm's effect against
the sweep's base arm (analysis.effects: paired by PPO seed and testbed instance), as a Markdown table, a CSV and
a forest plot.

    python benchmarks/ablation_atlas.py <sweep dir>=<baseline arm> [...] [-o benchmarks/results/atlas]

e.g. ``/work/sweeps/leave_one_out=ppo_max /work/sweeps/add_one_in=vanilla``. Per sweep it writes
``<name>_effects.csv``, ``<name>_effects.md`` and ``<name>_forest.{png,svg}`` (name: the sweep directory's
name), and prints the tables.

A committed result's runs file (``<name>_runs.csv`` or ``runs.csv``: one row per run with its stability columns,
as rlhf-report writes it) stands in for the sweep directory, so that its effects are recomputed when the
statistics change, without the runs: ``python benchmarks/ablation_atlas.py
benchmarks/results/estimators/runs.csv=ppo_max -o benchmarks/results/estimators`` (files without a prefix
there: ``effects.csv``, ``effects.md``, ``forest.{png,svg}``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from analysis import load_runs, run_stability
from analysis.effects import arm_effects, display_effects
from analysis.plots import forest, save_figure
from analysis.report import markdown_table, reference_kl_note


def atlas(sweep: Path, baseline: str, out: Path) -> str:
    """Write one sweep's (or one committed runs file's) effects files into ``out``; return its Markdown table."""
    if sweep.suffix == ".csv":
        runs = stability = pd.read_csv(sweep)
        name = sweep.parent.name if sweep.stem == "runs" else sweep.stem.removesuffix("_runs")
        prefix = "" if sweep.stem == "runs" else f"{name}_"
    else:
        runs, traces = load_runs(sweep)
        stability = run_stability(runs, traces)
        extra = runs[[c for c in runs.columns if c not in stability.columns or c == "run_id"]]
        stability = stability.merge(extra, on="run_id", how="left")
        name = prefix = sweep.name
        prefix += "_"
    effects = arm_effects(stability, baseline)
    effects.to_csv(out / f"{prefix}effects.csv", index=False)
    instances = runs["config.task.language_seed"].nunique() if "config.task.language_seed" in runs else 1
    note = "".join(f"{line}\n\n" for line in reference_kl_note(runs, stability))  # runs whose KL is to their reference
    table = (f"{name}: {len(runs)} runs, {runs['arm'].nunique()} arms, {instances} testbed instance(s), against "
             f"{baseline}\n\n" + note + markdown_table(display_effects(effects).astype(str)) + "\n")
    (out / f"{prefix}effects.md").write_text(table)
    save_figure(forest(effects), out, f"{prefix}forest")
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="+", help="<sweep dir or runs.csv>=<baseline arm>")
    parser.add_argument("-o", "--output", type=Path, default=Path("benchmarks/results/atlas"))
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    for spec in args.sweeps:
        path, _, baseline = spec.rpartition("=")
        if not path or not baseline:
            parser.error(f"expected <sweep dir>=<baseline arm>, got {spec!r}")
        print(atlas(Path(path), baseline, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
