"""`rlhf-train` end to end on a shrunken toy testbed: run-directory contract, determinism, resume, real-model path."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_config
from rlhf_lab.config.schema import TRICK_GROUPS
from rlhf_lab.run.rundir import read_jsonl
from rlhf_lab.run.train import arm_label

TINY = ["task.sft.examples=400", "task.sft.epochs=1", "task.rm.pairs=200", "task.rm.epochs=1",
        "task.dpo.pairs=200", "task.dpo.epochs=1", "task.dpo.batch_size=32",
        "model.hidden_size=32", "model.layers=2", "model.heads=2", "model.intermediate_size=64",
        "ppo.batch_size=16", "ppo.max_new_tokens=12", "critic_pretrain.steps=2", "ptx_loss.batch_size=4",
        "run.samples_every=2", "run.checkpoint_every=2", "run.progress=false"]
CONTRACT_METRICS = """reward/proxy_mean reward/gold_mean reward/shaped_mean kl/ref_k1 kl/ref_k2 kl/ref_k3 kl/init_k1
kl/init_k2 kl/init_k3 ppl/policy ppl/ref ppl/init length/response_mean length/response_max length/eos_missing_frac diversity/distinct_1 diversity/distinct_2
diversity/repeat_ngram_frac entropy/policy_mean ppo/policy_loss ppo/value_loss ppo/clipfrac ppo/approx_kl
ppo/value_clipfrac ppo/explained_var ppo/grad_norm_policy ppo/grad_norm_critic ppo/entropy_bonus ppo/ptx_loss
adv/mean adv/std return/mean value/mean kl_ctl/coef perf/iter_seconds perf/rollout_seconds perf/train_seconds
perf/gen_tokens_per_second""".split()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def train(run_dir: Path, cache: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf_lab.cli", *TINY, f"cache_dir={cache}",
                           f"hydra.run.dir={run_dir}", *overrides], capture_output=True, text=True, timeout=600)


def without_perf(rows):
    return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in rows]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cache):
    run_dir = tmp_path_factory.mktemp("run") / "a"
    out = train(run_dir, cache, "iterations=4", "seed=7", "arm=tiny")
    assert out.returncode == 0, out.stderr[-3000:]
    return run_dir


def test_run_directory_contract(finished_run):
    info = json.loads((finished_run / "run.json").read_text())
    assert info["schema_version"] == 1 and info["status"] == "completed"
    assert info["seed"] == 7 and info["arm"] == "tiny" and info["preset"] == "ppo_max"
    assert info["tricks"]["kl_penalty"] == "token" and info["tricks"]["adv_estimator"] == "gae"
    assert list(info["tricks"]) == list(TRICK_GROUPS)  # every group, in the pipeline's order
    assert info["started_at"] <= info["finished_at"]
    assert {"torch", "transformers", "python"} <= set(info["versions"])
    assert (finished_run / ".hydra" / "config.yaml").exists() and (finished_run / ".hydra" / "overrides.yaml").exists()
    rows = read_jsonl(finished_run / "metrics.jsonl")
    assert [row["step"] for row in rows] == [0, 1, 2, 3]
    for row in rows:
        missing = set(CONTRACT_METRICS) - set(row)
        assert not missing, missing
        assert all(isinstance(v, (int, float)) for v in row.values())
    samples = read_jsonl(finished_run / "samples.jsonl")
    assert {s["step"] for s in samples} == {0, 2, 3}
    assert set(samples[0]) == {"step", "prompt", "response", "reward_proxy", "reward_gold"}
    assert samples[0]["prompt"].endswith("review :")
    assert (finished_run / "checkpoints" / "latest").read_text() == "step-000004"


def test_arm_label_comes_from_arm_defining_overrides():
    cfg = make_config()
    assert arm_label(cfg, ["preset=vanilla", "kl_penalty=token", "seed=3", "iterations=9", "run.progress=false",
                           "logger=wandb", "sweep=demo"]) == "preset=vanilla,kl_penalty=token"
    assert arm_label(cfg, ["seed=1"]) == "default"
    assert arm_label(make_config("arm=mine"), ["preset=vanilla"]) == "mine"


def test_another_seed_gives_other_metrics(finished_run, tmp_path, cache):
    """The seed decides the run. (The same seed gives the same metrics: tests/test_sweeps.py's kill -9 before
    the first checkpoint restarts a run from step 0 and asserts its 12 rows equal an uninterrupted run's.)"""
    other = train(tmp_path / "c", cache, "iterations=1", "seed=8")
    assert other.returncode == 0, other.stderr[-3000:]
    first = without_perf(read_jsonl(finished_run / "metrics.jsonl"))[0]
    assert without_perf(read_jsonl(tmp_path / "c" / "metrics.jsonl"))[0] != first


def test_resume_rejects_conflicting_overrides(finished_run, tmp_path):
    out = subprocess.run([sys.executable, "-m", "rlhf_lab.cli", f"resume={finished_run}", "kl_penalty=off",
                          f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "kl_penalty" in out.stderr


def test_jsonl_task_with_local_hf_checkpoints(tiny_checkpoints, tmp_path):
    sft_dir, rm_dir = tiny_checkpoints
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"the zovo is {w} . review :"}) for w in ("red", "old")))
    out = subprocess.run([sys.executable, "-m", "rlhf_lab.cli", "task=jsonl", f"task.prompts_file={prompts}",
                          "model=hf", f"model.policy={sft_dir}", f"model.reward_model={rm_dir}", "ptx_loss=off",
                          "ppo.batch_size=8", "ppo.max_new_tokens=6", "critic_pretrain.steps=1", "iterations=2",
                          "run.progress=false", f"hydra.run.dir={tmp_path / 'run'}"],
                         capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                           "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert len(rows) == 2 and "reward/gold_mean" not in rows[0] and "reward/proxy_mean" in rows[0]


def test_lora_trains_and_resumes_exactly(tmp_path, cache):
    """lora=on end to end: only the adapters train (the checkpoint holds them alone), the reference is the
    policy without them (its KL grows from 0), and a resumed run repeats the uninterrupted one."""
    from safetensors import safe_open

    lora = ("lora=on", "lora.rank=4", "seed=3")
    whole = tmp_path / "whole"
    out = train(whole, cache, "iterations=4", *lora)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = without_perf(read_jsonl(whole / "metrics.jsonl"))
    assert rows[0]["kl/ref_k1"] == pytest.approx(0, abs=1e-5) and rows[-1]["kl/ref_k1"] > 1e-4
    assert all(row["kl/init_k1"] == row["kl/ref_k1"] for row in rows)  # the LoRA reference is the start
    with safe_open(str(whole / "checkpoints" / "step-000004" / "policy.safetensors"), "pt") as saved:
        names = list(saved.keys())
    assert names and all("lora_" in name for name in names)

    part = tmp_path / "part"
    assert train(part, cache, "iterations=2", *lora).returncode == 0
    out = subprocess.run([sys.executable, "-m", "rlhf_lab.cli", f"resume={part}", "iterations=4",
                          f"hydra.run.dir={tmp_path / 'resume-log'}"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert without_perf(read_jsonl(part / "metrics.jsonl")) == rows
