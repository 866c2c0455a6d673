"""PPO maths against naive per-element references and hand-computed values."""

import math

import pytest
import torch

from rlhf_lab import ppo
from rlhf_lab.config import KLEstimator


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


def test_gae_by_hand():
    # two tokens, gamma=1, lam=0.5: delta_1 = 1 - 0.5 = 0.5; delta_0 = 0 + 0.5 - 0.25 = 0.25
    # A_1 = 0.5, A_0 = 0.25 + 0.5 * 0.5 = 0.5; returns = A + V = (0.75, 1.0)
    adv, ret = ppo.gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.25, 0.5]]), torch.ones(1, 2), 1.0, 0.5)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.5]]))
    torch.testing.assert_close(ret, torch.tensor([[0.75, 1.0]]))


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


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # log p/q = log 2; k1 = log 2; k2 = (log 2)^2 / 2; k3 = q/p - 1 - log(q/p) = 0.5 - 1 + log 2
    assert ppo.kl_estimate(logp, ref, KLEstimator.k1).item() == pytest.approx(math.log(2))
    assert ppo.kl_estimate(logp, ref, KLEstimator.k2).item() == pytest.approx(math.log(2) ** 2 / 2)
    assert ppo.kl_estimate(logp, ref, KLEstimator.k3).item() == pytest.approx(-0.5 + math.log(2))


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


def test_ppo_clip_and_dual_clip_by_hand():
    mask = torch.ones(1, 3)
    # ratios 2.0, 0.5, 5.0 with advantages +1, -1, -1 ; eps = 0.2, c = 3
    logp = torch.log(torch.tensor([[2.0, 0.5, 5.0]]))
    old, adv = torch.zeros(1, 3), torch.tensor([[1.0, -1.0, -1.0]])
    # ppo: max(-2, -1.2) = -1.2 ; max(0.5, 0.8) = 0.8 ; max(5, 1.2) = 5   -> mean 4.6 / 3
    # the clip is active on tokens 0 and 1 (the clipped term is the larger one)
    loss, clipfrac = ppo.policy_loss_ppo(logp, old, adv, mask, 0.2, 0.2, 3.0)
    assert loss.item() == pytest.approx((-1.2 + 0.8 + 5.0) / 3)
    assert clipfrac.item() == pytest.approx(2 / 3)
    # dual: the third token's loss is capped at c * |A| = 3, so a clip is active on every token
    loss, clipfrac = ppo.policy_loss_dual(logp, old, adv, mask, 0.2, 0.2, 3.0)
    assert loss.item() == pytest.approx((-1.2 + 0.8 + 3.0) / 3)
    assert clipfrac.item() == pytest.approx(1.0)
    loss, clipfrac = ppo.policy_loss_unclipped(logp, old, adv, mask, 0.2, 0.2, 3.0)
    assert loss.item() == pytest.approx((-2.0 + 0.5 + 5.0) / 3) and clipfrac.item() == 0


def test_clip_higher_by_hand():
    """eps = 0.2, eps_high = 0.28 (DAPO): a positive advantage may push the ratio to 1.28, not only 1.2; the
    lower clip is unchanged."""
    mask = torch.ones(1, 3)
    logp = torch.log(torch.tensor([[1.25, 2.0, 0.5]]))  # ratios against old log-probs of 0
    old, adv = torch.zeros(1, 3), torch.tensor([[1.0, 1.0, -1.0]])
    # token 0: ratio 1.25 inside [0.8, 1.28]: -1.25 (symmetric clip: max(-1.25, -1.2) = -1.2, clipped)
    # token 1: max(-2, -1.28) = -1.28 ; token 2: max(0.5, 0.8) = 0.8
    loss, clipfrac = ppo.policy_loss_ppo(logp, old, adv, mask, 0.2, 0.28, 3.0)
    assert loss.item() == pytest.approx((-1.25 - 1.28 + 0.8) / 3)
    assert clipfrac.item() == pytest.approx(2 / 3)
    loss, clipfrac = ppo.policy_loss_ppo(logp, old, adv, mask, 0.2, 0.2, 3.0)
    assert loss.item() == pytest.approx((-1.2 - 1.2 + 0.8) / 3) and clipfrac.item() == pytest.approx(1.0)


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


def test_adaptive_kl_controller_by_hand():
    ctl = ppo.AdaptiveKLController(coef=0.1, target=6.0, horizon=1000)
    ctl.update(kl=9.0, n_samples=100)  # error = clip(0.5, +-0.2) = 0.2 -> coef * (1 + 0.02)
    assert ctl.coef == pytest.approx(0.102)
    ctl.update(kl=5.4, n_samples=100)  # error = -0.1 -> coef * (1 - 0.01)
    assert ctl.coef == pytest.approx(0.102 * 0.99)


