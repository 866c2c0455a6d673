"""Rollout metrics against naive Python references."""

import math

import pytest
import torch

from rlhf_lab.algo import metrics, ppo
from rlhf_lab.config.schema import KLEstimator

EOS = 1


def naive_ngrams(seq, n):
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def words(tokens, mask):
    """The response's text tokens: up to the first EOS, excluded."""
    out = []
    for row, row_mask in zip(tokens.tolist(), mask.tolist()):
        out.append([t for t, m in zip(row, row_mask) if m and t != EOS])
    return out


@pytest.fixture
def batch():
    tokens = torch.tensor([[5, 6, 7, 5, 6, 7, 5, EOS, 0, 0],
                           [8, 8, 8, 8, EOS, 0, 0, 0, 0, 0],
                           [5, 9, 10, 11, 12, 13, 14, 15, 16, 17]])  # no EOS: truncated
    mask = torch.tensor([[1] * 8 + [0] * 2, [1] * 5 + [0] * 5, [1] * 10], dtype=torch.float)
    return tokens, mask


def test_distinct_n_matches_naive(batch):
    tokens, mask = batch
    seqs = words(tokens, mask)
    text_mask = mask * (tokens != EOS)
    for n in (1, 2):
        grams = [g for s in seqs for g in naive_ngrams(s, n)]
        assert metrics.distinct_n(tokens, text_mask, n, 20).item() == pytest.approx(len(set(grams)) / len(grams))
    assert metrics.distinct_n(tokens, torch.zeros_like(text_mask), 2, 20).item() == 0.0  # no n-gram at all


def test_repeat_ngram_fraction_matches_naive(batch):
    tokens, mask = batch
    text_mask = mask * (tokens != EOS)
    fractions = []
    for seq in words(tokens, mask):
        grams = naive_ngrams(seq, 3)
        repeated = sum(g in grams[:i] for i, g in enumerate(grams))
        fractions.append(repeated / len(grams) if grams else 0.0)
    # hand check of the first: 5 6 7 5 6 7 5 -> (567)(675)(756)(567)(675): 2 of 5 repeat
    assert fractions[0] == pytest.approx(2 / 5)
    assert metrics.repeat_ngram_frac(tokens, text_mask, 3, 20).item() == pytest.approx(sum(fractions) / 3)


def test_perplexity_counts_response_tokens_only():
    # the response has 2 real tokens with probabilities 0.5 and 0.125; the masked position must not count
    logp = torch.log(torch.tensor([[0.5, 0.125, 1e-9]]))
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    expected = math.exp(-(math.log(0.5) + math.log(0.125)) / 2)  # = 4
    assert metrics.sequence_perplexity(logp, mask).item() == pytest.approx(expected)


def test_rollout_metrics(batch):
    tokens, mask = batch
    torch.manual_seed(0)
    logp, ref, init = -torch.rand(3, 10), -torch.rand(3, 10), -torch.rand(3, 10)
    out = metrics.fetch(metrics.rollout_metrics(
        tokens=tokens, mask=mask, eos_id=EOS, vocab_size=20, logp=logp, ref_logp=ref, init_logp=init,
        entropy=torch.ones(3, 10),
        scores=torch.tensor([1.0, 2.0, 3.0]), shaped_scores=torch.zeros(3), gold=torch.tensor([0.5, 0.5, -1.0])))
    assert all(isinstance(value, float) for value in out.values())
    assert out["length/response_mean"] == pytest.approx((8 + 5 + 10) / 3)
    assert out["length/response_max"] == 10 and out["length/response_tokens"] == 8 + 5 + 10
    assert out["length/eos_missing_frac"] == pytest.approx(1 / 3)
    assert out["reward/proxy_mean"] == pytest.approx(2.0)
    assert out["reward/gold_mean"] == pytest.approx(0.0)
    for estimator in KLEstimator:  # per-sequence sums over real tokens, then the batch mean
        for name, other in (("ref", ref), ("init", init)):  # to the reference, and to the initial policy
            per_token = ppo.kl_estimate(logp, other, estimator)
            expected = sum((per_token[b] * mask[b]).sum().item() for b in range(3)) / 3
            assert out[f"kl/{name}_{estimator.value}"] == pytest.approx(expected, rel=1e-5)
    init_ppl = [math.exp(-(init[b] * mask[b]).sum().item() / mask[b].sum().item()) for b in range(3)]
    assert out["ppl/init"] == pytest.approx(sum(init_ppl) / 3, rel=1e-5)
    ppl = [math.exp(-(logp[b] * mask[b]).sum().item() / mask[b].sum().item()) for b in range(3)]
    assert out["ppl/policy"] == pytest.approx(sum(ppl) / 3, rel=1e-5)
