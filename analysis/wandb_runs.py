"""Read Weights & Biases runs written by rlhf-lab's W&B sink into the same frames as run directories.

Two sources, one mapping (see ``wandb_row``):

* offline (or online) run directories ``.../wandb/offline-run-<time>-<id>/`` (or ``run-<time>-<id>``), read
  through wandb's own command line, ``wandb leet inspect --json <dir>`` (wandb has no Python reader for
  .wandb files). A run resumed or requeued in offline mode has one such directory per attempt, all with the
  same W&B id: they are merged in start-time order, a later attempt's row replacing an earlier one's at the
  same step (as the run directory's metrics.jsonl is truncated on resume);
* the W&B cloud API (``wandb.Api``), a project and optionally a group (``load_wandb_runs``).

The sink's config holds the resolved config, ``trick/<group>`` keys, ``run_info`` (run_id, preset,
schema_version, git_sha, started_at, overrides) and, for a run whose reward model a stage built,
``reward_model_report`` (run.json's ``reward_model``); its summary holds ``status`` and ``finished_at``. History rows
are the metrics rows with their ``step``; wandb's own keys (``_step``, ``_runtime``...), non-numeric values and
media (the samples tables, whose fields the .wandb log flattens to ``samples.<field>``) are dropped.
The (runs row, metrics) pairs become frames through ``analysis.frames.frames_from_runs``, as run directories do, so
a run from before ``kl/init_*`` gets the same reader (``analysis.frames.with_init_kl``, on ``trick/reference``).
``wandb`` itself is imported only for the cloud API.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from analysis.frames import flatten, frames_from_runs, metrics_frame, reward_model_columns

log = logging.getLogger(__name__)

RUN_DIR_PATTERN = re.compile(r"^(?:offline-)?run-\d{8}_\d{6}-(?P<id>[A-Za-z0-9_-]+)$")
NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
# W&B run states (cloud API) -> run.json statuses, for runs whose summary has no "status" (killed hard).
STATES = {"finished": "completed", "failed": "failed", "crashed": "failed", "killed": "failed",
          "running": "running", "preempting": "preempted", "preempted": "preempted"}
INSPECT_TIMEOUT_S = 300
_HIDDEN_CONFIG = {"_wandb", "run_info", "reward_model_report"}


# ---------------------------------------------------------------- offline run directories
def is_wandb_run_dir(path) -> bool:
    """True for a W&B run directory: named ``[offline-]run-<time>-<id>`` and holding ``run-<id>.wandb``."""
    path = Path(path)
    match = RUN_DIR_PATTERN.match(path.name)
    return bool(match) and (path / f"run-{match['id']}.wandb").is_file()


def wandb_run_id(path) -> str:
    """The W&B run id in a W&B run directory's name."""
    return RUN_DIR_PATTERN.match(Path(path).name)["id"]


def wandb_cli() -> list[str]:
    """How to call wandb's command line: the ``wandb`` script beside this Python, on PATH, or ``-m wandb``."""
    beside = Path(sys.executable).parent / "wandb"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("wandb")
    return [found] if found else [sys.executable, "-m", "wandb"]


