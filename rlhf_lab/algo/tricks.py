"""The PPO tricks, chosen by their config groups. The trainer asks `Tricks`; it never tests trick names.

Groups with several behaviours map their option names to functions of `ppo.py` (the tables ENSEMBLES, FILTERS,
SCALINGS, NORMALISATIONS, ESTIMATORS, ADV_NORMS and POLICY_LOSSES below), so a new option is one function plus one
table entry plus its YAML file; on/off groups select a coefficient or a bound that is neutral when off (0 or
infinity). The maths is in `ppo.py`, every coefficient of the policy loss applied in `ppo.policy_objective`.
"""

from __future__ import annotations

import functools
import math

import torch

from rlhf_lab.algo import ppo
from rlhf_lab.config.schema import (AdvEstimator, AdvNorm, Config, KLPenalty, OnOff, Overlong, PolicyClip, PolicyFilter,
                             RewardEnsemble, RewardNorm, RewardScaling)


# ---------------------------------------------------------------- reward-model ensembles, (B, K) -> (B,)
# (the members' scores, the reward_ensemble config) -> one score per response
ENSEMBLES = {
    RewardEnsemble.off: lambda scores, ens: scores[:, 0],
    RewardEnsemble.mean: lambda scores, ens: ppo.ensemble_mean(scores),
    RewardEnsemble.min: lambda scores, ens: ppo.ensemble_min(scores),
    RewardEnsemble.mean_minus_std: lambda scores, ens: ppo.ensemble_mean_minus_std(scores, ens.std_coef),
    RewardEnsemble.mean_min: lambda scores, ens: ppo.ensemble_mean_min(scores, ens.lam),
}

# ---------------------------------------------------------------- policy filtration, (B,) scores -> kept rows
FILTERS = {
    PolicyFilter.best_of_n: ppo.best_of_n_rows,
    PolicyFilter.best_random: ppo.best_random_rows,
    PolicyFilter.best_worst: ppo.best_worst_rows,
}


# ---------------------------------------------------------------- sequence-score transforms (ppo.py, "reward shaping")
SCALINGS = {RewardScaling.off: ppo.no_transform, RewardScaling.running_std: ppo.scale_by_running_std}
NORMALISATIONS = {RewardNorm.off: ppo.no_transform, RewardNorm.running: ppo.normalise_running,
                  RewardNorm.batch: ppo.normalise_batch}


# ---------------------------------------------------------------- advantage estimators, -> (advantages, returns)
# (token rewards (B, R), values (B, R) or None, mask (B, R), shaped scores (B,), ReMax's shaped greedy scores (B,)
# or None, the config) -> advantages (B, R), returns (B, R)
def _per_response(advantages_of):
    """A critic-free group estimator on the sequence returns, one number on every token of a response."""
    def estimate(rewards, values, mask, scores, baseline, cfg):
        returns = ppo.sequence_returns(rewards, mask)
        advantages = advantages_of(returns, cfg.ppo.samples_per_prompt, cfg.adv_estimator)
        return ppo.on_every_token(advantages, mask), ppo.on_every_token(returns, mask)
    return estimate


ESTIMATORS = {
    AdvEstimator.gae: lambda rewards, values, mask, scores, baseline, cfg: ppo.gae(
        rewards, values, mask, cfg.ppo.gamma, cfg.ppo.lam),
    AdvEstimator.reinforce_pp: lambda rewards, values, mask, scores, baseline, cfg: ppo.reinforce_pp(
        rewards, mask, cfg.ppo.gamma),
    AdvEstimator.grpo: _per_response(lambda returns, group, est: ppo.grpo_advantages(returns, group, est.scale,
                                                                                     est.eps)),
    AdvEstimator.rloo: _per_response(lambda returns, group, est: ppo.rloo_advantages(returns, group)),
    AdvEstimator.remax: lambda rewards, values, mask, scores, baseline, cfg: ppo.remax(rewards, scores, baseline,
                                                                                      mask),
}


# ---------------------------------------------------------------- advantage transforms, (B, R) -> (B, R)
def _masked_only(adv: torch.Tensor, mask: torch.Tensor, eps: float) -> torch.Tensor:
    return adv * mask


ADV_NORMS = {AdvNorm.off: _masked_only,
             AdvNorm.whiten: lambda adv, mask, eps: ppo.whiten(adv, mask, eps),
             AdvNorm.center: lambda adv, mask, eps: ppo.center(adv, mask)}

