"""The real-model tier's results page data: from a `sweep=reviews` sweep directory, write into
benchmarks/results/reviews/ (or -o DIR) the result files its page.md includes:

- table.md: per arm, mean over its runs and each run's value (seed: value) of the final proxy reward, peak and
  final gold, final KL to the initial policy, perplexity and length ratios, the final repeated-bigram fraction,
  collapses (k/n, exact 95 % interval) and the median seconds per iteration;
- course.md: each run's smoothed (5 iterations) proxy, gold and KL at a few iterations: the time course;
- samples.md: each arm's first run, 3 sample responses at its first logged step and 3 at its last, with their
  proxy and gold rewards (a table);
- effects.md: rlhf-report's effects against ppo_max (paired by seed);
- traces.png, frontier.png, survival.png: rlhf-report's figures;
- runs.csv: rlhf-report's per-run table;
- meta.json: the commit the runs ran (run.json git_sha), today's date, the run count, the command.

Only completed runs enter the files; meta.json's note names the others (still running, or stopped to resume).

    python benchmarks/reviews_results.py <sweep dir> [-o DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from analysis import load_runs, wide_traces
from analysis.collapse import collapse_probability
from analysis.load import load_samples
from analysis.names import GOLD, PROXY, REPEAT, pick_kl_metric
from analysis.report import markdown_table, write_report

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
        k, n, _, low, high = collapse_probability(runs["collapsed"].astype("float64"))
        row = {"arm": arm, "runs": len(runs)}
        for column, label in (("final_proxy", "final proxy"), ("peak_gold", "peak gold"),
                              ("final_gold", "final gold"), ("final_kl", "final KL"), ("ppl_ratio", "ppl ratio"),
                              ("length_ratio", "length ratio"), ("final_repeat_frac", "final repeat")):
            row[label] = per_run(runs[column], runs["seed"])
        row["collapsed [95% exact]"] = f"{k}/{n} [{low:.2f}, {high:.2f}]"
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
            rows.append({"run": f"{run['arm']}, seed {run['seed']}", "iteration": step,
                         "proxy": f"{at[PROXY]:+.2f}", "gold": f"{at[GOLD]:+.2f}", "KL": f"{at[kl]:.2f}",
                         "repeat": f"{at[REPEAT]:.3f}"})
    return pd.DataFrame(rows).drop_duplicates(["run", "iteration"])


def clip(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + " ..."


def user_turn(prompt: str) -> str:
    """The user's words in a chat-template prompt."""
    return prompt.split("<|im_start|>user\n")[-1].split("<|im_end|>")[0]


def samples_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Each arm's first run: 3 samples at its first logged step and 3 at its last, with their rewards."""
    rows = []
    for arm, group in runs.sort_values("seed").groupby("arm", sort=False):
        run = group.iloc[0]
        samples = load_samples(run["run_dir"])
        if samples.empty:
            continue
        for step in (samples["step"].min(), samples["step"].max()):
            for sample in samples[samples["step"] == step].head(3).to_dict("records"):
                rows.append({"run": f"{arm}, seed {run['seed']}", "iteration": int(step),
                             "prompt": clip(user_turn(sample["prompt"])), "proxy": f"{sample['reward_proxy']:+.2f}",
                             "gold": f"{sample['reward_gold']:+.2f}", "response": clip(sample["response"])})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "benchmarks" / "results" / "reviews")
    args = parser.parse_args()
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    runs, traces = load_runs([args.sweep])
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
        shutil.copy(Path(tmp) / "runs.csv", out / "runs.csv")
        effects = Path(tmp) / "report.md"
        text = effects.read_text()
        start = text.find("## Effects against")
        (out / "effects.md").write_text(text[start:text.find("\n## ", start + 3)].split("\n", 2)[2].strip() + "\n"
                                        if start >= 0 else "(one arm only: no effects)\n")
    seconds = wide_traces(traces, ["perf/iter_seconds"]).groupby(level="run_id")["perf/iter_seconds"].median()
    stability = stability.assign(s_per_it=stability["run_id"].map(seconds))
    (out / "table.md").write_text(markdown_table(arm_table(stability).astype(str)) + "\n")
    (out / "course.md").write_text(markdown_table(course_table(runs, traces, kl).astype(str)) + "\n")
    (out / "samples.md").write_text(markdown_table(samples_table(runs).astype(str)) + "\n")
    commits = sorted(set(runs["git_sha"].dropna().astype(str))) if "git_sha" in runs else []
    steps = runs["n_steps"].astype("float64")
    meta = {"commit": ", ".join(c[:7] for c in commits) or "unknown",
            "date": datetime.date.today().isoformat(), "runs": int(len(runs)),
            "command": "rlhf-train -m sweep=reviews hydra/launcher=parallel; "
                       "python benchmarks/reviews_results.py <sweep dir>",
            "note": f"{len(runs)} runs ({', '.join(f'{a}: {n}' for a, n in runs['arm'].value_counts().items())}), "
                    f"{int(steps.min()) if not math.isnan(steps.min()) else 0}-{int(steps.max())} iterations logged; "
                    "two or three runs at a time on 2 cores, one thread each; KL is " + kl + "."
                    + (" Not yet completed, so not in the tables: " + ", ".join(
                        f"{r['arm']} seed {r['seed']} ({r['n_steps']} iterations, {r['status']})"
                        for r in unfinished.to_dict("records")) + "." if len(unfinished) else "")}
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")


if __name__ == "__main__":
    main()
