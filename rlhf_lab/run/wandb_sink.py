"""The Weights & Biases sink: mirrors what the run directory records into a W&B run (docs/architecture.md,
"One PPO iteration": metrics -> sinks). The run directory stays the source of truth; this sink only copies.

`WandbSink.open(cfg, run_dir, previous, context)` starts (or continues) the W&B run of a run directory:

* project / entity: `logger.project` / `logger.entity`, else those of the W&B run being continued, else
  $WANDB_PROJECT / $WANDB_ENTITY (project default "rlhf-lab"); mode: `logger.mode`, else $WANDB_MODE, else
  the mode of the W&B run being continued, else online;
* group: the W&B group recorded in run.json (a resumed run keeps it), else `logger.group`, else the sweep
  directory as the user named it (multirun; see `sweep_group`), else the run id (a single run is its own group);
* job_type: the preset; name: "<arm>,seed=<seed>"; tags: `group=option` of every trick that is not off,
  plus `logger.tags`;
* config: the resolved config (with `arm` filled in by the arm's label), `trick/<group>: <option>` for every
  trick group (top-level keys, for group-by and parallel coordinates), `run_info` (run_id, preset,
  schema_version, git_sha, started_at, overrides) and, once a stage has built the run's reward model,
  `reward_model_report` (run.json's `reward_model`, by `record_reward_model`);
* every metric is plotted against `step` (define_metric); the files go under `<run_dir>/wandb/`;
* the W&B id, group, project, entity, mode and url are written to run.json (`"wandb"`); a resumed or requeued
  run (the same run directory) continues the W&B run with that id.

`log(step, metrics)` and `log_samples(step, rows)` copy one metrics row / one samples batch (a W&B Table under
the key "samples"); `finish(status)` writes the stability summary (see `stability_summary`) to the W&B summary
and closes the run.

Failure isolation: no method raises. The first W&B error (no network, bad key, a crash inside wandb) logs one
warning and turns the sink off; training and the run directory go on untouched. `wandb` is imported only
when a W&B run is actually started. No API key ever reaches run.json, the config or the log.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from rlhf_lab.run.rundir import RunDir, read_jsonl

log = logging.getLogger("rlhf_lab")

DEFAULT_PROJECT = "rlhf-lab"
MAX_GROUP_CHARS = 128  # W&B's limit on a group name
SAMPLE_COLUMNS = ["step", "prompt", "response", "reward_proxy", "reward_gold"]
# W&B exit codes per final status (the same codes rlhf-train exits with; 0 = finished).
EXIT_CODES = {"completed": 0, "failed": 1, "diverged": 3, "preempted": 4, "running": 1}
FINAL_WINDOW = 10  # "final" = mean of the last FINAL_WINDOW logged values (as in analysis.stability)
FINAL_METRICS = ("reward/proxy_mean", "reward/gold_mean", "kl/init_k1", "kl/init_k3", "kl/ref_k1", "kl/ref_k3",
                 "ppl/policy", "length/response_mean", "diversity/repeat_ngram_frac")
# Columns of analysis.run_stability that are not stability results (they are in the config or summary already).
_NOT_STABILITY = {"run_id", "arm", "seed", "status"}


def previous_record(run_dir: RunDir) -> dict | None:
    """The `"wandb"` record of run.json as an earlier attempt in this run directory left it (None if none).

    Read it before run.json is rewritten: a requeued job that died before its first checkpoint starts over
    locally, but continues the same W&B run."""
    try:
        record = run_dir.read_info().get("wandb")
    except (OSError, ValueError, AttributeError):
        return None
    return record if isinstance(record, dict) and record.get("id") else None


def hydra_context() -> tuple[str | None, list[str]]:
    """(the sweep's default group (`sweep_group`) when this is a multirun job, else None; the command line's
    overrides), read in the process Hydra started (ranks started by rlhf_lab.run.launch get it from their Job)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
    except (ImportError, ValueError):  # not inside a Hydra app
        return None, []
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    group = sweep_group(str(hydra_cfg.sweep.dir), hydra_cfg.runtime.cwd) if multirun else None
    return group, list(hydra_cfg.overrides.task)


def sweep_group(sweep_dir: str, cwd: str | None) -> str:
    """The default W&B group of a sweep: its directory (`hydra.sweep.dir`) as the user named it, the same on a
    login node and a compute node. A relative directory stays as given; an absolute one under Hydra's original
    working directory `cwd` (`hydra.runtime.cwd`) becomes relative to it (e.g. multirun/2026-11-22/10-00-00);
    any other stays absolute."""
    written = Path(os.path.normpath(sweep_dir))
    if not written.is_absolute() or not cwd:
        return sweep_dir
    for path, root in ((written, Path(cwd)), (written.resolve(), Path(cwd).resolve())):  # then through symlinks
        if path != root and path.is_relative_to(root):
            return str(path.relative_to(root))
    return sweep_dir


