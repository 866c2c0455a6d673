"""Several ranks on the CPU (gloo): one DDP update on 2 ranks equals the update on 1 rank, and
`rlhf-train distributed=ddp distributed.processes=2` runs end to end as one run directory."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_config, tiny_trainer
from rlhf_lab.config import ConfigError
from rlhf_lab.launch import free_port
from rlhf_lab.rundir import read_jsonl

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def eos_checkpoints(tmp_path_factory):
    """Tiny checkpoints whose policy ends responses early and unevenly (EOS made likely)."""
    from test_perf_equivalence import build_checkpoints

    return build_checkpoints(tmp_path_factory.mktemp("eos"))
# float tolerance between 1 and 2 ranks: the ranks' partial token means are summed in another order (observed
# differences after one update: ~1e-8 on parameters, ~1e-7 relative on statistics)
RTOL, ATOL = 1e-5, 1e-6


def ranks(n: int, *args: str) -> None:
    port = free_port()
    procs = [subprocess.Popen([sys.executable, str(TESTS / "ddp_worker.py"), *args],
                              env={**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(n),
                                   "LOCAL_WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": str(port)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(n)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]


@pytest.mark.parametrize("overrides", [
    ("preset=vanilla", "ppo.epochs=2", "ppo.minibatches=2", "adv_norm=whiten", "entropy_bonus=on",
     "kl_penalty=loss", "kl_penalty.loss_coef=0.1", "kl_penalty.estimator=k3"),
    ("preset=ppo_max", "ppo.minibatches=2"),  # ptx loss, value clip, gradient clipping
])
def test_one_ddp_update_on_two_ranks_equals_one_rank(eos_checkpoints, tmp_path, overrides):
    overrides = (*overrides, "distributed=ddp", "distributed.processes=2")
    one = tiny_trainer(eos_checkpoints, *overrides)  # one process: distributed=ddp runs unwrapped
    torch.manual_seed(3)
    batch = one.rollout()
    rewards, _ = one.tricks.token_rewards(one.tricks.shape_scores(batch.scores), batch.logprobs,
                                          batch.ref_logprobs, batch.mask)
    advantages, returns = one.tricks.advantages(rewards, batch.values, batch.mask)
    assert (batch.mask == 0).any() and len(set(batch.mask.sum(1).tolist())) > 1  # uneven lengths per rank
    torch.save({"batch": batch, "advantages": advantages, "returns": returns, "seed": 11}, tmp_path / "batch.pt")
    before = {k: v.clone() for k, v in one.policy.state_dict().items()}
    torch.manual_seed(11)
    expected = one.train(batch, advantages, returns)

    ranks(2, *map(str, eos_checkpoints), str(tmp_path / "batch.pt"), str(tmp_path / "out.pt"), *overrides)
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    assert any(not torch.equal(got["policy"][k], v) for k, v in before.items())  # the update moved the policy
    for role in ("policy", "critic"):
        state = getattr(one, role).state_dict()
        for key, value in got[role].items():
            torch.testing.assert_close(value, state[key], rtol=RTOL, atol=ATOL, msg=f"{role} {key}")
    for key, value in expected.items():
        assert got["stats"][key] == pytest.approx(float(value), rel=1e-4, abs=1e-6), key


def test_batches_that_do_not_split_over_the_ranks_are_named_errors():
    with pytest.raises(ConfigError, match="ppo.batch_size"):
        make_config("distributed=ddp", "distributed.processes=3", "ppo.batch_size=16", "ppo.minibatches=2")
    with pytest.raises(ConfigError, match="distributed.processes"):
        make_config("distributed=none", "distributed.processes=2")


@pytest.mark.slow
def test_two_local_ranks_run_end_to_end_as_one_run(tmp_path):
    from test_e2e import TINY

    run_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "rlhf_lab.cli", *TINY, "distributed=ddp", "distributed.processes=2",
                          "iterations=3", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed"
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [row["step"] for row in rows] == [0, 1, 2]
    assert rows[0]["length/response_tokens"] > 0
    assert (run_dir / "checkpoints" / "latest").read_text() == "step-000003"
    assert "rank 0" in (run_dir / "train.log").read_text()
