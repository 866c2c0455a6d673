"""The surrounding papers' remedies as switches: reward-model ensembles, policy filtration, the soup reference
and MPO. The functions against values worked out by hand; every option through the trainer (3 iterations,
a checkpoint, a resume) and through `rlhf-train` on the toy stages."""

import json
import math

import pytest
import torch
from scipy import stats

from conftest import make_config, tiny_trainer, train_three_and_resume
from rlhf_lab.algo import ppo
from rlhf_lab.config.checks import validate
from rlhf_lab.config.schema import ConfigError
from rlhf_lab.algo.metrics import r_squared
from rlhf_lab.engine.models import weight_soup

# 2 responses (rows) x 3 members
MEMBERS = torch.tensor([[1.0, 2.0, 6.0], [0.0, -1.0, 1.0]])


# ---------------------------------------------------------------- ensemble aggregation
@pytest.mark.parametrize("option,expected", [
    ("off", [1.0, 0.0]), ("mean", [3.0, 0.0]), ("min", [1.0, -1.0]),
    ("mean_minus_std", [3 - math.sqrt(7), -1.0]), ("mean_min", [2.0, -0.5])])
def test_the_option_picks_its_aggregation(option, expected):
    from rlhf_lab.algo.tricks import Tricks

    overrides = [f"reward_ensemble={option}"] + (["reward_ensemble.size=3"] if option != "off" else [])
    scores = MEMBERS if option != "off" else MEMBERS[:, :1]
    assert Tricks(make_config(*overrides)).ensemble_score(scores).tolist() == pytest.approx(expected)


# ---------------------------------------------------------------- policy filtration
# 2 prompts x 4 responses
SCORES = torch.tensor([0.5, 2.0, -1.0, 0.0, 3.0, 3.0, 1.0, -2.0])


def test_best_random_keeps_the_best_and_one_other_uniformly():
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(8)
    draws = 4000
    for _ in range(draws):
        rows = ppo.best_random_rows(SCORES, 4, generator)
        assert rows[0] == 1 and rows[2] == 4 and rows[1] != 1 and rows[3] != 4
        assert 0 <= rows[1] < 4 <= rows[3] < 8
        counts[rows[1]] += 1
        counts[rows[3]] += 1
    # each of the three other rows of a group is drawn with probability 1/3 (binomial sd ~ 30 of 1333)
    for group in ((0, 2, 3), (5, 6, 7)):
        for row in group:
            assert abs(counts[row] - draws / 3) < 6 * math.sqrt(draws * (1 / 3) * (2 / 3))
    assert counts[1] == 0 and counts[4] == 0


def test_filter_options_need_groups_and_keep_their_share():
    for option in ("best_of_n", "best_random", "best_worst"):
        with pytest.raises(ConfigError, match="samples_per_prompt >= 2"):
            make_config(f"policy_filter={option}")
        with pytest.raises(ConfigError, match="breaks up the groups"):
            make_config(f"policy_filter={option}", "preset=grpo")
    assert make_config("policy_filter=best_of_n", "ppo.samples_per_prompt=4").train_rows == 16
    assert make_config("policy_filter=best_random", "ppo.samples_per_prompt=4").train_rows == 32
    assert make_config("policy_filter=off", "ppo.samples_per_prompt=4").train_rows == 64
    with pytest.raises(ConfigError, match="ppo.minibatches"):  # 8 kept responses in 16 minibatches
        make_config("policy_filter=best_of_n", "ppo.samples_per_prompt=8", "ppo.minibatches=16")
    warnings = validate(make_config("policy_filter=best_worst", "ppo.samples_per_prompt=2"))
    assert any("keeps every response" in w for w in warnings)


def test_r_squared_matches_scipy():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(50, generator=generator, dtype=torch.float64)
    y = 0.7 * x + torch.randn(50, generator=generator, dtype=torch.float64)
    assert r_squared(x, y).item() == pytest.approx(stats.linregress(x.numpy(), y.numpy()).rvalue ** 2, rel=1e-9)
    assert r_squared(x, 2 * x + 1).item() == pytest.approx(1.0)
    assert r_squared(torch.ones(5), x[:5]).item() == 0.0  # constant proxy: nothing explained


