"""Progress of the loops a user waits on: a bar on a terminal of its own, plain log lines anywhere else (no
carriage-return frames in a log), and a fresh toy build plus PPO run that reports every step it waits on."""

import io
import logging
import subprocess
import sys
import threading

from filelock import FileLock

from rlhf_lab.engine import progress
from rlhf_lab.engine.artifacts import cached_build, spec_hash
from rlhf_lab.engine.progress import Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "rlhf_lab.engine.progress"]


def count(bar: Progress, steps: int) -> None:
    with bar:
        for i in range(steps):
            bar.update(loss=1 / (i + 1))


def test_lines_when_stderr_is_not_a_terminal(monkeypatch, caplog, capsys):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)  # a line at every update
    count(Progress("sft: training", 4, unit="steps"), 3)
    assert [line.split(",")[0] for line in lines(caplog)] == [
        "sft: training: 1/4 steps (25%)", "sft: training: 2/4 steps (50%)", "sft: training: 3/4 steps (75%)"]
    assert lines(caplog)[-1].endswith("loss 0.333")  # closing logs no second line of the same count
    assert capsys.readouterr().err == ""


def test_one_line_per_interval_and_one_at_the_end(caplog):
    caplog.set_level(logging.INFO)
    count(Progress("ppo (vanilla, seed 0)", 150, initial=120), 30)  # in far less than LOG_EVERY_S
    [line] = lines(caplog)
    assert line.startswith("ppo (vanilla, seed 0): 150/150 it (100%), 00:00 elapsed, ") and "eta" not in line


def test_a_bar_on_a_terminal_of_its_own(monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(sys, "stderr", Terminal())
    count(Progress("rm: training", 5, unit="steps"), 5)
    assert "\r" in sys.stderr.getvalue() and "rm: training: 100%" in sys.stderr.getvalue()
    assert lines(caplog) == []


def test_lines_on_a_terminal_shared_with_other_runs(monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(sys, "stderr", Terminal())
    monkeypatch.setattr(progress, "_shared_terminal", True)  # progress.share_terminal(True): a parallel launcher
    count(Progress("rm: training", 5, unit="steps"), 5)
    assert sys.stderr.getvalue() == "" and len(lines(caplog)) == 1


def test_switched_off_shows_nothing(monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(sys, "stderr", Terminal())
    count(Progress("rm: training", 5, enabled=False), 5)
    assert sys.stderr.getvalue() == "" and lines(caplog) == []


def test_waiting_for_another_builder_is_said(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    final = tmp_path / f"toy-sft-{spec_hash({})}"
    other = FileLock(f"{final}.lock")
    other.acquire()  # another process is building the artefact
    waiting = threading.Thread(target=cached_build, args=(tmp_path, "toy-sft", {}, lambda out: None))
    waiting.start()
    while not any("waiting for another process" in r.getMessage() for r in caplog.records):
        waiting.join(0.01)
        assert waiting.is_alive()
    other.release()
    waiting.join(10)
    assert (final / "BUILD_DONE").exists()


def test_a_fresh_build_and_run_report_every_step_without_carriage_returns(tmp_path):
    """The demo's path with stderr not a terminal (a log): every stage step and the PPO loop log where they
    ended, and nothing writes a bar frame."""
    tiny = ["task.sft.examples=64", "task.sft.epochs=1", "task.sft.batch_size=32", "task.rm.pairs=32",
            "task.rm.eval_pairs=16", "task.rm.calibration_samples=16", "task.rm.epochs=1", "task.rm.batch_size=16",
            "model.hidden_size=32", "model.layers=1", "model.heads=2", "model.intermediate_size=64",
            "ppo.batch_size=8", "ppo.max_new_tokens=8", "critic_pretrain.steps=1", "iterations=2", "arm=tiny"]
    out = subprocess.run([sys.executable, "-m", "rlhf_lab.cli", *tiny, f"cache_dir={tmp_path / 'cache'}",
                          f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "\r" not in text
    for step in ("sft: training (testbed 0): 2/2 steps (100%)", "rm: sampling pairs (testbed 0): 96/96 responses",
                 "rm: training (testbed 0): 2/2 steps", "rm: calibration samples (testbed 0): 16/16 responses",
                 "critic pre-training 1/1: value loss", "ppo (tiny, seed 0): 2/2 it (100%)"):
        assert step in text, step
