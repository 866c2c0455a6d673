"""The README's science table: per arm, mean +- sd over seeds of the final (mean of the last 10 iterations)
proxy reward, peak and final gold reward, KL, perplexity, length and repeated-bigram fraction, plus the SFT
policy's values (iteration 0 of every run) and how many runs the collapse detector flags.

    python benchmarks/science_table.py <sweep or run dirs...>     (e.g. after rlhf-train -m sweep=presets)
"""

from __future__ import annotations

import sys

from analysis import arm_summary, load_runs, run_stability, wide_traces

COLUMNS = {"reward/proxy_mean": "proxy", "reward/gold_mean": "gold", "kl/ref_k1": "KL (k1)", "ppl/policy": "ppl",
           "length/response_mean": "length", "diversity/repeat_ngram_frac": "repeat"}


def main(paths: list[str]) -> None:
    runs, traces = load_runs(paths)
    wide = wide_traces(traces, list(COLUMNS)).reset_index().sort_values(["run_id", "step"])
    arm_of = runs.set_index("run_id")["arm"]
    final = wide.groupby("run_id").tail(10).groupby("run_id")[list(COLUMNS)].mean()
    initial = wide[wide["step"] == 0].set_index("run_id")[list(COLUMNS)]
    peak_gold = wide.groupby("run_id")["reward/gold_mean"].apply(lambda s: s.rolling(5, center=True).mean().max())
    final["peak gold"] = peak_gold
    collapsed = arm_summary(run_stability(runs, traces)).set_index("arm")["collapse_frac"]

    def cell(values) -> str:
        return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}" if len(values) > 1 else f"{values.mean():.2f}"

    header = ["arm (seeds)", "final proxy", "peak gold", "final gold", "final KL (k1)", "final ppl", "final length",
              "final repeat", "collapsed"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    sft = [cell(initial[m]) for m in COLUMNS]
    print(f"| SFT policy (iteration 0, all runs) | {sft[0]} | – | {sft[1]} | {sft[2]} | {sft[3]} | {sft[4]} | {sft[5]} | – |")
    for arm, group in final.groupby(arm_of):
        row = [cell(group[m]) for m in ("reward/proxy_mean", "peak gold", "reward/gold_mean", "kl/ref_k1",
                                        "ppl/policy", "length/response_mean", "diversity/repeat_ngram_frac")]
        print(f"| {arm} ({len(group)}) | " + " | ".join(row) + f" | {collapsed[arm]:.0%} |")


if __name__ == "__main__":
    main(sys.argv[1:])
