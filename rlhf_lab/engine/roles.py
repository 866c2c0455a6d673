"""The four model roles of PPO as small `nn.Module`s whose `forward` is the packed pass.

DDP synchronises gradients, FSDP gathers parameters and accelerate applies autocast inside the *wrapped*
module's own forward: a helper that reached past it (`model.base_model`, `.score`) would skip all three. So
every pass PPO makes through a model goes through its role's `forward`, and the runtime wraps the roles.

All passes take a `Packing` (rlhf_lab.engine.packing) of a (B, T) batch: one packing serves every role that reads
the same batch. Positions where the batch's mask is 0 hold finite filler: mask them.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from rlhf_lab.algo import ppo
from rlhf_lab.engine.packing import Packing, pack, position_ids


def hf_model(model: nn.Module) -> PreTrainedModel:
    """The transformers model inside a peft wrapper (its LoRA layers are injected in place), or the model."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if get_base_model is not None else model


def backbone_states(model: PreTrainedModel, packing: Packing) -> torch.Tensor:
    """Last hidden state of the backbone on the packed rows, flattened. -> (N * W, H)."""
    hidden = model.base_model(input_ids=packing.input_ids, position_ids=packing.position_ids,
                              use_cache=False).last_hidden_state
    return hidden.flatten(0, 1)


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


class Policy(nn.Module):
    """A causal LM (the policy, or the separate frozen reference). `model` may be a peft wrapper."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def hf(self) -> PreTrainedModel:
        """The transformers model, for its config."""
        return hf_model(self.model)

    def generate(self, **kwargs) -> torch.Tensor:
        """transformers' `generate`, entered through this module (a sharded policy's hooks gather its weights)."""
        return self.hf.generate(**kwargs)

    def forward(self, packing: Packing, n_predict: int, temperature: float = 1.0) -> torch.Tensor:
        """Logits that predict the last `n_predict` tokens of each sequence, over the temperature.
        -> (B, n_predict, V) float32. The LM head runs only on the n_predict states that predict them."""
        model = self.hf
        states = backbone_states(model, packing)[packing.slot[:, -n_predict - 1:-1]]  # (B, n, H)
        return lm_head_logits(model, states).float() / temperature


class AdapterFreePolicy(nn.Module):
    """The reference under LoRA: the policy's own weights with its adapters switched off. Holds no parameters
    of its own (the policy is kept out of the module tree, so freezing or moving this module touches nothing)."""

    def __init__(self, policy: Policy):
        super().__init__()
        self.__dict__["policy"] = policy  # not a submodule: see the class docstring

    def forward(self, packing: Packing, n_predict: int, temperature: float = 1.0) -> torch.Tensor:
        with self.policy.model.disable_adapter():
            return self.policy(packing, n_predict, temperature)


class Critic(nn.Module):
    """A sequence-classification model whose `score` head is applied at every token."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, packing: Packing, n_predict: int) -> torch.Tensor:
        """V(s_t) for each of the last `n_predict` tokens t: the head on the state just before t. -> (B, n)."""
        model = hf_model(self.model)
        states = backbone_states(model, packing)[packing.slot[:, -n_predict - 1:-1]]
        return model.score(states).squeeze(-1).float()


class RewardModel(nn.Module):
    """A sequence-classification model scoring whole sequences."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, packing: Packing) -> torch.Tensor:
        """Score of each full sequence: the head on its last real token. -> (B,)."""
        model = hf_model(self.model)
        return model.score(backbone_states(model, packing)[packing.last]).squeeze(-1).float()


class RewardModels(nn.Module):
    """K reward models scoring the same sequences (K = 1 without [reward_ensemble]); one module, so it is placed,
    offloaded and sharded like a single reward model."""

    def __init__(self, members: list[RewardModel]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, packing: Packing) -> torch.Tensor:
        """Every member's score of each sequence. -> (B, K)."""
        return torch.stack([member(packing) for member in self.members], 1)


def next_token_logprobs(policy: Policy, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-prob of each token given the ones before it, packed. (B, T) -> (B, T - 1), for ids[:, 1:]."""
    return ppo.logprobs_from_logits(policy(pack(ids, mask), ids.shape[1] - 1), ids[:, 1:])


def lm_loss(policy: Policy, ids: torch.Tensor, mask: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL over positions where loss_mask (B, T) is 1 (SFT, and the ptx loss), packed."""
    return -ppo.masked_mean(next_token_logprobs(policy, ids, mask), loss_mask[:, 1:].float())


def sequence_logprobs(policy: Policy, ids: torch.Tensor, mask: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Sum of the log-probs of the tokens where loss_mask (B, T) is 1 (a response given its prompt; DPO). -> (B,)."""
    return (next_token_logprobs(policy, ids, mask) * loss_mask[:, 1:].float()).sum(1)


def check_forward(model: PreTrainedModel) -> None:
    """Raise unless the role's packed pass gives what the model's own forward gives, on two short sequences
    (one left-padded): the logits of a causal LM (so any logit post-processing we do not reproduce shows up),
    the sequence scores of a classification model. It fails for a model whose attention crosses packed
    sequence boundaries given only position ids (models whose masks come from transformers' masking
    utilities keep them apart: Llama, Mistral, Qwen, Gemma, GPT-2, ...). In half precision the two passes
    round differently, so the tolerance follows the weights' dtype; a structural mismatch is far larger."""
    model = hf_model(model)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    words = [t for t in range(min(model.config.get_text_config().vocab_size, 16)) if t != pad][:7]
    ids = torch.tensor([[pad] + words[:3], words[3:7]], device=model.device)
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]], device=model.device)
    with torch.no_grad():
        if hasattr(model, "score"):
            ours = RewardModel(model)(pack(ids, mask))
            theirs = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits[:, 0]
        else:
            ours = Policy(model)(pack(ids, mask), 2)
            theirs = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                           use_cache=False).logits[:, -3:-1]
    tolerance = 1e-3 if model.dtype == torch.float32 else 5e-2
    if not torch.allclose(ours.float(), theirs.float(), rtol=tolerance, atol=tolerance):
        gap = (ours.float() - theirs.float()).abs().max().item()
        raise ValueError(
            f"{type(model).__name__}: rlhf-lab's packed forward pass differs from the model's own forward by "
            f"{gap:.3g}: either its attention crosses packed sequence boundaries given only position ids, or it "
            f"post-processes its logits in a way `lm_head_logits` does not reproduce")
