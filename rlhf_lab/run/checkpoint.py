"""Resumable checkpoints: trained weights as safetensors, everything else loaded with `weights_only=True`.

checkpoints/step-<N>/ holds policy.safetensors and critic.safetensors (no critic for a critic-free
adv_estimator; the trainable parameters only: every weight in full fine-tuning, the adapters (and the critic's
head) with LoRA; frozen weights come from where the run loaded them), and state.pt (optimisers, running statistics, KL coefficient, data-stream states, the CPU
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


def trained_roles(trainer: PPOTrainer) -> list[str]:
    """The roles a checkpoint holds: the policy, and the critic unless the estimator has none."""
    return ["policy", "critic"] if trainer.critic is not None else ["policy"]


def save(trainer: PPOTrainer, checkpoints: Path | None, next_step: int) -> Path | None:
    """Write a checkpoint to continue at `next_step`. Refuses (Diverged) to save non-finite weights, so the
    latest checkpoint is always a good one. Called on every rank: whole tensors are gathered (under FSDP each
    rank holds shards; see Runtime.trainable_state), the main rank writes (`checkpoints` is None on the
    others; every rank holds the same statistics and run random stream) and the others wait for it. The
    files are the same at any world size and under any `distributed` strategy but for the optimiser states,
    which FSDP keys by parameter name."""
    runtime, state = trainer.runtime, {}
    for role in trained_roles(trainer):
        model = runtime.unwrap(getattr(trainer, role))
        if not runtime.all_finite(model):
            raise Diverged(f"non-finite weights in the {role}")
        state[role] = runtime.trainable_state(model)
        state[f"{role}_optimizer"] = runtime.optimizer_state(model, getattr(trainer, f"{role}_optimizer"))
    folder = _write(trainer, state, checkpoints, next_step) if runtime.is_main else None
    runtime.barrier()
    return folder


def folder_name(next_step: int) -> str:
    """The folder of the checkpoint that continues at `next_step`."""
    return f"step-{next_step:06d}"


def _write(trainer: PPOTrainer, state: dict, checkpoints: Path, next_step: int) -> Path:
    folder = checkpoints / folder_name(next_step)
    tmp = checkpoints / f".{folder.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for role in trained_roles(trainer):
        save_file(state[role], str(tmp / f"{role}.safetensors"))
    torch.save({
        "next_step": next_step,
        **{f"{role}_optimizer": state[f"{role}_optimizer"] for role in trained_roles(trainer)},
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


def load_trainable(runtime, module: nn.Module, path: Path) -> None:
    """Copy saved trainable parameters in place. Raises ValueError when the names differ (the checkpoint was
    written by a run with other trainable parameters, for example with LoRA switched the other way)."""
    saved = load_file(str(path))
    names = {name for name, p in module.named_parameters() if p.requires_grad}
    if saved.keys() != names:
        missing, extra = sorted(names - saved.keys()), sorted(saved.keys() - names)
        raise ValueError(f"{path} does not match the model's trainable parameters: missing {missing[:3]}, "
                         f"unexpected {extra[:3]}")
    runtime.load_trainable_state(module, saved)


def load(trainer: PPOTrainer, folder: Path) -> int:
    """Restore a trainer from a checkpoint folder, on every rank: each reads the files (state.pt memory-mapped,
    so the ranks of one machine share its pages) and keeps its shards. Returns the step to continue from."""
    runtime = trainer.runtime
    state = torch.load(folder / "state.pt", weights_only=True, mmap=True)
    for role in trained_roles(trainer):
        model = runtime.unwrap(getattr(trainer, role))
        load_trainable(runtime, model, folder / f"{role}.safetensors")
        runtime.load_optimizer_state(model, getattr(trainer, f"{role}_optimizer"), state[f"{role}_optimizer"])
    trainer.tricks.load_state_dict(state["tricks"])
    trainer.prompts.load_state_dict(state["prompts"])
    if trainer.sft_examples:
        trainer.sft_examples.load_state_dict(state["sft_examples"])
    trainer.runtime.set_rng_state(state["rng"])
    return state["next_step"]