# ---------------------------------------------------------------- references
def test_weight_soup_by_hand():
    a = {"w": torch.tensor([1.0, 2.0]), "steps": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, -2.0]), "steps": torch.tensor(5)}
    soup = weight_soup([a, b], [0.25, 0.75])
    assert soup["w"].tolist() == pytest.approx([2.5, -1.0]) and soup["w"].dtype == torch.float32
    assert soup["steps"].item() == 3  # integer buffers are not averaged: the first model's
    with pytest.raises(ValueError, match="summing to 1"):
        weight_soup([a, b], [0.5, 0.6])
    with pytest.raises(ValueError, match="keys or shapes"):
        weight_soup([a, {"w": torch.zeros(3), "steps": torch.tensor(1)}], [0.5, 0.5])


def test_reference_and_ensemble_checks():
    with pytest.raises(ConfigError, match="lora=on"):
        make_config("reference=soup", "lora=on")
    with pytest.raises(ConfigError, match="reward_ensemble.reward_models"):
        make_config("reward_ensemble=mean", "model=hf", "model.policy=p", "model.reward_model=r")
    with pytest.raises(ConfigError, match="reference.soup_with"):
        make_config("reference=soup", "model=hf", "model.policy=p", "model.reward_model=r")
    with pytest.raises(ConfigError, match="reference.path"):
        make_config("reference=mpo", "model=hf", "model.policy=p", "model.reward_model=r")
    with pytest.raises(ConfigError, match="reward_ensemble.size"):
        make_config("reward_ensemble=mean", "reward_ensemble.size=3", "reward_ensemble.reward_models=[a,b]")
    with pytest.raises(ConfigError, match="reward_ensemble=off"):
        make_config("reward_ensemble.reward_models=[a,b]")
    assert make_config("reward_ensemble=min").reward_ensemble.members == 3
    assert make_config("reward_ensemble=min", "reward_ensemble.reward_models=[a,b]").reward_ensemble.members == 2
    assert make_config().reward_ensemble.members == 1
    warnings = validate(make_config("preset=vanilla", "reference=mpo"))
    assert any("reference only enters the KL penalty" in w for w in warnings)


# ---------------------------------------------------------------- through the trainer
OPTIONS = {f"{preset}_{name}": (f"preset={preset}", *overrides) for preset in ("vanilla", "ppo_max")
           for name, overrides in {
               "ensemble_mean": ("reward_ensemble=mean", "reward_ensemble.size=2"),
               "ensemble_min": ("reward_ensemble=min", "reward_ensemble.size=2"),
               "ensemble_mean_minus_std": ("reward_ensemble=mean_minus_std", "reward_ensemble.size=3"),
               "ensemble_mean_min": ("reward_ensemble=mean_min", "reward_ensemble.size=2"),
               "best_of_n": ("policy_filter=best_of_n", "ppo.samples_per_prompt=4", "ppo.minibatches=1"),
               "best_random": ("policy_filter=best_random", "ppo.samples_per_prompt=4"),
               "best_worst": ("policy_filter=best_worst", "ppo.samples_per_prompt=4"),
           }.items()}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_remedy_trains_three_iterations_and_resumes(tiny_checkpoints, tmp_path, name):
    trainer, metrics, batch, _ = train_three_and_resume(tiny_checkpoints, tmp_path, *OPTIONS[name],
                                                        "critic_pretrain.steps=1")
    members = trainer.cfg.reward_ensemble.members
    assert len(trainer.reward_model.members) == members and batch.member_scores.shape == (8, members)
    assert ("reward/ensemble_std" in metrics) == (members > 1)
    if members > 1:
        assert metrics["reward/ensemble_std"] == pytest.approx(batch.member_scores.std(1).mean().item(), rel=1e-5)


def test_the_filter_trains_on_the_kept_rows_only(tiny_checkpoints):
    """best_of_n keeps each group's top-scored row; the training batch is those rows, in group order, and a
    policy update on it equals the update on that batch built by hand."""
    trainer = tiny_trainer(tiny_checkpoints, "preset=vanilla", "policy_filter=best_of_n", "ppo.samples_per_prompt=4",
                           "ppo.minibatches=1")
    batch = trainer.rollout()
    kept = trainer.filtered(batch)
    rows = [max(range(g, g + 4), key=lambda i: batch.scores[i].item()) for g in (0, 4)]
    assert kept.prompts == [batch.prompts[i] for i in rows] and len(set(batch.prompts[:4])) == 1
    torch.testing.assert_close(kept.tokens, batch.tokens[rows])
    torch.testing.assert_close(kept.member_scores, batch.member_scores[rows])
    assert kept.tokens.shape[0] == trainer.cfg.train_rows == 2


