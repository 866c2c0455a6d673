"""Several ranks on the CPU (gloo): one DDP or FSDP update on 2 ranks equals the update on 1 rank, and
`rlhf-train distributed=ddp|fsdp distributed.processes=2` runs end to end as one run directory."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_config, tiny_trainer
from rlhf_lab.config.schema import ConfigError
from rlhf_lab.run.launch import free_port
from rlhf_lab.run.rundir import read_jsonl

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
    procs = [subprocess.Popen([sys.executable, str(TESTS / "rank_worker.py"), *args],
                              env={**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(n),
                                   "LOCAL_WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": str(port)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(n)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]


STRATEGIES = {"ddp": ("distributed=ddp",), "fsdp": ("distributed=fsdp",),
              "fsdp_shard_frozen": ("distributed=fsdp", "distributed.shard_frozen=true")}
CASES = [
    ("preset=vanilla", "ppo.epochs=2", "ppo.minibatches=2", "adv_norm=whiten", "entropy_bonus=on",
     "kl_penalty=loss", "kl_penalty.loss_coef=0.1", "kl_penalty.estimator=k3"),
    ("preset=ppo_max", "ppo.minibatches=2"),  # ptx loss, value clip, gradient clipping
    # no critic; sequence means over the kept (finished) responses: the ranks' parts are weighted by sequences
    ("preset=grpo", "ppo.samples_per_prompt=2", "loss_agg=seq_mean_token_sum", "overlong=filter"),
]


@pytest.fixture(scope="module")
def launched(eos_checkpoints, tmp_path_factory):
    """Every case of CASES under every strategy on one rank (in this process, no process group: unwrapped,
    unsharded) and on 2 ranks (one launch of tests/rank_worker.py for all of them: a launch per strategy would
    cost a pair of process start-ups each). -> {strategy: [per case: the 1-rank trainer after its update, its
    statistics, its batch, the policy before, what rank 0 saved, the FSDP gathers file]}."""
    tmp = tmp_path_factory.mktemp("ranks")
    jobs, results = [], []
    for strategy in STRATEGIES:
        for i, case in enumerate(CASES):
            overrides = (*case, *STRATEGIES[strategy], "distributed.processes=2")
            one = tiny_trainer(eos_checkpoints, *overrides)
            torch.manual_seed(3)
            batch = one.rollout()
            rewards, _ = one.tricks.token_rewards(one.tricks.shape_scores(batch.scores)[0], batch.logprobs,
                                                  batch.ref_logprobs, batch.mask)
            advantages, returns = one.tricks.advantages(rewards, batch.values, batch.mask)
            name = f"{strategy}-{i}"
            torch.save({"batch": batch, "advantages": advantages, "returns": returns, "seed": 11},
                       tmp / f"batch-{name}.pt")
            before = {k: v.clone() for k, v in one.policy.state_dict().items()}
            torch.manual_seed(11)
            expected = one.train(batch, advantages, returns)
            jobs.append({"batch": str(tmp / f"batch-{name}.pt"), "out": str(tmp / f"out-{name}.pt"),
                         "overrides": list(overrides)})
            results.append((strategy, (one, expected, batch, before)))
    (tmp / "cases.json").write_text(json.dumps(jobs))
    ranks(2, *map(str, eos_checkpoints), str(tmp / "cases.json"))
    out = {strategy: [] for strategy in STRATEGIES}
    for (strategy, result), job in zip(results, jobs):
        out[strategy].append((*result, torch.load(job["out"], weights_only=True),
                              Path(job["out"].replace(".pt", "-gathers.pt"))))
    return out


@pytest.fixture(params=list(STRATEGIES))
def two_ranks(request, launched):
    """(strategy, its cases' results from `launched`)."""
    return request.param, launched[request.param]


@pytest.mark.parametrize("case", range(len(CASES)), ids=["vanilla_kl_loss", "ppo_max", "grpo_overlong_filter"])
def test_one_update_on_two_ranks_equals_one_rank(two_ranks, case):
    strategy, results = two_ranks
    one, expected, batch, before, got, gathers_file = results[case]
    assert (batch.mask == 0).any() and len(set(batch.mask.sum(1).tolist())) > 1  # uneven lengths per rank
    assert got["sharded"] == strategy.startswith("fsdp")
    assert any(not torch.equal(got["policy"][k], v) for k, v in before.items())  # the update moved the policy
    assert (batch.finished == 0).any() or "overlong=filter" not in CASES[case]  # a truncated response is dropped
    for role in ("policy", "critic") if one.critic is not None else ("policy",):
        state = getattr(one, role).state_dict()
        for key, value in got[role].items():
            torch.testing.assert_close(value, state[key], rtol=RTOL, atol=ATOL, msg=f"{role} {key}")
    for key, value in expected.items():
        assert got["stats"][key] == pytest.approx(float(value), rel=1e-4, abs=1e-6), key
    if strategy.startswith("fsdp"):  # generation gathers the policy's weights once per rollout, not once per step
        counted = torch.load(gathers_file, weights_only=True)
        units, held = counted["units"], counted["held"]
        assert held["local"] <= held["whole"] / 2 + 64  # each rank holds its half (+ padding of odd sizes)
        frozen = units["reference"] + units["reward_model"]
        assert units["policy"] >= 3 and units["critic"] in (0, units["policy"])  # a unit per layer, one more
        assert frozen == (2 * units["policy"] if strategy == "fsdp_shard_frozen" else 0)
        assert units["policy"] <= counted["gathers"] <= units["policy"] + units["critic"] + frozen
        assert counted["gathers"] < units["policy"] * one.cfg.ppo.max_new_tokens  # what each step would cost


def test_batches_that_do_not_split_over_the_ranks_are_named_errors():
    with pytest.raises(ConfigError, match="ppo.batch_size"):
        make_config("distributed=ddp", "distributed.processes=3", "ppo.batch_size=16", "ppo.minibatches=2")
    with pytest.raises(ConfigError, match="distributed.processes"):
        make_config("distributed=none", "distributed.processes=2")


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory) -> Path:
    """One artefact cache for this module's end-to-end runs (the first builds the tiny SFT model and RM)."""
    return tmp_path_factory.mktemp("cache")


