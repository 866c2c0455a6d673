"""The real-model tier's results page data: from a `sweep=reviews` sweep directory, write into
benchmarks/results/reviews/ (or -o DIR) the result files its page.md includes:

- table.md: per arm, mean over its runs and each run's value (seed: value) of the final proxy reward, peak and
  final gold, final KL to the initial policy, perplexity and length ratios, the final repeated-bigram fraction,
  collapses (k/n, exact 95 % interval) and the median seconds per iteration;
- course.md (data: course.csv): each run's smoothed (5 iterations) proxy, gold and KL at a few iterations: the
  time course;
- samples.md (data: samples.csv): each run's 3 sample responses at its first logged step and 3 at its last, with
  their proxy and gold rewards (a table);
- effects.md: rlhf-report's effects against ppo_max (paired by seed), from runs.csv;
- traces.png, frontier.png, survival.png: rlhf-report's figures of the sweep's runs;
- runs.csv: rlhf-report's per-run table, plus s_per_it (each run's median seconds per iteration);
- meta.json: which commit ran which runs (run.json git_sha), today's date, the run count, the command.

Only completed runs enter the files; meta.json's note names the others (still running, or stopped to resume).
With --keep-published, the runs already in the output's runs.csv (and their course.csv and samples.csv rows) that
are not in this sweep stay in the tables, e.g. an earlier sweep's seeds whose run directories are gone (their
figures are not redrawn: the note says whose runs the figures show).

    python benchmarks/reviews_results.py <sweep dir> [-o DIR] [--keep-published]
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from analysis import load_runs, wide_traces
from analysis.collapse import collapse_cell
from analysis.effects import arm_effects, display_effects
from analysis.load import load_samples
from analysis.names import GOLD, PROXY, REPEAT, pick_kl_metric
from analysis.report import EFFECTS_NOTE, markdown_table, write_report

ROOT = Path(__file__).resolve().parent.parent
COURSE_STEPS = (0, 10, 20, 40, 60)
FIGURES = ("traces", "frontier", "survival")
MAX_CHARS = 300


def per_run(values: pd.Series, seeds: pd.Series, digits: int = 2) -> str:
    """"mean (seed 0: v, seed 1: v)"."""
    values = values.astype("float64")
    each = ", ".join(f"s{int(s)}: {v:.{digits}f}" for s, v in zip(seeds, values))
    return f"{values.mean():.{digits}f} ({each})"


def arm_table(stability: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for arm, runs in stability.groupby("arm", sort=False):
        row = {"arm": arm, "runs": len(runs)}
        for column, label in (("final_proxy", "final proxy"), ("peak_gold", "peak gold"),
                              ("final_gold", "final gold"), ("final_kl", "final KL"), ("ppl_ratio", "ppl ratio"),
                              ("length_ratio", "length ratio"), ("final_repeat_frac", "final repeat")):
            row[label] = per_run(runs[column], runs["seed"])
        row["collapsed [95% exact]"] = collapse_cell(runs["collapsed"].astype("float64"))
        row["s/it"] = per_run(runs["s_per_it"], runs["seed"], 1)
        rows.append(row)
    return pd.DataFrame(rows)


def course_table(runs: pd.DataFrame, traces: pd.DataFrame, kl: str) -> pd.DataFrame:
    wide = wide_traces(traces, [PROXY, GOLD, kl, REPEAT])
    rows = []
    for run in runs.sort_values(["arm", "seed"]).to_dict("records"):
        trace = wide.xs(run["run_id"], level="run_id").rolling(5, center=True, min_periods=1).mean()
        for step in [s for s in COURSE_STEPS if s <= trace.index.max()] + [int(trace.index.max())]:
            at = trace.loc[step]
            rows.append({"run_id": run["run_id"], "run": f"{run['arm']}, seed {run['seed']}", "iteration": step,
                         "proxy": f"{at[PROXY]:+.2f}", "gold": f"{at[GOLD]:+.2f}", "KL": f"{at[kl]:.2f}",
                         "repeat": f"{at[REPEAT]:.3f}"})
    return pd.DataFrame(rows).drop_duplicates(["run_id", "iteration"])


def clip(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + " ..."


def user_turn(prompt: str) -> str:
    """The user's words in a chat-template prompt."""
    return prompt.split("<|im_start|>user\n")[-1].split("<|im_end|>")[0]


