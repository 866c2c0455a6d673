"""Shared fixtures: tiny, randomly initialised checkpoints (no training, no network), composed configs, and the
local SLURM cluster; and how the suite shares the cores (scripts/test.sh runs it in 2 pytest-xdist workers)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForCausalLM

from rlhf_lab.run.build import assemble
from rlhf_lab.config.checks import to_config
from rlhf_lab.config.schema import Config, register_schema
from rlhf_lab.engine.data import Stream
from rlhf_lab.engine.models import load_policy, load_reward_model, load_tokenizer, make_critic, quiet_transformers
from rlhf_lab.config.paths import conf_dir
from rlhf_lab.toy.language import ToyLanguage
from rlhf_lab.engine.runtime import Runtime
from rlhf_lab.toy.stages import build_tokenizer
from rlhf_lab.trainer import PPOTrainer

SLURM_CLUSTER_SH = Path(__file__).resolve().parent / "slurm" / "cluster.sh"
# Under pytest-xdist every worker (and every process it starts) computes on one thread: two torch processes of two
# threads each on 2 cores spin-wait on each other (sevenfold slower), one thread each share them.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
# The longest modules first, so the critical path starts at once; each module runs whole on one worker
# (scripts/test.sh: --dist loadscope; its module fixtures are built once). xdist hands each worker two modules to
# start with (the 1st and 3rd in this order to one, the 2nd and 4th to the other): the science test's worker
# gets a short one (test_layout) with it, the other both SLURM modules (one small cluster, one job at a time);
# the rest go to whichever worker is free.
FIRST = ("test_science", "test_slurm_sweep", "test_layout", "test_slurm_cluster", "test_distributed",
         "test_reviews_tier", "test_sweeps", "test_wandb", "test_e2e", "test_remedies", "test_config")

register_schema()
quiet_transformers()


def pytest_collection_modifyitems(config, items):
    """Order the modules longest first (FIRST), each module's own tests in their order."""
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(FIRST)))


def make_config(*overrides: str) -> Config:
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return to_config(compose(config_name="config", overrides=list(overrides)))


def tiny_trainer(checkpoints, *overrides, seed=0) -> PPOTrainer:
    """A trainer on `tiny_checkpoints`, batch 8 x 6 tokens, on the CPU (the precision as configured)."""
    sft_dir, rm_dir = checkpoints
    cfg = make_config("device=cpu", "ppo.batch_size=8", "ppo.minibatches=2", "ppo.max_new_tokens=6",
                      "ptx_loss.batch_size=4", f"seed={seed}", *overrides)
    language = ToyLanguage.build(0)
    tokenizer = load_tokenizer(sft_dir)
    torch.manual_seed(seed)
    runtime = Runtime.from_config(cfg)
    lora = cfg.lora.name.value == "on"
    return assemble(cfg, runtime, policy=load_policy(sft_dir, torch.float32),
                    reference=None if lora else load_policy(sft_dir, runtime.compute_dtype),
                    critic=make_critic(cfg.critic_init.name, sft_dir, rm_dir, tokenizer.pad_token_id, torch.float32),
                    reward_model=reward_members(rm_dir, cfg.reward_ensemble.members, runtime.compute_dtype),
                    tokenizer=tokenizer,
                    prompts=Stream(language.sample_prompt, seed),
                    sft_examples=Stream(lambda rng: (language.sample_prompt(rng), "the zovo is great ."), seed))


def train_three_and_resume(checkpoints, tmp_path, *overrides):
    """A tiny trainer: critic pre-training, 3 iterations (every metric finite, the policy moved), a checkpoint,
    and a fresh trainer resumed from it with the same policy weights. -> (trainer, last metrics, last batch,
    checkpoint folder)."""
    import math

    from rlhf_lab.run import checkpoint

    trainer = tiny_trainer(checkpoints, *overrides)
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    trainer.warm_up()
    for _ in range(3):
        metrics, batch = trainer.step()
        assert all(math.isfinite(v) for v in metrics.values())
    assert any(not torch.equal(v, trainer.policy.state_dict()[k]) for k, v in before.items())
    folder = checkpoint.save(trainer, tmp_path, 3)
    again = tiny_trainer(checkpoints, *overrides)
    assert checkpoint.load(again, folder) == 3
    for key, value in trainer.policy.state_dict().items():
        torch.testing.assert_close(again.policy.state_dict()[key], value)
    return trainer, metrics, batch, folder


def reward_members(rm_dir: Path, members: int, dtype: torch.dtype) -> list:
    """`members` reward models: the one at rm_dir, then copies whose score heads are redrawn (seed k), so an
    ensemble's members disagree."""
    models = [load_reward_model(rm_dir, dtype) for _ in range(members)]
    for k, model in enumerate(models[1:], start=1):
        generator = torch.Generator().manual_seed(k)
        with torch.no_grad():
            model.score.weight.copy_(torch.randn(model.score.weight.shape, generator=generator) * 0.5)
    return models


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """(sft_dir, rm_dir): a 2-layer, 32-wide Llama and a reward model of the same shape, random weights."""
    root = tmp_path_factory.mktemp("tiny")
    language = ToyLanguage.build(0)
    tokenizer = build_tokenizer(language)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None, tie_word_embeddings=True)
    torch.manual_seed(0)
    sft_dir, rm_dir = root / "sft", root / "rm"
    LlamaForCausalLM(config).save_pretrained(sft_dir)
    tokenizer.save_pretrained(sft_dir)
    rm = AutoModelForSequenceClassification.from_pretrained(str(sft_dir), num_labels=1)
    torch.nn.init.normal_(rm.score.weight, std=0.5)
    rm.save_pretrained(rm_dir)
    tokenizer.save_pretrained(rm_dir)
    return sft_dir, rm_dir


# ---------------------------------------------------------------- the local SLURM cluster (tests/slurm/cluster.sh)
def _run_cluster_sh(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SLURM_CLUSTER_SH), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _slurm_conf_from_env_cmd() -> str:
    out = _run_cluster_sh("env").stdout.strip()
    prefix = "export SLURM_CONF="
    assert out.startswith(prefix), f"unexpected `cluster.sh env` output: {out!r}"
    return out[len(prefix) :]


@pytest.fixture(scope="session")
def slurm_cluster():
    """Make sure the cluster answers (starting it if RLHF_LAB_START_SLURM=1) and export SLURM_CONF."""
    if os.environ.get("RLHF_LAB_START_SLURM") == "1":
        proc = _run_cluster_sh("start", timeout=900)
        if proc.returncode != 0:
            pytest.fail(
                f"`cluster.sh start` failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}", pytrace=False
            )
    if shutil.which("sbatch") is None:
        pytest.skip("SLURM not available: no `sbatch` on PATH (run tests/slurm/cluster.sh start, or set "
                    "RLHF_LAB_START_SLURM=1)")
    status = _run_cluster_sh("status", timeout=30)
    if status.returncode != 0:
        pytest.skip("SLURM cluster not reachable: `tests/slurm/cluster.sh status` failed "
                    f"({status.stderr.strip() or status.stdout.strip()}); start it with "
                    "`tests/slurm/cluster.sh start` or set RLHF_LAB_START_SLURM=1")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = _slurm_conf_from_env_cmd()
    try:
        yield os.environ["SLURM_CONF"]
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
