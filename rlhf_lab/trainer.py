"""The PPO loop. One iteration reads top to bottom as in docs/architecture.md:

    prompts -> rollout -> score (one reward model or an ensemble) -> forward passes (policy, reference, critic)
            -> policy filtration -> reward shaping -> advantages/returns -> PPO epochs x minibatches -> metrics

A critic-free estimator (adv_estimator != gae) has no critic: `critic` is None, and its passes, its update and
its metrics are skipped.

Every trick is asked of `Tricks` (rlhf_lab.algo.tricks) at the place it applies, marked [group]. Where the work runs
(device, precision, offloading, clocks) is asked of `Runtime` (rlhf_lab.engine.runtime); the models arrive as role
modules (rlhf_lab.engine.roles) and with their optimisers, built by rlhf_lab.run.build.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields

import torch
from torch import nn

from rlhf_lab.algo import ppo
from rlhf_lab.config.schema import AdvEstimator, Config, CriticPretrain, KLEstimator, Precision
from rlhf_lab.engine.data import Stream, encode, sft_batch
from rlhf_lab.algo.metrics import fetch, r_squared, rollout_metrics
from rlhf_lab.engine.packing import pack, pad_left, response_mask
from rlhf_lab.engine.roles import lm_loss
from rlhf_lab.engine.rollout import RolloutEngine
from rlhf_lab.engine.runtime import Runtime
from rlhf_lab.algo.tricks import Tricks


class Diverged(RuntimeError):
    """A loss or a logit became non-finite."""


# training statistics that must stay finite (a non-finite loss makes its gradient norm non-finite too)
FINITE_STATS = ("ppo/loss", "ppo/value_loss", "ppo/grad_norm_policy", "ppo/grad_norm_critic")


@dataclass
class Rollout:
    """One batch of experience. B sequences, P prompt tokens, R response tokens, T = P + R."""

    prompts: list[str]
    responses: list[str]
    ids: torch.Tensor  # (B, T) prompt + response token ids
    attention: torch.Tensor  # (B, T) attention mask (0 on left padding and after the first EOS)
    tokens: torch.Tensor  # (B, R) response token ids
    mask: torch.Tensor  # (B, R) 1.0 on response tokens up to and including the first EOS
    logprobs: torch.Tensor  # (B, R) policy log-probs of the sampled tokens (0 where mask is 0, like the next four)
    ref_logprobs: torch.Tensor  # (B, R) reference log-probs
    init_logprobs: torch.Tensor  # (B, R) the initial policy's log-probs (the reference's where it is the start)
    entropy: torch.Tensor  # (B, R) policy entropy per position
    values: torch.Tensor  # (B, R) critic values (0 without a critic)
    scores: torch.Tensor  # (B,) reward-model scores ([reward_ensemble]: the members' scores aggregated)
    member_scores: torch.Tensor  # (B, K) each reward model's score (K = 1 without an ensemble)
    finished: torch.Tensor  # (B,) bool: the response ended with EOS (not truncated at ppo.max_new_tokens)
    gold: torch.Tensor | None  # (B,) gold reward (toy task only)
    seconds_generate: float
    greedy_scores: torch.Tensor | None = None  # (B,) adv_estimator=remax: the greedy response's score
    greedy_lengths: torch.Tensor | None = None  # (B,) ... and its length in tokens

    def select(self, rows: torch.Tensor) -> "Rollout":
        """The rollout of these rows only (K,), in their order: the batch [policy_filter] keeps."""
        picked = rows.tolist()  # the texts are host lists
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value[rows]
            elif isinstance(value, list):
                value = [value[i] for i in picked]
            values[f.name] = value
        return Rollout(**values)


class PPOTrainer:
    """The PPO loop over four role modules: `policy` (Policy) and `critic` (Critic) train with their optimisers;
    `reference` (Policy, or AdapterFreePolicy under LoRA) and `reward_model` (RewardModels: one reward model
    or several) are frozen, and so is `initial` (Policy), the initial policy where the reference is not the
    policy's start ([reference=soup]; else None)."""

    def __init__(self, cfg: Config, runtime: Runtime, *, policy: nn.Module, reference: nn.Module,
                 critic: nn.Module | None, reward_model: nn.Module, policy_optimizer: torch.optim.Optimizer,
                 critic_optimizer: torch.optim.Optimizer | None, engine: RolloutEngine, tokenizer, prompts: Stream,
                 sft_examples: Stream | None, gold_reward=None, initial: nn.Module | None = None):
        self.cfg, self.runtime, self.tokenizer = cfg, runtime, tokenizer
        self.policy, self.reference, self.critic, self.reward_model = policy, reference, critic, reward_model
        self.initial = initial
        recompute = cfg.rollout.recompute_logprobs
        # the old log-probs from a training-pass forward where sampling rounds differently (see `rollout`)
        self.recompute_logprobs = runtime.precision != Precision.fp32 if recompute is None else recompute
        self.policy_optimizer, self.critic_optimizer = policy_optimizer, critic_optimizer
        self.engine = engine
        self.prompts, self.sft_examples, self.gold_reward = prompts, sft_examples, gold_reward
        self.tricks = Tricks(cfg)
        with runtime.fork_rng(), runtime.autocast(), runtime.gathered(policy):  # the run's streams untouched
            self.engine.check(*self._encode(prompts.peek(2)))
        self.vocab_size = len(tokenizer)

    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> left-padded ids and mask (B, P) on the models' device."""
        return pad_left(encode(self.tokenizer, texts), self.tokenizer.pad_token_id, self.runtime.device)

    # ================================================================ rollout and scoring
    @torch.no_grad()
    def rollout(self) -> Rollout:
        """Sample and score this rank's share of the batch, then gather the whole batch on every rank."""
        ppo_cfg, tok, runtime = self.cfg.ppo, self.tokenizer, self.runtime
        group = ppo_cfg.samples_per_prompt  # each prompt `group` times in a row: its responses are a group
        prompts = [p for p in self.prompts.take(ppo_cfg.batch_size // group) for _ in range(group)]  # every rank
        query_ids, query_mask = self._encode(prompts[runtime.share(len(prompts))])

        started = runtime.now()
        greedy = None
        with runtime.rank_rng(), runtime.autocast(), runtime.gathered(self.policy):  # [fsdp] one all-gather
            generated = self.engine.sample(query_ids, query_mask)  # tokens, their log-probs and entropy, (b, R)
            if self.cfg.adv_estimator.name == AdvEstimator.remax:  # [adv_estimator=remax] the baseline's response
                greedy = self.engine.greedy(query_ids, query_mask)
        seconds_generate = runtime.now() - started
        tokens = generated.tokens
        mask = response_mask(tokens, tok.eos_token_id)
        ids = torch.cat([query_ids, tokens], dim=1)
        attention = torch.cat([query_mask, mask.long()], dim=1)
        n = tokens.shape[1]

        packing = pack(ids, attention)  # one packing (rlhf_lab.engine.packing) for the scoring passes
        gather = runtime.gather
        frozen = [m for m in (self.reference, self.reward_model, self.initial) if m is not None]
        # no_grad (the method's), not inference_mode: FSDP's gathered weights are reused by the training passes
        with runtime.borrow(*frozen):
            member_scores = self.reward_model(packing)  # (b, K) [reward_ensemble]
            ref_logprobs = ppo.logprobs_from_logits(self.reference(packing, n, ppo_cfg.temperature), tokens)
            init_logprobs = (ref_logprobs if self.initial is None else  # [reference=soup] the start is not the ref
                             ppo.logprobs_from_logits(self.initial(packing, n, ppo_cfg.temperature), tokens))
            values = self.critic(packing, n) if self.critic is not None else torch.zeros_like(ref_logprobs)
            greedy_scores = greedy_lengths = None
            if greedy is not None:
                greedy_mask = response_mask(greedy, tok.eos_token_id)
                greedy_scores = gather(self.tricks.ensemble_score(self.reward_model(pack(torch.cat(
                    [query_ids, greedy], dim=1), torch.cat([query_mask, greedy_mask.long()], dim=1)))))
                greedy_lengths = gather(greedy_mask.sum(1))
        # The old log-probs: those generation sampled from (no second pass) where they equal the training pass's
        # (fp32, within 2e-5); under bf16/fp16 the KV-cache decode rounds differently from the full pass (up to
        # 0.2 nats a token on SmolLM2-135M), so the training pass recomputes them and the ratio starts at 1.
        logprobs = generated.logprobs
        if self.recompute_logprobs:
            logprobs = ppo.logprobs_from_logits(self.policy(packing, n, ppo_cfg.temperature), tokens)

        # [ranks] the whole batch on every rank (the identity on one process); prompts padded on the left,
        # responses on the right.
        query_ids = gather(query_ids, tok.pad_token_id, left=True)
        query_mask = gather(query_mask, 0, left=True)
        logprobs, ref_logprobs = gather(logprobs * mask), gather(ref_logprobs * mask)
        init_logprobs = gather(init_logprobs * mask)
        entropy, values, member_scores = gather(generated.entropy * mask), gather(values * mask), gather(member_scores)
        scores = self.tricks.ensemble_score(member_scores)  # [reward_ensemble] (B, K) -> (B,)
        tokens, mask = gather(tokens, tok.pad_token_id), gather(mask)

        text_tokens = tokens.masked_fill(tokens == tok.eos_token_id, tok.pad_token_id)
        responses = tok.batch_decode(text_tokens, skip_special_tokens=True)
        finished = ((tokens == tok.eos_token_id) & mask.bool()).any(1)
        gold = None
        if self.gold_reward is not None:
            gold = torch.tensor(self.gold_reward(prompts, responses, finished.tolist()), device=runtime.device)
        return Rollout(prompts, responses, torch.cat([query_ids, tokens], dim=1),
                       torch.cat([query_mask, mask.long()], dim=1), tokens, mask, logprobs, ref_logprobs,
                       init_logprobs, entropy, values, scores, member_scores, finished, gold, seconds_generate,
                       greedy_scores, greedy_lengths)

    # ================================================================ one PPO iteration
    def step(self) -> tuple[dict[str, float], Rollout]:
        """Rollout, filter, shape rewards, estimate advantages, then PPO epochs. Returns (metrics, rollout): the
        rollout metrics describe every sampled response, the training ones the kept responses."""
        clock = self.runtime.now
        started = clock()
        batch = self.rollout()
        rollout_seconds = clock() - started
        kept = self.filtered(batch)  # [policy_filter]
        shaped_scores, advantages, returns = self.advantages(kept)

        train_started = clock()
        train_stats = self.train(kept, advantages, returns)
        train_seconds = clock() - train_started

        metrics = fetch({  # every metric of the iteration, in one device-to-host copy
            **rollout_metrics(tokens=batch.tokens, mask=batch.mask, eos_id=self.tokenizer.eos_token_id,
                              vocab_size=self.vocab_size, logp=batch.logprobs, ref_logp=batch.ref_logprobs,
                              init_logp=batch.init_logprobs, entropy=batch.entropy, scores=batch.scores,
                              shaped_scores=shaped_scores, gold=batch.gold),
            **train_stats,
            **self.remedy_metrics(batch, kept),
            "adv/mean": ppo.masked_mean(advantages, kept.mask),
            "adv/std": ppo.masked_var(advantages, kept.mask).sqrt(),
            "return/mean": ppo.masked_mean(returns, kept.mask),
            **({"value/mean": ppo.masked_mean(kept.values, kept.mask)} if self.critic is not None else {}),
        })
        self._check_finite(metrics)
        # [kl_penalty=adaptive] the controller reads the per-sequence KL of the penalty's own estimator
        self.tricks.update_kl_coef(metrics, len(batch.prompts))
        metrics.update({
            "kl_ctl/coef": self.tricks.kl_coef,
            "perf/rollout_seconds": rollout_seconds,
            "perf/train_seconds": train_seconds,
            "perf/iter_seconds": clock() - started,
            "perf/gen_tokens_per_second": metrics["length/response_tokens"] / max(batch.seconds_generate, 1e-9),
        })
        return metrics, batch

    def filtered(self, batch: Rollout) -> Rollout:
        """[policy_filter] The responses PPO trains on: within each prompt's group, chosen by score."""
        rows = self.tricks.kept_rows(batch.scores)
        return batch if rows is None else batch.select(rows)

    def remedy_metrics(self, batch: Rollout, kept: Rollout) -> dict[str, torch.Tensor]:
        """The ensemble's disagreement (the std across members, mean over responses) and, on the toy task, how
        well the proxy explains the gold reward on the kept responses (R^2; on all of them: reward/...)."""
        metrics = {}
        if batch.member_scores.shape[1] > 1:
            metrics["reward/ensemble_std"] = batch.member_scores.std(1).mean()
        if kept is not batch and kept.gold is not None:
            metrics["filter/proxy_gold_r2_kept"] = r_squared(kept.scores, kept.gold)
            metrics["filter/gold_kept_mean"] = kept.gold.mean()
        return metrics

    def advantages(self, batch: Rollout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reward shaping, then advantages and returns. Returns (shaped scores (B,), advantages, returns (B, R))."""
        tricks = self.tricks
        # [reward_scaling, reward_norm, reward_clip]; [adv_estimator=remax] the greedy baseline shaped alike
        shaped, baseline = tricks.shape_scores(batch.scores, batch.greedy_scores)
        shaped = shaped + tricks.overlong_penalty(batch.mask.sum(1))  # [overlong=soft_penalty]
        if baseline is not None:
            baseline = baseline + tricks.overlong_penalty(batch.greedy_lengths)
        rewards, _ = tricks.token_rewards(shaped, batch.logprobs, batch.ref_logprobs,
                                          batch.mask)  # [kl_penalty=token|adaptive]
        advantages, returns = tricks.advantages(rewards, batch.values, batch.mask, shaped,
                                                baseline)  # [adv_estimator, adv_norm, adv_clip]
        return shaped, advantages, returns

    # ================================================================ PPO epochs x minibatches
    def train(self, batch: Rollout, advantages: torch.Tensor, returns: torch.Tensor,
              update_policy: bool = True) -> dict[str, torch.Tensor]:
        """PPO epochs x minibatches. Returns the mean of each training statistic, as 0-d tensors (no host sync
        inside the loop; the caller checks them for non-finite values once, see `_check_finite`)."""
        ppo_cfg, tricks, runtime = self.cfg.ppo, self.tricks, self.runtime
        rows, n = batch.tokens.shape  # rows: ppo.batch_size, or what [policy_filter] kept (cfg.train_rows)
        size = rows // ppo_cfg.minibatches
        policy_mask = tricks.policy_mask(batch.mask, batch.finished)  # [overlong=filter]
        sums: dict[str, torch.Tensor] = {}
        for _ in range(ppo_cfg.epochs):
            order = torch.randperm(rows, device=runtime.device)  # the same on every rank
            for start in range(0, rows, size):
                minibatch = order[start:start + size]
                mb = minibatch[runtime.share(size)]  # [ranks] this rank's part of the minibatch
                mask = batch.mask[mb]
                # [ranks] each mean below is over this rank's part; DDP averages the ranks' gradients, so
                # weighting by the part's share of the minibatch's tokens (the policy's: its [loss_agg] units)
                # x ranks gives the minibatch's mean (exactly 1 on one process)
                packing = pack(batch.ids[mb], batch.attention[mb])  # shared by the policy and the critic
                stats = {}
                if update_policy:
                    units = ppo.aggregation_units(policy_mask[mb], tricks.loss_agg) * runtime.world_size
                    weight = units / ppo.aggregation_units(policy_mask[minibatch], tricks.loss_agg).clamp(min=1)
                    # the token means (clip fraction, approx KL) by the part's share of the tokens, whatever [loss_agg]
                    token_weight = policy_mask[mb].sum() * runtime.world_size / policy_mask[minibatch].sum().clamp(min=1)
                    stats.update(self.policy_update(packing, batch.tokens[mb], policy_mask[mb], batch.logprobs[mb],
                                                    batch.ref_logprobs[mb], advantages[mb], n, weight, token_weight))
                if self.critic is not None:  # ---- critic: value loss [value_clip], [grad_clip]
                    weight = mask.sum() * runtime.world_size / batch.mask[minibatch].sum()
                    values = self.critic(packing, n)
                    value_loss, value_clipfrac = tricks.value_loss(values, batch.values[mb], returns[mb], mask)
                    value_loss = weight * value_loss
                    stats["ppo/value_loss"] = value_loss.detach()
                    stats["ppo/value_clipfrac"] = weight * value_clipfrac
                    stats["ppo/grad_norm_critic"] = self._optimise(self.critic, self.critic_optimizer, value_loss)
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + value
        steps = ppo_cfg.epochs * ppo_cfg.minibatches
        means = runtime.mean_over_ranks({key: value / steps for key, value in sums.items()})
        if self.critic is not None:
            means["ppo/explained_var"] = ppo.explained_variance(batch.values, returns, batch.mask)
        return means

    def policy_update(self, packing, tokens, mask, old_logprobs, ref_logprobs, advantages, n: int,
                      weight: torch.Tensor | float = 1.0,
                      token_weight: torch.Tensor | float = 1.0) -> dict[str, torch.Tensor]:
        """One minibatch step of the policy: clipped surrogate, entropy bonus, KL loss, ptx loss, each token loss
        aggregated by [loss_agg] over `mask` (the policy's: [overlong=filter] drops truncated responses).
        `weight` scales the [loss_agg] means of this rank's part of the minibatch, `token_weight` its token means
        (the clip fraction and approx KL; see `train`)."""
        tricks = self.tricks
        logits = self.policy(packing, n, self.cfg.ppo.temperature)  # (B, R, V)
        if tricks.entropy_coef:
            logprobs, entropy = ppo.logprobs_and_entropy(logits, tokens)
        else:
            logprobs = ppo.logprobs_from_logits(logits, tokens)
        logprobs = logprobs * mask  # 0 after EOS, as the rollout's: the ratio there is exactly 1
        zero = torch.zeros((), device=logprobs.device)
        policy_loss, clipfrac = tricks.policy_loss(logprobs, old_logprobs, advantages, mask)  # [policy_clip]
        entropy = tricks.aggregate(entropy, mask) if tricks.entropy_coef else zero  # [entropy_bonus]
        kl = tricks.kl_term(logprobs, ref_logprobs, mask)  # [kl_penalty in the loss]
        ptx_loss = self.ptx_loss() if tricks.ptx_coef else zero  # [ptx_loss]
        loss = tricks.policy_objective(policy_loss, entropy, kl, ptx_loss, weight)
        entropy_bonus = tricks.entropy_coef * entropy
        with torch.no_grad():
            approx_kl = ppo.masked_mean(ppo.kl_estimate(old_logprobs, logprobs, KLEstimator.k3), mask)
        return {"ppo/policy_loss": weight * policy_loss.detach(), "ppo/clipfrac": token_weight * clipfrac,
                "ppo/approx_kl": token_weight * approx_kl, "ppo/entropy_bonus": weight * entropy_bonus.detach(),
                "ppo/ptx_loss": ptx_loss.detach(), "ppo/loss": loss.detach(),
                "ppo/grad_norm_policy": self._optimise(self.policy, self.policy_optimizer, loss)}

    def ptx_loss(self) -> torch.Tensor:
        """[ptx_loss] LM loss on a batch of SFT examples: this rank's part of it, weighted like the minibatch
        (see `train`) by its share of the batch's target tokens."""
        examples = self.sft_examples.take(self.cfg.ptx_loss.batch_size)  # the same on every rank
        ids, mask, loss_mask = sft_batch(self.tokenizer, examples, self.runtime.device)
        rows = self.runtime.share(len(examples))
        weight = loss_mask[rows, 1:].sum() * self.runtime.world_size / loss_mask[:, 1:].sum()
        return weight * lm_loss(self.policy, ids[rows], mask[rows], loss_mask[rows])

    def _optimise(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> torch.Tensor:
        """Backward, [grad_clip] (the norm before clipping is returned, as a 0-d tensor), step."""
        optimizer.zero_grad(set_to_none=True)
        self.runtime.backward(loss)
        grad_norm = self.runtime.clip_grad_norm_(model.parameters(), self.tricks.max_grad_norm)
        optimizer.step()
        return grad_norm.detach()

    @staticmethod
    def _check_finite(stats: dict[str, float]) -> None:
        """Raise Diverged if a loss or a gradient norm of these PPO epochs is not finite. Checked once per
        iteration, after the updates: the weights may then be non-finite, which is why a checkpoint is never
        written from them (checkpoint.save refuses) and the run stops with its last good checkpoint kept."""
        bad = {key: value for key, value in stats.items()
               if key in FINITE_STATS and not math.isfinite(value)}
        if bad:
            raise Diverged("non-finite " + ", ".join(f"{key} ({value})" for key, value in bad.items()))

    # ================================================================ critic pre-training
    def warm_up(self) -> list[dict[str, float]]:
        """[critic_pretrain] Iterations on rollouts of the frozen initial policy before PPO: the critic (if any)
        trains alone; the running reward statistics warm up on them either way, so that a critic-free arm of a
        sweep starts PPO with the same statistics and at the same point of the prompt stream as its GAE baseline.

        steps: exactly `steps` iterations; converge: until explained variance >= target, at most `max_steps`
        (all of them without a critic). Returns the per-iteration value stats (empty dicts without a critic).
        """
        return list(self.warm_up_iterations())

    def warm_up_iterations(self) -> Iterator[dict[str, float]]:
        """`warm_up` one iteration at a time: each one's value stats as it ends, so that a caller can report
        them while the warm-up runs (it takes a while: full rollouts)."""
        pre = self.cfg.critic_pretrain
        for _ in range(pre.iterations):
            batch = self.filtered(self.rollout())  # [policy_filter] the critic fits what PPO will train on
            _, advantages, returns = self.advantages(batch)
            if self.critic is None:
                yield {}
                continue
            stats = fetch(self.train(batch, advantages, returns, update_policy=False))
            self._check_finite(stats)
            yield stats
            if pre.name == CriticPretrain.converge and stats["ppo/explained_var"] >= pre.target_explained_var:
                break
