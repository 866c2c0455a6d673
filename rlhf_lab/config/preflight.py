"""Checks of a run's inputs that composing the config cannot make: named sweeps, checkpoint paths, JSONL files,
the artefact cache. They run before any model loads and import neither torch nor transformers, so a typo fails
in a second, naming the key, instead of after the models have loaded (or a default run has started).

* `check_sweep(argv)`: every `sweep=` / `+sweep=` of the command line names a sweep file Hydra can find. It runs
  before Hydra does: `sweep` is an optional group (conf/config.yaml), which Hydra drops without a word when its
  option does not exist, and in a multirun the sweeper launches the jobs before any of them could check.
* `check(cfg)`: model=hf: `model.policy` / `model.reward_model` (and `reward_ensemble.reward_models`,
  `reference.soup_with`, `reference.path` when set) is a Hugging Face hub id or a local checkpoint
  directory (with config.json); task=jsonl: `task.prompts_file` (and `task.sft_file` when set) is a readable,
  non-empty JSONL file of objects with string fields; task=toy: the artefact cache is a writable directory.

(`resume=` is checked when the config is read: `checks.resumed_config`.) Each raises a `ConfigError`, which
rlhf-train reports with exit code 2; in a sweep a job whose `check` fails logs it and fails as a run (cli.py).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_automatic_config_search_path, get_args_parser
from hydra.core.config_search_path import SearchPathQuery
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ValueType
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from rlhf_lab.config.schema import Config, ConfigError, ModelKind, TaskKind
from rlhf_lab.config.paths import cache_dir, conf_dir

SWEEP_GROUP = "sweep"
_SWEEP_ARG = re.compile(rf"^\+*{SWEEP_GROUP}=")
# A Hugging Face hub id: "name" or "namespace/name", as huggingface_hub.utils.validate_repo_id accepts it.
_HUB_ID = re.compile(r"^(\b[\w\-.]{1,96}\b/)?\b[\w\-.]{1,96}\b$")
_PATH_PREFIXES = ("/", "./", "../", "~")
PROMPT_FIELDS = ("prompt",)  # what rlhf_lab.engine.data reads from task.prompts_file
SFT_FIELDS = ("prompt", "response")  # ... and from task.sft_file


# ---------------------------------------------------------------- sweep (command line, before Hydra)
def check_sweep(argv: list[str]) -> None:
    """Every sweep named on rlhf-train's command line `argv` (`sweep=NAME`, `+sweep=NAME`, `sweep=a,b` in a
    multirun) exists; the error lists those that do. A command line Hydra cannot parse is left to Hydra."""
    if not any(_SWEEP_ARG.match(arg) for arg in argv):
        return  # nothing to check (and --help or --version stay Hydra's alone)
    try:
        args, _ = get_args_parser().parse_known_args(argv)
        names = sweep_names(args.overrides)
        options = sweep_options(args.overrides, args.config_dir, args.config_name or "config") if names else []
    except (SystemExit, HydraException, OmegaConfBaseException):  # a malformed command line: Hydra reports it
        return
    for name in names:
        if name not in options:
            raise ConfigError(f"{SWEEP_GROUP}={name!r} is not allowed: expected one of [{', '.join(options)}] "
                              f"(the sweep files in {conf_dir() / SWEEP_GROUP}/)")


def sweep_names(overrides: list[str]) -> list[str]:
    """The sweep options that Hydra overrides choose (`glob(...)` picks only existing ones; null is no sweep)."""
    names = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if (override.key_or_group != SWEEP_GROUP or override.is_delete()
                or override.value_type == ValueType.GLOB_CHOICE_SWEEP):
            continue
        if override.is_sweep_override():
            names += list(override.sweep_string_iterator())
        else:
            names.append(override.get_value_element_as_str())
    return [name for name in names if name != "null"]


def sweep_options(overrides: list[str], config_dir: str | None = None, config_name: str = "config") -> list[str]:
    """The sweeps Hydra can find, on the search path Hydra gives rlhf-train: conf/sweep/ (= sweeps/), plus the
    `sweep/` folders of `--config-dir` and of a `hydra.searchpath` among `overrides`."""
    search_path = create_automatic_config_search_path(None, None, str(conf_dir()))
    if config_dir:
        search_path.prepend(provider="command-line", path=f"file://{os.path.abspath(config_dir)}",
                            anchor=SearchPathQuery(provider="schema"))
    loader = ConfigLoaderImpl(config_search_path=search_path)
    return loader.get_group_options(SWEEP_GROUP, config_name=config_name, overrides=overrides)


# ---------------------------------------------------------------- the composed config (inside the app)
def check(cfg: Config) -> None:
    """The checks of `cfg`'s inputs that its task and model need (see the module docstring)."""
    if cfg.model.name == ModelKind.hf:
        check_checkpoint("model.policy", cfg.model.policy)
        check_checkpoint("model.reward_model", cfg.model.reward_model)
        for i, path in enumerate(cfg.reward_ensemble.reward_models):
            check_checkpoint(f"reward_ensemble.reward_models[{i}]", path)
        for key in ("soup_with", "path"):
            if getattr(cfg.reference, key):
                check_checkpoint(f"reference.{key}", getattr(cfg.reference, key))
    if cfg.task.name == TaskKind.jsonl:
        check_jsonl("task.prompts_file", cfg.task.prompts_file, PROMPT_FIELDS)
        if cfg.task.sft_file:
            check_jsonl("task.sft_file", cfg.task.sft_file, SFT_FIELDS)
    if cfg.task.name == TaskKind.toy:
        check_cache_dir(cfg.cache_dir)


