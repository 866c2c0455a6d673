"""Peak memory (RSS) of one PPO iteration of rlhf-lab, on the toy model and on a ~125M-parameter model.

    python benchmarks/memory.py                          # both cases below, each in its own process
    python benchmarks/memory.py --case 125m --batch 16 --iterations 3

Cases (the PPO settings are those of benchmarks/vs_trl.py: 32 response tokens, 2 epochs x 2 minibatches,
token KL penalty, value clipping, critic = a copy of the reward model, policy + reference + critic + reward model
all float32 on the CPU):
- toy:  the toy task's SFT policy and reward model (~0.6M parameters each), batch 64 (its benchmark batch);
- 125m: a randomly initialised Llama config (hidden 768, 12 layers, 12 heads, MLP 3456, the toy vocabulary):
        ~124M parameters per model, nothing downloaded; batch 16. Random weights rarely emit EOS, so nearly
        every response is 32 tokens long: the worst case for activations.

For every iteration it prints the seconds, the RSS when the iteration began and the peak RSS during it (the
kernel's high-water mark, reset before each iteration via /proc/self/clear_refs), and "+peak", their
difference: the iteration's transient memory (activations, logits, gradients; the first iteration also
allocates AdamW's two moment buffers per trainable parameter, which then stay resident).
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_trl import OURS, compose_config, reset_peak_rss, rss_mib  # noqa: E402

from rlhf_lab.config.paths import cache_dir  # noqa: E402

CASES = {"toy": 64, "125m": 16}  # case -> default batch size


def build(case: str, batch: int):
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from rlhf_lab.run.build import prompt_stream
    from rlhf_lab.engine.models import load_tokenizer, quiet_transformers
    from rlhf_lab.toy import stages
    from rlhf_lab.run.build import assemble, build_trainer
    from rlhf_lab.engine.runtime import Runtime

    quiet_transformers()
    cfg = compose_config(OURS + [f"ppo.batch_size={batch}"])
    torch.manual_seed(cfg.seed)
    if case == "toy":
        return build_trainer(cfg)
    artefacts = stages.prepare(cfg, cache_dir(cfg.cache_dir))  # the toy tokenizer and prompts (cached)
    tokenizer = load_tokenizer(artefacts.sft_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3456, num_hidden_layers=12,
                         num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None, tie_word_embeddings=True, num_labels=1)
    policy = LlamaForCausalLM(config)
    reward_model = LlamaForSequenceClassification(config)
    return assemble(cfg, Runtime.create(cfg.device, cfg.precision), policy=policy, reference=copy.deepcopy(policy),
                    critic=copy.deepcopy(reward_model), reward_model=reward_model, tokenizer=tokenizer,
                    prompts=prompt_stream(cfg, artefacts.language))


def measure(case: str, batch: int, iterations: int) -> None:
    warnings.filterwarnings("ignore")
    before = rss_mib()
    trainer = build(case, batch)
    params = sum(p.numel() for p in trainer.policy.parameters())
    loaded = rss_mib()
    print(f"case {case}: {params / 1e6:.1f}M parameters per model (4 models), batch {batch}, "
          f"{trainer.cfg.ppo.max_new_tokens} response tokens, torch threads {torch.get_num_threads()}")
    print(f"  RSS {before:.0f} MiB before building, {loaded:.0f} MiB with the 4 models loaded "
          f"(+{loaded - before:.0f} MiB)")
    print(f"  {'iteration':>9s} {'seconds':>8s} {'RSS at start':>12s} {'peak RSS':>9s} {'+peak':>7s}  (MiB)")
    for i in range(iterations):
        reset_peak_rss()
        start = rss_mib()
        started = time.perf_counter()
        metrics, _ = trainer.step()
        seconds = time.perf_counter() - started
        peak = rss_mib("VmHWM")
        print(f"  {i:9d} {seconds:8.2f} {start:12.0f} {peak:9.0f} {max(peak - start, 0.0):7.0f}   "
              f"(mean response length {metrics['length/response_mean']:.1f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=list(CASES), help="one case in this process (default: each case in a "
                                                            "fresh process)")
    parser.add_argument("--batch", type=int, help="batch size (default: toy 64, 125m 16)")
    parser.add_argument("--iterations", type=int, default=3)
    args = parser.parse_args()
    if args.case:
        measure(args.case, args.batch or CASES[args.case], args.iterations)
        return
    for case in CASES:
        subprocess.run([sys.executable, __file__, "--case", case, "--iterations", str(args.iterations)], check=True)


if __name__ == "__main__":
    main()
