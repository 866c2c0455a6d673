"""Loading models with the Auto classes, and what is done to a model before it takes a role: the critic's
head, LoRA adapters (peft), gradient checkpointing. The passes PPO makes through them live in rlhf_lab.engine.roles.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                          PreTrainedModel)
from transformers.modeling_layers import GradientCheckpointingLayer

from rlhf_lab.config.schema import CriticInit, LoraConfig

log = logging.getLogger(__name__)


def quiet_transformers() -> None:
    """Silence the load report's expected 'MISSING score head' lines and generation chatter."""
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


# ---------------------------------------------------------------- loading
def load_tokenizer(path: str | Path):
    tokenizer = AutoTokenizer.from_pretrained(str(path), padding_side="left")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(path: str | Path, dtype: torch.dtype) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)


def load_reward_model(path: str | Path, dtype: torch.dtype) -> PreTrainedModel:
    return AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1, dtype=dtype)


def make_critic(init: CriticInit, sft_path: str | Path, rm_path: str | Path, pad_token_id: int,
                dtype: torch.dtype) -> PreTrainedModel:
    """[critic_init] A sequence-classification model whose `score` head is applied at every token.

    sft: backbone from the SFT policy, head new; reward_model: the reward model, head included;
    random: the SFT architecture with fresh weights.
    """
    if init == CriticInit.reward_model:
        critic = load_reward_model(rm_path, dtype)
    elif init == CriticInit.sft:
        critic = AutoModelForSequenceClassification.from_pretrained(str(sft_path), num_labels=1, dtype=dtype)
    else:
        config = AutoConfig.from_pretrained(str(sft_path), num_labels=1)
        critic = AutoModelForSequenceClassification.from_config(config, dtype=dtype)
    critic.config.pad_token_id = pad_token_id
    if not hasattr(critic, "score"):
        raise ValueError(f"critic {type(critic).__name__} has no `score` head; use a model family that does")
    return critic


def weight_soup(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """The weighted average of models' state dicts, entry by entry (SALSA's reference "soup"). The models must
    share an architecture: the same keys, shapes and dtypes; the weights must sum to 1."""
    if len(states) != len(weights) or abs(sum(weights) - 1) > 1e-6:
        raise ValueError(f"weight_soup: {len(states)} models need as many weights summing to 1 (got {weights})")
    first = states[0]
    for state in states[1:]:
        if state.keys() != first.keys() or any(state[k].shape != first[k].shape for k in first):
            raise ValueError("weight_soup: the models' state dicts differ in keys or shapes (not one architecture)")
    return {key: sum(w * state[key].double() for w, state in zip(weights, states)).to(first[key].dtype)
            if first[key].is_floating_point() else first[key] for key in first}


# ---------------------------------------------------------------- memory
def with_lora(model: PreTrainedModel, lora: LoraConfig, task: str) -> nn.Module:
    """[lora] peft adapters on `model` (task "CAUSAL_LM" or "SEQ_CLS": for the latter the score head trains in
    full). Only the adapters (and that head) require gradients; the base weights are frozen in place."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = "all-linear" if list(lora.target_modules) == ["all-linear"] else list(lora.target_modules)
    return get_peft_model(model, PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=0.0,
                                                target_modules=targets, task_type=task))


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each decoder layer in backward instead of keeping its activations.

    transformers checkpoints a layer only when that layer is in training mode, but rlhf-lab keeps every model
    in eval mode (dropout would make the PPO ratio differ from 1 on unchanged weights). So only the layers'
    own `training` flags are set, not their children's: dropout inside stays off. Call after `eval()`."""
    model.activation_checkpointing_enable({"use_reentrant": False})
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module.training = True

