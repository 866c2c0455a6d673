"""Rollout metrics of docs/architecture.md ("Metric names"), as batched tensor ops.

Shapes: B sequences, R response tokens; `mask` (B, R) is 1.0 up to and including the first EOS.
`text_mask` additionally excludes the EOS token itself (the words of the response).
Every metric stays a 0-d tensor on the batch's device until `fetch` copies them all to the host at once: one
device-to-host transfer per iteration, not one per metric.
"""

from __future__ import annotations

import torch

from rlhf_lab.algo import ppo
from rlhf_lab.config.schema import KLEstimator

REPEAT_NGRAM = 2  # n of diversity/repeat_ngram_frac (bigrams catch "perfect perfect" as well as loops)


def ngram_codes(tokens: torch.Tensor, text_mask: torch.Tensor, n: int, vocab_size: int):
    """Integer code of every n-gram starting at each position, and whether it lies inside the text.

    (B, R) -> codes (B, R - n + 1) long, valid (B, R - n + 1) bool.
    """
    windows = tokens.unfold(1, n, 1)  # (B, L, n)
    weights = vocab_size ** torch.arange(n, device=tokens.device)
    valid = text_mask.unfold(1, n, 1).all(-1)
    return (windows * weights).sum(-1), valid


def distinct_n(tokens: torch.Tensor, text_mask: torch.Tensor, n: int, vocab_size: int) -> torch.Tensor:
    """Distinct-n (Li et al. 2016): unique n-grams / all n-grams, over the whole batch (0 if none). -> ()."""
    if tokens.shape[1] < n:
        return torch.zeros((), device=tokens.device)
    codes, valid = ngram_codes(tokens, text_mask.bool(), n, vocab_size)
    ordered = torch.where(valid, codes, -1).flatten().sort().values  # invalid n-grams (-1) first
    first_of_kind = torch.cat([ordered[:1] >= 0, (ordered[1:] != ordered[:-1]) & (ordered[1:] >= 0)])
    return first_of_kind.sum() / valid.sum().clamp(min=1)


def repeat_ngram_frac(tokens: torch.Tensor, text_mask: torch.Tensor, n: int, vocab_size: int) -> torch.Tensor:
    """Per response, the fraction of its n-grams that already occurred earlier in it; batch mean. -> ()."""
    if tokens.shape[1] < n:
        return torch.zeros((), device=tokens.device)
    codes, valid = ngram_codes(tokens, text_mask.bool(), n, vocab_size)
    length = codes.shape[1]
    earlier = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril(-1)  # [i, j]: j < i
    same = (codes.unsqueeze(2) == codes.unsqueeze(1)) & earlier & valid.unsqueeze(1)
    repeated = (same.any(-1) & valid).sum(1).float()
    return (repeated / valid.sum(1).clamp(min=1)).mean()


def sequence_perplexity(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """exp(mean negative log-likelihood of each response's tokens). (B, R) -> (B,)."""
    return torch.exp(-ppo.masked_mean(logp, mask, dim=1))


def r_squared(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """R^2 of the least-squares line of y on x: the squared Pearson correlation (0 when either is constant).
    (B,), (B,) -> ()."""
    dx, dy = x - x.mean(), y - y.mean()
    denominator = (dx * dx).sum() * (dy * dy).sum()
    return torch.where(denominator > 0, (dx * dy).sum() ** 2 / denominator.clamp(min=1e-30), 0.0)


def rollout_metrics(*, tokens, mask, eos_id, vocab_size, logp, ref_logp, init_logp, entropy, scores,
                    shaped_scores, gold) -> dict[str, torch.Tensor]:
    """The per-iteration metrics that describe the sampled responses (reward, kl, ppl, length, diversity), as
    0-d tensors (see `fetch`). KL and perplexity to the reference (`ref_logp`) and to the initial policy
    (`init_logp`: the distance travelled, comparable across arms whatever their reference)."""
    text_mask = mask * (tokens != eos_id)
    lengths = mask.sum(1)
    finished = ((tokens == eos_id) & mask.bool()).any(1)
    metrics = {
        "reward/proxy_mean": scores.mean(),
        "reward/shaped_mean": shaped_scores.mean(),
        "ppl/policy": sequence_perplexity(logp, mask).mean(),
        "ppl/ref": sequence_perplexity(ref_logp, mask).mean(),
        "ppl/init": sequence_perplexity(init_logp, mask).mean(),
        "length/response_mean": lengths.mean(),
        "length/response_max": lengths.max(),
        "length/response_tokens": lengths.sum(),
        "length/eos_missing_frac": 1.0 - finished.float().mean(),
        "diversity/distinct_1": distinct_n(tokens, text_mask, 1, vocab_size),
        "diversity/distinct_2": distinct_n(tokens, text_mask, 2, vocab_size),
        "diversity/repeat_ngram_frac": repeat_ngram_frac(tokens, text_mask, REPEAT_NGRAM, vocab_size),
        "entropy/policy_mean": ppo.masked_mean(entropy, mask),
    }
    for estimator in KLEstimator:
        for name, other in (("ref", ref_logp), ("init", init_logp)):
            per_sequence = (ppo.kl_estimate(logp, other, estimator) * mask).sum(1)
            metrics[f"kl/{name}_{estimator.value}"] = per_sequence.mean()
    if gold is not None:
        metrics["reward/gold_mean"] = gold.mean()
        metrics["reward/proxy_gold_r2"] = r_squared(scores, gold)
    return metrics


def fetch(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """0-d tensors -> Python floats, in one device-to-host copy."""
    if not metrics:
        return {}
    values = torch.stack([value.detach().double().reshape(()) for value in metrics.values()]).tolist()
    return dict(zip(metrics, values))
