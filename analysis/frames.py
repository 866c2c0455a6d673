"""Runs and their metrics as the analysis's frames: the (runs row, wide metrics frame) pairs every source reads
(run directories: analysis.load; W&B runs: analysis.wandb_runs) become the ``runs`` and long ``traces`` frames
here, and through ``with_init_kl`` (see analysis.load's docstring). Below both readers: it reads no files.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd

from analysis.names import KL_INIT_OF_REF, is_init_kl

log = logging.getLogger(__name__)

INITIAL_REFERENCES = (None, "sft")  # tricks.reference values (None: absent) whose reference is the initial policy


def flatten(tree: dict, prefix: str = "") -> dict:
    """Flatten nested dicts to ``{"a.b.c": value}``; lists become compact JSON strings."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value, separators=(",", ":"), default=str)
        else:
            flat[name] = value
    return flat


def reward_model_columns(report: dict | None) -> dict:
    """The runs row's ``reward_model.<key>`` columns: the numbers of a stage-built reward model's report (run.json's
    ``reward_model``, W&B's ``reward_model_report``), as floats."""
    return {f"reward_model.{k}": float(v) for k, v in (report or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def metrics_frame(records: list[dict]) -> pd.DataFrame:
    """Metrics rows (dicts with a ``step``) as the wide float frame of ``read_metrics``."""
    frame = pd.DataFrame.from_records(records)
    if "step" not in frame:
        frame["step"] = np.nan
    for column in frame.select_dtypes(exclude="number").columns:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame = frame.astype("float64")
    frame = frame[np.isfinite(frame["step"])]
    frame = frame.drop_duplicates("step", keep="last").sort_values("step")
    return frame.set_index(frame["step"].astype("int64")).drop(columns="step")


def frames_from_runs(pairs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(runs, traces)`` from (runs row, wide metrics frame) pairs, as ``load_runs`` returns them.

    Every source (run directories, W&B run directories, the W&B API) comes through here, and so through
    ``with_init_kl``."""
    rows = [row for row, _ in pairs]
    frames = [with_init_kl(row, metrics) for row, metrics in pairs]
    _make_run_ids_unique(rows)
    runs = pd.DataFrame(rows, columns=None if rows else ["run_id", "arm", "seed", "status", "run_dir"])
    return runs, _long_traces(list(runs["run_id"]), frames)


def with_init_kl(row: dict, metrics: pd.DataFrame) -> pd.DataFrame:
    """A run's wide metrics frame, with the reader for runs from before ``kl/init_*``: when it logged no
    ``kl/init_*`` and its reference is its initial policy (``row["tricks.reference"]`` absent or "sft"),
    ``kl/init_kX`` = ``kl/ref_kX`` for each estimator it logged; otherwise ``metrics`` unchanged."""
    if any(is_init_kl(name) for name in metrics.columns) or row.get("tricks.reference") not in INITIAL_REFERENCES:
        return metrics
    return metrics.assign(**{KL_INIT_OF_REF[name]: metrics[name] for name in metrics.columns if name in KL_INIT_OF_REF})


def _make_run_ids_unique(rows: list[dict]) -> None:
    """Suffix repeated run ids (``id~2``, ``id~3``...) so that run_id keys the traces, with a warning."""
    seen: dict[str, int] = {}
    for row in rows:
        run_id = row["run_id"]
        seen[run_id] = seen.get(run_id, 0) + 1
        if seen[run_id] > 1:
            row["run_id"] = f"{run_id}~{seen[run_id]}"
            log.warning("duplicate run_id %r in %s: renamed %r", run_id, row["run_dir"], row["run_id"])


def _long_traces(run_ids: list[str], frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Stack per-run wide metric frames into the long ``traces`` frame, vectorised, dropping NaN."""
    metrics = sorted(set().union(*(frame.columns for frame in frames)))
    code = {name: i for i, name in enumerate(metrics)}
    parts = []
    for run_code, frame in enumerate(frames):
        columns = sorted(frame.columns, key=code.__getitem__)
        values = frame[columns].to_numpy("float64").ravel(order="F")
        keep = ~np.isnan(values)
        n = len(frame)
        parts.append((
            np.full(keep.sum(), run_code, dtype="int32"),
            np.tile(frame.index.to_numpy("int64"), len(columns))[keep],
            np.repeat(np.array([code[c] for c in columns], dtype="int32"), n)[keep],
            values[keep],
        ))
    run_codes, steps, metric_codes, values = (
        np.concatenate([p[i] for p in parts]) if parts else np.array([], dtype=dt)
        for i, dt in enumerate(["int32", "int64", "int32", "float64"])
    )
    return pd.DataFrame({
        "run_id": pd.Categorical.from_codes(run_codes, categories=run_ids),
        "step": steps,
        "metric": pd.Categorical.from_codes(metric_codes, categories=metrics),
        "value": values,
    })


def wide_traces(traces: pd.DataFrame, metrics=None) -> pd.DataFrame:
    """Long traces -> wide frame indexed by (run_id, step) with one column per metric.

    ``metrics`` restricts (and orders) the columns; names absent from ``traces`` are left out.
    """
    if metrics is not None:
        present = set(traces["metric"].cat.categories)
        metrics = [m for m in metrics if m in present]
        traces = traces[traces["metric"].isin(metrics)]
    wide = traces.pivot(index=["run_id", "step"], columns="metric", values="value")
    wide.columns = wide.columns.astype("object")
    wide.columns.name = None
    return wide[metrics] if metrics is not None else wide
