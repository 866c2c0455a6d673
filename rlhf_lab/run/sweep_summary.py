"""The end-of-sweep summary: how many runs completed, diverged, failed or were preempted, and the exit code."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

# Set by the last sweep of this process: rlhf-train's exit code (0 all completed, 1 a run failed,
# 3 a run diverged, 4 a run was preempted and not finished).
SWEEP_EXIT_CODE = 0


def summarise(sweep_dir: Path, crashed: list) -> int:
    """Print how many runs of the sweep completed / diverged / failed / were preempted; return the exit code."""
    infos = {path.parent: json.loads(path.read_text()) for path in sorted(sweep_dir.rglob("run.json"))}
    counts = Counter(info["status"] for info in infos.values())
    counts["failed"] += len(crashed)
    parts = ", ".join(f"{counts[s]} {s}" for s in ("completed", "diverged", "failed", "preempted", "running")
                      if counts[s])
    lines = [f"sweep {sweep_dir}: {len(infos) + len(crashed)} runs: {parts}"]
    for run_dir, info in infos.items():
        if info["status"] != "completed":
            where = info.get("log") or run_dir
            lines.append(f"  {info['status']:9s} {info['arm']} seed={info['seed']}: {info.get('error', '')} ({where})")
    for job in crashed:
        lines.append(f"  crashed   {' '.join(job.overrides)}: {job._return_value!r} ({job.working_dir})")
    print("\n".join(lines), flush=True)
    if counts["failed"]:
        return 1
    if counts["diverged"]:
        return 3
    return 4 if counts["preempted"] or counts["running"] else 0
