"""Each trick does exactly what its name says: unit tests on hand-built tensors and tiny models."""

import math

import pytest
import torch

from conftest import make_config, tiny_trainer
from rlhf_lab.algo import ppo
from rlhf_lab.config.schema import ConfigError, KLEstimator
from rlhf_lab.engine.data import Stream, sft_batch
from rlhf_lab.engine.packing import pack
from rlhf_lab.engine.roles import lm_loss
from rlhf_lab.algo.tricks import Tricks

BATCH_1, BATCH_2 = torch.tensor([1.0, 2.0, 3.0, 6.0]), torch.tensor([-2.0, 0.0])


def test_reward_norm_running_uses_all_scores_seen_so_far():
    tricks = Tricks(make_config("preset=vanilla", "reward_norm=running"))
    tricks.shape_scores(BATCH_1)
    out = tricks.shape_scores(BATCH_2)[0]
    everything = torch.cat([BATCH_1, BATCH_2])
    torch.testing.assert_close(out, (BATCH_2 - everything.mean()) / everything.std())
    assert tricks.score_stats.count == 6


def test_reward_norm_batch_uses_this_batch_only():
    tricks = Tricks(make_config("preset=vanilla", "reward_norm=batch"))
    tricks.shape_scores(BATCH_1)
    torch.testing.assert_close(tricks.shape_scores(BATCH_2)[0], torch.tensor([-1.0, 1.0]) / math.sqrt(2))


def test_reward_scaling_divides_by_running_std_without_centering():
    tricks = Tricks(make_config("preset=vanilla", "reward_scaling=running_std"))
    tricks.shape_scores(BATCH_1)
    out = tricks.shape_scores(BATCH_2)[0]
    torch.testing.assert_close(out, BATCH_2 / torch.cat([BATCH_1, BATCH_2]).std())


def test_reward_clip_applies_after_normalisation():
    cfg = make_config("preset=vanilla", "reward_norm=batch", "reward_clip=on", "reward_clip.clip=0.5")
    out = Tricks(cfg).shape_scores(torch.tensor([0.0, 0.0, 0.0, 10.0]))[0]
    assert out.max().item() == pytest.approx(0.5) and out.min().item() == pytest.approx(-0.5)
    unclipped = Tricks(make_config("preset=vanilla")).shape_scores(torch.tensor([-9.0, 9.0]))[0]
    torch.testing.assert_close(unclipped, torch.tensor([-9.0, 9.0]))


@pytest.mark.parametrize("estimator", list(KLEstimator))
def test_token_kl_penalty_per_estimator(estimator):
    cfg = make_config("kl_penalty=token", "kl_penalty.coef=0.3", f"kl_penalty.estimator={estimator.value}")
    logp, ref = torch.tensor([[-1.0, -2.0, -0.5]]), torch.tensor([[-1.5, -1.0, -0.5]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    rewards, kl = Tricks(cfg).token_rewards(torch.tensor([2.0]), logp, ref, mask)
    expected_kl = {"k1": [0.5, -1.0], "k2": [0.125, 0.5],
                   "k3": [math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0]}[estimator.value]
    torch.testing.assert_close(kl, torch.tensor([expected_kl + [0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.3 * expected_kl[0], 2.0 - 0.3 * expected_kl[1], 0.0]]))


def test_kl_penalty_loss_and_off_keep_the_reward_clean():
    logp, ref, mask = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]]), torch.ones(1, 2)
    for option in ("loss", "off"):
        rewards, _ = Tricks(make_config(f"kl_penalty={option}")).token_rewards(torch.tensor([1.0]), logp, ref, mask)
        torch.testing.assert_close(rewards, torch.tensor([[0.0, 1.0]]))
    as_loss = Tricks(make_config("kl_penalty=loss", "kl_penalty.loss_coef=0.2"))
    k3 = ppo.kl_estimate(logp, ref, KLEstimator.k3).mean()
    kl = as_loss.kl_term(logp, ref, mask)
    assert kl.item() == pytest.approx(k3.item())
    zero = torch.zeros(())
    assert as_loss.policy_objective(zero, zero, kl, zero).item() == pytest.approx(0.2 * k3.item())
    assert Tricks(make_config("kl_penalty=token")).kl_term(logp, ref, mask).item() == 0.0


