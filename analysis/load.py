"""Read run directories (docs/architecture.md, "Run directory") into tidy pandas frames.

``load_runs(paths)`` returns two frames:

* ``runs``: one row per run: ``run_id, arm, seed, status, n_steps, last_step, started_at, finished_at,
  git_sha, schema_version, nonfinite_values, overrides, wandb_url, run_dir``, then ``tricks.<group>`` and
  ``config.<dotted.key>`` (the flattened ``.hydra/config.yaml``), ``preset`` and ``reward_model.<key>`` (the
  numbers of the stage-built reward model's report as floats, e.g. ``reward_model.gold_accuracy``) where run.json
  has them.
* ``traces``: long format ``run_id, step, metric, value`` (``run_id`` and ``metric`` categorical), sorted by
  run (in ``runs`` order), metric, step. A metric a run never logged has no rows; a NaN written by the
  trainer has no row either (it is counted in ``runs.nonfinite_values``); +/-Infinity is kept.

Reading is tolerant: a torn last line (a run still running, or killed mid-write) is ignored, as is any
other line that is not a JSON object with a ``step`` (with a warning); a step logged twice (a resumed run)
keeps its last row; runs without ``metrics.jsonl`` have no traces; a run whose ``run.json`` cannot be read
is skipped with a warning.

Run directories from before ``kl/init_k1|k2|k3`` (KL to the run's initial policy) existed are read with them
where that is what they logged: a run with no ``kl/init_*`` whose reference is its initial policy
(``tricks.reference`` absent or "sft") gets ``kl/init_kX`` = ``kl/ref_kX`` for each estimator it logged
(``analysis.frames.with_init_kl``). A run whose reference is something else (soup, dpo) keeps only ``kl/ref_*``: the analysis
then falls back to its KL to the reference (``names.pick_kl_metric``), and the report says so.

W&B runs read the same way (``analysis.wandb_runs``): a path that is a W&B run directory
(``.../wandb/offline-run-<time>-<id>``), a ``.wandb`` file, or a folder holding W&B run directories outside
any run directory (e.g. ``<run dir>/wandb``) is read through ``wandb leet inspect --json``; those rows
also have ``wandb_id``, ``wandb_group`` and ``wandb_project``. A sweep directory is read from its run
directories (the W&B files inside them are not read twice).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pandas as pd
import yaml
from tqdm import tqdm

from analysis.frames import flatten, frames_from_runs, metrics_frame, reward_model_columns
from analysis.wandb_runs import is_wandb_run_dir, read_offline_runs, wandb_run_id

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
CONFIG_FILE = Path(".hydra") / "config.yaml"
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
SKIPPED_DIRS = {"checkpoints"}
SAMPLE_COLUMNS = ["step", "prompt", "response", "reward_proxy", "reward_gold"]

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def find_run_dirs(paths) -> list[Path]:
    """Every run directory (a directory holding ``run.json``) under ``paths``, at any depth.

    ``paths`` is one path or a list of them; each may be a run directory, a sweep directory or a
    ``run.json`` file. The search does not descend into run directories, hidden directories or
    ``checkpoints/``. Order: the order of ``paths``, then natural sort of names ("2" before "10");
    duplicates are dropped. Raises FileNotFoundError for a path that does not exist.
    """
    return [path for path in find_sources(paths) if not is_wandb_run_dir(path)]


def find_sources(paths) -> list[Path]:
    """``find_run_dirs``, plus the W&B run directories found outside run directories (see the module doc),
    in the same order. A ``.wandb`` file counts as its directory."""
    found: dict[Path, None] = {}
    for path in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no such file or directory: {path}")
        if path.is_file() and (path.name == RUN_FILE or path.suffix == ".wandb"):
            path = path.parent
        for run_dir in _walk(path):
            found.setdefault(run_dir.resolve(), None)
    return list(found)


def _walk(directory: Path):
    """Yield run directories and W&B run directories under ``directory`` (depth first, natural name order)."""
    if (directory / RUN_FILE).is_file() or is_wandb_run_dir(directory):
        yield directory
        return
    try:
        entries = [e for e in os.scandir(directory) if e.is_dir()]
    except (NotADirectoryError, PermissionError):
        return
    for entry in sorted(entries, key=lambda e: _natural_key(e.name)):
        if not entry.name.startswith(".") and entry.name not in SKIPPED_DIRS | {"latest-run"}:
            yield from _walk(Path(entry.path))


def _natural_key(name: str) -> tuple:
    """Sort key that orders embedded numbers numerically ("job2" < "job10")."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name))