def check_checkpoint(key: str, value: str) -> None:
    """`value` is a Hugging Face hub id (`org/name` or `name`, not a local path), or a local checkpoint: a
    directory holding config.json. Whatever starts like a path, exists on disk or is no hub id is local."""
    local = Path(value).expanduser()
    if not (value.startswith(_PATH_PREFIXES) or local.exists() or not _HUB_ID.match(value)):
        return  # a hub id; whether the hub has it is for from_pretrained to say
    if not local.is_dir():
        problem = f"{local} is not a directory" if local.exists() else f"{local} does not exist"
    elif not (local / "config.json").is_file():
        problem = f"{local} has no config.json"
    else:
        return
    raise ConfigError(f"{key}={value!r} is not allowed: expected a Hugging Face hub id (org/name) or a local "
                      f"checkpoint directory holding config.json ({problem})")


def check_jsonl(key: str, path: str, fields: tuple[str, ...]) -> None:
    """`path` is a readable JSONL file with at least one row; every non-blank line is a JSON object whose
    `fields` are strings; the error names the first bad line. rlhf_lab.engine.data reads the files after this check."""
    expected = f"a JSONL file, one JSON object with string {' and '.join(map(repr, fields))} per line"
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{key}={path!r} is not allowed: expected {expected} (cannot read it: {err})") from err
    rows = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        problem = _row_problem(line, fields)
        if problem:
            raise ConfigError(f"{key}={path!r} is not allowed: expected {expected} ({path}:{number}: {problem})")
        rows += 1
    if not rows:
        raise ConfigError(f"{key}={path!r} is not allowed: expected {expected} ({path} has no rows)")


def _row_problem(line: str, fields: tuple[str, ...]) -> str | None:
    """What is wrong with one JSONL line (None if nothing)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        return f"not valid JSON: {err}"
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object"
    for name in fields:
        if name not in row:
            return f"no key {name!r}"
        if not isinstance(row[name], str):
            return f"{name!r} is not a string but a JSON {type(row[name]).__name__}"
    return None


def check_cache_dir(configured: str | None) -> None:
    """The artefact cache (`cache_dir`, else $RLHF_LAB_CACHE, else ~/.cache/rlhf-lab) can be created and
    written: the toy task builds its sft/rm artefacts there (and takes a lock file there even when cached)."""
    path = cache_dir(configured)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".preflight-") as probe:  # deleted on close
            probe.write(b"ok")
    except OSError as err:
        source = ""
        if not configured:
            source = " (from $RLHF_LAB_CACHE)" if os.environ.get("RLHF_LAB_CACHE") else " (the default)"
        raise ConfigError(f"cache_dir={str(path)!r}{source} is not allowed: expected a writable directory for "
                          f"the toy task's artefacts ({err})") from err