def test_the_ensemble_scores_with_every_member(tiny_checkpoints):
    """The rollout's score of each response is the aggregation of what each member model scores alone."""
    trainer = tiny_trainer(tiny_checkpoints, "reward_ensemble=mean_min", "reward_ensemble.size=2",
                           "reward_ensemble.lam=0.3")
    batch = trainer.rollout()
    from rlhf_lab.engine.packing import pack

    with torch.no_grad():
        alone = torch.stack([member(pack(batch.ids, batch.attention)) for member in trainer.reward_model.members], 1)
    torch.testing.assert_close(batch.member_scores, alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(alone[:, 0], alone[:, 1])  # the members disagree
    torch.testing.assert_close(batch.scores, 0.3 * alone.mean(1) + 0.7 * alone.min(1).values, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- rlhf-train on the toy stages
@pytest.fixture(scope="module")
def stage_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.mark.slow
@pytest.mark.parametrize("preset,remedy", [  # each remedy once, both presets among them (a reference needs a KL)
    ("vanilla", ("reward_ensemble=mean_min",)), ("vanilla", ("policy_filter=best_random", "ppo.samples_per_prompt=4")),
    ("ppo_max", ("reference=soup",)), ("ppo_max", ("reference=mpo",))])
def test_every_remedy_runs_end_to_end(stage_cache, tmp_path, preset, remedy):
    from test_e2e import train
    from rlhf_lab.run.rundir import read_jsonl

    run_dir = tmp_path / "run"
    out = train(run_dir, stage_cache, f"preset={preset}", *remedy, "iterations=3")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [row["step"] for row in rows] == [0, 1, 2]
    assert all("reward/proxy_gold_r2" in row for row in rows)
    assert all(("reward/ensemble_std" in row) == remedy[0].startswith("reward_ensemble") for row in rows)
    assert all(("filter/proxy_gold_r2_kept" in row) == remedy[0].startswith("policy_filter") for row in rows)
    info = json.loads((run_dir / "run.json").read_text())
    group, option = remedy[0].split("=")
    assert info["tricks"][group] == option


@pytest.mark.slow
def test_the_toy_stages_of_the_remedies(stage_cache):
    """The ensemble's members are distinct calibrated reward models; the soup's weights are the average of the
    two SFT checkpoints'; MPO's DPO model trained on the easy share of its pairs and moved off the SFT model, and
    the hard pairs' prompts are PPO's."""
    from safetensors.torch import load_file

    from test_e2e import TINY
    from rlhf_lab.toy import stages

    cfg = make_config(*TINY, "reward_ensemble=mean", "reference=soup")
    artefacts = stages.prepare(cfg, stage_cache)
    assert len(set(artefacts.rm_dirs)) == 3 and artefacts.rm_dirs[0] == artefacts.rm_dir
    heads = [load_file(str(d / "model.safetensors"))["score.weight"] for d in artefacts.rm_dirs]
    assert not torch.equal(heads[0], heads[1]) and not torch.equal(heads[1], heads[2])
    for folder in artefacts.rm_dirs:
        report = json.loads((folder / "rm_report.json").read_text())
        assert report["calibrated_sft_score_mean"] == pytest.approx(0, abs=1e-4)
        assert report["calibrated_sft_score_std"] == pytest.approx(1, abs=1e-4)
    second = sorted(p for p in stage_cache.glob("toy-sft-*") if p.is_dir() and p != artefacts.sft_dir)
    assert len(second) == 1
    a, b = (load_file(str(d / "model.safetensors")) for d in (artefacts.sft_dir, second[0]))
    soup = load_file(str(artefacts.reference_dir / "model.safetensors"))
    for key, value in soup.items():
        torch.testing.assert_close(value, 0.5 * a[key] + 0.5 * b[key])
    assert any(not torch.equal(a[key], b[key]) for key in a)
    assert "soup_demonstration_loss" in json.loads((artefacts.reference_dir / "soup_report.json").read_text())

    mpo = stages.prepare(make_config(*TINY, "reference=mpo"), stage_cache)
    dpo = mpo.reference_dir
    assert mpo.policy_dir == dpo  # MPO's PPO starts from the DPO model
    report = json.loads((dpo / "dpo_report.json").read_text())
    assert report["easy_pairs"] == int(cfg.task.dpo.pairs * cfg.task.dpo.easy_fraction)
    assert len(mpo.hard_prompts) == report["hard_prompts"] == cfg.task.dpo.pairs - report["easy_pairs"]
    tokenizer = stages.build_tokenizer(mpo.language)
    assert all(tokenizer.decode(tokenizer(p)["input_ids"]) == p for p in mpo.hard_prompts[:20])
    assert report["easy_gap_threshold"] >= report["median_gap"]  # the easy half has the larger gaps
    tuned = load_file(str(dpo / "model.safetensors"))
    assert any(not torch.equal(tuned[key], a[key]) for key in a)


@pytest.mark.slow
def test_remedies_on_two_sharded_ranks(stage_cache, tmp_path):
    """The ensemble sharded with the frozen models and the filter's draw the same on both ranks: a 2-rank FSDP
    run completes."""
    from test_distributed import train

    rows = train(stage_cache, tmp_path / "run", "distributed=fsdp", "distributed.processes=2",
                 "distributed.shard_frozen=true", "reward_ensemble=mean_min", "policy_filter=best_random",
                 "ppo.samples_per_prompt=4", "iterations=3")
    assert [row["step"] for row in rows] == [0, 1, 2]
    assert all(row["reward/ensemble_std"] > 0 for row in rows)


def test_remedies_on_local_hf_checkpoints(tiny_checkpoints, tmp_path):
    """model=hf: an ensemble of listed reward-model checkpoints, a soup of two policy checkpoints as the
    reference, a DPO reference given by path: the run completes, the soup is the average of the two files, and
    a missing member path is a named error before any model loads."""
    import os
    import subprocess
    import sys

    from transformers import AutoModelForCausalLM

    from rlhf_lab.run.build import load_reference
    from rlhf_lab.run.rundir import read_jsonl

    sft_dir, rm_dir = tiny_checkpoints
    other = tmp_path / "other_sft"
    model = AutoModelForCausalLM.from_pretrained(str(sft_dir))
    torch.manual_seed(5)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    model.save_pretrained(other)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"the zovo is {w} . review :"}) for w in ("red", "old")))
    common = ["task=jsonl", f"task.prompts_file={prompts}", "model=hf", f"model.policy={sft_dir}",
              f"model.reward_model={rm_dir}", "ptx_loss=off", "ppo.batch_size=8", "ppo.max_new_tokens=6",
              "critic_pretrain.steps=1", "iterations=2", "run.progress=false"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def run(name, *overrides):
        return subprocess.run([sys.executable, "-m", "rlhf_lab.cli", *common, *overrides,
                               f"hydra.run.dir={tmp_path / name}"], capture_output=True, text=True, timeout=300,
                              env=env)

    out = run("soup", "reward_ensemble=min", f"reward_ensemble.reward_models=[{rm_dir},{rm_dir}]",
              "reference=soup", f"reference.soup_with={other}", "reference.soup_weight=0.25")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = read_jsonl(tmp_path / "soup" / "metrics.jsonl")
    assert len(rows) == 2 and rows[0]["reward/ensemble_std"] == 0  # two copies of one model agree
    # the policy starts at the SFT model, away from the soup: KL to the reference, none travelled yet
    assert abs(rows[0]["kl/ref_k1"]) > 1e-2 and rows[0]["kl/init_k1"] == pytest.approx(0, abs=1e-3)
    soup = load_reference([sft_dir, other], 0.25, torch.float32).state_dict()
    first, second = AutoModelForCausalLM.from_pretrained(str(sft_dir)).state_dict(), model.state_dict()
    for key in first:
        torch.testing.assert_close(soup[key], 0.25 * first[key] + 0.75 * second[key])

    out = run("mpo", "reference=mpo", f"reference.path={other}")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = read_jsonl(tmp_path / "mpo" / "metrics.jsonl")  # MPO: the policy starts from the DPO model it is held to
    assert rows[0]["kl/ref_k1"] == pytest.approx(0, abs=1e-3) and rows[0]["kl/init_k1"] == rows[0]["kl/ref_k1"]
    out = run("bad", "reward_ensemble=mean", f"reward_ensemble.reward_models=[{rm_dir},{tmp_path / 'nowhere'}]")
    assert out.returncode != 0 and "reward_ensemble.reward_models[1]" in out.stderr + out.stdout
