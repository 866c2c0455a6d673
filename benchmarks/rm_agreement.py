"""docs/toy-testbed.md's reward-model table: build (or find in the cache) the toy testbed of several instances
(`task.language_seed`) and print what each reward model's build report says: agreement with gold on held-out
pairs of SFT-policy samples, the correlation of its calibrated score with gold, its raw (pre-calibration)
scale, and the score of a repetition-stuffed response against a clean one (the exploitable blind spot).

    python benchmarks/rm_agreement.py [--seeds 0,1,2,3,4] [--cache DIR] [overrides...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from hydra import compose, initialize_config_dir

from rlhf_lab.config.checks import to_config
from rlhf_lab.config.schema import register_schema
from rlhf_lab.config.paths import cache_dir, conf_dir
from rlhf_lab.toy import stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2,3,4", help="testbed instances (task.language_seed)")
    parser.add_argument("--cache", default=None, help="artefact cache (default: rlhf-train's)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. task.rm.pairs=8000")
    args = parser.parse_args()
    register_schema()
    rows = []
    print("| language_seed | gold agreement | label agreement | corr(score, gold) | raw score mean ± sd | "
          "clean / stuffed probe | build s |")
    print("|---|---|---|---|---|---|---|")
    for seed in [int(s) for s in args.seeds.split(",")]:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = to_config(compose(config_name="config", overrides=[f"task.language_seed={seed}", *args.overrides]))
        started = time.perf_counter()
        artefacts = stages.prepare(cfg, cache_dir(args.cache or cfg.cache_dir))
        seconds = time.perf_counter() - started
        report = json.loads((artefacts.rm_dir / "rm_report.json").read_text())
        rows.append(report)
        probes = report["probes"]
        print(f"| {seed} | {report['gold_accuracy']:.1%} | {report['label_accuracy']:.1%} | "
              f"{report['score_gold_correlation']:.2f} | {report['raw_sft_score_mean']:.2f} ± "
              f"{report['raw_sft_score_std']:.2f} | {probes['clean']['score']:.2f} / {probes['stuffed']['score']:.2f} "
              f"| {seconds:.0f} |", flush=True)
    if len(rows) > 1:
        gold = [r["gold_accuracy"] for r in rows]
        print(f"\ngold agreement: mean {statistics.mean(gold):.1%}, sd {statistics.stdev(gold):.1%}, "
              f"range {min(gold):.1%} - {max(gold):.1%} over {len(rows)} instances")


if __name__ == "__main__":
    main()
