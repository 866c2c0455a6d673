"""rlhf-lab's PPO iteration against TRL's PPO trainer (trl==1.12.0, the `bench` extra), same work, same process.

    pip install -e ".[bench]"          # trl==1.12.0 (keep the CPU torch: install torch first, see README)
    python benchmarks/vs_trl.py [--warmup 2] [--iterations 8] [--temperature 1.0] [--threads 0]    # CPU, toy task
    python benchmarks/vs_trl.py --device cuda --model 1b|125m [--warmup 2 --iterations 8]          # GPU setting
    python benchmarks/vs_trl.py --device cpu --model tiny --warmup 1 --iterations 5               # smoke check
    ... --no-trl                                                     # ours only (no TRL installed): no ratio line

Two settings: the CPU toy task (the default: `--device cpu`, no `--model` or `--model toy`) and the GPU
setting (`--model 1b|125m`, meant for `--device cuda`). Both run the two trainers alternately in one process
(see "How it is timed" below) and end with the line `ratio_trl_over_ours=<number>`.

CPU toy task (--device cpu, --model toy)
----------------------------------------
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

How it is timed: the two trainers run alternately in one process (ours, TRL, ours, TRL, ...): TRL's `train()`
runs in a worker thread that a callback parks at the end of every iteration, so only one side computes at any
moment, both see the same machine state and the same torch thread pool. After `--warmup` iterations each, every
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

GPU setting (--device cuda --model 1b|125m)
-------------------------------------------
Randomly initialised Llama models, nothing downloaded (benchmarks/gpu_setting.py): `1b` = TinyLlama-1.1B's
shape (hidden 2048, MLP 5632, 22 layers, 32 heads, 4 KV heads, vocabulary 32,000, untied embeddings, 2,048
positions; 1.10B parameters), `125m` = hidden 768, MLP 3072, 12 layers, 12 heads (12 KV heads), vocabulary
32,000, untied (162M parameters). The reward model is a random LlamaForSequenceClassification of the same
shape (one label). Both sides get copies of the same initial weights: policy, reference = policy, value
model = reward model, reward model. `--model tiny` (hidden 64, 2 layers, vocabulary 4,096) with
`--device cpu` is a smoke check of the script only, not a benchmark.

    batch 64 prompts of 64 random tokens (fixed length: no padding), exactly 128 response tokens (the EOS id
    equals the vocabulary size, which no model can sample: no response ends or is truncated early, and the
    script fails if one is shorter), everything else as in the toy setting: 2 PPO epochs x 2 minibatches of
    32, token KL 0.05 (k1), clip 0.2, value clip 0.2, whitened advantages, gamma 1, lambda 0.95, AdamW lr 2e-4
    (both models), no EOS penalty.

Precision on cuda: bf16 autocast over fp32 master weights for the trainable policy and value model on both
sides; the frozen reference and reward model hold bf16 weights on both sides (ours: `precision=bf16`, whose
frozen dtype is bf16; TRL: passed an explicit bf16 `ref_model` and `reward_model`). TRL gets `bf16=True,
use_cpu=False`; TRL 1.12's PPOTrainer builds its own Accelerator, which ignores `args.bf16`, so the script
sets ACCELERATE_MIXED_PRECISION=bf16 first (what `accelerate launch --mixed_precision bf16` does). On the CPU
everything is fp32. Ours decodes with its default KV cache (`rollout.cache=auto`: static and compiled by
transformers on cuda; `--rollout-cache` overrides it), TRL with transformers' default (dynamic) cache and
`local_rollout_forward_batch_size=64`.

What is measured, per side (medians over the timed iterations; CUDA clocks are read after
torch.cuda.synchronize(), in TRL's worker-thread hooks too): seconds per iteration (min, max), rollout and
train seconds (train = the iteration minus its rollout, as above), generation seconds (`generate` alone) and rollout tokens/s = 64 * 128 / generation seconds,
training MFU = 6 * N * 2 epochs * 64 * (64 + 128) tokens / train seconds / the GPU's peak dense bf16 FLOP/s,
where N = the parameters of policy + value model that take part in matmuls (all but the input embeddings:
2.00B for 1b, 251M for 125m); the same nominal FLOPs for both sides, attention's own FLOPs left out, so the
two MFUs compare like the two train times. The peak comes from a small table by torch.cuda.get_device_name()
(H100 SXM and H200 989e12, H100 PCIe 756e12, A100 312e12; otherwise "n/a"). Memory on cuda: the peak of
torch.cuda.max_memory_allocated during the iteration (reset before each; "+peak": minus the allocation when
the iteration began). Both sides live in one process, so it is the process's peak during that side's iteration,
which includes the other side's resident weights and optimiser states; on the CPU the RSS columns as above.

Known differences in the GPU setting (in addition to those above; with fixed-length prompts and responses there
is no padding, so packing saves ours no tokens here, only the LM head and logits at the 64 prompt positions):
- TRL's rollout calls the unwrapped policy's `generate` and the value model's backbone directly, outside the
  autocast accelerate puts around the wrapped policy+value forward: with fp32 master weights its generation and
  its rollout value pass compute in fp32 (torch's default fp32 matmul precision, no TF32). Ours generates and
  scores under bf16 autocast. This is TRL's design, not a setting of this script.
- TRL keeps (B, R, V) fp32 scores of every generation step (output_scores) and computes log-probs from them;
  ours records per-step log-probs and entropies while sampling.
- TRL frees its gradients after every optimiser step (zero_grad to None), ours keeps each model's last
  gradients until its next step; AdamW states stay resident on both sides. For 1b the two sides together hold
  ~70 GB of weights, gradients and AdamW states before activations: an 80 GB GPU may not fit both (then use
  --no-trl, or a larger GPU).

Status: the GPU mode has not yet been run on a GPU by us (we have none); only `--model tiny` on the CPU has
been run, as a smoke check. The issue's reference numbers, TRL alone on one H100: 5.38 s/iteration for 1b and
2.51 s/iteration for the 162M model.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from rlhf_lab.config.checks import to_config
from rlhf_lab.config.schema import Config, register_schema
from rlhf_lab.config.paths import cache_dir, conf_dir
from rlhf_lab.run.build import build_trainer

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


def ppo_args(cfg: Config, out: Path, iterations: int, cuda: bool = False):
    """TRL's PPOConfig for our `cfg` (CPU: fp32; cuda: bf16 autocast, see the module docstring)."""
    from trl.experimental.ppo import PPOConfig

    return PPOConfig(
        output_dir=str(out), seed=cfg.seed, report_to=[], save_strategy="no", logging_steps=1,
        disable_tqdm=True, bf16=cuda, fp16=False, use_cpu=not cuda,
        per_device_train_batch_size=cfg.ppo.batch_size, gradient_accumulation_steps=1,
        local_rollout_forward_batch_size=cfg.ppo.batch_size, num_mini_batches=cfg.ppo.minibatches,
        num_ppo_epochs=cfg.ppo.epochs, total_episodes=cfg.ppo.batch_size * iterations,
        response_length=cfg.ppo.max_new_tokens, temperature=cfg.ppo.temperature,
        kl_coef=cfg.kl_penalty.coef, kl_estimator=cfg.kl_penalty.estimator.value,
        cliprange=cfg.policy_clip.eps, cliprange_value=cfg.value_clip.eps, gamma=cfg.ppo.gamma,
        lam=cfg.ppo.lam, whiten_rewards=False, missing_eos_penalty=None, stop_token="eos",
        learning_rate=cfg.ppo.policy_lr, lr_scheduler_type="constant", weight_decay=cfg.ppo.weight_decay,
        num_sample_generations=0)