def _redact(text: str) -> str:
    key = os.environ.get("WANDB_API_KEY")
    return text.replace(key, "***") if key and len(key) >= 8 else text


class WandbSink:
    """Copies metrics, samples and the final stability summary of one run directory into one W&B run.
    A sink without a W&B run (logger=local, or after an error) does nothing."""

    def __init__(self, run=None, run_dir: RunDir | None = None):
        self.run = run
        self.run_dir = run_dir

    @property
    def active(self) -> bool:
        return self.run is not None

    # ------------------------------------------------------------ start
    @classmethod
    def open(cls, cfg, run_dir: RunDir, previous: dict | None = None,
             context: tuple[str | None, list[str]] | None = None) -> "WandbSink":
        """Start or continue the W&B run of `run_dir` (run.json must exist). `previous`: the record of an
        earlier attempt (`previous_record`, read before run.json was rewritten); None reads it from run.json.
        `context`: `hydra_context()`'s answer (None: asked here).

        W&B is used when `logger=wandb`, or when resuming a run that had a W&B run unless the command line
        says `logger=...` (then that choice holds). Never raises."""
        try:
            return cls._open(cfg, run_dir, previous, context or hydra_context())
        except Exception as err:  # noqa: BLE001 - W&B must never stop training
            cls(None, run_dir)._fail("start", err)
            return cls()

    @classmethod
    def _open(cls, cfg, run_dir: RunDir, previous: dict | None,
              context: tuple[str | None, list[str]]) -> "WandbSink":
        previous = previous if previous is not None else previous_record(run_dir)
        sweep, overrides = context
        logger_chosen = any(o.lstrip("+~").split("=", 1)[0] == "logger" for o in overrides)
        if cfg.logger.name.value != "wandb" and not (cfg.resume and previous and not logger_chosen):
            return cls()
        previous = previous or {}
        mode = cfg.logger.mode or os.environ.get("WANDB_MODE") or previous.get("mode") or "online"
        mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)  # wandb's old spellings
        if mode == "disabled":
            log.info("W&B mode is disabled: logging to the run directory only")
            return cls()
        import wandb

        info = run_dir.read_info()
        group = (previous.get("group") or cfg.logger.group or sweep or info["run_id"])[-MAX_GROUP_CHARS:]
        settings = {"console": "off"}  # the console log is in the run directory (Hydra's <job>.log)
        if cfg.logger.init_timeout:
            settings["init_timeout"] = float(cfg.logger.init_timeout)
        config = wandb_config(cfg, info, run_dir)
        resume_id = previous.get("id")
        run = wandb.init(
            dir=str(run_dir.path),
            # a continued run stays in its project (the same id elsewhere would be another run)
            project=cfg.logger.project or previous.get("project") or os.environ.get("WANDB_PROJECT")
            or DEFAULT_PROJECT,
            entity=cfg.logger.entity or previous.get("entity") or os.environ.get("WANDB_ENTITY") or None,
            mode=mode if mode in ("online", "offline") else None,
            group=group,
            job_type=info.get("preset") or "custom",
            name=f"{info['arm']},seed={info['seed']}",
            tags=trick_tags(info.get("tricks") or {}) + [str(t) for t in cfg.logger.tags],
            config=None if resume_id else config,
            id=resume_id,
            resume="allow" if resume_id else None,
            reinit="finish_previous",
            settings=wandb.Settings(**settings),
        )
        sink = cls(run, run_dir)
        try:
            if resume_id:  # values such as `iterations` may change on resume
                run.config.update(config, allow_val_change=True)
            run.define_metric("step")
            run.define_metric("*", step_metric="step")
            record = {"id": run.id, "project": run.project, "entity": run.entity or None, "group": group,
                      "mode": mode, "url": run.url if mode == "online" else None,
                      "dir": str(Path(run.dir).parent)}
            run_dir.write_info({**run_dir.read_info(), "wandb": record})
        except Exception as err:  # noqa: BLE001 - closes the W&B run, then the sink is off
            sink._fail("start", err)
            return sink
        log.info("W&B run %s (%s, group %s)%s", run.id, mode, group, " continued" if resume_id else "")
        return sink

    # ------------------------------------------------------------ logging
    def log(self, step: int, metrics: dict) -> None:
        """One metrics row (the same as metrics.jsonl's), plotted at `step`."""
        if self.run is None:
            return
        try:
            self.run.log({"step": step, **metrics})
        except Exception as err:  # noqa: BLE001
            self._fail("log", err)

    def record_reward_model(self, report: dict) -> None:
        """The stage-built reward model's report (run.json's `reward_model`) as the config's
        `reward_model_report`, so a W&B run carries the reward model's quality as its run directory does."""
        if self.run is None:
            return
        try:
            self.run.config.update({"reward_model_report": report}, allow_val_change=True)
        except Exception as err:  # noqa: BLE001
            self._fail("config", err)

    def log_samples(self, step: int, rows: list[dict]) -> None:
        """One batch of sample responses (the rows of samples.jsonl) as a W&B Table under "samples"."""
        if self.run is None or not rows:
            return
        try:
            import wandb

            data = [[row.get(column) for column in SAMPLE_COLUMNS] for row in rows]
            table = wandb.Table(columns=SAMPLE_COLUMNS, data=data)
            self.run.log({"step": step, "samples": table})
        except Exception as err:  # noqa: BLE001
            self._fail("log_samples", err)

    def finish(self, status: str, summary: dict | None = None) -> None:
        """Write the stability summary (default: `stability_summary(run_dir, status)`) to the W&B summary and
        close the run: finished for "completed", failed otherwise; a preempted run is marked preempting (it
        will be continued). Calling it again does nothing."""
        if self.run is None:
            return
        run, self.run = self.run, None
        try:
            if summary is None:
                summary = stability_summary(self.run_dir, status)
            run.summary.update({k: v for k, v in summary.items() if v is not None})
            if status == "preempted":
                run.mark_preempting()
            run.finish(exit_code=EXIT_CODES.get(status, 1))
        except Exception as err:  # noqa: BLE001
            self.run = run
            self._fail("finish", err)

    # ------------------------------------------------------------ failure isolation
    def _fail(self, what: str, err: Exception) -> None:
        """One warning, then the sink is off (and the W&B run closed as well as it still can be)."""
        where = f"; the run directory {self.run_dir.path} is complete" if self.run_dir else ""
        log.warning("W&B %s failed (%s: %s): W&B logging is off for this run, training goes on%s",
                    what, type(err).__name__, _redact(str(err)).strip().splitlines()[0] if str(err) else "", where)
        run, self.run = self.run, None
        if run is not None:
            try:
                run.finish(exit_code=1, quiet=True)
            except Exception:  # noqa: BLE001
                pass