def samples_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Each run: 3 samples at its first logged step and 3 at its last, with their rewards."""
    rows = []
    for run in runs.sort_values(["arm", "seed"]).to_dict("records"):
        samples = load_samples(run["run_dir"])
        if samples.empty:
            continue
        for step in (samples["step"].min(), samples["step"].max()):
            for sample in samples[samples["step"] == step].head(3).to_dict("records"):
                rows.append({"run_id": run["run_id"], "run": f"{run['arm']}, seed {run['seed']}",
                             "iteration": int(step),
                             "prompt": clip(user_turn(sample["prompt"])), "proxy": f"{sample['reward_proxy']:+.2f}",
                             "gold": f"{sample['reward_gold']:+.2f}", "response": clip(sample["response"])})
    return pd.DataFrame(rows)


def kept(path: Path, sweep_ids: set[str], text: bool = False) -> pd.DataFrame:
    """The rows of a published CSV whose runs are not in this sweep (an empty frame when there is no file);
    ``text``: as the strings the page shows ("+0.21"), not as numbers."""
    if not path.is_file():
        return pd.DataFrame()
    rows = pd.read_csv(path, dtype=str if text else None, keep_default_na=not text)
    return rows[~rows["run_id"].astype(str).isin(sweep_ids)]


def commits_note(stability: pd.DataFrame) -> str:
    """"e24f371 (ppo_max s0, vanilla s0); 0d5919f (...)": which commit ran which runs."""
    parts = []
    for sha, runs in stability.groupby(stability["git_sha"].fillna("unknown").astype(str).str[:7], sort=False):
        parts.append(f"{sha} ({', '.join(f'{r.arm} s{int(r.seed)}' for r in runs.itertuples())})")
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "benchmarks" / "results" / "reviews")
    parser.add_argument("--keep-published", action="store_true",
                        help="keep the output's published runs (runs.csv, course.csv, samples.csv rows) that are "
                             "not in this sweep, e.g. an earlier sweep's seeds whose run directories are gone")
    args = parser.parse_args()
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    runs, traces = load_runs([args.sweep])
    sweep_ids = set(runs["run_id"].astype(str))
    unfinished = runs[runs["status"] != "completed"]
    runs = runs[runs["status"] == "completed"].reset_index(drop=True)  # the page rests on completed runs only
    traces = traces[traces["run_id"].isin(runs["run_id"])]
    traces = traces.assign(run_id=traces["run_id"].astype(str).astype("category"))
    kl = pick_kl_metric(traces["metric"].unique())
    with tempfile.TemporaryDirectory() as tmp:
        write_report(runs, traces, tmp, sources=[args.sweep], baseline="ppo_max" if runs["arm"].nunique() > 1 else None)
        stability = pd.read_csv(Path(tmp) / "runs.csv")
        for name in FIGURES:
            if (Path(tmp) / "figures" / f"{name}.png").is_file():
                shutil.copy(Path(tmp) / "figures" / f"{name}.png", out / f"{name}.png")
    seconds = (wide_traces(traces, ["perf/iter_seconds"]).groupby(level="run_id")["perf/iter_seconds"].median()
               if "perf/iter_seconds" in set(traces["metric"]) else pd.Series(dtype="float64"))
    stability = stability.assign(s_per_it=stability["run_id"].map(seconds))
    course, samples = course_table(runs, traces, kl), samples_table(runs)
    earlier = kept(out / "runs.csv", sweep_ids) if args.keep_published else pd.DataFrame()
    if len(earlier):
        course = pd.concat([kept(out / "course.csv", sweep_ids, text=True), course], ignore_index=True)
        samples = pd.concat([kept(out / "samples.csv", sweep_ids, text=True), samples], ignore_index=True)
        stability = pd.concat([earlier, stability], ignore_index=True)
    stability = stability.sort_values(["arm", "seed"], kind="stable").reset_index(drop=True)
    order = {run_id: i for i, run_id in enumerate(stability["run_id"])}
    course, samples = (frame.sort_values("run_id", key=lambda ids: ids.map(order), kind="stable")
                       for frame in (course, samples))
    stability.to_csv(out / "runs.csv", index=False)
    course.to_csv(out / "course.csv", index=False)
    samples.to_csv(out / "samples.csv", index=False)
    if stability["arm"].nunique() > 1:
        effects = display_effects(arm_effects(stability, "ppo_max"))
        (out / "effects.md").write_text(EFFECTS_NOTE + "\n\n" + markdown_table(effects.astype(str)) + "\n")
    else:
        (out / "effects.md").write_text("(one arm only: no effects)\n")
    (out / "table.md").write_text(markdown_table(arm_table(stability).astype(str)) + "\n")
    (out / "course.md").write_text(markdown_table(course.drop(columns="run_id").astype(str)) + "\n")
    (out / "samples.md").write_text(markdown_table(samples.drop(columns="run_id").astype(str)) + "\n")
    steps = stability["n_steps"].astype("float64")
    meta = {"commit": commits_note(stability), "date": datetime.date.today().isoformat(), "runs": int(len(stability)),
            "command": "rlhf-train -m sweep=reviews hydra/launcher=parallel; "
                       "python benchmarks/reviews_results.py <sweep dir>",
            "note": f"{len(stability)} runs ({', '.join(f'{a}: {n}' for a, n in stability['arm'].value_counts().items())}), "
                    f"{int(steps.min())}-{int(steps.max())} iterations logged; two or three runs at a time on 2 "
                    "cores, one thread each; KL is " + kl + "."
                    + (" The figures show this sweep's runs only: " + ", ".join(
                        f"{r.arm} s{int(r.seed)}" for r in runs.itertuples()) + "; the tables add the published runs "
                        + ", ".join(f"{r.arm} s{int(r.seed)}" for r in earlier.itertuples()) + "." if len(earlier) else "")
                    + (" Not yet completed, so not in the tables: " + ", ".join(
                        f"{r['arm']} seed {r['seed']} ({r['n_steps']} iterations, {r['status']})"
                        for r in unfinished.to_dict("records")) + "." if len(unfinished) else "")}
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")


if __name__ == "__main__":
    main()
