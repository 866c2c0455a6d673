"""Builders of synthetic traces and handcrafted run/sweep directories for the analysis tests and benchmark.

``synthetic_trace`` draws the key metrics of a run with a known shape: stable (a ppo_max-like run: rewards
saturate, KL bounded) or pattern collapse from step ``collapse_at`` on (gold peaks there and then falls
while proxy keeps rising; KL jumps; perplexity drops; responses get long and repetitive). It logs KL to the
initial policy (``kl/init_*``) beside KL to the reference (``kl/ref_*``), equal as in a run whose reference is its
initial policy; ``old_style`` turns it into a trace from before ``kl/init_*`` was logged.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

# The contract's metric names (docs/architecture.md) that synthetic_trace does not model: filled with random walks.
OTHER_METRICS = (
    "reward/shaped_mean", "ppl/ref", "ppl/init", "length/response_max", "length/eos_missing_frac",
    "diversity/distinct_1", "diversity/distinct_2", "ppo/policy_loss", "ppo/value_loss", "ppo/clipfrac",
    "ppo/approx_kl", "ppo/value_clipfrac", "ppo/explained_var", "ppo/grad_norm_policy",
    "ppo/grad_norm_critic", "ppo/entropy_bonus", "ppo/ptx_loss", "adv/mean", "adv/std", "return/mean",
    "value/mean", "kl_ctl/coef", "perf/iter_seconds", "perf/rollout_seconds", "perf/train_seconds",
    "perf/gen_tokens_per_second",
)
KL_REF = ("kl/ref_k1", "kl/ref_k2", "kl/ref_k3")
KL_INIT = ("kl/init_k1", "kl/init_k2", "kl/init_k3")
# Per-step noise sd of each modelled metric at noise=1.
NOISE_SD = {
    "reward/proxy_mean": 0.05, "reward/gold_mean": 0.05, "kl/ref_k1": 0.3, "kl/ref_k2": 0.3, "kl/ref_k3": 0.3,
    "ppl/policy": 0.1, "length/response_mean": 0.5, "diversity/repeat_ngram_frac": 0.01,
    "entropy/policy_mean": 0.03,
}


def synthetic_trace(n_steps: int = 200, collapse_at: int | None = None, noise: float = 0.0, seed: int = 0,
                    n_other: int = 0) -> pd.DataFrame:
    """A wide trace (index: step 0..n_steps-1, columns: metric names) of a stable or collapsing run.

    ``noise`` scales Gaussian noise (sd NOISE_SD * noise); ``n_other`` adds that many further columns
    (OTHER_METRICS first, then ``extra/metric_<i>``) holding random walks.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(n_steps, dtype="float64")
    rise = 1 - np.exp(-t / 40)
    after = np.zeros(n_steps) if collapse_at is None else np.clip(t - collapse_at, 0, None)
    ramp = 1 - np.exp(-after / 5)
    kl = 3.0 * rise + 20.0 * ramp + 0.05 * after
    columns = {
        "reward/proxy_mean": 2.0 * rise + 0.01 * after,
        "reward/gold_mean": 1.0 * rise - 0.015 * after,
        "kl/ref_k1": kl, "kl/ref_k2": kl, "kl/ref_k3": kl,
        "ppl/policy": 6.0 * (1 - 0.1 * rise - 0.5 * ramp),
        "length/response_mean": 20.0 * (1 + 0.1 * rise + 1.0 * ramp),
        "diversity/repeat_ngram_frac": 0.05 + 0.02 * rise + 0.4 * ramp,
        "entropy/policy_mean": 2.0 * (1 - 0.1 * rise - 0.6 * ramp),
    }
    trace = pd.DataFrame({
        name: values + noise * NOISE_SD[name] * rng.standard_normal(n_steps) for name, values in columns.items()
    }, index=pd.Index(np.arange(n_steps), name="step"))
    trace[list(KL_INIT)] = trace[list(KL_REF)].to_numpy()  # the reference is the initial policy
    names = list(OTHER_METRICS[:n_other]) + [f"extra/metric_{i}" for i in range(n_other - len(OTHER_METRICS))]
    walks = np.cumsum(rng.standard_normal((n_steps, len(names))) * 0.01, axis=0) + 1.0
    return pd.concat([trace, pd.DataFrame(walks, index=trace.index, columns=names)], axis=1)


