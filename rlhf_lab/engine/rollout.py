"""Rollout engines: how the policy samples responses, behind one small interface.

An engine's `sample(query_ids, query_mask)` returns `Generated`: the sampled tokens and, per token, the
log-prob and the entropy of the distribution it was drawn from, each (B, R). Never a (B, R, V) tensor: at a
128k vocabulary and 1,024 response tokens the logits of a 64-prompt batch would take ~34 GB in fp32. The
trainer only calls `sample`, so another engine (vLLM, SGLang) can be added without touching the loop.

`HFGenerate` is transformers' `generate` with the KV cache: dynamic (grown step by step), or static
(preallocated for the whole response; on CUDA transformers then compiles the decoding step, ~3x faster
decoding for a 1B model). It samples from softmax(logits / T) only: the
checkpoint's generation_config.json cannot add a logits processor (`use_only`), and `check` asserts at
start-up that the scores `generate` draws from are exactly the logits over T.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, PreTrainedModel

from rlhf_lab.algo import ppo
from rlhf_lab.config.schema import RolloutCache


@dataclass(frozen=True)
class Generated:
    """One rollout's samples. B prompts, R response tokens."""

    tokens: torch.Tensor  # (B, R) response ids; pad after the first EOS
    logprobs: torch.Tensor  # (B, R) log-prob of each sampled token under softmax(logits / T)
    entropy: torch.Tensor  # (B, R) entropy of that distribution


