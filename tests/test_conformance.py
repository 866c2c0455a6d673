"""Conformance: every option named after a paper or a reference implementation, on small inputs whose expected
values are worked out here from the paper's formula (with Python arithmetic or the statistics module), never
from the lab's own code. Each section names the paper and the equation or section it implements, as the option's
YAML file does."""

import math
import statistics

import pytest
import torch

from conftest import make_config
from rlhf_lab.algo import ppo
from rlhf_lab.config.schema import KLEstimator, LossAgg
from rlhf_lab.algo.tricks import Tricks


def tricks(*overrides: str) -> Tricks:
    return Tricks(make_config("ppo.minibatches=1", *overrides))


def outcome_rewards(scores: list[float], lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rewards with each response's score on its last token, and the mask. -> (B, R), (B, R)."""
    width = max(lengths)
    mask = (torch.arange(width) < torch.tensor(lengths)[:, None]).float()
    rewards = torch.zeros(len(scores), width)
    rewards[torch.arange(len(scores)), torch.tensor(lengths) - 1] = torch.tensor(scores)
    return rewards, mask


def per_response(advantages: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """The one advantage every token of each response carries (checked to be one, and 0 off the mask)."""
    values = []
    for row, m in zip(advantages, mask.bool()):
        assert torch.allclose(row[m], row[m][0].expand_as(row[m])) and (row[~m] == 0).all()
        values.append(row[m][0].item())
    return values


# ---------------------------------------------------------------- GAE (Schulman et al. 2016, eq. 16)
def test_gae_by_hand():
    # two tokens, gamma=1, lam=0.5: delta_1 = 1 - 0.5 = 0.5; delta_0 = 0 + 0.5 - 0.25 = 0.25
    # A_1 = 0.5, A_0 = 0.25 + 0.5 * 0.5 = 0.5; returns = A + V = (0.75, 1.0)
    adv, ret = ppo.gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.25, 0.5]]), torch.ones(1, 2), 1.0, 0.5)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.5]]))
    torch.testing.assert_close(ret, torch.tensor([[0.75, 1.0]]))

# ---------------------------------------------------------------- KL estimators k1, k2, k3 (Schulman 2020)
def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # log p/q = log 2; k1 = log 2; k2 = (log 2)^2 / 2; k3 = q/p - 1 - log(q/p) = 0.5 - 1 + log 2
    assert ppo.kl_estimate(logp, ref, KLEstimator.k1).item() == pytest.approx(math.log(2))
    assert ppo.kl_estimate(logp, ref, KLEstimator.k2).item() == pytest.approx(math.log(2) ** 2 / 2)
    assert ppo.kl_estimate(logp, ref, KLEstimator.k3).item() == pytest.approx(-0.5 + math.log(2))

# ---------------------------------------------------------------- adaptive KL coefficient (Ziegler et al. 2019, eq. 2)
def test_adaptive_kl_controller_by_hand():
    ctl = ppo.AdaptiveKLController(coef=0.1, target=6.0, horizon=1000)
    ctl.update(kl=9.0, n_samples=100)  # error = clip(0.5, +-0.2) = 0.2 -> coef * (1 + 0.02)
    assert ctl.coef == pytest.approx(0.102)
    ctl.update(kl=5.4, n_samples=100)  # error = -0.1 -> coef * (1 - 0.01)
    assert ctl.coef == pytest.approx(0.102 * 0.99)

# ---------------------------------------------------------------- PPO clip (Schulman et al. 2017, eq. 7), dual clip
# (Ye et al. 2020), clip-higher (DAPO, Yu et al. 2025)
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

# ---------------------------------------------------------------- GRPO (Shao et al. 2024, §4.1.2), Dr. GRPO (Liu et al.
# 2025), Lite PPO (Liu et al. 2025, "Tricks or Traps?": group mean, batch std; ROLL's reward_norm)
# The worked example of issue 23: 2 prompts x 4 responses, very unequal lengths
LITE_SCORES = [1.0, 0.0, 0.0, 0.0, 2.0, 2.5, 1.5, 2.0]
LITE_LENGTHS = [30, 5, 5, 5, 8, 30, 8, 8]


def test_grpo_dr_grpo_and_lite_ppo_by_hand():
    returns = torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 4.0, 4.0])  # two groups of 4
    groups = [[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 4.0, 4.0]]
    centred = [r - statistics.mean(g) for g in groups for r in g]
    group_std = [statistics.stdev(g) for g in groups for _ in g]  # unbiased, as every reference
    batch_std = statistics.stdev([r for g in groups for r in g])
    assert ppo.grpo_advantages(returns, 4, "group", eps=0.0).tolist() == pytest.approx(
        [c / s for c, s in zip(centred, group_std)], rel=1e-6)
    assert ppo.grpo_advantages(returns, 4, "none").tolist() == pytest.approx(centred)
    assert ppo.grpo_advantages(returns, 4, "batch", eps=0.0).tolist() == pytest.approx(
        [c / batch_std for c in centred], rel=1e-6)


