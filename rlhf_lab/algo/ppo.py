"""PPO maths as small pure functions on tensors.

Shape notation: B = sequences in the batch, R = response tokens (padded), V = vocabulary.
`mask` is a (B, R) float tensor, 1.0 on real response tokens (up to and including the first EOS), else 0.0.
Every function here is tested against a naive implementation or hand-computed values (tests/test_ppo_math.py).
"""

from __future__ import annotations

import torch

from rlhf_lab.config.schema import GroupScale, KLEstimator, LossAgg


# ---------------------------------------------------------------- masked statistics
def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over positions where mask is 1. x, mask: (B, R). Returns a scalar, or (B,) / (R,) with dim."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of x over masked positions (Bessel's correction). x, mask: (B, R) -> scalar."""
    n = mask.sum()
    mean = masked_mean(x, mask)
    return (((x - mean) ** 2) * mask).sum() / (n - 1).clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit (unbiased) variance over masked positions. (B, R) -> (B, R), 0 outside the mask."""
    return (x - masked_mean(x, mask)) * torch.rsqrt(masked_var(x, mask) + eps) * mask


def center(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Subtract the masked mean, keep the scale. (B, R) -> (B, R), 0 outside the mask."""
    return (x - masked_mean(x, mask)) * mask


# ---------------------------------------------------------------- log-probabilities and KL
def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] without materialising the full log-softmax. (B, R, V), (B, R) -> (B, R)."""
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per position. (B, R, V) -> (B, R)."""
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


def entropy_from_logp(logp: torch.Tensor) -> torch.Tensor:
    """Entropy of a distribution given as log-probs over its last dimension. (..., V) -> (...)."""
    return -(logp.exp() * logp).sum(-1)


