"""Advantage estimators, loss aggregation and overlong handling as switches (rlhf_lab.algo.tricks, rlhf_lab.trainer):
the estimators against values worked out by hand on token rewards, and every option through the trainer."""

import pytest
import torch

from conftest import make_config, train_three_and_resume
from rlhf_lab.algo.tricks import Tricks

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


def test_overlong_filter_and_soft_penalty():
    finished = torch.tensor([True, False, True, True])
    assert torch.equal(tricks("overlong=filter").policy_mask(MASK, finished)[1], torch.zeros(3))
    assert torch.equal(tricks().policy_mask(MASK, finished), MASK)
    soft = tricks("overlong=soft_penalty", "overlong.cache=8", "ppo.max_new_tokens=32")
    assert soft.overlong_penalty(torch.tensor([20, 28, 32])).tolist() == [0.0, -0.5, -1.0]
    assert tricks().overlong_penalty(torch.tensor([32])).tolist() == [0.0]


def test_group_options_need_groups_and_critic_options_warn():
    from rlhf_lab.config.checks import validate
    from rlhf_lab.config.schema import ConfigError

    for option in ("adv_estimator=grpo", "adv_estimator=rloo"):
        with pytest.raises(ConfigError, match="samples_per_prompt >= 2"):
            make_config(option)
    with pytest.raises(ConfigError, match="overlong.cache"):
        make_config("overlong=soft_penalty", "overlong.cache=32", "ppo.max_new_tokens=32")
    warnings = validate(make_config("preset=ppo_max", "adv_estimator=remax"))
    # critic_pretrain still warms the reward statistics without a critic: not unused
    assert any("trains no critic" in w and "value_clip=on" in w and "critic_pretrain" not in w for w in warnings)
    warnings = validate(make_config("preset=ppo_max", "adv_estimator=rloo", "ppo.samples_per_prompt=2"))
    assert any("adv_norm=whiten after adv_estimator=rloo" in w for w in warnings)
    assert not any("adv_norm" in w for w in validate(make_config("preset=grpo")))


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
    from rlhf_lab.run.rundir import read_jsonl

    run_dir = tmp_path / "run"
    out = train(run_dir, tmp_path / "cache", f"preset={preset}", "iterations=3")
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((run_dir / "run.json").read_text())["tricks"]["adv_estimator"] == "grpo"
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [row["step"] for row in rows] == [0, 1, 2] and "value/mean" not in rows[-1]
    saved = sorted(p.name for p in (run_dir / "checkpoints" / "step-000003").iterdir())
    assert saved == ["policy.safetensors", "state.pt"]  # no critic trained, none saved