class RolloutEngine(Protocol):
    def sample(self, query_ids: torch.Tensor, query_mask: torch.Tensor) -> Generated:
        """Sample one response per left-padded prompt (B, P)."""

    def greedy(self, query_ids: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
        """The greedy response to each prompt (B, R'), for adv_estimator=remax."""


def kv_cache(cache: RolloutCache, device: torch.device) -> str:
    """`rollout.cache` -> "static" or "dynamic" (auto: static on CUDA, where it is compiled; dynamic elsewhere)."""
    if cache == RolloutCache.auto:
        return "static" if device.type == "cuda" else "dynamic"
    return cache.value


def generation_config(max_new_tokens: int, temperature: float, eos_id: int, pad_id: int,
                      cache: str = "dynamic") -> GenerationConfig:
    """Pure ancestral sampling at `temperature` (no top-k / top-p), with a KV cache ("dynamic" | "static")."""
    return GenerationConfig(do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                            max_new_tokens=max_new_tokens, eos_token_id=eos_id, pad_token_id=pad_id,
                            use_cache=True, cache_implementation="static" if cache == "static" else None)


def use_only(policy: PreTrainedModel, gen_config: GenerationConfig) -> None:
    """Make `gen_config` the policy's whole generation config. `generate` fills every field a passed config
    leaves unset from `policy.generation_config` (a checkpoint's generation_config.json: repetition_penalty,
    min_p, no_repeat_ngram_size, suppress_tokens, ...), each of which would change the sampling distribution
    away from the softmax(logits / T) whose log-probs PPO records."""
    policy.generation_config = GenerationConfig(**gen_config.to_diff_dict())


class StepLogprobs(LogitsProcessor):
    """A logits processor that changes nothing and records, step by step, the log-prob of each sampled token
    and the entropy of the distribution, from the (B, V) scores of one step at a time.

    transformers runs it before its temperature warper, on scores that `HFGenerate.check` has shown to be
    the raw logits, so it divides by T itself. At step k the token of step k - 1 is the last of `input_ids`:
    its log-prob comes from the one step of log-probs kept; `result` takes the last step's from the tokens.
    """

    def __init__(self, temperature: float):
        self.temperature = temperature
        self.logprobs: list[torch.Tensor] = []  # (B,) per step
        self.entropy: list[torch.Tensor] = []  # (B,) per step
        self.previous: torch.Tensor | None = None  # (B, V) log-probs of the latest step

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.previous is not None:
            self.logprobs.append(self.previous.gather(1, input_ids[:, -1:]).squeeze(1))
        logp = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        self.entropy.append(ppo.entropy_from_logp(logp))
        self.previous = logp
        return scores

    def result(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, R) response tokens -> log-probs (B, R), entropy (B, R). Steps past R (a generation loop that
        checks for its end a step late) are dropped."""
        n = tokens.shape[1]
        if len(self.logprobs) < n:
            self.logprobs.append(self.previous.gather(1, tokens[:, n - 1:n]).squeeze(1))
        return torch.stack(self.logprobs[:n], 1), torch.stack(self.entropy[:n], 1)


class HFGenerate:
    """transformers' `generate` as a rollout engine (see the module docstring)."""

    def __init__(self, policy: PreTrainedModel | nn.Module, gen_config: GenerationConfig):
        """`policy`: a causal LM, or the Policy role around one (rlhf_lab.engine.roles), whose `generate` enters
        through the role: a sharded policy gathers its weights there."""
        self.model = getattr(policy, "hf", policy)  # the transformers model (its generation config)
        use_only(self.model, gen_config)
        self.policy, self.gen_config = policy, gen_config

    @torch.no_grad()
    def sample(self, query_ids: torch.Tensor, query_mask: torch.Tensor) -> Generated:
        recorder = StepLogprobs(self.gen_config.temperature)
        out = self.policy.generate(input_ids=query_ids, attention_mask=query_mask, generation_config=self.gen_config,
                                   logits_processor=LogitsProcessorList([recorder]))
        tokens = out[:, query_ids.shape[1]:]
        logprobs, entropy = recorder.result(tokens)
        return Generated(tokens, logprobs, entropy)

    @torch.no_grad()
    def greedy(self, query_ids: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
        """The greedy (argmax) response to each prompt, (B, R') response ids, pad after the first EOS (ReMax's
        baseline). Leaves the random streams untouched."""
        greedy = GenerationConfig(**{**self.gen_config.to_diff_dict(), "do_sample": False, "temperature": None,
                                     "top_k": None, "top_p": None})
        out = self.policy.generate(input_ids=query_ids, attention_mask=query_mask, generation_config=greedy)
        return out[:, query_ids.shape[1]:]

    @torch.no_grad()
    def check(self, query_ids: torch.Tensor, query_mask: torch.Tensor) -> None:
        """Raise unless generation samples from softmax(logits / T): the scores it draws from (after every
        logits processor) must equal the raw logits divided by the temperature, at every step of a short
        rollout, and the recorded log-probs must be those of that distribution. Uses the global RNG: callers
        that need their random stream untouched fork it."""
        short = GenerationConfig(**{**self.gen_config.to_diff_dict(), "max_new_tokens": 4})
        recorder = StepLogprobs(short.temperature)
        out = self.policy.generate(input_ids=query_ids, attention_mask=query_mask, generation_config=short,
                                   return_dict_in_generate=True, output_logits=True, output_scores=True,
                                   logits_processor=LogitsProcessorList([recorder]))
        raw = torch.stack(out.logits, 1).float() / short.temperature
        drawn = torch.stack(out.scores, 1).float()
        if not torch.allclose(drawn, raw, rtol=1e-4, atol=1e-4):
            raise ValueError("generation does not sample from softmax(logits / temperature): a logits processor "
                             f"(policy.generation_config: {self.model.generation_config.to_diff_dict()}) changes "
                             "the distribution whose log-probs PPO records")
        tokens = out.sequences[:, query_ids.shape[1]:]
        recorded, _ = recorder.result(tokens)
        expected = ppo.logprobs_from_logits(raw, tokens)
        if not torch.allclose(recorded, expected, rtol=1e-4, atol=1e-4):
            raise ValueError("the rollout engine's recorded log-probs differ from those of the sampled "
                             "distribution (logits processors run in an order it does not expect)")
