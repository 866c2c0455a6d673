"""How well does the proxy explain the gold reward on the responses a remedy keeps? On the SFT policy's own
samples of each testbed instance (`task.language_seed`), n responses to each of P prompts: the R^2 of gold on
the proxy score over all responses, over the responses each `policy_filter` keeps (PF-PPO chooses its filter
by this number), and for each `reward_ensemble` aggregation of the instance's members.

    python benchmarks/remedy_r2.py [--seeds 0] [--prompts 512] [--n 4] [--members 3] [overrides...]
"""

from __future__ import annotations

import argparse
import random

import torch
from hydra import compose, initialize_config_dir

from rlhf_lab.config.checks import to_config
from rlhf_lab.config.schema import PolicyFilter, RewardEnsemble, register_schema
from rlhf_lab.engine.data import encode
from rlhf_lab.algo.metrics import r_squared
from rlhf_lab.engine.models import load_policy, load_reward_model, load_tokenizer, quiet_transformers
from rlhf_lab.engine.packing import pack, pad_left
from rlhf_lab.config.paths import cache_dir, conf_dir
from rlhf_lab.engine.roles import RewardModels
from rlhf_lab.engine.roles import RewardModel
from rlhf_lab.toy import stages
from rlhf_lab.toy.gold import GoldReward
from rlhf_lab.algo.tricks import ENSEMBLES, FILTERS


@torch.no_grad()
def member_scores(ensemble: RewardModels, sequences: list[list[int]], pad: int, batch: int = 512) -> torch.Tensor:
    """(len(sequences), K) scores of every member."""
    return torch.cat([ensemble(pack(*pad_left(sequences[i:i + batch], pad))) for i in range(0, len(sequences), batch)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0", help="testbed instances (task.language_seed)")
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--n", type=int, default=4, help="responses per prompt")
    parser.add_argument("--members", type=int, default=3, help="reward-model ensemble size")
    parser.add_argument("--cache", default=None, help="artefact cache (default: rlhf-train's)")
    parser.add_argument("overrides", nargs="*", help="config overrides")
    args = parser.parse_args()
    register_schema()
    quiet_transformers()
    torch.manual_seed(0)
    print(f"| language_seed | proxy | {' | '.join(f.value for f in FILTERS)} | "
          f"{' | '.join(e.value for e in RewardEnsemble if e != RewardEnsemble.off)} |")
    print("|---|---|" + "---|" * (len(FILTERS) + len(RewardEnsemble) - 1))
    for seed in [int(s) for s in args.seeds.split(",")]:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = to_config(compose(config_name="config", overrides=[
                f"task.language_seed={seed}", "reward_ensemble=mean", f"reward_ensemble.size={args.members}",
                *args.overrides]))
        artefacts = stages.prepare(cfg, cache_dir(args.cache or cfg.cache_dir))
        tokenizer = load_tokenizer(artefacts.sft_dir)
        policy = load_policy(artefacts.sft_dir, torch.float32).eval()
        rng = random.Random(1000 + seed)
        prompts = [p for p in (artefacts.language.sample_prompt(rng) for _ in range(args.prompts))
                   for _ in range(args.n)]
        texts, finished, tokens = stages.sample_responses(policy, tokenizer, prompts, cfg.ppo.max_new_tokens)
        gold = torch.tensor(GoldReward(artefacts.language)(prompts, texts, finished))
        ensemble = RewardModels([RewardModel(load_reward_model(d, torch.float32).eval()) for d in artefacts.rm_dirs])
        scores = member_scores(ensemble, [p + t for p, t in zip(encode(tokenizer, prompts), tokens)],
                               tokenizer.pad_token_id)
        proxy = scores[:, 0]
        kept = [r_squared(proxy[rows], gold[rows]).item() for rows in
                (FILTERS[f](proxy, args.n) for f in (PolicyFilter.best_of_n, PolicyFilter.best_random,
                                                     PolicyFilter.best_worst))]
        aggregated = [r_squared(ENSEMBLES[e](scores, cfg.reward_ensemble), gold).item()
                      for e in RewardEnsemble if e != RewardEnsemble.off]
        print(f"| {seed} | {r_squared(proxy, gold).item():.3f} | " + " | ".join(f"{v:.3f}" for v in kept) + " | "
              + " | ".join(f"{v:.3f}" for v in aggregated) + " |", flush=True)


if __name__ == "__main__":
    main()