# ---------------------------------------------------------------- critic-free estimators, by hand
def test_grpo_and_dr_grpo_by_hand():
    returns = torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 4.0, 4.0])  # two groups of 4
    # group 1: mean 3, unbiased std sqrt((4 + 1 + 0 + 9) / 3) = sqrt(14 / 3); group 2: mean 2, std sqrt(16 / 3)
    s1, s2 = math.sqrt(14 / 3), math.sqrt(16 / 3)
    expected = [-2 / s1, -1 / s1, 0.0, 3 / s1, -2 / s2, -2 / s2, 2 / s2, 2 / s2]
    got = ppo.grpo_advantages(returns, 4, std_norm=True, eps=0.0)
    assert got.tolist() == pytest.approx(expected, rel=1e-6)
    assert ppo.grpo_advantages(returns, 4, std_norm=False).tolist() == [-2, -1, 0, 3, -2, -2, 2, 2]


def test_rloo_by_hand():
    returns = torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 4.0])  # groups of 3
    # 1 - (2 + 3) / 2 = -1.5 ; 2 - (1 + 3) / 2 = 0 ; 3 - 1.5 = 1.5 ; 6 - 2 = 4 ; 0 - 5 = -5 ; 4 - 3 = 1
    assert ppo.rloo_advantages(returns, 3).tolist() == [-1.5, 0.0, 1.5, 4.0, -5.0, 1.0]
    # equals G / (G - 1) x (R - group mean)
    centred = ppo.grpo_advantages(returns, 3, std_norm=False)
    torch.testing.assert_close(ppo.rloo_advantages(returns, 3), centred * 3 / 2)


def test_remax_by_hand():
    assert ppo.remax_advantages(torch.tensor([1.0, -2.0]), torch.tensor([0.5, -3.0])).tolist() == [0.5, 1.0]


def test_group_normalisations_by_hand():
    adv = torch.tensor([[1.0, 3.0], [5.0, 0.0], [2.0, 2.0], [4.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    # group 1 (rows 0-1): tokens 1, 3, 5, mean 3, unbiased var 4; group 2: tokens 2, 2, 4, 6, mean 3.5, var 11/3
    whitened = ppo.group_whiten(adv, mask, 2, eps=0.0)
    s2 = math.sqrt(11 / 3)
    assert whitened.flatten().tolist() == pytest.approx(
        [-1.0, 0.0, 1.0, 0.0, -1.5 / s2, -1.5 / s2, 0.5 / s2, 2.5 / s2], rel=1e-6)
    # batch std over the 7 masked tokens 1, 3, 5, 2, 2, 4, 6: mean 23/7
    tokens = torch.tensor([1.0, 3, 5, 2, 2, 4, 6])
    std = tokens.std().item()
    got = ppo.group_mean_batch_std(adv, mask, 2, eps=0.0)
    assert got.flatten().tolist() == pytest.approx(
        [-2 / std, 0.0, 2 / std, 0.0, -1.5 / std, -1.5 / std, 0.5 / std, 2.5 / std], rel=1e-6)


def test_loss_aggregations_by_hand():
    from rlhf_lab.config import LossAgg

    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [9.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # the third row is out
    # tokens 1, 2, 3, 4: token mean 2.5; sequence sums 6, 4: mean 5; sequence means 2, 4: mean 3;
    # sum 10 / (2 sequences x length 4) = 1.25
    expected = {LossAgg.token_mean: 2.5, LossAgg.seq_mean_token_sum: 5.0, LossAgg.seq_mean_token_mean: 3.0,
                LossAgg.seq_mean_token_sum_norm: 1.25}
    for mode, value in expected.items():
        assert ppo.aggregate(x, mask, mode, length=4).item() == pytest.approx(value), mode
    assert ppo.aggregation_units(mask, LossAgg.token_mean).item() == 4
    assert ppo.aggregation_units(mask, LossAgg.seq_mean_token_mean).item() == 2


def test_soft_overlong_penalty_by_hand():
    # cap 32, cache 8: 0 up to 24 tokens, then -1/8 per token, -1 at 32 (coef 1), -0.5 at 32 with coef 0.5
    lengths = torch.tensor([10, 24, 25, 28, 32])
    assert ppo.soft_overlong_penalty(lengths, 32, 8, 1.0).tolist() == [0.0, 0.0, -0.125, -0.5, -1.0]
    assert ppo.soft_overlong_penalty(lengths, 32, 8, 0.5).tolist()[-1] == -0.5