def inspect_records(run_dir) -> list[dict]:
    """The records of a W&B run directory's .wandb log: ``wandb leet inspect --json <dir>`` (one JSON object
    per line). Raises ValueError when the command fails."""
    try:
        out = subprocess.run([*wandb_cli(), "leet", "inspect", "--json", str(run_dir)], capture_output=True,
                             text=True, timeout=INSPECT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ValueError(f"{run_dir}: wandb leet inspect failed ({error})") from error
    if out.returncode != 0:
        raise ValueError(f"{run_dir}: wandb leet inspect failed: {out.stderr.strip()[-500:]}")
    records = []
    for line in out.stdout.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn record of a run still being written
        if isinstance(record, dict):
            records.append(record)
    return records


def _number(value):
    """A history value as a float (None when it is not a number); wandb writes NaN/Infinity as strings."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    return NONFINITE.get(value) if isinstance(value, str) else None


def history_rows(items) -> tuple[dict[int, dict], int]:
    """History items -> {step: metrics row} (rows of one attempt merged per step) and the number of
    non-finite values kept. Items without a numeric ``step`` (our x-axis) are dropped."""
    rows: dict[int, dict] = {}
    for item in items:
        step = _number(item.get("step"))
        if step is None or not math.isfinite(step):
            continue
        row = rows.setdefault(int(step), {"step": int(step)})
        media = tuple(key[:-len("_type")] for key in item if key.endswith("._type"))  # e.g. "samples."
        for key, value in item.items():
            number = _number(value)
            if number is not None and not key.startswith(("_", *media)) and key != "step":
                row[key] = number
    nonfinite = sum(1 for row in rows.values() for v in row.values() if not math.isfinite(v))
    return rows, nonfinite


def read_attempt(run_dir) -> dict:
    """One W&B run directory (one attempt of a run): its run record, config, summary, exit code and history."""
    attempt = {"dir": Path(run_dir), "config": {}, "summary": {}, "exit_code": None, "run": {}, "items": []}
    for record in inspect_records(run_dir):
        kind = record.get("type")
        body = record.get(kind) or {}
        if kind == "run":
            attempt["run"] = body
            attempt["config"].update((body.get("config") or {}).get("update") or {})
        elif kind == "config":
            attempt["config"].update(body.get("update") or {})
            for key in body.get("remove") or []:
                attempt["config"].pop(key if isinstance(key, str) else key.get("key"), None)
        elif kind == "summary":
            attempt["summary"].update(body.get("update") or {})
        elif kind == "history":
            attempt["items"].append(body.get("item") or {})
        elif kind == "exit":
            attempt["exit_code"] = body.get("exit_code", 0)
    return attempt


def read_offline_runs(run_dirs) -> list[tuple[dict, pd.DataFrame]]:
    """W&B run directories -> one (runs row, wide metrics frame) per W&B run, in order of first appearance.

    Directories sharing a W&B id are attempts of one run (resumed/requeued): merged in start-time order. A
    directory that cannot be read is skipped with a warning."""
    run_dirs = [Path(d) for d in run_dirs]
    with ThreadPoolExecutor(max_workers=min(4, len(run_dirs) or 1)) as pool:
        results = list(pool.map(_try_read_attempt, run_dirs))
    by_id: dict[str, list[dict]] = {}
    for attempt in results:
        if attempt is not None:
            run_id = attempt["run"].get("run_id") or wandb_run_id(attempt["dir"])
            by_id.setdefault(run_id, []).append(attempt)
    out = []
    for wandb_id, attempts in by_id.items():
        attempts.sort(key=lambda a: (a["run"].get("start_time") or "", a["dir"].name))
        config, summary, rows = {}, {}, {}
        for attempt in attempts:
            config.update(attempt["config"])
            summary.update(attempt["summary"])
            attempt_rows, _ = history_rows(attempt["items"])
            rows.update(attempt_rows)  # a later attempt replaces the steps it logged again
        nonfinite = sum(1 for row in rows.values() for v in row.values() if not math.isfinite(v))
        last = attempts[-1]
        exit_code = last["exit_code"]
        state = "running" if exit_code is None else ("completed" if exit_code == 0 else "failed")
        meta = {"id": wandb_id, "group": last["run"].get("run_group"), "url": None, "state": state,
                "started_at": attempts[0]["run"].get("start_time"), "project": last["run"].get("project"),
                "dir": str(last["dir"]), "attempts": len(attempts)}
        metrics = metrics_frame(list(rows.values()))
        out.append((wandb_row(config, summary, meta, metrics, nonfinite), metrics))
    return out


def _try_read_attempt(run_dir: Path) -> dict | None:
    try:
        return read_attempt(run_dir)
    except ValueError as error:
        log.warning("skipping W&B run: %s", error)
        return None


# ---------------------------------------------------------------- one mapping for both sources
def wandb_row(config: dict, summary: dict, meta: dict, metrics: pd.DataFrame, nonfinite: int) -> dict:
    """The ``runs`` row (as analysis.load.read_run builds it) of a W&B run, from its config and summary.

    ``meta``: id, group, url, state (run.json status to use when the summary has no status), started_at,
    dir (where it was read from; the ``run_dir`` column), project."""
    info = config.get("run_info") or {}
    status = summary.get("status") or meta.get("state") or "unknown"
    row = {
        "run_id": str(info.get("run_id") or meta["id"]),
        "arm": str(config.get("arm") or "unknown"),
        "seed": config.get("seed"),
        "status": status,
        "n_steps": len(metrics),
        "last_step": metrics.index[-1] if len(metrics) else None,
        "started_at": info.get("started_at") or meta.get("started_at"),
        "finished_at": summary.get("finished_at"),
        "git_sha": info.get("git_sha"),
        "schema_version": info.get("schema_version"),
        "nonfinite_values": nonfinite,
        "overrides": info.get("overrides") or "",
        "wandb_url": meta.get("url"),
        "run_dir": meta.get("dir"),
        "wandb_id": meta["id"],
        "wandb_group": meta.get("group"),
        "wandb_project": meta.get("project"),
    }
    row.update({f"tricks.{k[len('trick/'):]}": v for k, v in config.items() if k.startswith("trick/")})
    plain = {k: v for k, v in config.items() if not k.startswith("trick/") and k not in _HIDDEN_CONFIG}
    row.update({f"config.{k}": v for k, v in flatten(plain).items()})
    if info.get("preset") is not None:
        row["preset"] = info["preset"]
    # the stage-built reward model's quality, as run.json's reward_model (see WandbSink.record_reward_model)
    row.update(reward_model_columns(config.get("reward_model_report")))
    return row


# ---------------------------------------------------------------- cloud API
def read_api_runs(project: str, group: str | None = None, api=None) -> list[tuple[dict, pd.DataFrame]]:
    """Runs of ``ENTITY/PROJECT`` (optionally one group) from the W&B cloud API, oldest first, as
    (runs row, wide metrics frame) pairs. ``api``: a ``wandb.Api`` (default: a new one, using your login)."""
    if api is None:
        import wandb

        api = wandb.Api(timeout=60)
    filters = {"group": group} if group else {}
    out = []
    for run in api.runs(project, filters=filters, order="+created_at"):
        rows, nonfinite = history_rows(run.scan_history())
        metrics = metrics_frame(list(rows.values()))
        summary = dict(run.summary._json_dict) if hasattr(run.summary, "_json_dict") else dict(run.summary)
        meta = {"id": run.id, "group": run.group, "url": run.url, "state": STATES.get(run.state, run.state),
                "started_at": getattr(run, "created_at", None), "dir": run.url, "project": project}
        out.append((wandb_row(dict(run.config), summary, meta, metrics, nonfinite), metrics))
    return out


def load_wandb_runs(project: str, group: str | None = None, api=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(runs, traces)`` (as ``analysis.load_runs`` returns them) of the W&B runs of ``ENTITY/PROJECT``,
    optionally only those of ``group`` (e.g. one sweep)."""
    return frames_from_runs(read_api_runs(project, group, api))