def logprobs_and_entropy(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`logprobs_from_logits` and `entropy_from_logits` from one log-softmax. (B, R, V), (B, R) -> (B, R), (B, R)."""
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), entropy_from_logp(logp)


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: KLEstimator) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from tokens sampled by the policy. (B, R) -> (B, R).

    k1 = log p - log q (unbiased, can be negative); k2 = (log p - log q)^2 / 2 (biased, >= 0);
    k3 = q/p - 1 - log(q/p) (unbiased, >= 0). Schulman, "Approximating KL divergence" (2020).
    """
    log_ratio = logp - ref_logp
    if estimator == KLEstimator.k1:
        return log_ratio
    if estimator == KLEstimator.k2:
        return 0.5 * log_ratio**2
    return torch.expm1(-log_ratio) + log_ratio


# ---------------------------------------------------------------- scoring: reward-model ensembles, (B, K) -> (B,)
# K members' scores of each response; std unbiased (K >= 2)
def ensemble_mean(scores: torch.Tensor) -> torch.Tensor:
    """The members' mean score. (B, K) -> (B,)."""
    return scores.mean(1)


def ensemble_min(scores: torch.Tensor) -> torch.Tensor:
    """The lowest member score: worst-case optimisation. (B, K) -> (B,)."""
    return scores.min(1).values


def ensemble_mean_minus_std(scores: torch.Tensor, std_coef: float) -> torch.Tensor:
    """mean - std_coef * std across members: penalised by the members' disagreement. (B, K) -> (B,)."""
    return scores.mean(1) - std_coef * scores.std(1)


def ensemble_mean_min(scores: torch.Tensor, lam: float) -> torch.Tensor:
    """lam * mean + (1 - lam) * min: a blend of the members' average and worst-case scores. (B, K) -> (B,).
    (Reward-Robust RLHF, Yan et al. 2024, blends a nominal reward with the minimum in the same way, but its nominal
    reward comes from one multi-head Bayesian ensemble; this is not that method.)"""
    return lam * scores.mean(1) + (1 - lam) * scores.min(1).values


# ---------------------------------------------------------------- policy filtration, (B,) scores -> kept rows
def best_of_n_rows(scores: torch.Tensor, group: int) -> torch.Tensor:
    """PF-PPO's best-of-N: the row of each group's highest score. (B,) -> (B / G,) row indices, by group."""
    offsets = torch.arange(0, scores.shape[0], group, device=scores.device)
    return offsets + grouped(scores, group).argmax(1)


def best_random_rows(scores: torch.Tensor, group: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Best-random: each group's best row, then one of its other rows drawn uniformly.
    (B,) -> (2 B / G,) row indices: best and other of group 0, of group 1, ..."""
    g = grouped(scores, group)
    best = g.argmax(1)
    draw = torch.randint(0, group - 1, best.shape, device=scores.device, generator=generator)
    other = draw + (draw >= best).long()  # uniform over the G - 1 rows that are not the best
    offsets = torch.arange(0, scores.shape[0], group, device=scores.device)
    return torch.stack([offsets + best, offsets + other], 1).reshape(-1)


def best_worst_rows(scores: torch.Tensor, group: int) -> torch.Tensor:
    """Best-worst: each group's highest- and lowest-scored rows (distinct rows, even on ties).
    (B,) -> (2 B / G,) row indices: best and worst of group 0, of group 1, ..."""
    g = grouped(scores, group)
    best = g.argmax(1)
    worst = g.scatter(1, best.unsqueeze(1), float("inf")).argmin(1)
    offsets = torch.arange(0, scores.shape[0], group, device=scores.device)
    return torch.stack([offsets + best, offsets + worst], 1).reshape(-1)


# ---------------------------------------------------------------- reward shaping
# Score transforms are affine: (scores (B,), running statistics, eps) -> (shift, scale), applied as
# (x - shift) * scale. Their statistics are fitted on the policy's samples only.
def scale_by_running_std(scores: torch.Tensor, stats: RunningMoments, eps: float) -> tuple[float, float]:
    """reward_scaling=running_std: divide by the running std of returns. With a single terminal reward per episode
    the (undiscounted) return of an episode is its score, so the running statistics are those of the scores."""
    stats.update(scores)
    return 0.0, 1 / (stats.std + eps)


def normalise_running(scores: torch.Tensor, stats: RunningMoments, eps: float) -> tuple[float, float]:
    """reward_norm=running: (score - historical mean) / historical std, the statistics updated with this batch
    first (PPO-max)."""
    stats.update(scores)
    return stats.mean, 1 / (stats.std + eps)


def normalise_batch(scores: torch.Tensor, stats: RunningMoments, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """reward_norm=batch: (score - batch mean) / batch std (unbiased)."""
    return scores.mean(), 1 / (scores.std() + eps)


def no_transform(scores: torch.Tensor, stats: RunningMoments, eps: float) -> tuple[float, float]:
    return 0.0, 1.0


def soft_overlong_penalty(lengths: torch.Tensor, max_len: int, cache: int, coef: float) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025): 0 up to max_len - cache tokens, then falling linearly
    to -coef at max_len (and below beyond it). lengths (B,) -> (B,)."""
    over = (lengths.to(torch.float32) - (max_len - cache)).clamp(min=0)
    return -coef * over / cache


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token reward: -kl_coef * KL_t on every response token, plus the sequence score on its last token.

    scores: (B,), kl: (B, R), mask: (B, R) -> (B, R).
    """
    rewards = -kl_coef * kl * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)
    return rewards.scatter_add(1, last.unsqueeze(1), scores.unsqueeze(1).to(rewards.dtype))


# ---------------------------------------------------------------- advantages: GAE and REINFORCE++
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) as one matrix product, no loop over tokens.

    delta_t = r_t + gamma * V_{t+1} - V_t (V after the last real token is 0);
    A_t = sum_{k >= t} (gamma * lam)^(k - t) * delta_k;  returns R_t = A_t + V_t.
    rewards, values, mask: (B, R) -> advantages (B, R), returns (B, R), both 0 outside the mask.
    """
    next_values = torch.cat([values[:, 1:] * mask[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    deltas = (rewards + gamma * next_values - values) * mask
    steps = torch.arange(rewards.shape[1], device=rewards.device)
    offset = steps.unsqueeze(1) - steps.unsqueeze(0)  # [k, t] = k - t
    decay = torch.where(offset >= 0, (gamma * lam) ** offset.clamp(min=0).to(rewards.dtype),
                        torch.zeros((), dtype=rewards.dtype, device=rewards.device))
    advantages = (deltas @ decay) * mask
    return advantages, (advantages + values) * mask


def reinforce_pp(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ (Hu 2025): the reward-to-go (GAE with no values, lambda 1), whitened over the batch's tokens.
    rewards, mask (B, R) -> advantages (B, R), returns (B, R)."""
    returns, _ = gae(rewards, torch.zeros_like(rewards), mask, gamma, 1.0)
    return whiten(returns, mask), returns


# ---------------------------------------------------------------- advantages: critic-free estimators (G = responses per prompt)
# The batch holds B / G groups of G consecutive responses to one prompt. Each estimator maps the sequence
# returns R (B,) (the sum of a response's token rewards: its shaped score minus any in-reward KL) to one
# advantage per response (B,), which every token of the response then carries.
def grouped(x: torch.Tensor, group: int) -> torch.Tensor:
    """(B, ...) -> (B / G, G, ...): the batch's groups of `group` consecutive rows."""
    return x.reshape(x.shape[0] // group, group, *x.shape[1:])


def on_every_token(per_response: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One number per response carried by each of its tokens. (B,), (B, R) -> (B, R)."""
    return per_response.unsqueeze(1) * mask


def sequence_returns(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A response's return: the sum of its token rewards. (B, R) -> (B,)."""
    return (rewards * mask).sum(1)


def grpo_advantages(returns: torch.Tensor, group: int, scale: GroupScale = GroupScale.group,
                    eps: float = 1e-6) -> torch.Tensor:
    """A response's return minus its group's mean, divided by a std (unbiased, + eps) that `scale` names:
    `group`, its group's std: GRPO (Shao et al. 2024, eq. in §4.1.2); `batch`, the std of every return in the batch:
    Lite PPO's "group-level mean, batch-level std" (Liu et al. 2025, "Tricks or Traps?", §4.1; TRL's
    scale_rewards="batch"); `none`, no division: Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like
    Training", §3.2). One number per response, whatever its length. (B,) -> (B,)."""
    g = grouped(returns, group)
    advantages = (g - g.mean(1, keepdim=True)).reshape(-1)
    if scale == GroupScale.group:
        return advantages / (g.std(1, keepdim=True).expand_as(g).reshape(-1) + eps)
    if scale == GroupScale.batch:
        return advantages / (returns.std() + eps)
    return advantages


def rloo_advantages(returns: torch.Tensor, group: int) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): R minus the mean of the other G - 1 returns of its group. (B,) -> (B,)."""
    g = grouped(returns, group)
    others = (g.sum(1, keepdim=True) - g) / (group - 1)
    return (g - others).reshape(-1)


def remax_advantages(kl_rewards: torch.Tensor, scores: torch.Tensor, greedy_scores: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
    """ReMax (Li et al. 2024, Algorithm 1): the response's score minus the score of the greedy response to the same
    prompt, on every token; with a KL penalty in the reward, each token adds its own KL term only (the convention
    of the paper's code, liziniu/ReMax `compute_returns`: not a reward-to-go, undiscounted here); the greedy
    response carries no KL term. kl_rewards (B, R), scores (B,), greedy_scores (B,), mask (B, R) -> (B, R)."""
    return (kl_rewards + (scores - greedy_scores).unsqueeze(1)) * mask


def remax(rewards: torch.Tensor, scores: torch.Tensor, greedy_scores: torch.Tensor,
          mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ReMax's advantages (`remax_advantages`) from the token rewards: their KL terms are the rewards without the
    score on the last token. Returns (advantages, returns), both (B, R); the return is the sequence's."""
    kl_rewards = rewards - token_rewards(scores, torch.zeros_like(rewards), mask, 0.0)
    return (remax_advantages(kl_rewards, scores, greedy_scores, mask),
            on_every_token(sequence_returns(rewards, mask), mask))


# ---------------------------------------------------------------- losses: aggregation, the policy's, the critic's
def aggregate(x: torch.Tensor, mask: torch.Tensor, mode: LossAgg, length: int) -> torch.Tensor:
    """Token losses (B, R) -> one number, over the masked tokens. token_mean: over all tokens;
    seq_mean_token_sum: the mean over sequences of their sums; seq_mean_token_mean: the mean over sequences of
    their token means; seq_mean_token_sum_norm: the sum over tokens / (sequences x `length`), a constant length
    (Dr. GRPO). Sequences with no masked token count for none of the sequence means."""
    if mode == LossAgg.token_mean:
        return masked_mean(x, mask)
    sums, tokens = (x * mask).sum(1), mask.sum(1)
    sequences = (tokens > 0).sum().clamp(min=1)
    if mode == LossAgg.seq_mean_token_sum:
        return sums.sum() / sequences
    if mode == LossAgg.seq_mean_token_mean:
        return (sums / tokens.clamp(min=1)).sum() / sequences
    return sums.sum() / (sequences * length)


def aggregation_units(mask: torch.Tensor, mode: LossAgg) -> torch.Tensor:
    """What `aggregate` averages over: masked tokens (token_mean) or sequences with one (the others). -> 0-d."""
    return mask.sum() if mode == LossAgg.token_mean else (mask.sum(1) > 0).sum().to(mask.dtype)


def policy_loss_unclipped(logp, old_logp, advantages, mask, eps: float, eps_high: float, dual_c: float,
                          agg=masked_mean):
    """Plain importance-weighted surrogate -A * ratio. Returns (loss, clipfrac=0) ; shapes (B, R) -> scalars."""
    ratio = torch.exp(logp - old_logp)
    return agg(-advantages * ratio, mask), torch.zeros((), device=logp.device)


def policy_loss_ppo(logp, old_logp, advantages, mask, eps: float, eps_high: float, dual_c: float,
                    agg=masked_mean):
    """PPO clipped surrogate: max(-A r, -A clip(r, 1 - eps, 1 + eps_high)); eps_high > eps is DAPO's
    clip-higher (Yu et al. 2025), more room for raising unlikely tokens. Returns (loss, clipfrac)."""
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - eps, 1 + eps_high)
    return agg(torch.maximum(unclipped, clipped), mask), masked_mean((clipped > unclipped).float(), mask)


def policy_loss_dual(logp, old_logp, advantages, mask, eps: float, eps_high: float, dual_c: float,
                     agg=masked_mean):
    """Dual-clip PPO (Ye et al. 2020): for A < 0 the PPO loss is also capped at -c * A. Returns (loss, clipfrac).

    clipfrac counts tokens where either clip is active.
    """
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - eps, 1 + eps_high)
    ppo = torch.maximum(unclipped, clipped)
    cap = -dual_c * advantages
    dual = torch.where(advantages < 0, torch.minimum(ppo, cap), ppo)
    active = (clipped > unclipped) | ((advantages < 0) & (cap < ppo))
    return agg(dual, mask), masked_mean(active.float(), mask)


def policy_objective(surrogate: torch.Tensor, entropy: torch.Tensor, kl: torch.Tensor, ptx: torch.Tensor,
                     entropy_coef: float, kl_coef: float, ptx_coef: float,
                     weight: torch.Tensor | float = 1.0) -> torch.Tensor:
    """The policy's loss, every coefficient applied here: weight * (surrogate - entropy_coef * entropy + kl_coef *
    KL) + ptx_coef * ptx, from the aggregated terms (each 0-d): the clipped surrogate [policy_clip], the entropy
    [entropy_bonus], the KL estimate to the reference [kl_penalty in the loss], the LM loss on SFT data [ptx_loss].
    `weight` scales this rank's share of a minibatch (the ptx loss carries its own)."""
    return weight * (surrogate - entropy_coef * entropy + kl_coef * kl) + ptx_coef * ptx


def value_loss(values, old_values, returns, mask, clip_eps: float | None):
    """0.5 * squared error; with clip_eps, the max with the error of old + clip(new - old, +-eps).

    (B, R) each -> (loss, clipfrac).
    """
    error = (values - returns) ** 2
    if clip_eps is None:
        return 0.5 * masked_mean(error, mask), torch.zeros((), device=values.device)
    clipped_values = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    clipped_error = (clipped_values - returns) ** 2
    return (0.5 * masked_mean(torch.maximum(error, clipped_error), mask),
            masked_mean((clipped_error > error).float(), mask))


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var[returns - values] / Var[returns] over masked positions. (B, R) -> scalar."""
    return 1 - masked_var(returns - values, mask) / masked_var(returns, mask).clamp(min=1e-8)


# ---------------------------------------------------------------- running statistics and the KL controller
class RunningMoments:
    """Mean and (unbiased) std of every value seen so far, merged batch by batch (Chan et al. 1979)."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double().flatten()
        n = x.numel()
        if n == 0:
            return
        batch_mean = x.mean().item()
        batch_m2 = ((x - batch_mean) ** 2).sum().item()
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta**2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return (self.m2 / (self.count - 1)) ** 0.5 if self.count > 1 else 1.0

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2 = state["count"], state["mean"], state["m2"]


class AdaptiveKLController:
    """Proportional controller of the KL coefficient (Ziegler et al. 2019, eq. 2):

    e = clip(KL / target - 1, -0.2, 0.2);  coef <- coef * (1 + e * n_samples / horizon).
    """

    def __init__(self, coef: float, target: float, horizon: int):
        self.coef, self.target, self.horizon = coef, target, horizon

    def update(self, kl: float, n_samples: int) -> None:
        error = min(max(kl / self.target - 1, -0.2), 0.2)
        self.coef *= 1 + error * n_samples / self.horizon


# ---------------------------------------------------------------- MPO's first stage (reference=mpo): DPO on the easy pairs
def mpo_split(gaps: torch.Tensor, easy_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """MPO's data selection (Gou & Nguyen 2024, §3): the pairs whose reward-model score gap |r(chosen) -
    r(rejected)| is largest are the easy ones (DPO trains on them), the rest the hard ones (PPO's prompts).
    gaps (P,) -> (easy rows (floor(P * easy_fraction),), hard rows), each by decreasing |gap|."""
    order = gaps.abs().argsort(descending=True, stable=True)
    easy = int(len(gaps) * easy_fraction)
    return order[:easy], order[easy:]


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO (Rafailov et al. 2023): -log sigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected))),
    on the sequence log-probs of the responses under the policy and the frozen reference, batch mean.
    (B,) x 4 -> (loss (), accuracy (): the share of pairs whose implicit reward prefers the chosen one)."""
    margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    return -torch.nn.functional.logsigmoid(margin).mean(), (margin > 0).float().mean()
