"""rlhf-lab's PPO iteration against TRL's PPO trainer (trl==1.12.0, the `bench` extra), same work, same process.

    pip install -e ".[bench]"          # trl==1.12.0 (keep the CPU torch: install torch first, see README)
    python benchmarks/vs_trl.py [--warmup 2] [--iterations 8] [--temperature 1.0] [--threads 0]

Both sides get the toy task's SFT policy, its reward model, a value model copied from the reward model and a
reference copied from the policy (built once into the artefact cache, $RLHF_LAB_CACHE, or reused from it), the
same prompt stream, and the same PPO settings:

    batch 64 prompts, 32 response tokens, 2 PPO epochs x 2 minibatches of 32, pure sampling at --temperature,
    token-level KL penalty in the reward (coef 0.05, estimator k1), GAE gamma 1 / lambda 0.95,
    advantages whitened over the batch, PPO ratio clip 0.2, value clip 0.2, no reward whitening/normalisation,
    stop at EOS, no missing-EOS penalty, no entropy bonus, no ptx loss, no critic pre-training,
    no gradient clipping, AdamW lr 2e-4 constant for the policy and for the value model.

Ours: `preset=vanilla` + kl_penalty=token adv_norm=whiten value_clip=on critic_init=reward_model
ppo.critic_lr=ppo.policy_lr (see OURS below). TRL: PPOConfig below; ref_model=None (TRL copies the policy),
num_sample_generations=0, bf16=False.

The two trainers run alternately in one process (ours, TRL, ours, TRL, ...): TRL's `train()` runs in a
worker thread that a callback parks at the end of every iteration, so only one side computes at any moment,
both see the same machine state and the same torch thread pool. After `--warmup` iterations each, every
iteration is timed: wall seconds, the rollout/train split (TRL: the rollout ends at the first forward pass of
its policy+value wrapper, i.e. the first PPO minibatch) and the process's peak RSS during it (the kernel's
high-water mark, reset before every iteration via /proc/self/clear_refs; "+peak" is that peak minus the RSS
when the iteration began). The last line is `ratio_trl_over_ours=<median over the paired iterations of
TRL seconds / our seconds>`.

Remaining differences (none changes the amount of model work, except where noted):
- TRL trains policy and value model with one fused AdamW over both (loss = pg_loss + vf_coef * vf_loss); ours
  has one fused AdamW per model. Adam is invariant to the loss scale, so vf_coef only moves eps-level terms.
- TRL adds the sequence score to the reward one token after EOS (where there is room), ours on the EOS token;
  TRL's value loss ("padding_mask_p1") covers one token past EOS, ours stops at EOS. Same work, GAE shifted
  by one token.
- TRL's approx-KL statistic is 0.5 * mean(logratio^2) over all tokens, ours k3 over response tokens.
- TRL computes full-vocabulary logits at every position, including prompt and padding positions, in its
  reference, value, reward and training forward passes, and keeps output_hidden_states; ours packs the
  sequences without their padding and applies the LM head only where a response token is predicted.
  This is the optimisation under test, not a difference in the algorithm.
- TRL logs through the transformers Trainer callbacks and calls gc.collect() every iteration; ours computes its
  contract metrics (diversity, perplexity, KL estimators...) and the toy task's gold reward every iteration
  and writes nothing here.
- The prompts are the same stream (toy language, same seed); TRL's dataloader shuffles them, so each side's
  iteration i sees a different subset of it. Response lengths (and so our packed work) follow each side's own
  policy, which both start from the same SFT checkpoint and move at the same learning rate.
- Rollout/train split: ours "rollout" is generation + scoring passes, TRL's also includes its rewards and GAE
  (cheap); "train" is the rest of the iteration.

Measure on an otherwise idle machine: with 2 cores, torch's 2 OpenMP threads slow down many-fold as soon as
another process competes for a core, and not equally for both sides. The header prints the load average.
Measured here (2 cores, torch 2.13.0+cpu, idle): ours ~0.6 s, TRL ~1.1-1.25 s per iteration, ratio ~1.9-2.0;
before the issue-7 speed-ups ours took ~0.7 s (ratio ~1.45).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from rlhf_lab.config import Config, register_schema, to_config
from rlhf_lab.paths import cache_dir, conf_dir
from rlhf_lab.train import build_trainer

OURS = ["preset=vanilla", "kl_penalty=token", "kl_penalty.coef=0.05", "kl_penalty.estimator=k1",
        "policy_clip=ppo", "policy_clip.eps=0.2", "value_clip=on", "value_clip.eps=0.2", "adv_norm=whiten",
        "critic_init=reward_model", "critic_pretrain=off", "ptx_loss=off", "grad_clip=off", "entropy_bonus=off",
        "reward_norm=off", "reward_scaling=off", "reward_clip=off", "adv_clip=off",
        "ppo.batch_size=64", "ppo.max_new_tokens=32", "ppo.epochs=2", "ppo.minibatches=2",
        "ppo.gamma=1.0", "ppo.lam=0.95", "ppo.policy_lr=2e-4", "ppo.critic_lr=2e-4", "ppo.weight_decay=0.0"]


# ---------------------------------------------------------------- memory: the kernel's RSS high-water mark
def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def rss_mib(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


@dataclass
class Sample:
    seconds: float
    rollout: float
    train: float
    peak_mib: float
    peak_delta_mib: float


def measured(run_one) -> Sample:
    """Run one iteration (`run_one() -> (seconds, rollout_seconds)`) and read the RSS high-water mark."""
    reset_peak_rss()
    before = rss_mib()
    seconds, rollout = run_one()
    peak = rss_mib("VmHWM")
    return Sample(seconds, rollout, seconds - rollout, peak, peak - before)


# ---------------------------------------------------------------- the two sides
def compose_config(overrides: list[str]) -> Config:
    register_schema()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return to_config(compose(config_name="config", overrides=overrides))


class Ours:
    def __init__(self, cfg: Config):
        torch.manual_seed(cfg.seed)
        self.trainer = build_trainer(cfg)

    def step(self) -> tuple[float, float]:
        started = time.perf_counter()
        metrics, _ = self.trainer.step()
        return time.perf_counter() - started, metrics["perf/rollout_seconds"]


class TRL:
    """TRL's PPOTrainer.train() in a worker thread, released one iteration at a time."""

    def __init__(self, cfg: Config, sft_dir: Path, rm_dir: Path, prompts: list[str], iterations: int, out: Path):
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback
        from transformers.trainer_callback import PrinterCallback, ProgressCallback
        from trl.experimental.ppo import PPOConfig, PPOTrainer

        from rlhf_lab.models import load_tokenizer

        tokenizer = load_tokenizer(sft_dir)
        ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        args = PPOConfig(
            output_dir=str(out), seed=cfg.seed, report_to=[], save_strategy="no", logging_steps=1,
            disable_tqdm=True, bf16=False, fp16=False, use_cpu=True,
            per_device_train_batch_size=cfg.ppo.batch_size, gradient_accumulation_steps=1,
            local_rollout_forward_batch_size=cfg.ppo.batch_size, num_mini_batches=cfg.ppo.minibatches,
            num_ppo_epochs=cfg.ppo.epochs, total_episodes=cfg.ppo.batch_size * iterations,
            response_length=cfg.ppo.max_new_tokens, temperature=cfg.ppo.temperature,
            kl_coef=cfg.kl_penalty.coef, kl_estimator=cfg.kl_penalty.estimator.value,
            cliprange=cfg.policy_clip.eps, cliprange_value=cfg.value_clip.eps, gamma=cfg.ppo.gamma,
            lam=cfg.ppo.lam, whiten_rewards=False, missing_eos_penalty=None, stop_token="eos",
            learning_rate=cfg.ppo.policy_lr, lr_scheduler_type="constant", weight_decay=cfg.ppo.weight_decay,
            num_sample_generations=0)
        policy = AutoModelForCausalLM.from_pretrained(str(sft_dir), dtype=torch.float32)
        value = AutoModelForSequenceClassification.from_pretrained(str(rm_dir), num_labels=1, dtype=torch.float32)
        reward = AutoModelForSequenceClassification.from_pretrained(str(rm_dir), num_labels=1, dtype=torch.float32)
        for model in (policy, value, reward):
            model.config.pad_token_id = tokenizer.pad_token_id
        side = self

        class Park(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                side._finished()

        self.trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=None,
                                  reward_model=reward, value_model=value,
                                  train_dataset=Dataset.from_dict({"input_ids": ids}), callbacks=[Park()])
        for callback in (PrinterCallback, ProgressCallback):
            self.trainer.remove_callback(callback)
        self.trainer.model.register_forward_pre_hook(self._training_forward)
        self._go, self._done = threading.Semaphore(0), threading.Semaphore(0)
        self._started = self._rollout_end = self._seconds = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="trl-train", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._go.acquire()
            self._started = time.perf_counter()
            self.trainer.train()
        except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
            self._error = err
            self._done.release()

    def _training_forward(self, module, args) -> None:
        if self._rollout_end is None:
            self._rollout_end = time.perf_counter()

    def _finished(self) -> None:
        """In the worker: one iteration is complete. Park until the next `step()`."""
        now = time.perf_counter()
        self._seconds = now - self._started, (self._rollout_end or now) - self._started
        self._done.release()
        self._go.acquire()
        self._started, self._rollout_end = time.perf_counter(), None

    def step(self) -> tuple[float, float]:
        self._go.release()
        self._done.acquire()
        if self._error is not None:
            raise RuntimeError("TRL's PPO trainer failed") from self._error
        return self._seconds

    def close(self) -> None:
        self._go.release()  # let train() run to its end (the episode budget is exhausted)
        self._thread.join(timeout=60)


