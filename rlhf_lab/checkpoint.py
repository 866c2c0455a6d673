"""Resumable checkpoints: weights as safetensors, everything else loaded with `weights_only=True`.

checkpoints/step-<N>/ holds policy.safetensors, critic.safetensors and state.pt (optimisers, RNG states,
running statistics, KL coefficient, data-stream states, the CPU and CUDA RNG states, the next step). checkpoints/latest names the newest
complete one; it is switched by an atomic rename after the folder is fully written, then older ones go.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from rlhf_lab.trainer import Diverged, PPOTrainer


def latest(checkpoints: Path) -> Path | None:
    pointer = checkpoints / "latest"
    if not pointer.exists():
        return None
    folder = checkpoints / pointer.read_text().strip()
    return folder if (folder / "state.pt").exists() else None


def save(trainer: PPOTrainer, checkpoints: Path, next_step: int) -> Path:
    """Write a checkpoint to continue at `next_step`. Refuses (Diverged) to save non-finite weights, so the
    latest checkpoint is always a good one."""
    for model in (trainer.policy, trainer.critic):
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise Diverged(f"non-finite weights in the {'policy' if model is trainer.policy else 'critic'}")
    folder = checkpoints / f"step-{next_step:06d}"
    tmp = checkpoints / f".{folder.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(trainer.policy, str(tmp / "policy.safetensors"))
    save_model(trainer.critic, str(tmp / "critic.safetensors"))
    torch.save({
        "next_step": next_step,
        "policy_optimizer": trainer.policy_optimizer.state_dict(),
        "critic_optimizer": trainer.critic_optimizer.state_dict(),
        "tricks": trainer.tricks.state_dict(),
        "prompts": trainer.prompts.state_dict(),
        "sft_examples": trainer.sft_examples.state_dict() if trainer.sft_examples else None,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
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
    load_model(trainer.policy, str(folder / "policy.safetensors"))
    load_model(trainer.critic, str(folder / "critic.safetensors"))
    state = torch.load(folder / "state.pt", weights_only=True)
    trainer.policy_optimizer.load_state_dict(state["policy_optimizer"])
    trainer.critic_optimizer.load_state_dict(state["critic_optimizer"])
    trainer.tricks.load_state_dict(state["tricks"])
    trainer.prompts.load_state_dict(state["prompts"])
    if trainer.sft_examples:
        trainer.sft_examples.load_state_dict(state["sft_examples"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") and torch.cuda.is_available():  # a GPU run continues its own random stream
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["next_step"]