class TRL:
    """TRL's PPOTrainer.train() in a worker thread, released one iteration at a time."""

    clock = staticmethod(time.perf_counter)  # the GPU setting's instances read it after a CUDA synchronize
    generate_seconds = 0.0  # GPU setting: seconds in the policy's `generate` during the last iteration

    def __init__(self, cfg: Config, sft_dir: Path, rm_dir: Path, prompts: list[str], iterations: int, out: Path):
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        from rlhf_lab.engine.models import load_tokenizer

        tokenizer = load_tokenizer(sft_dir)
        ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        args = ppo_args(cfg, out, iterations)
        policy = AutoModelForCausalLM.from_pretrained(str(sft_dir), dtype=torch.float32)
        value = AutoModelForSequenceClassification.from_pretrained(str(rm_dir), num_labels=1, dtype=torch.float32)
        reward = AutoModelForSequenceClassification.from_pretrained(str(rm_dir), num_labels=1, dtype=torch.float32)
        for model in (policy, value, reward):
            model.config.pad_token_id = tokenizer.pad_token_id
        self._launch(args, tokenizer, ids, policy=policy, ref=None, reward=reward, value=value)

    @classmethod
    def from_models(cls, cfg: Config, tokenizer, prompts: list[str], iterations: int, out: Path, *, policy, ref,
                    reward, value, cuda: bool, vocab: int) -> "TRL":
        """The GPU setting: models built by the caller; `generate` is timed and its responses checked."""
        side = cls.__new__(cls)
        if cuda:
            side.clock = synced_clock
        ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        side._launch(ppo_args(cfg, out, iterations, cuda), tokenizer, ids, policy=policy, ref=ref, reward=reward,
                     value=value, timed_generate=(len(ids[0]), cfg.ppo.max_new_tokens, vocab))
        return side

    def _launch(self, args, tokenizer, ids: list[list[int]], *, policy, ref, reward, value,
                timed_generate: tuple[int, int, int] | None = None) -> None:
        from datasets import Dataset
        from transformers import TrainerCallback
        from transformers.trainer_callback import PrinterCallback, ProgressCallback
        from trl.experimental.ppo import PPOTrainer

        side = self

        class Park(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                side._finished()

        self.trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=ref,
                                  reward_model=reward, value_model=value,
                                  train_dataset=Dataset.from_dict({"input_ids": ids}), callbacks=[Park()])
        for callback in (PrinterCallback, ProgressCallback):
            self.trainer.remove_callback(callback)
        self.trainer.model.register_forward_pre_hook(self._training_forward)
        if timed_generate is not None:
            self._time_generate(policy, *timed_generate)
        self._go, self._done = threading.Semaphore(0), threading.Semaphore(0)
        self._started = self._rollout_end = self._seconds = None
        self._generating = 0.0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="trl-train", daemon=True)
        self._thread.start()

    def _time_generate(self, policy, prompt_tokens: int, response_tokens: int, vocab: int) -> None:
        """Wrap the policy's `generate` (TRL calls it on the unwrapped policy): add its seconds to this iteration's
        generation time, and fail unless every response has exactly `response_tokens` tokens of the vocabulary."""
        generate = policy.generate

        def timed(*args, **kwargs):
            started = self.clock()
            output = generate(*args, **kwargs)
            self._generating += self.clock() - started
            sequences = output.sequences if hasattr(output, "sequences") else output
            check_responses("TRL", sequences[:, prompt_tokens:], response_tokens, vocab)
            return output

        policy.generate = timed

    def _run(self) -> None:
        try:
            self._go.acquire()
            self._started = self.clock()
            self.trainer.train()
        except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
            self._error = err
            self._done.release()

    def _training_forward(self, module, args) -> None:
        if self._rollout_end is None:
            self._rollout_end = self.clock()

    def _finished(self) -> None:
        """In the worker: one iteration is complete. Park until the next `step()`."""
        now = self.clock()
        self._seconds = now - self._started, (self._rollout_end or now) - self._started
        self.generate_seconds, self._generating = self._generating, 0.0
        self._done.release()
        self._go.acquire()
        self._started, self._rollout_end = self.clock(), None

    def step(self) -> tuple[float, float]:
        self._go.release()
        self._done.acquire()
        if self._error is not None:
            raise RuntimeError("TRL's PPO trainer failed") from self._error
        return self._seconds

    def close(self) -> None:
        self._go.release()  # let train() run to its end (the episode budget is exhausted)
        self._thread.join(timeout=60)


