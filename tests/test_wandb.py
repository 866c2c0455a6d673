"""Weights & Biases logging, offline (no network, no login): a short sweep with logger=wandb, read back with
wandb's own command line (`wandb leet inspect --json`), resume, failure isolation, and the analysis loader."""

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from analysis import load_runs, run_stability
from analysis.cli import main as report_main
from analysis.load import _natural_key
from analysis.wandb_runs import read_attempt, wandb_cli
from rlhf_lab.run.rundir import RunDir, read_jsonl
from rlhf_lab.config.schema import Config, LoggerKind
from rlhf_lab.run.wandb_sink import WandbSink, sweep_group, trick_tags

TINY = ["task.sft.examples=400", "task.sft.epochs=1", "task.rm.pairs=200", "task.rm.epochs=1",
        "model.hidden_size=32", "model.layers=2", "model.heads=2", "model.intermediate_size=64",
        "ppo.batch_size=16", "ppo.max_new_tokens=12", "critic_pretrain.steps=2", "ptx_loss.batch_size=4",
        "run.samples_every=2", "run.checkpoint_every=2", "run.progress=false",
        "run.threads=1"]  # one torch thread: a 2-core machine under load does not slow these tiny runs down 10x
FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # a well-formed but unknown API key
GROUP = "multirun"  # the sweep's W&B group: its directory relative to the working directory the sweep ran in


@pytest.fixture(scope="module")
def wandb_env(tmp_path_factory):
    """Offline W&B that touches nothing outside the test's temporary folders."""
    home = tmp_path_factory.mktemp("wandb-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_CONFIG_DIR=str(home / "config"), WANDB_CACHE_DIR=str(home / "cache"),
               WANDB_DATA_DIR=str(home / "data"), WANDB_SILENT="true", HF_HUB_OFFLINE="1")
    return env


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def rlhf_train(env: dict, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf_lab.cli", *args], capture_output=True, text=True,
                          timeout=600, env=env, cwd=cwd)


