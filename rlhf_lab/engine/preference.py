"""Preference data and reward-model training, shared by the tasks' stages (toy/, reviews/): sample responses
from the SFT policy, order pairs of them with a noisy Bradley-Terry judge on a gold reward, train a scalar head
on the pairs with the Bradley-Terry loss, score sequences in batches.

A pair is (chosen ids, rejected ids, gold margin, prompt length): both id lists are prompt + response (the EOS
included when the response finished), the margin is gold(chosen) - gold(rejected).
"""

from __future__ import annotations

import math
import random
from typing import Callable

import torch
import torch.nn.functional as F

from rlhf_lab.engine.data import encode
from rlhf_lab.engine.packing import pack, pad_left, response_mask
from rlhf_lab.engine.progress import Progress
from rlhf_lab.engine.roles import RewardModel
from rlhf_lab.engine.rollout import HFGenerate, generation_config

Pair = tuple[list[int], list[int], float, int]
Gold = Callable[[list[str], list[str], list[bool]], list[float]]  # (prompts, responses, finished) -> scores


@torch.no_grad()
def sample_responses(model, tokenizer, prompts: list[str], max_new_tokens: int, progress: Progress | None = None,
                     batch_size: int = 256) -> tuple[list[str], list[bool], list[list[int]]]:
    """Sample one response per prompt (temperature 1), counting them on `progress` batch by batch.
    -> texts, finished (EOS seen), token ids (with the EOS if any)."""
    engine = HFGenerate(model, generation_config(max_new_tokens, 1.0, tokenizer.eos_token_id, tokenizer.pad_token_id))
    texts, finished, token_ids = [], [], []
    for start in range(0, len(prompts), batch_size):
        ids, mask = pad_left(encode(tokenizer, prompts[start:start + batch_size]), tokenizer.pad_token_id)
        response = engine.sample(ids, mask).tokens
        keep = response_mask(response, tokenizer.eos_token_id).bool()
        for row, row_keep in zip(response, keep):
            tokens = row[row_keep].tolist()
            done = bool(tokens) and tokens[-1] == tokenizer.eos_token_id
            token_ids.append(tokens)
            finished.append(done)
            texts.append(tokenizer.decode(tokens[:-1] if done else tokens))
        if progress is not None:
            progress.update(len(response))
    return texts, finished, token_ids


def preference_pairs(policy, tokenizer, prompts: list[str], gold: Gold, noise: float, max_new_tokens: int,
                     rng: random.Random, progress: Progress, batch_size: int = 256) -> list[Pair]:
    """Two responses of `policy` to each prompt, ordered by a noisy Bradley-Terry judge on the gold reward,
    P(a > b) = sigmoid((gold_a - gold_b) / noise). The 2 x len(prompts) responses are counted on `progress`."""
    n = len(prompts)
    both = prompts + prompts
    texts, finished, token_ids = sample_responses(policy, tokenizer, both, max_new_tokens, progress, batch_size)
    golds = gold(both, texts, finished)
    prompt_ids = encode(tokenizer, prompts)
    pairs = []
    for i in range(n):
        j = i + n
        p_first = 1 / (1 + math.exp(-(golds[i] - golds[j]) / noise))
        a, b = (i, j) if rng.random() < p_first else (j, i)
        pairs.append((prompt_ids[i] + token_ids[a], prompt_ids[i] + token_ids[b], golds[a] - golds[b],
                      len(prompt_ids[i])))
    return pairs


def train_step(optimizer: torch.optim.Optimizer, scheduler, loss: torch.Tensor) -> None:
    """One step of a stage's training loop: gradients of `loss`, the optimiser's update, the schedule's."""
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()


def one_cycle(model, lr: float, steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW on `model` with a one-cycle schedule peaking at `lr` (10 % warm-up) over `steps` steps."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    return optimizer, torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)


def train_bradley_terry(model, pairs: list[Pair], pad_id: int, epochs: int, lr: float, batch_size: int,
                        rng: random.Random, progress: Callable[[int], Progress]) -> float:
    """Train a sequence-classification `model` on `pairs` with the Bradley-Terry loss
    -log sigmoid(score(chosen) - score(rejected)), `batch_size` pairs per step, the pairs reshuffled each epoch
    (in place). `progress(steps)` opens the bar. In eval mode throughout (no dropout: it would only add noise to
    the scores). -> the last step's loss."""
    steps = epochs * (len(pairs) // batch_size)
    optimizer, scheduler = one_cycle(model, lr, steps)
    model.eval()
    loss = torch.tensor(float("nan"))
    with progress(steps) as bar:
        for _ in range(epochs):
            rng.shuffle(pairs)
            for start in range(0, len(pairs) - batch_size + 1, batch_size):
                batch = pairs[start:start + batch_size]
                ids, mask = pad_left([c for c, *_ in batch] + [r for _, r, *_ in batch], pad_id)
                chosen, rejected = RewardModel(model)(pack(ids, mask)).chunk(2)
                loss = -F.logsigmoid(chosen - rejected).mean()
                train_step(optimizer, scheduler, loss)
                bar.update(loss=loss.item())
    return loss.item()


@torch.no_grad()
def reward_scores(model, sequences: list[list[int]], pad_id: int, batch_size: int = 512) -> torch.Tensor:
    """Reward-model scores of token sequences, in batches. -> (len(sequences),)."""
    reward_model = RewardModel(model)
    return torch.cat([reward_model(pack(*pad_left(sequences[i:i + batch_size], pad_id)))
                      for i in range(0, len(sequences), batch_size)])


def learned_nothing(report: dict) -> str | None:
    """Why a trained reward model's `report` (its rm_report.json) says it learned nothing, or None.

    Two signs: its last training loss still within 0.01 of ln 2 (0.693, the Bradley-Terry loss of scores that
    separate no pair: training stalled, as at too high a rate, or had too few pairs), or its agreement with gold
    on the `eval_pairs` held-out pairs no better than chance (one-sided z-test at the 5 % level:
    gold_accuracy - 0.5 < 1.645 * sqrt(0.25 / eval_pairs))."""
    if abs(report["final_loss"] - math.log(2)) < 0.01:
        return (f"its training loss ended at {report['final_loss']:.3f}, ln 2 (its scores order no training pair "
                "better than a coin: training stalled, or too few pairs to learn from)")
    if report["gold_accuracy"] - 0.5 < 1.645 * math.sqrt(0.25 / report["eval_pairs"]):
        return (f"it agrees with gold on {report['gold_accuracy']:.1%} of {report['eval_pairs']} held-out pairs, "
                "no better than chance")
    return None


def agreement(model, pairs: list[Pair], pad_id: int, batch_size: int = 512) -> dict[str, float]:
    """How often the reward model orders held-out `pairs` like their labels (label_accuracy) and like the gold
    reward (gold_accuracy, over pairs whose gold margin is not 0)."""
    chosen, rejected = reward_scores(model, [c for c, *_ in pairs] + [r for _, r, *_ in pairs], pad_id,
                                     batch_size).chunk(2)
    margins = torch.tensor([m for _, _, m, _ in pairs])
    decided = margins.abs() > 1e-6
    return {"label_accuracy": (chosen > rejected).float().mean().item(),
            "gold_accuracy": ((chosen > rejected) == (margins > 0))[decided].float().mean().item()}
