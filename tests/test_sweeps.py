"""Sweeps: arms and labels, failure isolation, shared artefacts built once, preemption and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf_lab.engine.artifacts import cached_build
from rlhf_lab.run.rundir import read_jsonl

TINY = ["task.sft.examples=300", "task.sft.epochs=1", "task.rm.pairs=150", "task.rm.epochs=1",
        "model.hidden_size=32", "model.layers=2", "model.heads=2", "model.intermediate_size=64",
        "ppo.batch_size=8", "ppo.max_new_tokens=8", "critic_pretrain.steps=1", "ptx_loss.batch_size=4",
        "run.progress=false"]


def rlhf_train(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf_lab.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_smoke_sweep_labels_arms_and_seeds(tmp_path, cache):
    out = rlhf_train("-m", "sweep=smoke", *TINY, "iterations=2", f"cache_dir={cache}", f"hydra.sweep.dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    runs = {p.parent.name: json.loads(p.read_text()) for p in tmp_path.glob("*/run.json")}
    assert set(runs) == {"vanilla,seed=0", "vanilla,seed=1", "ppo_max,seed=0", "ppo_max,seed=1"}
    for name, info in runs.items():
        arm, seed = name.split(",seed=")
        assert (info["arm"], info["seed"], info["status"]) == (arm, int(seed), "completed")
        assert info["tricks"]["kl_penalty"] == ("off" if arm == "vanilla" else "token")
    assert "4 runs: 4 completed" in out.stdout
    # run again into its directory (to continue what was stopped): the completed runs stay as they are, byte for
    # byte; a run stopped at its last checkpoint (status preempted) ends there as completed
    files = {p: p.read_bytes() for p in tmp_path.glob("*/*") if p.is_file() and p.suffix in (".json", ".jsonl")}
    stopped = tmp_path / "ppo_max,seed=1" / "run.json"
    stopped.write_text(json.dumps({**runs["ppo_max,seed=1"], "status": "preempted"}))
    again = rlhf_train("-m", "sweep=smoke", *TINY, "iterations=2", f"cache_dir={cache}", f"hydra.sweep.dir={tmp_path}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 runs: 4 completed" in again.stdout
    assert {p: p.read_bytes() for p in files if p.parent.name != "ppo_max,seed=1"} == {
        p: b for p, b in files.items() if p.parent.name != "ppo_max,seed=1"}
    resumed = json.loads(stopped.read_text())
    assert resumed["status"] == "completed" and resumed["finished_at"] != runs["ppo_max,seed=1"]["finished_at"]
    assert (stopped.parent / "metrics.jsonl").read_bytes() == files[stopped.parent / "metrics.jsonl"]


def test_fractional_factorial_sweep_runs_its_design(tmp_path, cache):
    # 3 two-level factors at resolution III: the half fraction I = ABC, 4 runs, each an arm labelled by its levels
    factors = ["+hydra.sweeper.factors.kl_penalty=[off,token]", "+hydra.sweeper.factors.adv_norm=[off,whiten]",
               "+hydra.sweeper.factors.value_clip=[off,on]"]
    out = rlhf_train("-m", *factors, "hydra.sweeper.resolution=3", "seed=0", *TINY,
                     "iterations=1", f"cache_dir={cache}", f"hydra.sweep.dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    design = json.loads((tmp_path / "design.json").read_text())
    assert design["defining_relation"] == ["ABC"] and len(design["runs"]) == 4
    runs = [json.loads(p.read_text()) for p in tmp_path.glob("*/run.json")]
    assert len(runs) == 4 and {r["status"] for r in runs} == {"completed"}
    for run in runs:
        levels = dict(part.split("=") for part in run["arm"].split(","))
        assert levels == {k: run["tricks"][k] for k in levels}  # each run has its arm's levels
        signs = [levels[k] != first for k, first in (("kl_penalty", "off"), ("adv_norm", "off"), ("value_clip", "off"))]
        assert sum(signs) % 2 == 1  # I = ABC: an odd number of factors at their second level
    # the reward model's build report (its quality: agreement with gold on held-out pairs), recorded in each run
    reports = [json.loads(p.read_text()) for p in cache.glob("toy-rm-*/rm_report.json")]
    assert reports and all(run["reward_model"] in reports for run in runs)
    assert all(0 <= run["reward_model"]["gold_accuracy"] <= 1 for run in runs)


def test_a_sweep_declares_arms_or_factors_not_both(tmp_path):
    out = rlhf_train("-m", "sweep=smoke", "+hydra.sweeper.factors.kl_penalty=[off,token]", *TINY,
                     f"hydra.sweep.dir={tmp_path}", timeout=120)
    assert out.returncode != 0 and "either hydra.sweeper.arms or hydra.sweeper.factors" in out.stderr


def test_a_diverged_and_a_failed_run_do_not_stop_the_sweep(tmp_path, cache):
    # arm 1 diverges (absurd learning rate), arm 2 fails (its artefact cache cannot be written)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a folder should be")
    out = rlhf_train("-m", *TINY, "iterations=3", "ppo.policy_lr=1e-4,1e9", f"cache_dir={cache},{blocked}",
                     f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert out.returncode == 1, out.stdout + out.stderr[-3000:]
    statuses = sorted(json.loads(p.read_text())["status"] for p in (tmp_path / "sweep").glob("*/run.json"))
    assert statuses == ["completed", "diverged", "failed", "failed"]
    assert "4 runs: 1 completed, 1 diverged, 2 failed" in out.stdout
    failed = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/run.json")]
    failed = [info for info in failed if info["status"] == "failed"]
    assert all(Path(info["log"]).exists() and "Traceback" in Path(info["log"]).read_text() for info in failed)
    diverged = next(p.parent for p in (tmp_path / "sweep").glob("*/run.json")
                    if json.loads(p.read_text())["status"] == "diverged")
    assert "non-finite" in json.loads((diverged / "run.json").read_text())["error"]


def _build_once(root: str, marker: str) -> None:
    def build(out: Path) -> None:
        with open(marker, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)
        (out / "weights").write_text("ok")
    cached_build(Path(root), "thing", {"a": 1}, build)


def test_concurrent_processes_build_an_artefact_once(tmp_path):
    marker = tmp_path / "builds.txt"
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"from test_sweeps import _build_once; _build_once({str(tmp_path / 'cache')!r}, {str(marker)!r})")
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    assert len(marker.read_text().split()) == 1
    built = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(built) == 1 and (built[0] / "weights").read_text() == "ok"


def test_parallel_launcher_builds_shared_artefacts_once(tmp_path):
    cache = tmp_path / "cache"
    out = rlhf_train("-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", *TINY, "iterations=1",
                     "seed=0,1", f"cache_dir={cache}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(p.name.split("-")[1] for p in cache.iterdir() if p.is_dir()) == ["rm", "sft"]
    assert len(list((tmp_path / "sweep").glob("*/run.json"))) == 2


PREEMPTABLE = [*TINY, "iterations=12", "seed=3"]


def without_perf(rows):
    return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in rows]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, cache):
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    out = rlhf_train(*PREEMPTABLE, f"cache_dir={cache}", f"hydra.run.dir={run_dir}")
    assert out.returncode == 0, out.stderr[-3000:]
    return without_perf(read_jsonl(run_dir / "metrics.jsonl"))


def start_and_interrupt(run_dir: Path, cache: Path, sig: signal.Signals, after_rows: int,
                        *overrides: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "rlhf_lab.cli", *PREEMPTABLE, f"cache_dir={cache}",
                             f"hydra.run.dir={run_dir}", *overrides],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while len(read_jsonl(run_dir / "metrics.jsonl")) < after_rows and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    return proc


def resume_and_compare(run_dir: Path, tmp_path: Path, straight: list) -> None:
    out = rlhf_train(f"resume={run_dir}", f"hydra.run.dir={tmp_path / 'resume-log'}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"
    resumed = without_perf(read_jsonl(run_dir / "metrics.jsonl"))
    assert [row["step"] for row in resumed] == list(range(12))
    assert resumed == straight


def test_sigusr2_checkpoints_then_resume_matches_an_uninterrupted_run(tmp_path, cache, straight_run):
    run_dir = tmp_path / "preempted"
    proc = start_and_interrupt(run_dir, cache, signal.SIGUSR2, 3, "run.checkpoint_every=100")
    assert proc.returncode == 128 + signal.SIGUSR2
    info = json.loads((run_dir / "run.json").read_text())
    steps = [row["step"] for row in read_jsonl(run_dir / "metrics.jsonl")]
    assert info["status"] == "preempted" and 3 <= len(steps) < 12
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step-{len(steps):06d}"
    resume_and_compare(run_dir, tmp_path, straight_run)


@pytest.mark.parametrize("moment, n, checkpoint_every", [
    ("after_row", 2, 100),  # before the first checkpoint: the resume starts the run over in its directory
    ("after_row", 6, 4),  # between iterations, two rows past the checkpoint at step 4
    ("checkpoint_write", 3, 4),  # inside the second checkpoint's write (policy written, critic not)
])
def test_kill_9_at_any_moment_then_resume_matches_an_uninterrupted_run(moment, n, checkpoint_every, tmp_path,
                                                                          cache, straight_run):
    run_dir = tmp_path / "killed"
    proc = subprocess.run([sys.executable, str(Path(__file__).parent / "kill_at.py"), moment, str(n),
                           *PREEMPTABLE, f"run.checkpoint_every={checkpoint_every}", f"cache_dir={cache}",
                           f"hydra.run.dir={run_dir}"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    before = json.loads((run_dir / "run.json").read_text())
    assert before["status"] == "running"
    if (moment, n) == ("after_row", 6):  # as if the kill had also torn a line in half
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write('{"step": 99, "rew')
    resume_and_compare(run_dir, tmp_path, straight_run)
    after = json.loads((run_dir / "run.json").read_text())
    assert (after["run_id"], after["arm"], after["started_at"]) == (before["run_id"], before["arm"],
                                                                    before["started_at"])
    samples = read_jsonl(run_dir / "samples.jsonl")
    assert sorted({s["step"] for s in samples}) == [0, 10, 11] and len(samples) == 3 * 8