# ---------------------------------------------------------------- the GPU setting's side of ours
def synced_clock() -> float:
    """Seconds, after the GPU's queued work is done (a bare clock would time kernel launches)."""
    torch.cuda.synchronize()
    return time.perf_counter()


def check_responses(side: str, tokens: torch.Tensor, response_tokens: int, vocab: int) -> None:
    """Fail loudly unless every response (B, R) has exactly `response_tokens` tokens, none of them EOS or pad
    (ids >= vocab): the GPU setting's work depends on full-length responses."""
    if tokens.shape[1] != response_tokens or bool((tokens >= vocab).any()):
        raise RuntimeError(f"{side}: a response is shorter than {response_tokens} tokens (got {tokens.shape[1]} "
                           f"columns; {int((tokens >= vocab).sum())} EOS/pad ids): the setting expects exactly "
                           f"{response_tokens} sampled tokens per response")


class OursOnModels(Ours):
    """Ours in the GPU setting: `assemble` on copies of the given models (policy and value model fp32, the
    frozen reference and reward model in the runtime's frozen dtype: bf16 on cuda)."""

    def __init__(self, cfg: Config, policy, reward_model, tokenizer, prompts, vocab: int):
        from gpu_setting import copy_as

        from rlhf_lab.run.build import assemble
        from rlhf_lab.engine.models import quiet_transformers
        from rlhf_lab.engine.runtime import Runtime

        torch.manual_seed(cfg.seed)
        runtime = Runtime.create(cfg.device, cfg.precision)
        quiet_transformers()
        self.vocab, self.generate_seconds = vocab, 0.0
        self.clock = synced_clock if runtime.device.type == "cuda" else time.perf_counter
        self.trainer = assemble(cfg, runtime, policy=copy_as(policy, torch.float32),
                                reference=copy_as(policy, runtime.compute_dtype),
                                critic=copy_as(reward_model, torch.float32),
                                reward_model=copy_as(reward_model, runtime.compute_dtype),
                                tokenizer=tokenizer, prompts=prompts)

    def step(self) -> tuple[float, float]:
        started = self.clock()
        metrics, batch = self.trainer.step()
        seconds = self.clock() - started
        response_tokens = self.trainer.cfg.ppo.max_new_tokens
        check_responses("ours", batch.tokens, response_tokens, self.vocab)
        if metrics["length/response_mean"] != response_tokens:
            raise RuntimeError(f"ours: mean response length {metrics['length/response_mean']} != {response_tokens}")
        self.generate_seconds = batch.seconds_generate
        return seconds, metrics["perf/rollout_seconds"]


