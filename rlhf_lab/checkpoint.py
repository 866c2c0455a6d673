"""Resumable checkpoints: trained weights as safetensors, everything else loaded with `weights_only=True`.

checkpoints/step-<N>/ holds policy.safetensors and critic.safetensors (the trainable parameters only: every
weight in full fine-tuning, the adapters (and the critic's head) with LoRA; frozen weights come from where the
run loaded them), and state.pt (optimisers, running statistics, KL coefficient, data-stream states, the CPU
and CUDA RNG states, the next step). checkpoints/latest names the newest complete one; it is switched by an
atomic rename after the folder is fully written, then older ones go.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from rlhf_lab.trainer import Diverged, PPOTrainer


def latest(checkpoints: Path) -> Path | None:
    pointer = checkpoints / "latest"
    if not pointer.exists():
        return None
    folder = checkpoints / pointer.read_text().strip()
    return folder if (folder / "state.pt").exists() else None


def trainable(module: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters that train, by name (a tied weight once)."""
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def save_trainable(module: nn.Module, path: Path) -> None:
    save_file({name: p.detach().cpu().contiguous() for name, p in trainable(module).items()}, str(path))


def load_trainable(module: nn.Module, path: Path) -> None:
    """Copy saved trainable parameters in place. Raises ValueError when the names differ (the checkpoint was
    written by a run with other trainable parameters, for example with LoRA switched the other way)."""
    saved, params = load_file(str(path)), trainable(module)
    if saved.keys() != params.keys():
        missing, extra = sorted(params.keys() - saved.keys()), sorted(saved.keys() - params.keys())
        raise ValueError(f"{path} does not match the model's trainable parameters: missing {missing[:3]}, "
                         f"unexpected {extra[:3]}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name])


def save(trainer: PPOTrainer, checkpoints: Path | None, next_step: int) -> Path | None:
    """Write a checkpoint to continue at `next_step`. Refuses (Diverged) to save non-finite weights, so the
    latest checkpoint is always a good one. Called on every rank: the main one writes (every rank holds the
    same weights, optimiser states, statistics and run random stream; `checkpoints` is None on the others),
    and the others wait for it."""
    policy, critic = trainer.runtime.unwrap(trainer.policy), trainer.runtime.unwrap(trainer.critic)
    for model in (policy, critic):
        if not all(torch.isfinite(p).all() for p in trainable(model).values()):
            raise Diverged(f"non-finite weights in the {'policy' if model is policy else 'critic'}")
    folder = _write(trainer, policy, critic, checkpoints, next_step) if trainer.runtime.is_main else None
    trainer.runtime.barrier()
    return folder


def _write(trainer: PPOTrainer, policy: nn.Module, critic: nn.Module, checkpoints: Path, next_step: int) -> Path:
    folder = checkpoints / f"step-{next_step:06d}"
    tmp = checkpoints / f".{folder.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_trainable(policy, tmp / "policy.safetensors")
    save_trainable(critic, tmp / "critic.safetensors")
    torch.save({
        "next_step": next_step,
        "policy_optimizer": trainer.policy_optimizer.state_dict(),
        "critic_optimizer": trainer.critic_optimizer.state_dict(),
        "tricks": trainer.tricks.state_dict(),
        "prompts": trainer.prompts.state_dict(),
        "sft_examples": trainer.sft_examples.state_dict() if trainer.sft_examples else None,
        "rng": trainer.runtime.rng_state(),
    }, tmp / "state.pt")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    pointer_tmp = checkpoints / ".latest.tmp"
    pointer_tmp.write_text(folder.name)
    os.replace(pointer_tmp, checkpoints / "latest")
    for old in checkpoints.glob("step-*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def load(trainer: PPOTrainer, folder: Path) -> int:
    """Restore a trainer from a checkpoint folder. Returns the step to continue from."""
    load_trainable(trainer.runtime.unwrap(trainer.policy), folder / "policy.safetensors")
    load_trainable(trainer.runtime.unwrap(trainer.critic), folder / "critic.safetensors")
    state = torch.load(folder / "state.pt", weights_only=True)
    trainer.policy_optimizer.load_state_dict(state["policy_optimizer"])
    trainer.critic_optimizer.load_state_dict(state["critic_optimizer"])
    trainer.tricks.load_state_dict(state["tricks"])
    trainer.prompts.load_state_dict(state["prompts"])
    if trainer.sft_examples:
        trainer.sft_examples.load_state_dict(state["sft_examples"])
    trainer.runtime.set_rng_state(state["rng"])
    return state["next_step"]
