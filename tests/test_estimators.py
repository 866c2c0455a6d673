"""Advantage estimators, loss aggregation and overlong handling as switches (rlhf_lab.tricks, rlhf_lab.trainer):
the estimators against values worked out by hand on token rewards, and every option through the trainer."""

import math

import pytest
import torch

from conftest import make_config, train_three_and_resume
from rlhf_lab.tricks import Tricks

# 4 responses (2 prompts x 2 samples), 3 token positions; response 1 has 2 tokens, the others 3
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
REWARDS = torch.tensor([[-0.1, 0.0, 2.0], [0.0, 1.0, 0.0], [0.0, -0.2, 3.0], [0.5, 0.0, -1.0]])
RETURNS = [1.9, 1.0, 2.8, -0.5]  # each response's sum of token rewards


def tricks(*overrides: str) -> Tricks:
    return Tricks(make_config("ppo.batch_size=4", "ppo.minibatches=1", "ppo.samples_per_prompt=2",
                              "preset=vanilla", *overrides))


def per_response(advantages: torch.Tensor) -> list[float]:
    """The one advantage every token of each response carries (checked to be one)."""
    values = []
    for row, mask in zip(advantages, MASK):
        real = row[mask.bool()]
        assert torch.allclose(real, real[0].expand_as(real)) and (row[~mask.bool()] == 0).all()
        values.append(real[0].item())
    return values


def test_grpo_rloo_remax_from_token_rewards_by_hand():
    # grpo: groups (1.9, 1.0) and (2.8, -0.5): +-0.45 / std, std = 0.9 / sqrt 2 and 3.3 / sqrt 2
    adv, returns = tricks("adv_estimator=grpo", "adv_estimator.eps=0").advantages(REWARDS, None, MASK)
    s1, s2 = 0.9 / math.sqrt(2), 3.3 / math.sqrt(2)
    assert per_response(adv) == pytest.approx([0.45 / s1, -0.45 / s1, 1.65 / s2, -1.65 / s2], rel=1e-5)
    assert per_response(returns) == pytest.approx(RETURNS)
    # Dr. GRPO: the mean subtracted only
    adv, _ = tricks("adv_estimator=grpo", "adv_estimator.std_norm=false").advantages(REWARDS, None, MASK)
    assert per_response(adv) == pytest.approx([0.45, -0.45, 1.65, -1.65], rel=1e-5)
    # rloo at G = 2: the other response's return subtracted
    adv, _ = tricks("adv_estimator=rloo").advantages(REWARDS, None, MASK)
    assert per_response(adv) == pytest.approx([0.9, -0.9, 3.3, -3.3], rel=1e-5)
    # remax: the greedy responses' returns subtracted
    adv, _ = tricks("adv_estimator=remax").advantages(REWARDS, None, MASK, torch.tensor([1.0, 1.0, 2.0, 0.0]))
    assert per_response(adv) == pytest.approx([0.9, 0.0, 0.8, -0.5], rel=1e-5)


def test_reinforce_pp_is_the_whitened_reward_to_go():
    adv, returns = tricks("adv_estimator=reinforce_pp").advantages(REWARDS, None, MASK)
    to_go = torch.tensor([[1.9, 2.0, 2.0], [1.0, 1.0, 0.0], [2.8, 2.8, 3.0], [-0.5, -1.0, -1.0]])
    torch.testing.assert_close(returns, to_go)
    real = to_go[MASK.bool()]
    expected = (to_go - real.mean()) / real.std() * MASK
    torch.testing.assert_close(adv, expected, rtol=1e-5, atol=1e-6)


def test_group_normalisation_after_an_estimator():
    """adv_norm=group_mean_batch_std on Dr. GRPO's centred returns (Lite PPO): the batch std of the tokens'
    advantages divides them."""
    adv, _ = tricks("adv_estimator=grpo", "adv_estimator.std_norm=false",
                    "adv_norm=group_mean_batch_std").advantages(REWARDS, None, MASK)
    centred = torch.tensor([0.45, -0.45, 1.65, -1.65]).unsqueeze(1) * MASK
    # the group means over tokens are no longer 0 (response 1 is shorter): subtract them first
    groups = [(0.45 * 3 - 0.45 * 2) / 5, 0.0]
    shifted = (centred - torch.tensor([groups[0], groups[0], groups[1], groups[1]]).unsqueeze(1)) * MASK
    expected = shifted / centred[MASK.bool()].std()
    torch.testing.assert_close(adv, expected, rtol=1e-5, atol=1e-6)


