"""Data for the PPO stage: seeded streams resumable through their RNG state, JSONL rows, tokenised SFT batches.
Which stream a task draws from (the toy language, a file) is chosen in build.py."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable, Generic, TypeVar

import torch

from rlhf_lab.engine.packing import pad_left
from rlhf_lab.config.preflight import check_jsonl

T = TypeVar("T")


class Stream(Generic[T]):
    """Draws items with its own `random.Random`, so the sequence is fixed by the seed and can be resumed."""

    def __init__(self, draw: Callable[[random.Random], T], seed: int):
        self.draw, self.rng = draw, random.Random(seed)

    def take(self, n: int) -> list[T]:
        return [self.draw(self.rng) for _ in range(n)]

    def peek(self, n: int) -> list[T]:
        """The next `n` items, without advancing the stream."""
        state = self.rng.getstate()
        items = self.take(n)
        self.rng.setstate(state)
        return items

    def state_dict(self) -> dict:
        version, internal, gauss = self.rng.getstate()
        return {"version": version, "internal": list(internal), "gauss": gauss}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate((state["version"], tuple(state["internal"]), state["gauss"]))


def read_jsonl_field(key: str, path: str | Path, *fields: str) -> list:
    """Values of `fields` from every line of the JSONL file `path` (config key `key`). The file is checked by
    `preflight.check_jsonl` first, so a bad file is a ConfigError naming the key and the line."""
    check_jsonl(key, str(path), fields)
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [tuple(row[f] for f in fields) if len(fields) > 1 else row[fields[0]] for row in rows]


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def chat_prompts(tokenizer, texts: list[str]) -> list[str]:
    """Each text as one user turn in the tokenizer's chat template, ending where the assistant's reply begins
    (task.chat_template: how an instruct model expects its prompts)."""
    if not tokenizer.chat_template:
        raise ValueError(f"task.chat_template is on but the tokenizer {tokenizer.name_or_path!r} has no chat template; "
                         "expected task.chat_template=false")
    return [tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                          add_generation_prompt=True) for text in texts]


def sft_batch(tokenizer, examples: list[tuple[str, str]],
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompt + response + EOS, left-padded, built on the host and copied to `device` once.
    -> ids, attention mask, loss mask (response and EOS), each (B, T)."""
    prompts = encode(tokenizer, [p for p, _ in examples])
    responses = encode(tokenizer, [r for _, r in examples])
    seqs = [p + r + [tokenizer.eos_token_id] for p, r in zip(prompts, responses)]
    ids, mask = pad_left(seqs, tokenizer.pad_token_id)
    loss_mask = mask.clone()
    for i, p in enumerate(prompts):  # prompt tokens are context, not targets
        start = ids.shape[1] - len(seqs[i])
        loss_mask[i, start:start + len(p)] = 0
    return ids.to(device), mask.to(device), loss_mask.to(device)