def test_policy_objective_applies_every_coefficient_once():
    """weight * (surrogate - c_ent * entropy + c_kl * KL) + c_ptx * ptx, with each group's coefficient."""
    tricks = Tricks(make_config("preset=vanilla", "entropy_bonus=on", "entropy_bonus.coef=0.1", "kl_penalty=loss",
                                "kl_penalty.loss_coef=0.2", "ptx_loss=on", "ptx_loss.coef=0.5"))
    terms = [torch.tensor(v) for v in (1.0, 2.0, 3.0, 4.0)]  # surrogate, entropy, KL, ptx
    assert tricks.policy_objective(*terms, weight=0.5).item() == pytest.approx(0.5 * (1 - 0.2 + 0.6) + 2.0)
    plain = Tricks(make_config("preset=vanilla"))
    assert plain.policy_objective(*terms, weight=0.5).item() == pytest.approx(0.5)  # every extra term off


@pytest.mark.parametrize("overrides", [("kl_penalty=loss", "kl_penalty.estimator=k1"),
                                       ("kl_penalty=token", "kl_penalty.estimator=k1", "kl_penalty.also_in_loss=true")])
def test_k1_as_a_loss_is_an_error_saying_why(overrides):
    with pytest.raises(ConfigError, match="E\\[grad k1\\] = E\\[grad log pi\\] = 0"):
        make_config(*overrides)


def test_k1_loss_has_zero_expected_gradient_and_k3_does_not():
    """Why the config refuses k1 as a loss: sampled from the policy itself, the mean gradient of k1 = log pi -
    log ref is E[grad log pi] = grad sum(pi) = 0 (computed exactly over a 5-token vocabulary), that of k3 is not."""
    logits = torch.randn(5, requires_grad=True)
    ref = torch.log_softmax(torch.randn(5), 0)
    for estimator, zero in ((KLEstimator.k1, True), (KLEstimator.k3, False)):
        logp = torch.log_softmax(logits, 0)
        expected = (logp.exp().detach() * ppo.kl_estimate(logp, ref, estimator)).sum()  # E_{x ~ pi_old}[k(x)]
        grad, = torch.autograd.grad(expected, logits)
        assert (grad.abs().max().item() < 1e-6) == zero


def test_adaptive_kl_coefficient_moves_towards_the_target():
    tricks = Tricks(make_config("kl_penalty=adaptive", "kl_penalty.coef=0.1", "kl_penalty.target=1.0",
                                "kl_penalty.horizon=100"))
    tricks.update_kl_coef({"kl/ref_k1": 5.0}, n_samples=10)  # the penalty's own estimator's KL
    assert tricks.kl_coef == pytest.approx(0.1 * 1.02)
    fixed = Tricks(make_config("kl_penalty=token", "kl_penalty.coef=0.1"))
    fixed.update_kl_coef({"kl/ref_k1": 5.0}, n_samples=10)  # kl_penalty=token: the coefficient never moves
    assert fixed.kl_coef == 0.1


def test_advantage_normalisation_and_clipping():
    rewards, values = torch.tensor([[0.0, 0.0, 4.0], [0.0, 1.0, 0.0]]), torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    raw, _ = ppo.gae(rewards, values, mask, 1.0, 0.95)
    off, _ = Tricks(make_config("preset=vanilla", "adv_norm=off")).advantages(rewards, values, mask)
    torch.testing.assert_close(off, raw)
    white, _ = Tricks(make_config("preset=vanilla", "adv_norm=whiten")).advantages(rewards, values, mask)
    assert ppo.masked_mean(white, mask).item() == pytest.approx(0, abs=1e-6)
    assert ppo.masked_var(white, mask).item() == pytest.approx(1, abs=1e-5)
    centered, _ = Tricks(make_config("preset=vanilla", "adv_norm=center")).advantages(rewards, values, mask)
    torch.testing.assert_close(centered, (raw - ppo.masked_mean(raw, mask)) * mask)
    clipped, _ = Tricks(make_config("preset=vanilla", "adv_clip=on", "adv_clip.clip=1.0")).advantages(
        rewards, values, mask)
    torch.testing.assert_close(clipped, raw.clamp(-1, 1))