def old_style(trace: pd.DataFrame) -> pd.DataFrame:
    """``trace`` as a run from before ``kl/init_*`` logged it: KL to the reference only."""
    return trace.drop(columns=[name for name in KL_INIT if name in trace])


def write_metrics(path: Path, trace: pd.DataFrame) -> None:
    """Write a wide trace as metrics.jsonl (fast: one format string for every row; finite values only)."""
    template = ", ".join(['"step": %d'] + [f'"{name}": %.9g' for name in trace.columns])
    np.savetxt(path, np.column_stack([trace.index.to_numpy("float64"), trace.to_numpy("float64")]),
               fmt="{" + template + "}")


def write_run(run_dir: Path, *, run_id: str, arm: str, seed: int, trace: pd.DataFrame | None = None,
              status: str = "completed", tricks: dict | None = None, samples: list[dict] | None = None,
              config: dict | None = None) -> Path:
    """A run directory by the contract: .hydra/{config,overrides}.yaml, run.json, metrics.jsonl, samples.jsonl.

    ``trace`` None writes no metrics.jsonl (a run that has not logged yet); ``samples`` None writes none.
    """
    run_dir = Path(run_dir)
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    tricks = tricks or {"kl_penalty": "token" if arm == "ppo_max" else "off"}
    config = config or {"seed": seed, "iterations": 0 if trace is None else len(trace),
                        "ppo": {"lr": 1e-5, "epochs": 2}, **{group: {"name": o} for group, o in tricks.items()}}
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={seed}", f"preset={arm}"]))
    meta = {"schema_version": 1, "run_id": run_id, "status": status, "arm": arm, "seed": seed, "tricks": tricks,
            "started_at": "2026-11-22T02:00:00", "finished_at": None if status == "running" else
            "2026-11-22T03:00:00", "git_sha": "abc1234", "versions": {"torch": "2.13.0"}, "wandb": None}
    (run_dir / "run.json").write_text(json.dumps(meta))
    if trace is not None:
        write_metrics(run_dir / "metrics.jsonl", trace)
    if samples is not None:
        (run_dir / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return run_dir


def synthetic_samples(trace: pd.DataFrame, collapse_at: int | None, every: int = 20,
                      per_step: int = 4) -> list[dict]:
    """Sample records every ``every`` steps: fluent responses, repetitive ones after ``collapse_at``."""
    samples = []
    for step in trace.index[::every]:
        collapsed = collapse_at is not None and step > collapse_at
        for i in range(per_step):
            response = "great great great " * 8 if collapsed else f"a kind and helpful answer number {i}."
            samples.append({"step": int(step), "prompt": f"<prompt {i}> tell me something & <b>nice</b>",
                            "response": response, "reward_proxy": float(trace.loc[step, "reward/proxy_mean"]),
                            "reward_gold": float(trace.loc[step, "reward/gold_mean"])})
    return samples


def write_sweep(root: Path, arms: dict[str, int | None], seeds=(0, 1, 2), n_steps: int = 200, noise: float = 1.0,
                n_other: int = 0, samples_every: int | None = 20) -> Path:
    """A Hydra-multirun-like sweep: ``root/multirun.yaml`` and ``root/<job>/`` run dirs, one per arm x seed.

    ``arms`` maps an arm name to its collapse step (None: stable).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"mode": "MULTIRUN"}}))
    job = 0
    for arm, collapse_at in arms.items():
        for seed in seeds:
            trace = synthetic_trace(n_steps, collapse_at, noise, seed=1000 * job + seed, n_other=n_other)
            samples = synthetic_samples(trace, collapse_at, samples_every) if samples_every else None
            write_run(root / str(job), run_id=f"{arm}-s{seed}", arm=arm, seed=seed, trace=trace, samples=samples)
            job += 1
    return root