def trick_tags(tricks: dict) -> list[str]:
    """`group=option` for every trick group whose option is not "off" (the tricks that are on)."""
    return [f"{group}={option}" for group, option in tricks.items() if option != "off"]


def wandb_config(cfg, info: dict, run_dir: RunDir) -> dict:
    """The W&B config: the resolved config, `trick/<group>` keys and `run_info` (see the module docstring)."""
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)
    config["arm"] = info["arm"]
    config.update({f"trick/{group}": option for group, option in (info.get("tricks") or {}).items()})
    config["run_info"] = {
        "run_id": info["run_id"], "preset": info.get("preset"), "schema_version": info.get("schema_version"),
        "git_sha": info.get("git_sha"), "started_at": info.get("started_at"), "overrides": _overrides(run_dir),
    }
    return config


def _overrides(run_dir: RunDir) -> str:
    """The run's Hydra overrides (.hydra/overrides.yaml) joined by spaces, as analysis reads them."""
    path = run_dir.path / ".hydra" / "overrides.yaml"
    try:
        import yaml

        overrides = yaml.safe_load(path.read_text())
    except Exception:  # noqa: BLE001 - missing or malformed: no overrides
        return ""
    return " ".join(str(o) for o in overrides) if isinstance(overrides, list) else ""


def stability_summary(run_dir: RunDir, status: str) -> dict:
    """The end-of-run W&B summary, from the run directory alone.

    `status`, `finished_at`; `final/<metric>`: mean of the last 10 finite logged values of the main metrics
    (proxy and gold reward, KL, perplexity, response length, repetition); `stability/<key>`: the run's row of
    `analysis.run_stability` (collapsed, collapse_onset, peak/final/initial values, ratios, reward at KL
    budgets...) when the analysis package can compute it (pandas only; it is skipped on any error)."""
    summary = {"status": status}
    try:
        summary["finished_at"] = run_dir.read_info().get("finished_at")
    except (OSError, ValueError):
        pass
    rows = read_jsonl(run_dir.metrics)
    for name in FINAL_METRICS:
        values = [row[name] for row in rows if _finite(row.get(name))]
        if values:
            summary[f"final/{name}"] = sum(values[-FINAL_WINDOW:]) / len(values[-FINAL_WINDOW:])
    try:
        from analysis.load import load_runs
        from analysis.stability import run_stability

        runs, traces = load_runs([run_dir.path])
        if len(runs):
            row = run_stability(runs, traces).iloc[0].to_dict()
            summary.update({f"stability/{k}": _plain(v) for k, v in row.items() if k not in _NOT_STABILITY})
    except Exception as err:  # noqa: BLE001 - the summary is a convenience; the run directory has the data
        log.debug("stability summary skipped: %s", err)
    return summary


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _plain(value):
    """A pandas/numpy scalar as a plain JSON-able Python value; None for NaN/NA."""
    if hasattr(value, "item"):
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        import pandas as pd

        if value is pd.NA:
            return None
    except ImportError:
        pass
    return value