POLICY_LOSSES = {PolicyClip.off: ppo.policy_loss_unclipped, PolicyClip.ppo: ppo.policy_loss_ppo,
                 PolicyClip.dual: ppo.policy_loss_dual}


class FixedKLCoef:
    """A constant KL coefficient (0 when the penalty is not in the reward)."""

    def __init__(self, coef: float):
        self.coef = coef

    def update(self, kl: float, n_samples: int) -> None:
        pass


class Tricks:
    """Every trick selected by a `Config`, with the running state some of them keep (saved in checkpoints)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self._scale = SCALINGS[cfg.reward_scaling.name]
        self._normalise = NORMALISATIONS[cfg.reward_norm.name]
        self.score_clip = cfg.reward_clip.clip if cfg.reward_clip.name == OnOff.on else math.inf
        self.adv_clip = cfg.adv_clip.clip if cfg.adv_clip.name == OnOff.on else math.inf
        self._adv_norm = ADV_NORMS[cfg.adv_norm.name]
        self._policy_loss = POLICY_LOSSES[cfg.policy_clip.name]
        kl = cfg.kl_penalty
        self.kl_estimator = kl.per_token
        self.kl_ctl = (ppo.AdaptiveKLController(kl.coef, kl.target, kl.horizon) if kl.name == KLPenalty.adaptive
                       else FixedKLCoef(kl.coef if kl.in_reward else 0.0))
        self.kl_loss_coef = kl.loss_coef if kl.in_loss else 0.0
        self.entropy_coef = cfg.entropy_bonus.coef if cfg.entropy_bonus.name == OnOff.on else 0.0
        self.value_clip_eps = cfg.value_clip.eps if cfg.value_clip.name == OnOff.on else None
        self.max_grad_norm = cfg.grad_clip.max_norm if cfg.grad_clip.name.value == "global" else math.inf
        self.ptx_coef = cfg.ptx_loss.coef if cfg.ptx_loss.name == OnOff.on else 0.0
        self.loss_agg = cfg.loss_agg.name
        # [loss_agg] token losses (B, R) -> one number: the policy loss, entropy bonus and KL loss
        self.aggregate = functools.partial(ppo.aggregate, mode=cfg.loss_agg.name,
                                           length=cfg.loss_agg.length or cfg.ppo.max_new_tokens)
        self.return_stats = ppo.RunningMoments()  # reward_scaling=running_std
        self.score_stats = ppo.RunningMoments()  # reward_norm=running

    # ------------------------------------------------------------ the reward model's verdict
    def ensemble_score(self, member_scores: torch.Tensor) -> torch.Tensor:
        """[reward_ensemble] The members' scores -> one score per response. (B, K) -> (B,)."""
        return ENSEMBLES[self.cfg.reward_ensemble.name](member_scores, self.cfg.reward_ensemble)

    def kept_rows(self, scores: torch.Tensor) -> torch.Tensor | None:
        """[policy_filter] The rows PPO trains on, chosen within each prompt's group by score, or None (all).
        (B,) -> (cfg.train_rows,) row indices. best_random draws from torch's global generator, the same on
        every rank."""
        pf = self.cfg.policy_filter.name
        if pf == PolicyFilter.off:
            return None
        return FILTERS[pf](scores, self.cfg.ppo.samples_per_prompt)

    # ------------------------------------------------------------ reward shaping
    def shape_scores(self, scores: torch.Tensor, baseline: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """reward_scaling -> reward_norm -> reward_clip on reward-model scores. (B,) -> (B,). `baseline` (B,),
        [adv_estimator=remax]'s greedy responses' scores, goes through the same transforms with the statistics of
        `scores` (it is not a policy sample, so it never enters them). Returns (shaped scores, shaped baseline)."""
        for transform, stats, eps in ((self._scale, self.return_stats, self.cfg.reward_scaling.eps),
                                      (self._normalise, self.score_stats, self.cfg.reward_norm.eps)):
            shift, scale = transform(scores, stats, eps)
            scores = (scores - shift) * scale
            baseline = None if baseline is None else (baseline - shift) * scale
        clip = self.score_clip
        return scores.clamp(-clip, clip), None if baseline is None else baseline.clamp(-clip, clip)

    def overlong_penalty(self, lengths: torch.Tensor) -> torch.Tensor:
        """[overlong=soft_penalty] the penalty added to each shaped score (0 otherwise). (B,) -> (B,)."""
        overlong, cap = self.cfg.overlong, self.cfg.ppo.max_new_tokens
        if overlong.name != Overlong.soft_penalty:
            return torch.zeros(lengths.shape, device=lengths.device)
        return ppo.soft_overlong_penalty(lengths, cap, overlong.cache, overlong.coef)

    def policy_mask(self, mask: torch.Tensor, finished: torch.Tensor) -> torch.Tensor:
        """[overlong=filter] the tokens the policy losses see: a truncated response's (finished False) none.
        (B, R), (B,) -> (B, R)."""
        if self.cfg.overlong.name != Overlong.filter:
            return mask
        return mask * finished.unsqueeze(1).to(mask.dtype)

    def token_rewards(self, scores, logp, ref_logp, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token rewards with the in-reward KL penalty [kl_penalty]. Returns (rewards, kl), both (B, R)."""
        kl = ppo.kl_estimate(logp, ref_logp, self.kl_estimator) * mask
        return ppo.token_rewards(scores, kl, mask, self.kl_ctl.coef), kl

    # ------------------------------------------------------------ advantages
    def advantages(self, rewards, values, mask, scores=None, baseline=None) -> tuple[torch.Tensor, torch.Tensor]:
        """[adv_estimator], then [adv_norm], then [adv_clip]. Returns (advantages, returns), both (B, R).
        rewards (B, R): the token rewards (in-reward KL on every token, the shaped score `scores` (B,) on the
        last). gae: with the critic's values (B, R). reinforce_pp: the reward-to-go (GAE with no values,
        lambda 1), whitened over the batch. grpo, rloo: a baseline from the other responses to the prompt
        subtracted from each response's return (the sum of its token rewards), one number on every token.
        remax: `baseline` (B,), the greedy response's shaped score (see ppo.remax_advantages)."""
        advantages, returns = ESTIMATORS[self.cfg.adv_estimator.name](rewards, values, mask, scores, baseline,
                                                                       self.cfg)
        advantages = self._adv_norm(advantages, mask, self.cfg.adv_norm.eps)  # [adv_norm], then [adv_clip]
        return advantages.clamp(-self.adv_clip, self.adv_clip), returns

    # ------------------------------------------------------------ losses
    def policy_loss(self, logp, old_logp, advantages, mask):
        """[policy_clip] surrogate. Returns (loss, clipfrac)."""
        clip = self.cfg.policy_clip
        return self._policy_loss(logp, old_logp, advantages, mask, clip.eps, clip.upper, clip.dual_c, self.aggregate)

    def kl_term(self, logp, ref_logp, mask) -> torch.Tensor:
        """[kl_penalty in the loss] the aggregated per-token KL estimate to the reference (0 when the penalty is not
        in the loss); its coefficient is `kl_loss_coef`. (B, R) each -> 0-d."""
        if self.kl_loss_coef == 0:
            return torch.zeros((), device=logp.device)
        return self.aggregate(ppo.kl_estimate(logp, ref_logp, self.kl_estimator), mask)

    def policy_objective(self, surrogate, entropy, kl, ptx, weight=1.0) -> torch.Tensor:
        """The policy's loss from its aggregated terms, with this config's coefficients (ppo.policy_objective)."""
        return ppo.policy_objective(surrogate, entropy, kl, ptx, self.entropy_coef, self.kl_loss_coef, self.ptx_coef,
                                    weight)

    # ------------------------------------------------------------ the KL coefficient of the reward
    @property
    def kl_coef(self) -> float:
        """[kl_penalty=token|adaptive] the coefficient of the in-reward penalty now (0 when not in the reward)."""
        return self.kl_ctl.coef

    def update_kl_coef(self, rollout_metrics: dict, n_samples: int) -> None:
        """[kl_penalty=adaptive] step the controller with the per-sequence KL to the reference of the penalty's
        own estimator (`rollout_metrics["kl/ref_kX"]`); nothing otherwise."""
        self.kl_ctl.update(rollout_metrics[f"kl/ref_{self.kl_estimator.value}"], n_samples)

    def value_loss(self, values, old_values, returns, mask):
        """[value_clip] value loss. Returns (loss, clipfrac)."""
        return ppo.value_loss(values, old_values, returns, mask, self.value_clip_eps)

    # ------------------------------------------------------------ state for checkpoints
    def state_dict(self) -> dict:
        return {"return_stats": self.return_stats.state_dict(), "score_stats": self.score_stats.state_dict(),
                "kl_coef": self.kl_ctl.coef}

    def load_state_dict(self, state: dict) -> None:
        self.return_stats.load_state_dict(state["return_stats"])
        self.score_stats.load_state_dict(state["score_stats"])
        self.kl_ctl.coef = state["kl_coef"]