@dataclass
class GPUSample(Sample):
    generate: float = 0.0  # seconds in `generate`


def measured_gpu_setting(side, cuda: bool) -> GPUSample:
    """One iteration of `side`, with its generation seconds and its peak memory: on cuda the allocator's peak
    (torch.cuda.max_memory_allocated, reset first), on the CPU the RSS high-water mark."""
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        reset_peak_rss()
        before = rss_mib()
    seconds, rollout = side.step()
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else rss_mib("VmHWM")
    return GPUSample(seconds, rollout, seconds - rollout, peak, peak - before, side.generate_seconds)


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


def gpu_setting_table(samples: dict[str, list[GPUSample]], *, tokens_generated: int, train_flops: float,
                      peak_flops: float | None, cuda: bool) -> str:
    """The GPU setting's table: time split, generation throughput, training MFU, peak memory."""
    memory = "GPU" if cuda else "RSS"
    header = (f"{'':6s} {'median s/it':>11s} {'min':>7s} {'max':>7s} {'rollout s':>9s} {'train s':>8s} "
              f"{'gen s':>7s} {'rollout tok/s':>13s} {'train MFU':>9s} {f'peak {memory} MiB':>12s} "
              f"{'+peak MiB':>9s}")
    lines = [header, "-" * len(header)]
    for name, rows in samples.items():
        seconds = statistics.median(r.seconds for r in rows)
        train = statistics.median(r.train for r in rows)
        generate = statistics.median(r.generate for r in rows)
        mfu = f"{train_flops / train / peak_flops:9.1%}" if peak_flops and train > 0 else f"{'n/a':>9s}"
        lines.append(f"{name:6s} {seconds:11.3f} {min(r.seconds for r in rows):7.3f} "
                     f"{max(r.seconds for r in rows):7.3f} {statistics.median(r.rollout for r in rows):9.3f} "
                     f"{train:8.3f} {generate:7.3f} {tokens_generated / generate:13.0f} {mfu} "
                     f"{statistics.median(r.peak_mib for r in rows):12.0f} "
                     f"{statistics.median(r.peak_delta_mib for r in rows):9.0f}")
    return "\n".join(lines)