def test_lite_ppo_worked_example_under_its_preset():
    """preset=lite_ppo: A_i = (r_i - mean of its group's rewards) / std of the batch's rewards, one number per
    response whatever its length; ~[0.731, -0.244, -0.244, -0.244, 0, 0.487, -0.487, 0] (ROLL, TRL "batch")."""
    groups = [LITE_SCORES[:4], LITE_SCORES[4:]]
    std = statistics.stdev(LITE_SCORES)
    expected = [(r - statistics.mean(g)) / (std + 1e-6) for g in groups for r in g]
    assert expected == pytest.approx([0.731, -0.244, -0.244, -0.244, 0, 0.487, -0.487, 0], abs=1e-3)
    rewards, mask = outcome_rewards(LITE_SCORES, LITE_LENGTHS)
    lite = tricks("preset=lite_ppo", "ppo.batch_size=8")
    advantages, _ = lite.advantages(rewards, None, mask)
    assert per_response(advantages, mask) == pytest.approx(expected, rel=1e-5)


def test_rloo_by_hand():
    returns = torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 4.0])  # groups of 3
    # 1 - (2 + 3) / 2 = -1.5 ; 2 - (1 + 3) / 2 = 0 ; 3 - 1.5 = 1.5 ; 6 - 2 = 4 ; 0 - 5 = -5 ; 4 - 3 = 1
    assert ppo.rloo_advantages(returns, 3).tolist() == [-1.5, 0.0, 1.5, 4.0, -5.0, 1.0]
    # equals G / (G - 1) x (R - group mean)
    centred = ppo.grpo_advantages(returns, 3, "none")
    torch.testing.assert_close(ppo.rloo_advantages(returns, 3), centred * 3 / 2)