def read_jsonl(path) -> tuple[list[dict], int]:
    """Parse a JSON-lines file into a list of objects, and count its non-finite tokens.

    Ignores a torn last line silently and any other unparsable or non-object line with a warning.
    Accepts the ``NaN``/``Infinity``/``-Infinity`` tokens Python's json module writes; the second return
    value is how many such tokens the kept records contain.
    """
    text = Path(path).read_bytes().decode("utf-8", errors="replace")
    counter = _NonFiniteCounter()
    try:  # fast path: the whole file as one JSON array
        records = json.loads("[" + text.rstrip().replace("\n", ",") + "]", parse_constant=counter)
        if all(isinstance(r, dict) for r in records):
            return records, counter.count
    except ValueError:
        pass
    return _read_jsonl_lines(path, text)


def _read_jsonl_lines(path, text: str) -> tuple[list[dict], int]:
    """Slow path of read_jsonl: parse line by line, dropping what does not parse."""
    lines = text.split("\n")
    records, count = [], 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        counter = _NonFiniteCounter()
        try:
            record = json.loads(line, parse_constant=counter)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
            count += counter.count
        elif number == len(lines):
            log.debug("%s: ignoring torn last line", path)
        else:
            log.warning("%s:%d: ignoring a line that is not a JSON object", path, number)
    return records, count


class _NonFiniteCounter:
    """``parse_constant`` hook for json.loads: returns the float and counts the call."""

    def __init__(self):
        self.count = 0

    def __call__(self, token: str) -> float:
        self.count += 1
        return float(token)


def read_metrics(path) -> tuple[pd.DataFrame, int]:
    """One run's ``metrics.jsonl`` as a wide float frame indexed by ``step``, plus its non-finite count.

    Rows without a numeric ``step`` are dropped; non-numeric values become NaN; a repeated step keeps its
    last row. A missing file gives an empty frame.
    """
    path = Path(path)
    records, nonfinite = read_jsonl(path) if path.is_file() else ([], 0)
    return metrics_frame(records), nonfinite


def _read_yaml(path: Path):
    """The parsed YAML file, or None when it is missing or malformed (with a warning)."""
    if not path.is_file():
        return None
    try:
        return yaml.load(path.read_text(), Loader=_YAML_LOADER)
    except yaml.YAMLError as error:
        log.warning("%s: ignoring malformed YAML (%s)", path, error)
        return None


def read_config(run_dir) -> dict:
    """The run's resolved Hydra config (``.hydra/config.yaml``), flattened to dotted keys; {} if absent."""
    config = _read_yaml(Path(run_dir) / CONFIG_FILE)
    return flatten(config) if isinstance(config, dict) else {}


def read_overrides(run_dir) -> str:
    """The run's Hydra overrides (``.hydra/overrides.yaml``) joined by spaces; "" if absent."""
    overrides = _read_yaml(Path(run_dir) / OVERRIDES_FILE)
    return " ".join(str(o) for o in overrides) if isinstance(overrides, list) else ""


