"""Preflight checks: unknown sweeps, checkpoint paths, JSONL files and the artefact cache fail before any model
loads (exit code 2, naming the key), without importing torch."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from rlhf_lab.config import preflight
from rlhf_lab.config.checks import to_config
from rlhf_lab.config.schema import ConfigError, register_schema
from rlhf_lab.config.paths import conf_dir

register_schema()
SWEEPS = sorted(p.stem for p in (conf_dir() / "sweep").glob("*.yaml"))


def composed(*overrides):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def rlhf_train(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf_lab.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def write(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def checkpoint(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


# ---------------------------------------------------------------- the command line
@pytest.mark.parametrize("override", ["sweep=nope", "+sweep=nope"])
def test_cli_rejects_an_unknown_sweep_before_the_sweeper(override, tmp_path):
    out = rlhf_train("-m", override, f"hydra.sweep.dir={tmp_path}/multirun")
    assert out.returncode == 2, out.stderr[-2000:]
    assert "rlhf-train: config error: sweep='nope' is not allowed" in out.stderr
    assert all(name in out.stderr for name in SWEEPS)
    assert not (tmp_path / "multirun").exists()  # no job started


def test_cli_rejects_missing_hf_checkpoints_before_loading(tmp_path):
    out = rlhf_train("model=hf", "model.policy=/nonexistent", "model.reward_model=/nonexistent", "task=jsonl",
                     "task.prompts_file=p.jsonl", "ptx_loss=off", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "rlhf-train: config error: model.policy='/nonexistent' is not allowed" in out.stderr
    assert not (tmp_path / "run" / "run.json").exists()


def test_the_checks_import_neither_torch_nor_transformers():
    code = ("import sys; import rlhf_lab.cli, rlhf_lab.config.preflight; "
            "assert not {'torch', 'transformers'} & set(sys.modules), 'imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


# ---------------------------------------------------------------- sweeps
@pytest.mark.parametrize("argv", [["-m", "sweep=nope"], ["+sweep=nope"], ["-m", "sweep=smoke,nope"],
                                  ["--cfg", "job", "sweep=nope"]])
def test_unknown_sweep_lists_the_existing_ones(argv):
    with pytest.raises(ConfigError, match=r"sweep='nope' is not allowed: expected one of \[") as err:
        preflight.check_sweep(argv)
    listed = str(err.value).split("[", 1)[1].split("]", 1)[0].split(", ")
    assert listed == sorted(listed) and set(SWEEPS) <= set(listed)


@pytest.mark.parametrize("argv", [["-m", "sweep=smoke"], ["+sweep=demo"], ["-m", "sweep=demo,smoke"],
                                  ["sweep=null"], ["-m", "sweep=glob(*)"], ["seed=1"], ["--version"], []])
def test_known_sweeps_and_other_command_lines_pass(argv):
    preflight.check_sweep(argv)


def test_sweeps_under_config_dir_and_searchpath_count(tmp_path):
    (tmp_path / "sweep").mkdir()
    write(tmp_path / "sweep" / "mine.yaml", "# @package _global_", "iterations: 2")
    preflight.check_sweep(["--config-dir", str(tmp_path), "-m", "sweep=mine"])
    preflight.check_sweep(["-m", "sweep=mine", f"hydra.searchpath=[file://{tmp_path}]"])
    with pytest.raises(ConfigError, match="mine"):
        preflight.check_sweep(["-m", "sweep=mine"])


def test_a_malformed_command_line_is_left_to_hydra():
    preflight.check_sweep(["sweep=[unclosed"])


# ---------------------------------------------------------------- model=hf checkpoints
@pytest.mark.parametrize("value", ["gpt2", "org/sft-model_v1.2", "OpenAssistant/reward-model-deberta-v3"])
def test_hub_ids_are_allowed(value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing of that name on disk
    preflight.check_checkpoint("model.policy", value)


def test_a_local_checkpoint_directory_is_allowed(tmp_path, monkeypatch):
    path = checkpoint(tmp_path / "sft")
    preflight.check_checkpoint("model.policy", str(path))
    monkeypatch.chdir(tmp_path)
    preflight.check_checkpoint("model.policy", "./sft")
    preflight.check_checkpoint("model.policy", "sft")  # a hub-id-like name that is a local folder


@pytest.mark.parametrize("value,problem", [
    ("/nonexistent", "does not exist"), ("./missing", "does not exist"), ("../missing", "does not exist"),
    ("~/no-such-rlhf-lab-checkpoint", "does not exist"), ("a/b/c", "does not exist"),
    ("empty", "has no config.json"), ("file.bin", "is not a directory"),
])
def test_bad_local_checkpoints_name_the_key(value, problem, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.bin").write_bytes(b"\0")
    with pytest.raises(ConfigError, match=rf"model\.reward_model={value!r} is not allowed: .*{problem}"):
        preflight.check_checkpoint("model.reward_model", value)


# ---------------------------------------------------------------- task=jsonl files
def test_a_good_prompts_file_passes(tmp_path):
    preflight.check_jsonl("task.prompts_file", str(write(tmp_path / "p.jsonl", '{"prompt": "a"}', "  ",
                                                         json.dumps({"prompt": "b", "id": 2}))), ("prompt",))


@pytest.mark.parametrize("lines,problem", [
    ([], "has no rows"),
    (["", "   "], "has no rows"),
    (['{"prompt": "a"}', '{"prompt": "b"', '{"prompt": "c"}'], r"p\.jsonl:2: not valid JSON"),
    (['{"prompt": "a"}', "", '["prompt"]'], r"p\.jsonl:3: a JSON list, not an object"),
    (['{"text": "a"}'], r"p\.jsonl:1: no key 'prompt'"),
    (['{"prompt": "a"}', '{"prompt": 7}'], r"p\.jsonl:2: 'prompt' is not a string but a JSON int"),
])
def test_bad_prompts_files_name_the_key_and_the_line(lines, problem, tmp_path):
    path = write(tmp_path / "p.jsonl", *lines)
    with pytest.raises(ConfigError, match=rf"task\.prompts_file=.* is not allowed: .*{problem}"):
        preflight.check_jsonl("task.prompts_file", str(path), ("prompt",))


def test_a_missing_prompts_file_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"task\.prompts_file=.*missing\.jsonl.* \(cannot read it: \[Errno 2\]"):
        preflight.check_jsonl("task.prompts_file", str(tmp_path / "missing.jsonl"), ("prompt",))


def test_sft_file_needs_prompt_and_response(tmp_path):
    path = write(tmp_path / "sft.jsonl", '{"prompt": "a", "response": "b"}', '{"prompt": "a"}')
    with pytest.raises(ConfigError, match=r"task\.sft_file=.*sft\.jsonl:2: no key 'response'"):
        preflight.check_jsonl("task.sft_file", str(path), preflight.SFT_FIELDS)


# ---------------------------------------------------------------- the artefact cache
def test_a_writable_cache_dir_is_created(tmp_path):
    preflight.check_cache_dir(str(tmp_path / "new" / "cache"))
    assert (tmp_path / "new" / "cache").is_dir() and not list((tmp_path / "new" / "cache").iterdir())


def test_an_unwritable_cache_dir_names_the_key(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"cache_dir='.*file/sub' is not allowed: expected a writable directory"):
        preflight.check_cache_dir(str(tmp_path / "file" / "sub"))  # under a file: even root cannot create it
    monkeypatch.setenv("RLHF_LAB_CACHE", str(tmp_path / "file" / "sub"))
    with pytest.raises(ConfigError, match=r"cache_dir=.* \(from \$RLHF_LAB_CACHE\) is not allowed"):
        preflight.check_cache_dir(None)


# ---------------------------------------------------------------- check(cfg): which checks a config gets
def test_check_runs_the_checks_its_task_and_model_need(tmp_path):
    prompts = write(tmp_path / "p.jsonl", '{"prompt": "a"}')
    sft = write(tmp_path / "sft.jsonl", '{"prompt": "a", "response": "b"}')
    policy, rm = checkpoint(tmp_path / "sft"), checkpoint(tmp_path / "rm")
    hf = ["model=hf", f"model.policy={policy}", f"model.reward_model={rm}", "task=jsonl",
          f"task.prompts_file={prompts}", f"task.sft_file={sft}", "ptx_loss=off",
          f"cache_dir={tmp_path / 'file' / 'sub'}"]  # the cache is not needed by task=jsonl
    (tmp_path / "file").write_text("")
    preflight.check(to_config(composed(*hf)))
    with pytest.raises(ConfigError, match=r"model\.reward_model="):
        preflight.check(to_config(composed(*hf, "model.reward_model=/nonexistent")))
    with pytest.raises(ConfigError, match=r"task\.sft_file="):
        preflight.check(to_config(composed(*hf, f"task.sft_file={tmp_path / 'missing.jsonl'}")))
    with pytest.raises(ConfigError, match="cache_dir="):
        preflight.check(to_config(composed(f"cache_dir={tmp_path / 'file' / 'sub'}")))
    preflight.check(to_config(composed(f"cache_dir={tmp_path / 'cache'}")))


def test_resume_needs_a_run_directory(tmp_path):
    with pytest.raises(ConfigError, match=r"resume='.*nope' is not allowed: expected a run directory"):
        to_config(composed(f"resume={tmp_path / 'nope'}"))
