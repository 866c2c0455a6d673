"""The science results page's tables (benchmarks/results/science/): per arm, mean +- sd over runs (testbed
instances x PPO seeds) of the final (mean of the last 10 iterations) proxy reward, peak and final gold reward,
KL to the initial policy (kl/init_k3, else k1, else k2: analysis.names.pick_kl_metric), perplexity, length and
repeated-bigram fraction, the median seconds per iteration, plus the initial policies' values (iteration 0: the
SFT policy, and the DPO model MPO starts from) and how many runs the collapse detector flags;
then, per testbed instance (`task.language_seed`), the arms' final KL and gold and the effects the science test
asserts: vanilla's KL over ppo_max's, and ppo_max's gold minus vanilla's.

    python benchmarks/science_table.py <sweep or run dirs...>     (e.g. after rlhf-train -m sweep=presets)
"""

from __future__ import annotations

import sys

from analysis import arm_summary, load_runs, run_stability, wide_traces
from analysis.names import pick_kl_metric

INSTANCE = "config.task.language_seed"


def cell(values) -> str:
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}" if len(values) > 1 else f"{values.mean():.2f}"


def starting_point(runs):
    """Each run's initial policy, in words, by run_id: MPO's runs start from the DPO model, the others from the
    SFT policy (their iteration 0 describes it). A pandas Series."""
    reference = runs.set_index("run_id").get("tricks.reference")
    if reference is None:
        reference = runs.set_index("run_id")["arm"].map(lambda arm: "sft")
    return reference.map(lambda ref: "DPO model (iteration 0 of the mpo runs)" if ref == "mpo"
                         else "SFT policy (iteration 0 of the runs that start from it)")


def main(paths: list[str]) -> None:
    runs, traces = load_runs(paths)
    kl = pick_kl_metric(traces["metric"].unique())  # kl/init_k3 (to the initial policy; else k1, else k2)
    columns = ["reward/proxy_mean", "reward/gold_mean", kl, "ppl/policy", "length/response_mean",
               "diversity/repeat_ngram_frac"]
    wide = wide_traces(traces, [*columns, "perf/iter_seconds"]).reset_index().sort_values(["run_id", "step"])
    arm_of = runs.set_index("run_id")["arm"]
    final = wide.groupby("run_id").tail(10).groupby("run_id")[columns].mean()
    initial = wide[wide["step"] == 0].set_index("run_id")[columns]
    final["peak gold"] = wide.groupby("run_id")["reward/gold_mean"].apply(
        lambda s: s.rolling(5, center=True).mean().max())
    final["s/it"] = wide.groupby("run_id")["perf/iter_seconds"].median()
    stability = run_stability(runs, traces).set_index("run_id")
    collapsed = arm_summary(run_stability(runs, traces)).set_index("arm")["collapse_frac"]

    header = ["arm (runs)", "final proxy", "peak gold", "final gold", f"final KL ({kl})", "final ppl", "final length",
              "final repeat", "s/it", "collapsed"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for start, group in initial.groupby(starting_point(runs)):  # each initial policy on its own row
        first = [cell(group[m]) for m in columns]
        print(f"| {start} | {first[0]} | – | {first[1]} | {first[2]} | {first[3]} | {first[4]} | "
              f"{first[5]} | – | – |")
    for arm, group in final.groupby(arm_of):
        row = [cell(group[m]) for m in ("reward/proxy_mean", "peak gold", "reward/gold_mean", kl,
                                        "ppl/policy", "length/response_mean", "diversity/repeat_ngram_frac",
                                        "s/it")]
        print(f"| {arm} ({len(group)}) | " + " | ".join(row) + f" | {collapsed[arm]:.0%} |")

    if INSTANCE not in runs or runs[INSTANCE].nunique() < 2 or not {"vanilla", "ppo_max"} <= set(arm_of):
        return
    final["arm"], final["instance"] = arm_of, runs.set_index("run_id")[INSTANCE]
    final["collapsed"] = stability["collapsed"]
    per = final.groupby(["instance", "arm"]).agg(kl=(kl, "mean"), gold=("reward/gold_mean", "mean"),
                                                  proxy=("reward/proxy_mean", "mean"),
                                                  collapsed=("collapsed", "mean")).unstack("arm")
    print("\n| language_seed | final KL vanilla / ppo_max | final gold vanilla / ppo_max | final proxy vanilla / "
          "ppo_max | KL ratio | gold difference | collapsed vanilla / ppo_max |")
    print("|---|---|---|---|---|---|---|")
    for instance, r in per.iterrows():
        print(f"| {instance} | {r['kl', 'vanilla']:.1f} / {r['kl', 'ppo_max']:.1f} | {r['gold', 'vanilla']:.2f} / "
              f"{r['gold', 'ppo_max']:.2f} | {r['proxy', 'vanilla']:.2f} / {r['proxy', 'ppo_max']:.2f} | "
              f"{r['kl', 'vanilla'] / r['kl', 'ppo_max']:.1f}x | {r['gold', 'ppo_max'] - r['gold', 'vanilla']:+.2f} | "
              f"{r['collapsed', 'vanilla']:.0%} / {r['collapsed', 'ppo_max']:.0%} |")


if __name__ == "__main__":
    main(sys.argv[1:])
