"""The smoke sweep on the real local SLURM cluster (tests/slurm/cluster.sh): one array job through submitit,
one job preempted with `scancel --signal=USR2`, requeued, resumed and completed with contiguous metrics."""

import json
import subprocess
import sys
import time

import pytest

from rlhf_lab.run.rundir import read_jsonl
from test_sweeps import TINY

pytestmark = pytest.mark.slurm
ITERATIONS = 40


def preempt_job(job_dir) -> None:
    """`scancel --signal=USR2` one array task, once. For an array task slurmctld answers "Job can not be altered
    now, try again later" while it signals it, and scancel then keeps retrying for about half a minute: a retry
    that reaches the requeued job kills it (state FAILED). So stop scancel once the job has caught the signal."""
    preempt = subprocess.Popen(["scancel", "--signal=USR2", job_dir.name])
    deadline = time.time() + 60
    while not any("Caught signal SIGUSR2" in log.read_text() for log in job_dir.glob("*_log.*")):
        assert time.time() < deadline and preempt.poll() in (None, 0), "the job never caught SIGUSR2"
        time.sleep(0.1)
    preempt.kill()
    preempt.wait()


def test_smoke_sweep_on_slurm_survives_preemption(slurm_cluster, tmp_path):
    sweep_dir, cache = tmp_path / "sweep", tmp_path / "cache"
    sweep = subprocess.Popen(
        [sys.executable, "-m", "rlhf_lab.cli", "-m", "sweep=smoke", "hydra/launcher=slurm", *TINY,
         f"iterations={ITERATIONS}", "run.checkpoint_every=100", f"cache_dir={cache}", f"hydra.sweep.dir={sweep_dir}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    target = sweep_dir / "vanilla,seed=0"  # job 0 of the array
    deadline = time.time() + 400
    while len(read_jsonl(target / "metrics.jsonl")) < 3:
        assert time.time() < deadline and sweep.poll() is None, "the first job never got going"
        time.sleep(0.1)
    job_id = next((sweep_dir / ".submitit").glob("*_0")).name
    preempt_job(sweep_dir / ".submitit" / job_id)

    output, _ = sweep.communicate(timeout=900)
    assert sweep.returncode == 0, output[-4000:]
    assert "4 runs: 4 completed" in output
    for run_json in sweep_dir.glob("*/run.json"):
        info = json.loads(run_json.read_text())
        steps = [row["step"] for row in read_jsonl(run_json.parent / "metrics.jsonl")]
        assert info["status"] == "completed" and steps == list(range(ITERATIONS)), run_json.parent.name
    assert "checkpoint saved, stopping" in (target / "train.log").read_text()
    deadline = time.time() + 60  # the job's result file appears before SLURM's accounting says COMPLETED
    while True:
        states = subprocess.run(["sacct", "-j", job_id, "-D", "-n", "-X", "-o", "State"], capture_output=True,
                                text=True).stdout.split()
        if states and states[-1] == "COMPLETED" or time.time() > deadline:
            break
        time.sleep(1)
    assert "REQUEUED" in states and states[-1] == "COMPLETED", states


@pytest.mark.slow
def test_a_two_rank_job_on_slurm_survives_preemption(slurm_cluster, tmp_path):
    """One run as a SLURM job of 2 tasks (2 FSDP ranks, gloo): preempted with USR2, requeued, resumed, one run
    directory with contiguous steps. The ranks come from SLURM's task variables whatever the strategy; DDP's own
    two-rank run and resume are tests/test_distributed.py's (FSDP here: its sharded checkpoint is the harder
    resume)."""
    sweep_dir, cache, iterations, strategy = tmp_path / "sweep", tmp_path / "cache", 20, "fsdp"
    sweep = subprocess.Popen(
        [sys.executable, "-m", "rlhf_lab.cli", "-m", f"arm={strategy}", "seed=0", f"distributed={strategy}",
         "hydra/launcher=slurm",
         "hydra.launcher.tasks_per_node=2", "hydra.launcher.cpus_per_task=1", *TINY, f"iterations={iterations}",
         "run.checkpoint_every=100", f"cache_dir={cache}", f"hydra.sweep.dir={sweep_dir}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    target = sweep_dir / f"{strategy},seed=0"
    deadline = time.time() + 400
    while len(read_jsonl(target / "metrics.jsonl")) < 3:
        assert time.time() < deadline and sweep.poll() is None, "the job never got going"
        time.sleep(0.1)
    job_dir = next(path for path in (sweep_dir / ".submitit").iterdir() if path.is_dir())  # one job, no array
    preempt_job(job_dir)

    output, _ = sweep.communicate(timeout=900)
    assert sweep.returncode == 0, output[-4000:]
    assert "1 runs: 1 completed" in output
    info = json.loads((target / "run.json").read_text())
    assert info["status"] == "completed"
    assert [row["step"] for row in read_jsonl(target / "metrics.jsonl")] == list(range(iterations))
    log_text = (target / "train.log").read_text()
    assert "SLURM task 0 of 2" in log_text and "checkpoint saved, stopping" in log_text
