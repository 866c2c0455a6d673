"""A results page's data from one toy sweep (issue 26's factorial and reward-model-quality sweeps): run
rlhf-report on the sweep directory and write into ``-o DIR`` (e.g. benchmarks/results/factorial) the small
result files its page.md includes:

- arms.md: per arm, the runs, the reward model's held-out agreement with gold (when recorded), final and peak
  gold, final KL (mean and 95 % t interval over the arm's runs) and collapses (k/n with the exact interval);
- collapse.md (data: collapse.csv, survival.csv): rlhf-report's collapse probabilities and Kaplan-Meier curves;
- factorial.md (data: factorial.csv), when the sweep is a factorial design: main effects and two-way
  interactions (blocked by instance and seed, Holm-corrected); factorial_plan.md (data: factorial_plan.csv):
  rlhf-report's replicates of the design that would establish each effect were its true size the estimate
  (analysis.planner.factorial_plan);
- rm_quality.md (data: rm_quality.csv), when the runs span reward models of different quality on one instance:
  the slopes of peak and final gold on the reward model's agreement with gold;
- runs.csv: rlhf-report's per-run table, plus each run's wall seconds (finished_at - started_at);
- the figures among traces, survival, interactions and rm_quality that the report drew (PNG);
- meta.json: which commit ran how many runs (run.json git_sha), today's date, the run count, the command, the
  sweep's pace: completed runs per hour of the span from the first start to the last finish, or of
  ``--wall-hours`` for a sweep run in parts (the span would count the pauses between them).

Only completed runs enter the files; meta.json's note counts the others.

    python benchmarks/sweep_results.py <sweep dir> -o benchmarks/results/<name> [--command "..."]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

from analysis import load_runs
from analysis.collapse import collapse_cell, display_collapse
from analysis.factorial import display_factorial
from analysis.planner import display_factorial_plan
from analysis.report import markdown_table, write_report
from analysis.rm_quality import AGREEMENT, display_slopes
from analysis.stability import t95

FIGURES = ("traces", "survival", "interactions", "rm_quality")


def _mean_ci(values: pd.Series, sign: str = "+") -> str:
    """"mean [low, high]": the 95 % t interval over the values (just the mean for one value)."""
    values = values.astype("float64").dropna()
    if values.empty:
        return "–"
    mean = values.mean()
    if len(values) < 2:
        return f"{mean:{sign}.2f}"
    half = t95(len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return f"{mean:{sign}.2f} [{mean - half:{sign}.2f}, {mean + half:{sign}.2f}]"


def arm_table(stability: pd.DataFrame) -> pd.DataFrame:
    """One row per arm, in order of appearance: runs, RM agreement, gold, KL, collapses."""
    rows = []
    for arm, runs in stability.groupby("arm", sort=False):
        row = {"arm": arm, "runs": len(runs)}
        if AGREEMENT in runs:
            row["RM gold agreement"] = f"{runs[AGREEMENT].astype('float64').mean():.3f}"
        for column, label, sign in (("final_gold", "final gold", "+"), ("peak_gold", "peak gold", "+"),
                                    ("final_kl", "final KL", "")):
            row[label] = _mean_ci(runs[column], sign)
        row["collapsed [95% exact]"] = collapse_cell(runs["collapsed"].astype("float64"))
        rows.append(row)
    return pd.DataFrame(rows)


def commits_note(stability: pd.DataFrame) -> str:
    """"2aef0d1 (90 runs); 6f6ae1f (6 runs)": which commit ran how many runs."""
    shas = stability["git_sha"].fillna("unknown").astype(str).str[:7]
    return "; ".join(f"{sha} ({n} runs)" for sha, n in shas.value_counts(sort=False).items())


def pace(runs: pd.DataFrame) -> tuple[float, float]:
    """(hours from the first run's start to the last run's finish, completed runs per hour of it)."""
    start = pd.to_datetime(runs["started_at"], utc=True).min()
    end = pd.to_datetime(runs["finished_at"], utc=True).max()
    hours = (end - start).total_seconds() / 3600
    return hours, (len(runs) / hours if hours > 0 else math.nan)


def write_results(sweep: Path, out: Path, command: str, wall_hours: float | None = None) -> dict:
    """Write the result files of ``sweep`` into ``out``; return meta.json's contents. ``wall_hours``: the time
    the sweep ran, when it ran in parts (default: the span from the first start to the last finish)."""
    out.mkdir(parents=True, exist_ok=True)
    runs, traces = load_runs([sweep])
    unfinished = runs[runs["status"] != "completed"]
    runs = runs[runs["status"] == "completed"].reset_index(drop=True)  # the page rests on completed runs only
    if runs.empty:
        raise SystemExit(f"{sweep}: no completed run yet")
    traces = traces[traces["run_id"].isin(runs["run_id"])]
    with tempfile.TemporaryDirectory() as tmp:
        write_report(runs, traces, tmp, sources=[sweep])
        report = Path(tmp)
        stability = pd.read_csv(report / "runs.csv")
        for name in ("collapse", "survival", "factorial", "factorial_plan", "rm_quality"):
            if (report / f"{name}.csv").is_file():
                shutil.copy(report / f"{name}.csv", out / f"{name}.csv")
        for name in FIGURES:
            if (report / "figures" / f"{name}.png").is_file():
                shutil.copy(report / "figures" / f"{name}.png", out / f"{name}.png")
    seconds = (pd.to_datetime(runs["finished_at"], utc=True) - pd.to_datetime(runs["started_at"], utc=True))
    stability["wall_s"] = stability["run_id"].map(dict(zip(runs["run_id"], seconds.dt.total_seconds())))
    stability.to_csv(out / "runs.csv", index=False)
    (out / "arms.md").write_text(markdown_table(arm_table(stability).astype(str)) + "\n")
    (out / "collapse.md").write_text(markdown_table(display_collapse(pd.read_csv(out / "collapse.csv"))) + "\n")
    if (out / "factorial.csv").is_file():
        factorial = pd.read_csv(out / "factorial.csv", keep_default_na=True)
        factorial["aliased_with"] = [v if isinstance(v, str) else None for v in factorial["aliased_with"]]
        (out / "factorial.md").write_text(markdown_table(display_factorial(factorial).astype(str)) + "\n")
        plan = pd.read_csv(out / "factorial_plan.csv")
        (out / "factorial_plan.md").write_text(markdown_table(display_factorial_plan(plan).astype(str)) + "\n")
    if (out / "rm_quality.csv").is_file():
        (out / "rm_quality.md").write_text(
            markdown_table(display_slopes(pd.read_csv(out / "rm_quality.csv")).astype(str)) + "\n")
    hours, per_hour = pace(runs)
    span = f"{hours:.2f} h from the first start to the last finish"
    if wall_hours is not None:
        hours, per_hour = wall_hours, len(runs) / wall_hours
        span = f"{hours:.2f} h of running, in parts"
    instances = runs["config.task.language_seed"].nunique() if "config.task.language_seed" in runs else 1
    meta = {"commit": commits_note(stability), "date": datetime.date.today().isoformat(), "runs": int(len(runs)),
            "command": command,
            "note": f"{len(runs)} completed runs, {runs['arm'].nunique()} arms, {instances} testbed instance(s), "
                    f"{runs['seed'].nunique()} PPO seed(s); {span} ({per_hour:.1f} runs an hour)."
                    + (f" Not completed, so not in the tables: {len(unfinished)} runs." if len(unfinished) else "")}
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--command", default="rlhf-train -m sweep=<name> hydra/launcher=parallel; "
                                              "python benchmarks/sweep_results.py <sweep dir> -o <dir>",
                        help="the command that produced the data (stamped into meta.json)")
    parser.add_argument("--wall-hours", type=float, help="the hours the sweep ran, when it ran in parts")
    args = parser.parse_args(argv)
    meta = write_results(args.sweep, args.output, args.command, args.wall_hours)
    print(json.dumps(meta, indent=1))
    print(f"wrote {args.output}: {', '.join(sorted(p.name for p in args.output.iterdir()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