def test_overlong_filter_and_soft_penalty():
    finished = torch.tensor([True, False, True, True])
    assert torch.equal(tricks("overlong=filter").policy_mask(MASK, finished)[1], torch.zeros(3))
    assert torch.equal(tricks().policy_mask(MASK, finished), MASK)
    soft = tricks("overlong=soft_penalty", "overlong.cache=8", "ppo.max_new_tokens=32")
    assert soft.overlong_penalty(torch.tensor([20, 28, 32])).tolist() == [0.0, -0.5, -1.0]
    assert tricks().overlong_penalty(torch.tensor([32])).tolist() == [0.0]


def test_group_options_need_groups_and_critic_options_warn():
    from rlhf_lab.config import ConfigError, validate

    for option in ("adv_estimator=grpo", "adv_estimator=rloo", "adv_norm=group_whiten"):
        with pytest.raises(ConfigError, match="samples_per_prompt >= 2"):
            make_config(option)
    with pytest.raises(ConfigError, match="overlong.cache"):
        make_config("overlong=soft_penalty", "overlong.cache=32", "ppo.max_new_tokens=32")
    warnings = validate(make_config("preset=ppo_max", "adv_estimator=remax"))
    assert any("trains no critic" in w and "value_clip=on" in w and "critic_pretrain=steps" in w for w in warnings)


OPTIONS = {
    "grpo": ("preset=grpo",),
    "dr_grpo": ("preset=dr_grpo",),
    "lite_ppo": ("preset=lite_ppo",),
    "reinforce_pp": ("preset=reinforce_pp",),
    "rloo": ("preset=ppo_max", "adv_estimator=rloo", "ppo.samples_per_prompt=2"),
    "remax": ("preset=ppo_max", "adv_estimator=remax"),
    "seq_mean_token_sum": ("preset=ppo_max", "loss_agg=seq_mean_token_sum"),
    "seq_mean_token_mean": ("preset=ppo_max", "loss_agg=seq_mean_token_mean"),
    "seq_mean_token_sum_norm": ("preset=ppo_max", "loss_agg=seq_mean_token_sum_norm"),
    "overlong_filter": ("preset=ppo_max", "overlong=filter"),
    "overlong_soft_penalty": ("preset=ppo_max", "overlong=soft_penalty", "overlong.cache=2"),
    "clip_higher": ("preset=ppo_max", "policy_clip.eps_high=0.28"),
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_option_trains_three_iterations_and_resumes(tiny_checkpoints, tmp_path, name):
    trainer, metrics, _, folder = train_three_and_resume(tiny_checkpoints, tmp_path, *OPTIONS[name],
                                                         "critic_pretrain.steps=1")
    critic_free = not trainer.cfg.adv_estimator.uses_critic
    assert (trainer.critic is None) == critic_free and (trainer.critic_optimizer is None) == critic_free
    assert ("value/mean" in metrics) == (not critic_free) and ("ppo/value_loss" in metrics) == (not critic_free)
    assert (folder / "critic.safetensors").exists() == (not critic_free)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["grpo", "lite_ppo"])
def test_a_critic_free_preset_runs_end_to_end(tmp_path, preset):
    import json

    from test_e2e import train
    from rlhf_lab.rundir import read_jsonl

    run_dir = tmp_path / "run"
    out = train(run_dir, tmp_path / "cache", f"preset={preset}", "iterations=3")
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((run_dir / "run.json").read_text())["tricks"]["adv_estimator"] == "grpo"
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [row["step"] for row in rows] == [0, 1, 2] and "value/mean" not in rows[-1]
    saved = sorted(p.name for p in (run_dir / "checkpoints" / "step-000003").iterdir())
    assert saved == ["policy.safetensors", "state.pt"]  # no critic trained, none saved
