"""Loading models with the Auto classes, and the batched forward passes PPO needs.

Layout of a batch: `ids` (B, T) = left-padded prompt (B, P) + response (B, R), `mask` (B, T) its attention
mask. Position ids always come from the mask, so padded and unpadded sequences see the same positions in
generation and in every later forward pass. The PPO forward passes run on the batch packed without its
padding (`pack`), which gives the same outputs with less work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                          PreTrainedModel)

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


# ---------------------------------------------------------------- packing: no work on padding
def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) attention mask -> (B, T) positions counting real tokens only."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass(frozen=True)
class Packing:
    """A padded batch (B, T) re-laid without its padding into N rows of W tokens (W = 2T by default).

    Padding (mask 0: left padding, and every response token after the first EOS) is dropped and the sequences
    are placed end to end, first-fit decreasing, each keeping its own positions 0 .. len-1. A position that does
    not follow its predecessor starts a new sequence: transformers' masking utilities then build a block-diagonal
    causal mask ("packed sequences"), so every token attends exactly to the tokens it attended to in the padded
    batch. Same outputs up to float rounding, with the padding (~40% of the toy task's rollouts) skipped.
    Rows of 2T fill ~95% (sequences longer than T/2 cannot share a row of T); attention work per token grows
    with W, which is why W is not larger.
    """

    input_ids: torch.Tensor  # (N, W) packed rows; the tail of a row is filler (pad ids at position 0)
    position_ids: torch.Tensor  # (N, W)
    slot: torch.Tensor  # (B, T) index of each token in the flattened (N * W) rows; 0 where mask is 0
    last: torch.Tensor  # (B,) slot of each sequence's last real token


def pack(ids: torch.Tensor, mask: torch.Tensor, pad_id: int = 0, width: int | None = None) -> Packing:
    """(B, T) ids and attention mask -> `Packing` into rows of `width` (default 2T) tokens.

    The loop runs over sequences (first-fit decreasing), never over tokens.
    """
    batch, length = ids.shape
    width = width or 2 * length
    real = mask.bool()
    lengths = real.sum(1).tolist()
    room: list[int] = []  # free tokens left in each row
    start = [0] * batch  # flat slot of each sequence's first token
    for i in sorted(range(batch), key=lambda i: -lengths[i]):
        row = next((r for r, free in enumerate(room) if free >= lengths[i]), len(room))
        if row == len(room):
            room.append(width)
        start[i] = row * width + width - room[row]
        room[row] -= lengths[i]
    rank = position_ids(mask)  # (B, T) position of each real token within its sequence
    start_t = torch.tensor(start, device=ids.device)
    slot = torch.where(real, start_t.unsqueeze(1) + rank, torch.zeros_like(rank))
    packed_ids = torch.full((len(room), width), pad_id, dtype=ids.dtype, device=ids.device)
    packed_positions = torch.zeros_like(packed_ids)  # a filler token at position 0 is a sequence of its own
    packed_ids.view(-1)[slot[real]] = ids[real]
    packed_positions.view(-1)[slot[real]] = rank[real]
    last = start_t + torch.tensor(lengths, device=ids.device) - 1
    return Packing(packed_ids, packed_positions, slot, last)


def check_forward(model: PreTrainedModel) -> None:
    """Raise unless our packed forward pass gives what the model's own forward gives, on two short sequences
    (one left-padded): the logits of a causal LM (so any logit post-processing we do not reproduce shows up),
    the sequence scores of a classification model. It fails for a model whose attention crosses packed
    sequence boundaries given only position ids (models whose masks come from transformers' masking
    utilities keep them apart: Llama, Mistral, Qwen, Gemma, GPT-2, ...)."""
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    words = [t for t in range(min(model.config.get_text_config().vocab_size, 16)) if t != pad][:7]
    ids = torch.tensor([[pad] + words[:3], words[3:7]], device=model.device)
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]], device=model.device)
    with torch.no_grad():
        if hasattr(model, "score"):
            ours = sequence_scores(model, ids, mask)
            theirs = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits[:, 0]
        else:
            ours = response_logits(model, ids, mask, 2, temperature=1.0)
            theirs = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                           use_cache=False).logits[:, -3:-1]
    if not torch.allclose(ours.float(), theirs.float(), rtol=1e-3, atol=1e-3):
        gap = (ours.float() - theirs.float()).abs().max().item()
        raise ValueError(
            f"{type(model).__name__}: rlhf-lab's packed forward pass differs from the model's own forward by "
            f"{gap:.3g}: either its attention crosses packed sequence boundaries given only position ids, or it "
            f"post-processes its logits in a way `lm_head_logits` does not reproduce")


def packed_hidden(model: PreTrainedModel, packing: Packing) -> torch.Tensor:
    """Last hidden state of the base model on the packed rows, flattened. -> (N * W, H)."""
    hidden = model.base_model(input_ids=packing.input_ids, position_ids=packing.position_ids,
                              use_cache=False).last_hidden_state
    return hidden.flatten(0, 1)


# ---------------------------------------------------------------- forward passes
def response_logits(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, n_response: int,
                    temperature: float) -> torch.Tensor:
    """Logits that predict the R response tokens, at the sampling temperature. -> (B, R, V).

    A packed forward pass (no work on padding); the LM head runs only on the R states that predict response
    tokens. Positions where mask is 0 hold finite filler: mask them.
    """
    packing = pack(ids, mask)
    states = packed_hidden(model, packing)[packing.slot[:, -n_response - 1:-1]]  # (B, R, H)
    return lm_head_logits(model, states).float() / temperature


def lm_head_logits(model: PreTrainedModel, states: torch.Tensor) -> torch.Tensor:
    """The LM head on final hidden states (..., H) -> (..., V), with the model family's own logit
    post-processing, exactly as its forward applies it: Cohere's `logit_scale`, Granite's `logits_scaling`,
    Gemma-2/3's `final_logit_softcapping`. `check_forward` verifies the result against the model's forward."""
    config = model.config.get_text_config()
    logits = model.get_output_embeddings()(states)
    if getattr(config, "logit_scale", None) is not None:
        logits = logits * config.logit_scale
    if getattr(config, "logits_scaling", None) is not None:
        logits = logits / config.logits_scaling
    cap = getattr(config, "final_logit_softcapping", None)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


def critic_values(critic: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, n_response: int) -> torch.Tensor:
    """V(s_t) for each response token t: the critic's head on the state just before t. -> (B, R).

    Packed like `response_logits`; positions where mask is 0 hold finite filler.
    """
    packing = pack(ids, mask)
    states = packed_hidden(critic, packing)[packing.slot[:, -n_response - 1:-1]]
    return critic.score(states).squeeze(-1).float()


def sequence_scores(reward_model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reward-model score of each full sequence: its head on the last real token (mask 1). -> (B,)."""
    packing = pack(ids, mask)
    return reward_model.score(packed_hidden(reward_model, packing)[packing.last]).squeeze(-1).float()


def lm_loss(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL over positions where loss_mask (B, T) is 1 (used by SFT and the ptx loss)."""
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False).logits
    logp = ppo.logprobs_from_logits(logits[:, :-1].float(), ids[:, 1:])
    return -ppo.masked_mean(logp, loss_mask[:, 1:].float())


# ---------------------------------------------------------------- batches
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