def inspect(path, *flags: str):
    """`wandb leet inspect --json [flags] <path>`: the records (a list) or, with --summary, one object."""
    out = subprocess.run([*wandb_cli(), "leet", "inspect", "--json", *flags, str(path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    if "--summary" in flags:
        return json.loads(out.stdout)
    return [json.loads(line) for line in out.stdout.splitlines()]


def offline_dirs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, cache, wandb_env):
    """sweep=smoke (arms vanilla and ppo_max), one seed, 3 iterations, logger=wandb in offline mode; the sweep
    directory is given as an absolute path under the working directory."""
    cwd = tmp_path_factory.mktemp("sweep")
    sweep_dir = cwd / GROUP
    out = rlhf_train(wandb_env, "-m", "sweep=smoke", *TINY, "hydra.sweeper.params.seed=0", "iterations=3",
                     "logger=wandb", f"cache_dir={cache}", f"hydra.sweep.dir={sweep_dir}",
                     "hydra.sweep.subdir=${arm}-seed${seed}", cwd=cwd)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    run_dirs = sorted((p.parent for p in sweep_dir.glob("*/run.json")), key=lambda p: _natural_key(p.name))
    assert [p.name for p in run_dirs] == ["ppo_max-seed0", "vanilla-seed0"]
    return sweep_dir, run_dirs


def test_sweep_writes_offline_runs_grouped_by_sweep_with_trick_keys(sweep):
    sweep_dir, run_dirs = sweep
    ids = set()
    for run_dir in run_dirs:
        info = json.loads((run_dir / "run.json").read_text())
        record = info["wandb"]
        assert record["group"] == GROUP and record["mode"] == "offline" and record["url"] is None
        (offline,) = offline_dirs(run_dir)
        assert offline.name.endswith(record["id"]) and record["dir"] == str(offline)
        ids.add(record["id"])

        records = inspect(offline)
        (run,) = [r["run"] for r in records if r["type"] == "run"]
        assert run["run_id"] == record["id"] and run["run_group"] == GROUP
        assert run["job_type"] == info["preset"] == info["arm"]  # smoke's arms are the presets
        assert run["display_name"] == f"{info['arm']},seed=0" and run["project"] == "rlhf-lab"
        assert sorted(run["tags"]) == sorted(trick_tags(info["tricks"]))
        assert "kl_penalty=token" in run["tags"] if info["arm"] == "ppo_max" else "kl_penalty=token" not in run["tags"]
        config = run["config"]["update"]
        assert {k[len("trick/"):]: v for k, v in config.items() if k.startswith("trick/")} == info["tricks"]
        assert config["arm"] == info["arm"] and config["seed"] == 0 and config["ppo"]["batch_size"] == 16
        assert config["run_info"]["run_id"] == info["run_id"]
        metrics = [r["metric"] for r in records if r["type"] == "metric"]
        assert any(m.get("name") == "step" for m in metrics)  # every metric is plotted against `step`
        assert any(m.get("glob_name") == "*" and m.get("step_metric") == "step" for m in metrics)

        # history: exactly the rows of metrics.jsonl, at their step
        local = read_jsonl(run_dir / "metrics.jsonl")
        items = [r["history"]["item"] for r in records if r["type"] == "history"]
        rows = [i for i in items if "reward/proxy_mean" in i]
        assert [i["step"] for i in rows] == [row["step"] for row in local] == [0, 1, 2]
        for item, row in zip(rows, local):
            assert {k: item[k] for k in row} == row
        # samples tables at the sample steps (0 and the last), one W&B Table file each
        table_steps = [i["step"] for i in items if i.get("samples._type") == "table-file"]
        assert table_steps == sorted({s["step"] for s in read_jsonl(run_dir / "samples.jsonl")}) == [0, 2]
        assert len(list((offline / "files" / "media" / "table").glob("samples_*.table.json"))) == 2

        summary = inspect(offline, "--summary")
        assert summary["state"] == "finished" and summary["exit_code"] == 0 and summary["name"] == run["display_name"]
        assert summary["summary"]["status"] == "completed"
        assert summary["summary"]["final/reward/proxy_mean"] == pytest.approx(
            sum(row["reward/proxy_mean"] for row in local) / len(local))
        assert summary["summary"]["stability/collapsed"] is False
        assert summary["summary"]["stability/n_steps"] == 3
    assert len(ids) == 2


@pytest.fixture(scope="module")
def resumed(sweep, wandb_env, tmp_path_factory):
    """The vanilla run of the sweep, resumed to 5 iterations without naming a logger: it continues its W&B run."""
    _, run_dirs = sweep
    run_dir = run_dirs[1]
    before = json.loads((run_dir / "run.json").read_text())["wandb"]
    out = rlhf_train(wandb_env, f"resume={run_dir}", "iterations=5", "run.threads=1",
                     f"hydra.run.dir={tmp_path_factory.mktemp('resume-log')}")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return run_dir, before


def test_resumed_run_keeps_its_wandb_id_and_group(resumed):
    run_dir, before = resumed
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["wandb"]["id"] == before["id"]
    assert info["wandb"]["group"] == before["group"]
    first, second = offline_dirs(run_dir)
    assert first.name.endswith(before["id"]) and second.name.endswith(before["id"])
    (run,) = [r["run"] for r in inspect(second) if r["type"] == "run"]
    assert run["run_id"] == before["id"] and run["resume"] is True and run["run_group"] == before["group"]
    steps = [r["history"]["item"]["step"] for r in inspect(second) if r["type"] == "history"
             and "reward/proxy_mean" in r["history"]["item"]]
    assert steps == [3, 4]
    summary = inspect(second, "--summary")
    assert summary["summary"]["status"] == "completed" and summary["summary"]["stability/n_steps"] == 5
    assert summary["config"]["iterations"] == 5


def test_loader_reads_offline_runs_like_run_dirs(sweep, resumed):
    sweep_dir, run_dirs = sweep
    local_runs, local_traces = load_runs(sweep_dir)
    offline = [d for run_dir in run_dirs for d in offline_dirs(run_dir)]
    assert len(offline) == 3  # the resumed run has two attempts, merged into one run
    runs, traces = load_runs(offline)
    pd.testing.assert_frame_equal(traces, local_traces)
    pd.testing.assert_frame_equal(run_stability(runs, traces), run_stability(local_runs, local_traces))
    assert list(runs["wandb_group"]) == [GROUP] * 2 and list(runs["n_steps"]) == [3, 5]
    # the same run rows, W&B ids aside (the config columns: W&B holds the config as resumed, see the README)
    same = [c for c in local_runs.columns if c != "run_dir" and not c.startswith("config.")]
    pd.testing.assert_frame_equal(runs[same], local_runs[same], check_like=True)
    # a folder holding W&B run directories (here: a run's wandb/ folder) is read the same way
    one, _ = load_runs([run_dirs[0] / "wandb"])
    assert list(one["run_id"]) == [local_runs["run_id"][0]]


@pytest.fixture(scope="module")
def local_summary(sweep, resumed, tmp_path_factory) -> str:
    """summary.csv of `rlhf-report` on the sweep's run directories."""
    out = tmp_path_factory.mktemp("report-local")
    assert report_main([str(sweep[0]), "-o", str(out), "--no-progress"]) == 0
    return (out / "summary.csv").read_text()


def test_report_on_offline_runs_equals_report_on_run_dirs(sweep, local_summary, tmp_path):
    _, run_dirs = sweep
    offline = [str(d) for run_dir in run_dirs for d in offline_dirs(run_dir)]
    assert report_main([*offline, "-o", str(tmp_path), "--no-progress"]) == 0
    assert (tmp_path / "summary.csv").read_text() == local_summary
    assert "ppo_max" in local_summary and "vanilla" in local_summary


class FakeApiRun:
    """What wandb.Api().runs() yields, built from an offline run's records (as `wandb sync` would upload)."""

    def __init__(self, attempts):
        self.id = attempts[-1]["run"]["run_id"]
        self.group = attempts[-1]["run"]["run_group"]
        self.url = f"https://wandb.ai/ent/proj/runs/{self.id}"
        self.state = "finished"
        self.created_at = attempts[0]["run"]["start_time"]
        self.config = {k: v for a in attempts for k, v in a["config"].items() if k != "_wandb"}
        self.summary = {k: v for a in attempts for k, v in a["summary"].items()}
        self.items = [item for a in attempts for item in a["items"]]

    def scan_history(self):
        return iter(self.items)


def test_report_from_the_wandb_api(sweep, resumed, local_summary, tmp_path, monkeypatch):
    import wandb

    _, run_dirs = sweep
    fake_runs = [FakeApiRun([read_attempt(d) for d in offline_dirs(run_dir)]) for run_dir in run_dirs]
    asked = []

    class FakeApi:
        def __init__(self, **kwargs):
            pass

        def runs(self, path, filters=None, order=None):
            asked.append((path, filters, order))
            return [r for r in fake_runs if r.group == (filters or {}).get("group", r.group)]

    monkeypatch.setattr(wandb, "Api", FakeApi)
    out = tmp_path / "api"
    assert report_main(["--wandb", "ent/proj", "--group", GROUP, "-o", str(out), "--no-progress"]) == 0
    assert asked == [("ent/proj", {"group": GROUP}, "+created_at")]
    assert (out / "summary.csv").read_text() == local_summary
    runs = pd.read_csv(out / "runs.csv")
    assert runs["wandb_url"].str.startswith("https://wandb.ai/ent/proj/runs/").all()


@pytest.mark.slow
def test_a_sweep_of_multi_rank_runs_groups_like_one_of_single_rank_runs(tmp_path, cache, wandb_env):
    """The ranks `distributed.processes` starts have no Hydra: the sweep's group and the command line reach
    the writing rank through its Job, so the W&B run is grouped by the sweep, as at one rank. (DDP's ranks start
    the same way, rlhf_lab.run.launch; FSDP also shards the model.)"""
    strategy = "fsdp"
    cwd = tmp_path / "sweep"
    cwd.mkdir()
    out = rlhf_train(wandb_env, "-m", "preset=ppo_max", *TINY, "seed=0", "iterations=2", "logger=wandb",
                     f"distributed={strategy}", "distributed.processes=2", f"cache_dir={cache}",
                     f"hydra.sweep.dir={cwd / GROUP}", cwd=cwd)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    (run_json,) = (cwd / GROUP).glob("*/run.json")
    info = json.loads(run_json.read_text())
    assert info["status"] == "completed" and info["wandb"]["group"] == GROUP
    (offline,) = offline_dirs(run_json.parent)
    (run,) = [r["run"] for r in inspect(offline) if r["type"] == "run"]
    assert run["run_group"] == GROUP and run["job_type"] == "ppo_max"


def test_sweep_group_is_the_sweep_directory_as_named(tmp_path):
    cwd = tmp_path / "proj"
    (cwd / "multirun").mkdir(parents=True)
    (tmp_path / "link").symlink_to(cwd)
    assert sweep_group("multirun/2026-11-22/10-00-00", str(cwd)) == "multirun/2026-11-22/10-00-00"  # as given
    assert sweep_group(f"{cwd}/multirun/2026-11-22/10-00-00", str(cwd)) == "multirun/2026-11-22/10-00-00"
    assert sweep_group(f"{tmp_path}/link/multirun/s1", str(cwd)) == "multirun/s1"  # under cwd through a symlink
    assert sweep_group("/scratch/sweeps/s1", str(cwd)) == "/scratch/sweeps/s1"  # elsewhere: absolute
    assert sweep_group(str(cwd), str(cwd)) == str(cwd)


class FakeWandbRun:
    """What wandb.init returns, as far as WandbSink.open uses it."""
    id, project, entity, url = "w1", "rlhf-lab", None, None

    def __init__(self, run_dir):
        self.dir = str(run_dir / "wandb" / "offline-run-w1" / "files")
        self.config = SimpleNamespace(update=lambda *args, **kwargs: None)

    def define_metric(self, *args, **kwargs):
        pass


@pytest.mark.parametrize("previous,logger_group,sweep,expected", [
    (None, None, None, "r1"),  # a single run is its own group
    (None, None, "multirun/s1", "multirun/s1"),  # a sweep's job: the sweep directory as named
    (None, "mine", "multirun/s1", "mine"),  # logger.group wins
    ({"id": "w0", "group": "old"}, "mine", "multirun/s1", "old"),  # a resumed run keeps the group of run.json
])
def test_group_precedence(previous, logger_group, sweep, expected, tmp_path, monkeypatch):
    import wandb

    run_dir = RunDir(tmp_path)
    run_dir.write_info({"run_id": "r1", "arm": "a", "seed": 0})
    asked = {}

    def init(**kwargs):
        asked.update(kwargs)
        return FakeWandbRun(tmp_path)

    monkeypatch.setattr(wandb, "init", init)
    cfg = Config()
    cfg.logger.name, cfg.logger.mode, cfg.logger.group = LoggerKind.wandb, "offline", logger_group
    sink = WandbSink.open(cfg, run_dir, previous, context=(sweep, []))
    assert sink.active and asked["group"] == expected
    assert run_dir.read_info()["wandb"]["group"] == expected


def test_no_network_or_bad_key_is_one_warning_and_training_goes_on(tmp_path, cache, wandb_env):
    env = {**wandb_env, "WANDB_MODE": "online", "WANDB_API_KEY": FAKE_KEY, "WANDB_BASE_URL": "http://127.0.0.1:9"}
    env.pop("WANDB_SILENT")
    run_dir = tmp_path / "run"
    out = rlhf_train(env, *TINY, "iterations=2", "arm=nonet", "logger=wandb", "logger.init_timeout=1",
                     f"cache_dir={cache}", f"hydra.run.dir={run_dir}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (out.stdout + out.stderr).count("W&B logging is off for this run") == 1, out.stdout + out.stderr[-3000:]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["wandb"] is None
    assert [row["step"] for row in read_jsonl(run_dir / "metrics.jsonl")] == [0, 1]
    assert (run_dir / "samples.jsonl").exists() and (run_dir / "checkpoints" / "latest").exists()
    for path in run_dir.rglob("*"):  # no secret anywhere in the run directory
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), path
    assert FAKE_KEY not in out.stdout + out.stderr


class BrokenRun:
    def __init__(self):
        self.calls = 0

    def log(self, row):
        self.calls += 1
        raise RuntimeError("wandb-core went away")

    def finish(self, **kwargs):
        raise RuntimeError("still gone")


def test_a_wandb_error_mid_run_is_one_warning_then_silence(tmp_path, caplog):
    run_dir = RunDir(tmp_path)
    run_dir.write_info({"run_id": "r", "status": "running"})
    broken = BrokenRun()
    sink = WandbSink(broken, run_dir)
    with caplog.at_level(logging.WARNING, logger="rlhf_lab"):
        for step in range(3):
            sink.log(step, {"reward/proxy_mean": 1.0})
        sink.log_samples(2, [{"step": 2, "prompt": "p", "response": "r", "reward_proxy": 0.0, "reward_gold": None}])
        sink.finish("completed")
    assert broken.calls == 1 and not sink.active
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "wandb-core went away" in warnings[0].getMessage()
    assert str(tmp_path) in warnings[0].getMessage()


def test_logger_local_never_imports_wandb(tmp_path):
    code = ("import sys; from rlhf_lab.config.schema import Config; from rlhf_lab.run.rundir import RunDir; "
            "from rlhf_lab.run.wandb_sink import WandbSink; import analysis; "
            f"d = RunDir({str(tmp_path)!r}); d.write_info({{'run_id': 'r', 'arm': 'a', 'seed': 0}}); "
            "assert not WandbSink.open(Config(), d).active; assert 'wandb' not in sys.modules, 'imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_nonfinite_history_values_are_counted(tmp_path):
    from analysis.wandb_runs import history_rows

    rows, nonfinite = history_rows([{"step": 0, "a": "NaN", "b": 1, "_step": 0},
                                    {"step": 1, "a": "Infinity", "samples._type": "table-file", "samples.nrows": 8},
                                    {"samples": {"_type": "table-file"}}])
    assert nonfinite == 2 and math.isnan(rows[0]["a"]) and rows[1] == {"step": 1, "a": math.inf}
    assert rows[0] == {"step": 0, "a": rows[0]["a"], "b": 1.0}