def read_run(run_dir) -> tuple[dict, pd.DataFrame]:
    """One run directory: its ``runs`` row (a dict) and its wide metrics frame (see read_metrics).

    Raises ValueError when ``run.json`` is not a JSON object.
    """
    run_dir = Path(run_dir)
    try:
        meta = json.loads((run_dir / RUN_FILE).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{run_dir / RUN_FILE}: unreadable ({error})") from error
    if not isinstance(meta, dict):
        raise ValueError(f"{run_dir / RUN_FILE}: not a JSON object")
    if meta.get("schema_version", 1) != 1:
        log.warning("%s: schema_version %s, reading it as version 1", run_dir, meta.get("schema_version"))
    config = read_config(run_dir)
    metrics, nonfinite = read_metrics(run_dir / METRICS_FILE)
    row = {
        "run_id": str(meta.get("run_id") or run_dir.name),
        "arm": str(meta.get("arm") or "unknown"),
        "seed": meta.get("seed", config.get("seed")),
        "status": meta.get("status", "unknown"),
        "n_steps": len(metrics),
        "last_step": metrics.index[-1] if len(metrics) else None,
        "started_at": meta.get("started_at"),
        "finished_at": meta.get("finished_at"),
        "git_sha": meta.get("git_sha"),
        "schema_version": meta.get("schema_version"),
        "nonfinite_values": nonfinite,
        "overrides": read_overrides(run_dir),
        "wandb_url": (meta.get("wandb") or {}).get("url"),
        "run_dir": str(run_dir),
    }
    row.update({f"tricks.{k}": v for k, v in (meta.get("tricks") or {}).items()})
    row.update({f"config.{k}": v for k, v in config.items()})
    if meta.get("preset") is not None:
        row["preset"] = meta["preset"]
    # the stage-built reward model's quality (its rm_report.json's numbers), where the run recorded it
    row.update(reward_model_columns(meta.get("reward_model")))
    return row, metrics


def load_runs(paths, progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Load every run directory under ``paths`` (run dirs, sweep dirs at any depth, or a list of them).

    Returns ``(runs, traces)`` as described in the module docstring. ``progress`` shows a tqdm bar on
    stderr (only when stderr is a terminal). Raises FileNotFoundError for a missing path; an empty
    ``runs`` frame means no run directory was found. W&B run directories are read too (module docstring).
    """
    return frames_from_runs(read_runs(paths, progress))


def read_runs(paths, progress: bool = False) -> list[tuple[dict, pd.DataFrame]]:
    """The (runs row, wide metrics frame) pairs behind ``load_runs``, one per run, in its order."""
    sources = find_sources(paths)
    wandb_dirs = {path for path in sources if is_wandb_run_dir(path)}
    from_wandb = {}
    if wandb_dirs:  # read together: the attempts of a resumed W&B run are merged into one run
        ordered = [path for path in sources if path in wandb_dirs]
        from_wandb = {row["wandb_id"]: (row, metrics) for row, metrics in read_offline_runs(ordered)}
    pairs = []
    bar = tqdm(sources, desc="reading runs", unit="run", disable=None if progress else True)
    for run_dir in bar:
        if run_dir in wandb_dirs:  # a W&B run goes where its first attempt was found
            pair = from_wandb.pop(wandb_run_id(run_dir), None)
            if pair is not None:
                pairs.append(pair)
            continue
        try:
            pairs.append(read_run(run_dir))
        except ValueError as error:
            log.warning("skipping run: %s", error)
    return pairs


def load_samples(run_dir) -> pd.DataFrame:
    """A run's ``samples.jsonl`` as a frame with columns step, prompt, response, reward_proxy, reward_gold.

    Missing file: an empty frame. Records without an integer-like ``step`` are dropped.
    """
    path = Path(run_dir) / SAMPLES_FILE
    records = read_jsonl(path)[0] if path.is_file() else []
    frame = pd.DataFrame.from_records(records).reindex(columns=SAMPLE_COLUMNS)
    frame["step"] = pd.to_numeric(frame["step"], errors="coerce")
    frame = frame[frame["step"].notna()].astype({"step": "int64"})
    for column in ("reward_proxy", "reward_gold"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame.reset_index(drop=True)