def print_ratio(samples: dict[str, list[Sample]]) -> None:
    ratios = [t.seconds / o.seconds for o, t in zip(samples["ours"], samples["trl"])]
    print("paired ratios (TRL / ours): " + " ".join(f"{r:.2f}" for r in ratios))
    print(f"ratio_trl_over_ours={statistics.median(ratios):.3f}")


# ---------------------------------------------------------------- the two settings
def run_toy(args: argparse.Namespace) -> None:
    cfg = compose_config(OURS + [f"ppo.temperature={args.temperature}", f"seed={args.seed}"])
    from rlhf_lab.run.build import prompt_stream
    from rlhf_lab.toy import stages

    artefacts = stages.prepare(cfg, cache_dir(cfg.cache_dir))
    total = args.warmup + args.iterations
    prompts = prompt_stream(cfg, artefacts.language).take(cfg.ppo.batch_size * (total + 1))
    ours = Ours(cfg)
    with tempfile.TemporaryDirectory() as out:
        trl = None if args.no_trl else TRL(cfg, artefacts.sft_dir, artefacts.rm_dir, prompts, total, Path(out))
        load = Path("/proc/loadavg").read_text().split()[0]
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load}; batch {cfg.ppo.batch_size} x "
              f"{cfg.ppo.max_new_tokens} tokens, {cfg.ppo.epochs} epochs x {cfg.ppo.minibatches} minibatches, "
              f"temperature {cfg.ppo.temperature}; {args.warmup} warm-up + {args.iterations} timed iterations "
              + ("each, alternating (ours, TRL)" if trl is not None else "of ours only (--no-trl)"))
        sides = [("ours", ours)] + ([("trl", trl)] if trl is not None else [])
        samples: dict[str, list[Sample]] = {name: [] for name, _ in sides}
        for i in range(total):
            for name, side in sides:
                sample = measured(side.step)
                if i >= args.warmup:
                    samples[name].append(sample)
        if trl is not None:
            trl.close()
    print(table(samples))
    if trl is not None:
        print_ratio(samples)


