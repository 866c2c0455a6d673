"""Seconds per PPO iteration of the default toy config (preset=ppo_max), rollout vs train split, and the peak
memory of the process (host RSS; on CUDA also the device's peak allocation).

    python benchmarks/bench_ppo.py [overrides...]      e.g. preset=vanilla ppo.batch_size=128
    python benchmarks/bench_ppo.py experiment=reviews preset=vanilla     # the real-model tier (SmolLM2-135M)

Builds (or reuses from the cache) the toy SFT policy and reward model, runs `--warmup` iterations, then
times `--iterations` more and prints the median and the spread. No run directory is written.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import torch
from hydra import compose, initialize_config_dir

from rlhf_lab.config.checks import to_config
from rlhf_lab.config.schema import register_schema
from rlhf_lab.config.paths import conf_dir
from rlhf_lab.run.build import build_trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    register_schema()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = to_config(compose(config_name="config", overrides=args.overrides))
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    trainer = build_trainer(cfg)
    print(f"setup (stages from cache or built, models loaded): {time.perf_counter() - started:.1f} s")
    print(f"config: preset tricks {cfg.tricks()}")
    models = 3 + (trainer.critic is not None)  # policy, reference, reward model, and the critic if any
    print(f"{models} models loaded (adv_estimator={cfg.adv_estimator.name.value}); batch {cfg.ppo.batch_size} "
          f"responses ({cfg.ppo.samples_per_prompt} per prompt) x {cfg.ppo.max_new_tokens} new tokens, "
          f"{cfg.ppo.epochs} epochs x {cfg.ppo.minibatches} minibatches, torch threads {torch.get_num_threads()}")
    rows = []
    for i in range(args.warmup + args.iterations):
        metrics, _ = trainer.step()
        if i >= args.warmup:
            rows.append(metrics)
    for key in ("perf/iter_seconds", "perf/rollout_seconds", "perf/train_seconds", "perf/gen_tokens_per_second"):
        values = [row[key] for row in rows]
        print(f"{key:28s} median {statistics.median(values):9.3f}   min {min(values):9.3f}   max {max(values):9.3f}")
    iteration = statistics.median(row["perf/iter_seconds"] for row in rows)
    rollout = statistics.median(row["perf/rollout_seconds"] for row in rows)
    train = statistics.median(row["perf/train_seconds"] for row in rows)
    print(f"median seconds per PPO iteration: {iteration:.3f} (rollout {rollout:.3f} = {rollout / iteration:.0%}, "
          f"train {train:.3f} = {train / iteration:.0%}) over {len(rows)} iterations")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    print(f"peak host memory (max RSS): {rss / 1024:.2f} GiB")
    if torch.cuda.is_available():
        print(f"peak CUDA memory allocated: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