def train(cache: Path, run_dir: Path, *overrides: str) -> list[dict]:
    from test_e2e import TINY

    out = subprocess.run([sys.executable, "-m", "rlhf_lab.cli", *TINY, *overrides, f"cache_dir={cache}",
                          f"hydra.run.dir={run_dir}"], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"
    assert "rank 0" in (run_dir / "train.log").read_text()
    return read_jsonl(run_dir / "metrics.jsonl")


@pytest.mark.slow
def test_two_local_ddp_ranks_run_end_to_end_as_one_run_and_resume(tiny_cache, tmp_path):
    """Two DDP ranks run as one run; stopped after its step-2 checkpoint, it continues at step 2 (contiguous
    rows). (FSDP's end-to-end run is the first leg of the resume test below; a two-rank job preempted and
    requeued on SLURM is tests/test_slurm_sweep.py's.)"""
    run_dir = tmp_path / "run"
    first = train(tiny_cache, run_dir, "distributed=ddp", "distributed.processes=2", "iterations=2")
    assert [row["step"] for row in first] == [0, 1]
    assert first[0]["length/response_tokens"] > 0
    assert (run_dir / "checkpoints" / "latest").read_text() == "step-000002"
    rows = train(tiny_cache, run_dir, f"resume={run_dir}", "iterations=3")
    assert [row["step"] for row in rows] == [0, 1, 2] and rows[:2] == first
    assert (run_dir / "checkpoints" / "latest").read_text() == "step-000003"


@pytest.mark.slow
def test_fsdp_runs_end_to_end_resumes_from_its_checkpoint_and_runs_on_one_rank(tiny_cache, tmp_path):
    """A 2-rank FSDP run runs end to end as one run; stopped after its step-2 checkpoint it continues at step 2
    (contiguous rows); the checkpoint holds whole tensors, so it also loads into an unsharded model of the same
    shape."""
    run_dir = tmp_path / "run"
    first = train(tiny_cache, run_dir, "distributed=fsdp", "distributed.processes=2", "iterations=2")
    assert [row["step"] for row in first] == [0, 1]
    assert first[0]["length/response_tokens"] > 0
    assert (run_dir / "checkpoints" / "latest").read_text() == "step-000002"
    rows = train(tiny_cache, run_dir, f"resume={run_dir}", "iterations=4")
    assert [row["step"] for row in rows] == [0, 1, 2, 3]
    from safetensors.torch import load_file

    weights = load_file(str(run_dir / "checkpoints" / "step-000004" / "policy.safetensors"))
    assert weights and all(t.dim() == 0 or t.shape[0] > 1 for t in weights.values())
    sizes = {name: t.numel() for name, t in weights.items()}
    one = train(tiny_cache, tmp_path / "one", "distributed=fsdp", "distributed.processes=1", "iterations=2")
    assert [row["step"] for row in one] == [0, 1]
    assert {n: t.numel() for n, t in load_file(str(tmp_path / "one" / "checkpoints" / "step-000002" /
                                                     "policy.safetensors")).items()} == sizes
