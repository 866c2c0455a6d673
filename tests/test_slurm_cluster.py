"""Integration tests against the real single-node SLURM cluster of ``tests/slurm/cluster.sh``.

They are skipped unless the cluster answers (``sbatch`` on PATH and ``cluster.sh status`` succeeds).
With ``RLHF_LAB_START_SLURM=1`` a session fixture starts it first (``cluster.sh start``, idempotent;
it is left running — ``tests/slurm/cluster.sh stop`` stops it)::

    RLHF_LAB_START_SLURM=1 .venv/bin/python -m pytest tests/test_slurm_cluster.py -q -p no:cacheprovider

The jobs run ``sys.executable`` on the node (same machine, same venv). The functions submitted here live
in this test module, which the job's python cannot import by name (``tests/`` is not on its path), so the
module is registered with cloudpickle to be pickled *by value*.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

submitit = pytest.importorskip("submitit")
cloudpickle = pytest.importorskip("cloudpickle")

PARTITION = "local"
JOB_DEADLINE_S = 180.0


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def pickle_this_module_by_value(slurm_cluster):
    """The job's python cannot import this test module by name: ship its functions/classes by value."""
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    yield
    cloudpickle.unregister_pickle_by_value(module)


def _executor(folder: Path, name: str):
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    assert executor.cluster == "slurm"
    executor.update_parameters(
        slurm_partition=PARTITION,
        name=name,
        timeout_min=60,  # > 10 min so a preemption is not counted as a timeout by submitit
        nodes=1,
        tasks_per_node=1,
        cpus_per_task=1,
    )
    return executor


def _wait_done(job, deadline_s: float = JOB_DEADLINE_S) -> None:
    deadline = time.monotonic() + deadline_s
    while not job.done(force_check=True):
        if time.monotonic() > deadline:
            _scancel(job.job_id)
            pytest.fail(f"job {job.job_id} not done after {deadline_s:.0f} s (state {job.state});\n"
                        f"stderr:\n{job.stderr()}", pytrace=False)
        time.sleep(0.5)


def _scancel(job_id: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["scancel", *args, job_id], capture_output=True, text=True, check=False)


def _sacct_records(job_id: str) -> list[tuple[str, str]]:
    """(JobID, State) of every record of the job's allocation, including those of requeued runs (-D)."""
    out = subprocess.run(
        ["sacct", "-j", job_id, "--duplicates", "-X", "-n", "-P", "-o", "JobID,State"],
        capture_output=True, text=True, check=True,
    ).stdout
    return [tuple(line.split("|", 1)) for line in out.splitlines() if line.strip()]  # type: ignore[misc]


def _sacct_records_when_final(job_id: str, timeout_s: float = 30) -> list[tuple[str, str]]:
    """sacct records once the last one is no longer pending/running (the result file of submitit appears
    before the job ends, and slurmctld sends job records to slurmdbd asynchronously)."""
    deadline = time.monotonic() + timeout_s
    records = _sacct_records(job_id)
    while (not records or records[-1][1] in {"PENDING", "RUNNING", "REQUEUED", "COMPLETING"}) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.5)
        records = _sacct_records(job_id)
    return records


# --------------------------------------------------------------------------- submitted code
def square_on_node(x: int) -> dict:
    return {
        "value": x * x,
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "partition": os.environ.get("SLURM_JOB_PARTITION"),
        "pid": os.getpid(),
    }


class PreemptibleCounter(submitit.helpers.Checkpointable):
    """Counts to ``n_steps``. The first run stops half way and waits to be preempted (USR2); submitit then
    pickles ``self`` (with its progress) through the default ``checkpoint`` and requeues the job, whose
    second run resumes from the saved step."""

    def __init__(self, workdir: str, n_steps: int) -> None:
        self.workdir = workdir
        self.n_steps = n_steps
        self.step = 0
        self.runs: list[tuple[int, int]] = []  # (step at start, SLURM_RESTART_COUNT)

    def __call__(self) -> dict:
        restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        self.runs.append((self.step, restart))
        while self.step < self.n_steps:
            if restart == 0 and self.step == self.n_steps // 2:
                # submitit's USR2 handler is installed before this is called: tell the test to preempt us.
                Path(self.workdir, "waiting-for-preemption").write_text(os.environ.get("SLURM_JOB_ID", ""))
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    time.sleep(0.1)
                raise RuntimeError("was never preempted")
            time.sleep(0.05)
            self.step += 1
        return {"step": self.step, "runs": self.runs, "job_id": os.environ.get("SLURM_JOB_ID")}


# --------------------------------------------------------------------------- tests
def test_submitit_runs_function_on_slurm(slurm_cluster, tmp_path):
    job = _executor(tmp_path / "submitit", "rlhf-lab-square").submit(square_on_node, 7)
    try:
        _wait_done(job)
        result = job.result()
    except BaseException:
        _scancel(job.job_id)  # only on failure: the result file appears before SLURM marks the job COMPLETED
        raise
    assert result["value"] == 49
    assert result["job_id"] == job.job_id
    assert result["partition"] == PARTITION
    assert result["pid"] != os.getpid()
    assert [state for _, state in _sacct_records_when_final(job.job_id)] == ["COMPLETED"]


def test_checkpointable_job_is_requeued_after_preemption(slurm_cluster, tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    job = _executor(tmp_path / "submitit", "rlhf-lab-preempt").submit(PreemptibleCounter(str(workdir), 20))
    try:
        marker = workdir / "waiting-for-preemption"
        deadline = time.monotonic() + JOB_DEADLINE_S
        while not marker.exists():
            if job.done(force_check=True) or time.monotonic() > deadline:
                pytest.fail(f"job {job.job_id} never reached the preemption point (state {job.state});\n"
                            f"stderr:\n{job.stderr()}", pytrace=False)
            time.sleep(0.2)
        assert marker.read_text() == job.job_id

        preempt = _scancel(job.job_id, "--signal=USR2")
        assert preempt.returncode == 0, preempt.stderr

        _wait_done(job)
        result = job.result()
    except BaseException:
        _scancel(job.job_id)  # only on failure: the result file appears before SLURM marks the job COMPLETED
        raise

    # Second run resumed from the checkpointed step, with SLURM_RESTART_COUNT=1.
    assert result["step"] == 20
    assert result["runs"] == [(0, 0), (10, 1)]
    assert result["job_id"] == job.job_id

    # The accounting database recorded the requeue: one REQUEUED run followed by a COMPLETED one.
    records = _sacct_records_when_final(job.job_id)
    states = [state for _, state in records]
    assert "REQUEUED" in states, records
    assert states[-1] == "COMPLETED", records
    assert states.index("REQUEUED") < len(states) - 1, records
    log = job.stderr() or ""
    assert "Caught signal SIGUSR2" in log and "preempted" in log, log