# ---------------------------------------------------------------- report
def table(samples: dict[str, list[Sample]]) -> str:
    header = (f"{'':6s} {'median s/it':>11s} {'min':>7s} {'max':>7s} {'rollout s':>9s} {'train s':>8s} "
              f"{'rollout %':>9s} {'peak RSS MiB':>12s} {'+peak MiB':>9s}")
    lines = [header, "-" * len(header)]
    for name, rows in samples.items():
        seconds = statistics.median(r.seconds for r in rows)
        rollout = statistics.median(r.rollout for r in rows)
        train = statistics.median(r.train for r in rows)
        lines.append(f"{name:6s} {seconds:11.3f} {min(r.seconds for r in rows):7.3f} "
                     f"{max(r.seconds for r in rows):7.3f} {rollout:9.3f} {train:8.3f} {rollout / seconds:9.0%} "
                     f"{statistics.median(r.peak_mib for r in rows):12.0f} "
                     f"{statistics.median(r.peak_delta_mib for r in rows):9.0f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per side first")
    parser.add_argument("--iterations", type=int, default=8, help="timed iterations per side (>= 5)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of both sides")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.iterations < 5:
        parser.error("--iterations must be >= 5")
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = compose_config(OURS + [f"ppo.temperature={args.temperature}", f"seed={args.seed}"])
    from rlhf_lab.data import prompt_stream
    from rlhf_lab.toy import stages

    artefacts = stages.prepare(cfg, cache_dir(cfg.cache_dir))
    total = args.warmup + args.iterations
    prompts = prompt_stream(cfg, artefacts.language).take(cfg.ppo.batch_size * (total + 1))
    ours = Ours(cfg)
    with tempfile.TemporaryDirectory() as out:
        trl = TRL(cfg, artefacts.sft_dir, artefacts.rm_dir, prompts, total, Path(out))
        load = Path("/proc/loadavg").read_text().split()[0]
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load}; batch {cfg.ppo.batch_size} x "
              f"{cfg.ppo.max_new_tokens} tokens, {cfg.ppo.epochs} epochs x {cfg.ppo.minibatches} minibatches, "
              f"temperature {cfg.ppo.temperature}; {args.warmup} warm-up + {args.iterations} timed iterations "
              f"each, alternating (ours, TRL)")
        samples: dict[str, list[Sample]] = {"ours": [], "trl": []}
        for i in range(total):
            for name, side in (("ours", ours), ("trl", trl)):
                sample = measured(side.step)
                if i >= args.warmup:
                    samples[name].append(sample)
        trl.close()
    print(table(samples))
    ratios = [t.seconds / o.seconds for o, t in zip(samples["ours"], samples["trl"])]
    print("paired ratios (TRL / ours): " + " ".join(f"{r:.2f}" for r in ratios))
    print(f"ratio_trl_over_ours={statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
