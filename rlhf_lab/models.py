"""Loading models with the Auto classes, and the batched forward passes PPO needs.

Layout of a batch: `ids` (B, T) = left-padded prompt (B, P) + response (B, R), `mask` (B, T) its attention
mask. Position ids always come from the mask, so padded and unpadded sequences see the same positions in
generation and in every later forward pass.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import transformers
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                          GenerationConfig, PreTrainedModel)

from rlhf_lab import ppo
from rlhf_lab.config import CriticInit

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


# ---------------------------------------------------------------- forward passes
def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) attention mask -> (B, T) positions counting real tokens only."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def response_logits(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, n_response: int,
                    temperature: float) -> torch.Tensor:
    """Logits that predict the R response tokens, at the sampling temperature. -> (B, R, V)."""
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False,
                logits_to_keep=n_response + 1)
    return out.logits[:, :-1].float() / temperature


def critic_values(critic: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, n_response: int) -> torch.Tensor:
    """V(s_t) for each response token t: the critic's head on the state just before t. -> (B, R)."""
    hidden = critic.base_model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                               use_cache=False).last_hidden_state
    return critic.score(hidden[:, -n_response - 1:-1]).squeeze(-1).float()


def sequence_scores(reward_model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reward-model score of each full sequence (pooled at its last non-pad token). -> (B,)."""
    out = reward_model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False)
    return out.logits[:, 0].float()


def lm_loss(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL over positions where loss_mask (B, T) is 1 (used by SFT and the ptx loss)."""
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False).logits
    logp = ppo.logprobs_from_logits(logits[:, :-1].float(), ids[:, 1:])
    return -ppo.masked_mean(logp, loss_mask[:, 1:].float())


# ---------------------------------------------------------------- generation
def generation_config(max_new_tokens: int, temperature: float, eos_id: int, pad_id: int) -> GenerationConfig:
    """Pure ancestral sampling at `temperature` (no top-k / top-p), KV cache on."""
    return GenerationConfig(do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                            max_new_tokens=max_new_tokens, eos_token_id=eos_id, pad_token_id=pad_id,
                            use_cache=True)


@torch.no_grad()
def generate(policy: PreTrainedModel, query_ids: torch.Tensor, query_mask: torch.Tensor,
             gen_config: GenerationConfig) -> torch.Tensor:
    """Sample responses for left-padded prompts (B, P). -> response ids (B, R), pad after the first EOS."""
    out = policy.generate(input_ids=query_ids, attention_mask=query_mask, generation_config=gen_config)
    return out[:, query_ids.shape[1]:]


def response_mask(response_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1.0 on response tokens up to and including the first EOS, 0.0 after it. (B, R) -> (B, R)."""
    is_eos = (response_ids == eos_id).int()
    after_first_eos = (is_eos.cumsum(1) - is_eos) > 0
    return (~after_first_eos).float()


def pad_left(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists to one length. -> ids (B, T) long, mask (B, T) long."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if seq:
            ids[i, length - len(seq):] = torch.tensor(seq)
            mask[i, length - len(seq):] = 1
    return ids, mask