def test_policy_and_value_clip_selection():
    logp, old = torch.log(torch.tensor([[5.0]])), torch.zeros(1, 1)
    adv, mask = torch.tensor([[-1.0]]), torch.ones(1, 1)
    losses = {option: Tricks(make_config(f"policy_clip={option}")).policy_loss(logp, old, adv, mask)[0].item()
              for option in ("off", "ppo", "dual")}
    assert losses == pytest.approx({"off": 5.0, "ppo": 5.0, "dual": 3.0})
    values, old_values, returns = torch.tensor([[1.0]]), torch.tensor([[0.5]]), torch.tensor([[2.0]])
    off = Tricks(make_config("value_clip=off")).value_loss(values, old_values, returns, mask)[0].item()
    on = Tricks(make_config("value_clip=on", "value_clip.eps=0.2")).value_loss(values, old_values, returns, mask)[0]
    assert off == pytest.approx(0.5) and on.item() == pytest.approx(0.5 * 1.3**2)


def test_entropy_grad_clip_ptx_coefficients():
    assert Tricks(make_config("entropy_bonus=on", "entropy_bonus.coef=0.05")).entropy_coef == 0.05
    assert Tricks(make_config("entropy_bonus=off")).entropy_coef == 0.0
    assert Tricks(make_config("grad_clip=global", "grad_clip.max_norm=0.3")).max_grad_norm == 0.3
    assert Tricks(make_config("grad_clip=off")).max_grad_norm == math.inf
    assert Tricks(make_config("ptx_loss=off")).ptx_coef == 0.0


# ---------------------------------------------------------------- tricks that act on models
def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_critic_init_reward_model_copies_the_reward_model(tiny_checkpoints):
    trainer = tiny_trainer(tiny_checkpoints, "critic_init=reward_model")
    rm_state = trainer.reward_model.members[0].state_dict()
    for key, value in trainer.critic.state_dict().items():
        torch.testing.assert_close(value, rm_state[key], rtol=0, atol=0)


def test_critic_init_sft_and_random(tiny_checkpoints):
    sft = tiny_trainer(tiny_checkpoints, "critic_init=sft")
    policy_backbone = sft.policy.model.base_model.state_dict()
    critic_backbone = sft.critic.model.base_model.state_dict()
    assert all(torch.equal(critic_backbone[k], v) for k, v in policy_backbone.items())
    random = tiny_trainer(tiny_checkpoints, "critic_init=random", seed=1)
    random_backbone = random.critic.model.base_model.state_dict()
    assert not all(torch.equal(random_backbone[k], v) for k, v in policy_backbone.items())


@pytest.mark.parametrize("option", ["steps", "converge"])
def test_critic_pretrain_trains_the_critic_only(tiny_checkpoints, option):
    trainer = tiny_trainer(tiny_checkpoints, f"critic_pretrain={option}", "critic_pretrain.steps=3",
                           "critic_pretrain.max_steps=3",
                           "critic_pretrain.target_explained_var=1.0")
    policy_before, critic_before = state(trainer.policy), state(trainer.critic)
    history = trainer.warm_up()
    assert len(history) == 3  # a target of 1.0 is never reached: converge stops at max_steps
    assert all(torch.equal(v, trainer.policy.state_dict()[k]) for k, v in policy_before.items())
    assert not all(torch.equal(v, trainer.critic.state_dict()[k]) for k, v in critic_before.items())
    assert tiny_trainer(tiny_checkpoints, "critic_pretrain=off").warm_up() == []


def test_critic_pretrain_converge_stops_at_the_target(tiny_checkpoints):
    trainer = tiny_trainer(tiny_checkpoints, "critic_pretrain=converge", "critic_pretrain.max_steps=5",
                           "critic_pretrain.target_explained_var=-1e9")
    assert len(trainer.warm_up()) == 1


def grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def test_ptx_loss_adds_exactly_its_gradient_and_changes_nothing_else(tiny_checkpoints):
    off = tiny_trainer(tiny_checkpoints, "ptx_loss=off", "grad_clip=off")
    on = tiny_trainer(tiny_checkpoints, "ptx_loss=on", "ptx_loss.coef=0.5", "grad_clip=off")
    torch.manual_seed(1)
    batch = off.rollout()
    advantages, returns = off.tricks.advantages(torch.randn_like(batch.mask) * batch.mask, batch.values, batch.mask)
    args = (pack(batch.ids, batch.attention), batch.tokens, batch.mask, batch.logprobs, batch.ref_logprobs, advantages,
            batch.tokens.shape[1])
    sft_examples = Stream(on.sft_examples.draw, 0)
    sft_examples.load_state_dict(on.sft_examples.state_dict())

    stats_off, stats_on = off.policy_update(*args), on.policy_update(*args)
    assert stats_off["ppo/policy_loss"] == pytest.approx(stats_on["ppo/policy_loss"])
    assert stats_off["ppo/ptx_loss"] == 0 and stats_on["ppo/ptx_loss"] > 0

    reference = tiny_trainer(tiny_checkpoints)
    ids, mask, loss_mask = sft_batch(reference.tokenizer, sft_examples.take(4))
    reference.policy.zero_grad()
    (0.5 * lm_loss(reference.policy, ids, mask, loss_mask)).backward()
    g_off, g_on, g_ptx = grads(off.policy), grads(on.policy), grads(reference.policy)
    assert any(not torch.allclose(g_on[k], g_off[k]) for k in g_on)
    for key in g_on:
        torch.testing.assert_close(g_on[key], g_off[key] + g_ptx[key], rtol=1e-4, atol=1e-6)

    # the critic's update does not depend on ptx: same minibatch order, same value targets, same weights after
    torch.manual_seed(2)
    off.train(batch, advantages, returns)
    torch.manual_seed(2)
    on.train(batch, advantages, returns)
    for key, value in off.critic.state_dict().items():
        torch.testing.assert_close(value, on.critic.state_dict()[key])


def test_global_grad_clip_bounds_the_update_norm(tiny_checkpoints):
    trainer = tiny_trainer(tiny_checkpoints, "grad_clip=global", "grad_clip.max_norm=1e-3")
    torch.manual_seed(1)
    batch = trainer.rollout()
    advantages = torch.ones_like(batch.mask) * batch.mask
    stats = trainer.policy_update(pack(batch.ids, batch.attention), batch.tokens, batch.mask, batch.logprobs,
                                  batch.ref_logprobs, advantages, batch.tokens.shape[1])
    clipped_norm = torch.nn.utils.get_total_norm([p.grad for p in trainer.policy.parameters() if p.grad is not None])
    assert stats["ppo/grad_norm_policy"] > 1e-3  # the logged norm is the norm before clipping
    assert clipped_norm.item() == pytest.approx(1e-3, rel=1e-3)


def test_samples_per_prompt_samples_groups_of_one_prompt(tiny_checkpoints):
    """ppo.samples_per_prompt=4 at batch 8: 2 prompts (the stream's first two), each 4 times in a row, with
    responses sampled independently; the batch keeps 8 responses."""
    grouped = tiny_trainer(tiny_checkpoints, "ppo.samples_per_prompt=4")
    expected = grouped.prompts.peek(2)
    torch.manual_seed(0)
    batch = grouped.rollout()
    assert batch.prompts == [expected[0]] * 4 + [expected[1]] * 4
    assert batch.tokens.shape[0] == 8 and len(set(batch.responses[:4])) > 1
    assert grouped.prompts.peek(1) == tiny_trainer(tiny_checkpoints).prompts.peek(3)[2:]  # 2 prompts taken
    with pytest.raises(ConfigError, match="ppo.samples_per_prompt"):
        make_config("ppo.batch_size=8", "ppo.samples_per_prompt=3")
