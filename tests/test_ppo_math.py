"""PPO maths against naive per-element references and hand-computed values."""

import math

import pytest
import torch

from rlhf_lab.algo import ppo
from rlhf_lab.config.schema import KLEstimator


def naive_gae(rewards, values, lengths, gamma, lam):
    """Textbook backward recursion, one sequence and one token at a time."""
    adv = torch.zeros_like(rewards)
    for b, length in enumerate(lengths):
        running = 0.0
        for t in reversed(range(length)):
            next_value = values[b, t + 1].item() if t + 1 < length else 0.0
            delta = rewards[b, t].item() + gamma * next_value - values[b, t].item()
            running = delta + gamma * lam * running
            adv[b, t] = running
    returns = adv + values * (torch.arange(rewards.shape[1]) < torch.tensor(lengths)[:, None])
    return adv, returns


def mask_of(lengths, width):
    return (torch.arange(width) < torch.tensor(lengths)[:, None]).float()


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_the_backward_recursion(gamma, lam):
    torch.manual_seed(0)
    lengths = [7, 3, 1, 5]
    mask = mask_of(lengths, 7)
    rewards, values = torch.randn(4, 7) * mask, torch.randn(4, 7) * mask
    adv, returns = ppo.gae(rewards, values, mask, gamma, lam)
    ref_adv, ref_returns = naive_gae(rewards, values, lengths, gamma, lam)
    torch.testing.assert_close(adv, ref_adv, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(returns, ref_returns * mask, rtol=1e-5, atol=1e-5)


def test_token_rewards_put_the_score_on_the_last_real_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    rewards = ppo.token_rewards(torch.tensor([2.0, -1.0]), kl, mask, kl_coef=0.5)
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, -0.1, 2.0 - 0.15], [-1.25, 0.0, 0.0]]))


def test_masked_statistics_and_whitening():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert ppo.masked_mean(x, mask).item() == pytest.approx(2.5)
    assert ppo.masked_var(x, mask).item() == pytest.approx(values.var().item())  # unbiased, 1.6667
    white = ppo.whiten(x, mask)
    expected = (values - 2.5) / math.sqrt(values.var().item() + 1e-8)
    torch.testing.assert_close(white[mask.bool()], expected)
    assert white[~mask.bool()].abs().sum() == 0
    centered = ppo.center(x, mask)
    torch.testing.assert_close(centered[mask.bool()], values - 2.5)


def test_logprobs_and_entropy_match_log_softmax():
    torch.manual_seed(1)
    logits, tokens = torch.randn(3, 4, 11), torch.randint(0, 11, (3, 4))
    log_softmax = torch.log_softmax(logits, -1)
    torch.testing.assert_close(ppo.logprobs_from_logits(logits, tokens),
                               log_softmax.gather(-1, tokens[..., None]).squeeze(-1))
    torch.testing.assert_close(ppo.entropy_from_logits(logits), -(log_softmax.exp() * log_softmax).sum(-1))


def test_kl_estimators_are_unbiased_or_biased_as_documented():
    # sample from p, estimate KL(p || q) for two categoricals: k1 and k3 are unbiased
    torch.manual_seed(0)
    p, q = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.3, 0.3, 0.4])
    true_kl = (p * (p / q).log()).sum().item()
    samples = torch.multinomial(p, 200_000, replacement=True)
    logp, logq = p.log()[samples], q.log()[samples]
    for estimator in (KLEstimator.k1, KLEstimator.k3):
        assert ppo.kl_estimate(logp, logq, estimator).mean().item() == pytest.approx(true_kl, rel=0.03)
    assert (ppo.kl_estimate(logp, logq, KLEstimator.k3) >= 0).all()


def naive_policy_losses(logp, old, adv, eps, c, eps_high=None):
    """Per-element reference of the three surrogates (loss to minimise)."""
    ratio = math.exp(logp - old)
    clipped_ratio = min(max(ratio, 1 - eps), 1 + (eps if eps_high is None else eps_high))
    plain = -adv * ratio
    ppo_loss = max(-adv * ratio, -adv * clipped_ratio)
    dual = min(ppo_loss, -c * adv) if adv < 0 else ppo_loss
    return plain, ppo_loss, dual


@pytest.mark.parametrize("eps_high", [0.2, 0.28])
def test_policy_losses_match_naive_reference(eps_high):
    torch.manual_seed(2)
    logp, old = torch.randn(4, 6) * 0.5, torch.randn(4, 6) * 0.5
    adv = torch.randn(4, 6) * 2
    mask = mask_of([6, 4, 2, 5], 6)
    eps, c = 0.2, 3.0
    per = [[naive_policy_losses(logp[b, t].item(), old[b, t].item(), adv[b, t].item(), eps, c, eps_high)
            for t in range(6)] for b in range(4)]
    for index, fn in enumerate((ppo.policy_loss_unclipped, ppo.policy_loss_ppo, ppo.policy_loss_dual)):
        expected = sum(per[b][t][index] for b in range(4) for t in range(6) if mask[b, t]) / mask.sum().item()
        loss, _ = fn(logp, old, adv, mask, eps, eps_high, c)
        assert loss.item() == pytest.approx(expected, rel=1e-5), fn.__name__


def test_value_loss_with_and_without_clipping_by_hand():
    values, old = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.0]])
    returns, mask = torch.tensor([[2.0, 1.0]]), torch.ones(1, 2)
    # unclipped: 0.5 * mean((1-2)^2, (0-1)^2) = 0.5
    loss, frac = ppo.value_loss(values, old, returns, mask, None)
    assert loss.item() == pytest.approx(0.5) and frac.item() == 0
    # clipped (eps 0.2): token 0 -> clipped value 0.7, error (0.7-2)^2 = 1.69 > 1 ; token 1 unchanged
    loss, frac = ppo.value_loss(values, old, returns, mask, 0.2)
    assert loss.item() == pytest.approx(0.5 * (1.69 + 1.0) / 2)
    assert frac.item() == pytest.approx(0.5)


def test_explained_variance():
    returns, mask = torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.ones(1, 4)
    assert ppo.explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    assert ppo.explained_variance(torch.zeros(1, 4) + 2.5, returns, mask).item() == pytest.approx(0.0)


def test_running_moments_equal_statistics_of_everything_seen():
    torch.manual_seed(3)
    batches = [torch.randn(5) * 3 + 1, torch.randn(17) - 2, torch.tensor([4.0])]
    moments = ppo.RunningMoments()
    for batch in batches:
        moments.update(batch)
    everything = torch.cat(batches).double()
    assert moments.count == 23
    assert moments.mean == pytest.approx(everything.mean().item())
    assert moments.std == pytest.approx(everything.std().item())  # unbiased
    restored = ppo.RunningMoments()
    restored.load_state_dict(moments.state_dict())
    assert (restored.mean, restored.std) == (moments.mean, moments.std)


# ---------------------------------------------------------------- critic-free estimators, by hand