"""The run directory: analysis's only input (docs/architecture.md, "Run directory"). Schema version 1.

    run.json        rewritten atomically (temp file + rename) at every status change
    metrics.jsonl   one JSON object per PPO iteration, appended, flushed and fsynced
    samples.jsonl   sample responses every N iterations
    checkpoints/    latest resumable checkpoint (see rlhf_lab.run.checkpoint)
A kill at any moment leaves at worst a torn last line in a .jsonl file, which readers ignore.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

SCHEMA_VERSION = 1
STATUSES = ("running", "completed", "diverged", "failed", "preempted")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_sha() -> str | None:
    """The commit of the rlhf-lab source tree, when it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in ("rlhf-lab", "torch", "transformers", "accelerate", "hydra-core", "wandb"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict]:
    """All complete rows of a .jsonl file; a torn last line is skipped."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.run_json = self.path / "run.json"
        self.metrics = self.path / "metrics.jsonl"
        self.samples = self.path / "samples.jsonl"
        self.checkpoints = self.path / "checkpoints"

    # ------------------------------------------------------------ run.json
    def read_info(self) -> dict:
        return json.loads(self.run_json.read_text())

    def write_info(self, info: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.run_json, json.dumps(info, indent=2) + "\n")

    def update_info(self, **fields) -> dict:
        """Add or replace fields of run.json (atomically)."""
        info = self.read_info()
        info.update(fields)
        self.write_info(info)
        return info

    def set_status(self, status: str, **fields) -> dict:
        assert status in STATUSES, status
        info = self.read_info()
        info.update(status=status, **fields)
        if status != "running":
            info["finished_at"] = now_iso()
        self.write_info(info)
        return info

    # ------------------------------------------------------------ jsonl streams
    @staticmethod
    def _append(path: Path, rows: list[dict]) -> None:
        with open(path, "a") as f:
            f.write("".join(json.dumps(row) + "\n" for row in rows))
            f.flush()
            os.fsync(f.fileno())

    def append_metrics(self, row: dict) -> None:
        self._append(self.metrics, [row])

    def append_samples(self, rows: list[dict]) -> None:
        self._append(self.samples, rows)

    def truncate_from(self, step: int) -> None:
        """Drop rows with step >= `step` (and any torn line) from metrics and samples, before a resume."""
        for path in (self.metrics, self.samples):
            if path.exists():
                kept = [row for row in read_jsonl(path) if row["step"] < step]
                _write_atomic(path, "".join(json.dumps(row) + "\n" for row in kept))