def run_gpu_setting(args: argparse.Namespace) -> None:
    from gpu_setting import (PROMPT_TOKENS, RESPONSE_TOKENS, build_models, copy_as, matmul_params, peak_bf16_flops,
                             prompt_drawer, vocab_size, word_tokenizer)

    from rlhf_lab.engine.data import Stream

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    if cuda:  # TRL's own Accelerator reads the mixed precision from here, not from PPOConfig.bf16
        os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16"
    cfg = compose_config([o for o in OURS if not o.startswith("ppo.max_new_tokens=")] + [
        f"ppo.max_new_tokens={RESPONSE_TOKENS}", f"device={args.device}", f"precision={'bf16' if cuda else 'fp32'}",
        f"rollout.cache={args.rollout_cache}", f"ppo.temperature={args.temperature}", f"seed={args.seed}"])
    vocab = vocab_size(args.model)
    tokenizer = word_tokenizer(vocab)
    policy, reward = build_models(args.model, torch.device(args.device), cfg.seed)
    params = {"policy": sum(p.numel() for p in policy.parameters()),
              "reward/value": sum(p.numel() for p in reward.parameters())}
    train_flops = 6 * (matmul_params(policy) + matmul_params(reward)) * (
        cfg.ppo.epochs * cfg.ppo.batch_size * (PROMPT_TOKENS + RESPONSE_TOKENS))
    total = args.warmup + args.iterations
    draw = prompt_drawer(vocab)
    prompts = Stream(draw, cfg.seed).take(cfg.ppo.batch_size * (total + 1))  # TRL's dataset: the same stream
    ours = OursOnModels(cfg, policy, reward, tokenizer, Stream(draw, cfg.seed), vocab)
    frozen = torch.bfloat16 if cuda else torch.float32
    with tempfile.TemporaryDirectory() as out:
        trl = None
        if not args.no_trl:
            trl = TRL.from_models(cfg, tokenizer, prompts, total, Path(out), policy=copy_as(policy, torch.float32),
                                  ref=copy_as(policy, frozen), reward=copy_as(reward, frozen),
                                  value=copy_as(reward, torch.float32), cuda=cuda, vocab=vocab)
            if cuda and trl.trainer.accelerator.mixed_precision != "bf16":
                raise RuntimeError("TRL's accelerator runs mixed_precision="
                                   f"{trl.trainer.accelerator.mixed_precision!r}, not bf16")
        if cuda and ours.trainer.runtime.accelerator.mixed_precision != "bf16":
            raise RuntimeError("our accelerator lost its bf16 mixed precision")
        del policy, reward  # the originals: every side holds its own copies
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            where = torch.cuda.get_device_name()
            peak = peak_bf16_flops(where)
            where += (f" (peak bf16 {peak / 1e12:.0f} TFLOP/s)" if peak
                      else " (peak bf16 FLOP/s not in the table: MFU n/a)")
        else:
            where, peak = f"cpu, {torch.get_num_threads()} threads, load average " + \
                Path("/proc/loadavg").read_text().split()[0], None
        import transformers
        versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
        if trl is not None:
            import trl as trl_package
            versions += f", trl {trl_package.__version__}"
        print(f"{where}; {versions}")
        print(f"model {args.model}: random Llama, {params['policy'] / 1e6:.1f}M (policy, reference) + "
              f"{params['reward/value'] / 1e6:.1f}M (value, reward model) parameters, vocabulary {vocab}; "
              f"{'bf16 autocast, fp32 master weights, frozen models bf16' if cuda else 'fp32'}; our KV cache "
              f"{args.rollout_cache}; batch {cfg.ppo.batch_size} x ({PROMPT_TOKENS} prompt + {RESPONSE_TOKENS} "
              f"response) tokens, {cfg.ppo.epochs} epochs x {cfg.ppo.minibatches} minibatches, temperature "
              f"{cfg.ppo.temperature}; {args.warmup} warm-up + {args.iterations} timed iterations "
              + ("each, alternating (ours, TRL)" if trl is not None else "of ours only (--no-trl)"), flush=True)
        sides = [("ours", ours)] + ([("trl", trl)] if trl is not None else [])
        samples: dict[str, list[GPUSample]] = {name: [] for name, _ in sides}
        for i in range(total):
            for name, side in sides:
                sample = measured_gpu_setting(side, cuda)
                if i >= args.warmup:
                    samples[name].append(sample)
        if trl is not None:
            trl.close()
    print(gpu_setting_table(samples, tokens_generated=cfg.ppo.batch_size * RESPONSE_TOKENS, train_flops=train_flops,
                            peak_flops=peak, cuda=cuda))
    print(f"every response {RESPONSE_TOKENS} tokens (checked); training FLOPs/iteration {train_flops:.3g} "
          f"(6 x matmul parameters of policy + value model x tokens trained); "
          + ("memory: the process's peak during that side's iteration (both sides resident)" if cuda
             else "memory: the process's RSS"))
    if trl is not None:
        print_ratio(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per side first")
    parser.add_argument("--iterations", type=int, default=8, help="timed iterations per side (>= 5)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of both sides")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cpu (default) or cuda; cuda needs --model 1b|125m")
    parser.add_argument("--model", choices=["toy", "1b", "125m", "tiny"], default=None,
                        help="toy (default): the CPU toy task; 1b | 125m: the GPU setting's random Llama models "
                             "(meant for --device cuda); tiny: the GPU setting with a 0.6M-parameter Llama, only a "
                             "smoke check of this script with --device cpu, not a benchmark")
    parser.add_argument("--rollout-cache", choices=["auto", "dynamic", "static"], default="auto",
                        help="GPU setting: our generation's KV cache (rollout.cache; auto: static on cuda)")
    parser.add_argument("--no-trl", action="store_true",
                        help="run ours only (e.g. trl is not installed): our figures, no ratio line")
    args = parser.parse_args()
    if args.iterations < 5:
        parser.error("--iterations must be >= 5")
    toy = args.model in (None, "toy")
    if toy and args.device != "cpu":
        parser.error("the toy task runs on the CPU only; --device cuda needs --model 1b|125m")
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    if toy:
        run_toy(args)
    else:
        run_gpu_setting(args)


if __name__ == "__main__":
    main()