# ---------------------------------------------------------------- REINFORCE++ (Hu 2025: whitened reward-to-go)
def test_reinforce_pp_is_the_whitened_reward_to_go():
    rewards = torch.tensor([[-0.1, 0.0, 2.0], [0.0, 1.0, 0.0], [0.0, -0.2, 3.0], [0.5, 0.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    adv, returns = tricks("preset=vanilla", "adv_estimator=reinforce_pp", "ppo.batch_size=4").advantages(
        rewards, None, mask)
    to_go = [[1.9, 2.0, 2.0], [1.0, 1.0, 0.0], [2.8, 2.8, 3.0], [-0.5, -1.0, -1.0]]
    torch.testing.assert_close(returns, torch.tensor(to_go))
    real = [to_go[b][t] for b in range(4) for t in range(3) if mask[b, t]]
    mean, std = statistics.mean(real), statistics.stdev(real)
    expected = [[(to_go[b][t] - mean) / std * mask[b, t].item() for t in range(3)] for b in range(4)]
    torch.testing.assert_close(adv, torch.tensor(expected), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- ReMax (Li et al. 2024, Algorithm 1; liziniu/ReMax code)
def test_remax_by_hand_with_the_kl_on_each_token_only():
    """A_t = -beta * KL_t + (score - greedy score): each token its own KL term (ReMax's code), not a reward-to-go;
    the greedy response carries no KL term."""
    scores, greedy = [1.0, -2.0], [0.5, -3.0]
    kl = [[0.2, 0.1, 0.4], [0.3, -0.1, 0.0]]
    beta, lengths = 0.1, [3, 2]
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    expected = [[(-beta * kl[b][t] + scores[b] - greedy[b]) if t < lengths[b] else 0.0 for t in range(3)]
                for b in range(2)]
    rewards = ppo.token_rewards(torch.tensor(scores), torch.tensor(kl) * mask, mask, beta)
    remax = tricks("preset=vanilla", "adv_estimator=remax", "ppo.batch_size=2")
    advantages, _ = remax.advantages(rewards, None, mask, torch.tensor(scores), torch.tensor(greedy))
    torch.testing.assert_close(advantages, torch.tensor(expected))


def test_remax_baseline_never_enters_the_reward_statistics():
    """reward_norm=running: the statistics are those of the policy's samples; the greedy scores are normalised
    with them, not counted in them."""
    remax = tricks("preset=ppo_max", "adv_estimator=remax", "ppo.batch_size=4", "reward_clip.clip=100")
    samples, greedy = [1.0, 2.0, 4.0, 9.0], [3.0, 3.0, 3.0, 3.0]
    shaped, baseline = remax.shape_scores(torch.tensor(samples), torch.tensor(greedy))
    mean, std = statistics.mean(samples), statistics.stdev(samples)
    assert remax.score_stats.count == 4
    assert shaped.tolist() == pytest.approx([(s - mean) / std for s in samples], rel=1e-5)
    assert baseline.tolist() == pytest.approx([(g - mean) / std for g in greedy], rel=1e-5)


# ---------------------------------------------------------------- loss aggregation (token_mean: DAPO's token-level loss;
# seq_mean_token_mean: GRPO eq. 3; seq_mean_token_sum_norm: Dr. GRPO; seq_mean_token_sum: verl's name)
def test_loss_aggregations_by_hand():
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

# ---------------------------------------------------------------- DAPO's soft overlong punishment (Yu et al. 2025)
def test_soft_overlong_penalty_by_hand():
    # cap 32, cache 8: 0 up to 24 tokens, then -1/8 per token, -1 at 32 (coef 1), -0.5 at 32 with coef 0.5
    lengths = torch.tensor([10, 24, 25, 28, 32])
    assert ppo.soft_overlong_penalty(lengths, 32, 8, 1.0).tolist() == [0.0, 0.0, -0.125, -0.5, -1.0]
    assert ppo.soft_overlong_penalty(lengths, 32, 8, 0.5).tolist()[-1] == -0.5

# ---------------------------------------------------------------- reward-model ensembles (Coste et al. 2024: mean,
# worst-case; uncertainty-weighted as mean - k * std) and the lab's mean_min blend
MEMBERS = torch.tensor([[1.0, 2.0, 6.0], [0.0, -1.0, 1.0]])  # 2 responses x 3 members


def test_ensemble_aggregations_by_hand():
    rows = MEMBERS.tolist()
    assert ppo.ensemble_mean(MEMBERS).tolist() == pytest.approx([statistics.mean(r) for r in rows])
    assert ppo.ensemble_min(MEMBERS).tolist() == pytest.approx([min(r) for r in rows])
    assert ppo.ensemble_mean_minus_std(MEMBERS, 0.5).tolist() == pytest.approx(
        [statistics.mean(r) - 0.5 * statistics.stdev(r) for r in rows])
    for lam in (0.25, 0.0, 1.0):
        assert ppo.ensemble_mean_min(MEMBERS, lam).tolist() == pytest.approx(
            [lam * statistics.mean(r) + (1 - lam) * min(r) for r in rows])


# ---------------------------------------------------------------- PF-PPO's filters ("Policy Filtration in RLHF", 2024)
FILTER_SCORES = torch.tensor([0.5, 2.0, -1.0, 0.0, 3.0, 3.0, 1.0, -2.0])
def test_best_of_n_and_best_worst_rows_by_hand():
    # 2 prompts x 4 responses: the best of group 0 is row 1, its worst row 2; group 1: rows 4 (tie, first), 7
    assert ppo.best_of_n_rows(FILTER_SCORES, 4).tolist() == [1, 4]
    assert ppo.best_worst_rows(FILTER_SCORES, 4).tolist() == [1, 2, 4, 7]
    assert ppo.best_of_n_rows(FILTER_SCORES, 2).tolist() == [1, 3, 4, 6]
    # all tied: best and worst are still two different rows
    rows = ppo.best_worst_rows(torch.zeros(4), 4).tolist()
    assert len(set(rows)) == 2

# ---------------------------------------------------------------- DPO (Rafailov et al. 2023, eq. 7) and MPO's split
# (Gou & Nguyen 2024: easy pairs = the largest reward-model score gaps)
def test_dpo_loss_by_hand():
    # margins beta * ((c - rc) - (r - rr)): 0.5 * ((-1 + 2) - (-3 + 2)) = 1; 0.5 * ((-2 + 1) - (-1 + 1)) = -0.5
    loss, accuracy = ppo.dpo_loss(torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0]),
                                  torch.tensor([-2.0, -1.0]), torch.tensor([-2.0, -1.0]), beta=0.5)
    expected = (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(0.5))) / 2
    assert loss.item() == pytest.approx(expected) and accuracy.item() == 0.5


def test_mpo_split_easy_pairs_have_the_largest_gaps():
    gaps = torch.tensor([0.1, -2.0, 0.5, 3.0, -0.05, 1.0])
    by_size = sorted(range(6), key=lambda i: -abs(gaps[i].item()))  # 3, 1, 5, 2, 0, 4
    easy, hard = ppo.mpo_split(gaps, 0.5)
    assert easy.tolist() == by_size[:3] and hard.tolist() == by_size[3:]
    easy, hard = ppo.mpo_split(gaps, 0.34)  # floor(6 x 0.34) = 2 easy pairs
    assert easy.tolist() == [3, 1] and sorted(hard.tolist()) == [0, 2, 4, 5]
