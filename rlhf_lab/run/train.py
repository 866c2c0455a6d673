"""One run: its run directory, the trainer (rlhf_lab.run.build), the PPO loop, checkpoints and signals.

`run(cfg)` is what `rlhf-train` calls after validating the config; it returns the final status.
"""

from __future__ import annotations

import logging
import os
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from rlhf_lab.run import checkpoint

from rlhf_lab.engine import progress
from rlhf_lab.run.build import build_trainer, prepare_stages
from rlhf_lab.config.schema import Config, Distributed
from rlhf_lab.run.launch import launch
from rlhf_lab.run.preemption import Preemption
from rlhf_lab.engine.runtime import Runtime
from rlhf_lab.run.rundir import SCHEMA_VERSION, RunDir, git_sha, now_iso, package_versions
from rlhf_lab.trainer import Diverged, PPOTrainer
from rlhf_lab.run.wandb_sink import WandbSink, hydra_context, previous_record  # wandb itself is imported lazily

log = logging.getLogger("rlhf_lab")

# Overrides that do not define an ablation arm (they vary within one).
NON_ARM_KEYS = ("seed", "iterations", "resume", "arm", "cache_dir", "logger", "run.", "sweep", "device",
                "distributed", "rollout.")


def arm_label(cfg: Config, overrides: list[str]) -> str:
    """The arm's human label: `cfg.arm`, else the arm-defining overrides joined, else "default"."""
    if cfg.arm:
        return cfg.arm
    parts = [o.lstrip("+~") for o in overrides
             if not o.lstrip("+~").startswith(NON_ARM_KEYS) and not o.startswith("hydra")]
    return ",".join(parts) or "default"


def new_run_info(cfg: Config, arm: str, preset: str | None) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": f"{arm.replace('=', '-').replace(',', '_')[:60]}-s{cfg.seed}-{uuid.uuid4().hex[:8]}",
        "status": "running",
        "arm": arm,
        "seed": cfg.seed,
        "preset": preset,
        "tricks": cfg.tricks(),
        "iterations": cfg.iterations,
        "started_at": now_iso(),
        "finished_at": None,
        "git_sha": git_sha(),
        "versions": package_versions(),
        "wandb": None,
    }


def torch_threads(cfg: Config, launcher: DictConfig | None) -> int:
    """`run.threads`, else cores / parallel jobs under a parallel local launcher (no oversubscription), else 0
    (torch's default)."""
    if cfg.run.threads:
        return cfg.run.threads
    n_jobs = (launcher or {}).get("n_jobs")
    return max(1, (os.cpu_count() or 1) // n_jobs) if n_jobs and n_jobs > 0 else 0


@dataclass(frozen=True)
class Job:
    """What a run takes from Hydra, read in the process Hydra started (ranks started by `launch` have no Hydra)."""

    run_dir: Path  # the run directory (Hydra's output directory, or the `resume` directory)
    arm: str  # the arm's label (`arm_label`)
    preset: str | None  # the preset chosen
    threads: int  # torch intra-op threads per process (0: torch's default)
    log_file: Path  # the job's log file (Hydra's)
    shared_terminal: bool  # a parallel launcher's worker: other runs write to the same terminal (no bars)
    wandb_context: tuple  # (the sweep's W&B group, the command line's overrides): `hydra_context()`


def run(cfg: Config) -> str:
    """One run in Hydra's output directory (or the `resume` directory). Never raises for a training problem:
    the status (completed, diverged, failed, preempted) is returned and written to run.json.
    With `distributed.processes` > 1, or distributed=fsdp (a process group even for one rank), and no
    launcher's ranks already there, the ranks are started here."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    processes = cfg.distributed.ranks
    threads = torch_threads(cfg, hydra_cfg.launcher)
    job = Job(run_dir=Path(cfg.resume or hydra_cfg.runtime.output_dir),
              arm=arm_label(cfg, list(hydra_cfg.overrides.task)), preset=hydra_cfg.runtime.choices.get("preset"),
              threads=max(1, (threads or os.cpu_count() or 1) // processes) if processes > 1 else threads,
              log_file=Path(hydra_cfg.runtime.output_dir) / f"{hydra_cfg.job.name}.log",
              shared_terminal=(hydra_cfg.launcher or {}).get("n_jobs") not in (None, 1),  # joblib: -1 is all cores
              wandb_context=hydra_context())
    if already_completed(RunDir(job.run_dir), cfg.iterations):  # a sweep run again: its finished runs stay as they are
        log.info("%s already completed %d iterations: left as it is", job.run_dir, cfg.iterations)
        return "completed"
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "WORLD_SIZE" not in os.environ:
        slurm_ranks()
    if (processes > 1 or cfg.distributed.name == Distributed.fsdp) and "WORLD_SIZE" not in os.environ:
        return launch(execute, cfg, job, processes)
    return execute(cfg, job)


def already_completed(run_dir: RunDir, iterations: int) -> bool:
    """Whether ``run_dir`` holds a run that completed ``iterations`` iterations and saved its last checkpoint, so
    that rerunning its sweep into the same directory (to continue the runs that were stopped) leaves it alone:
    no model loads, nothing rewritten. A run asked for more iterations than it ran continues from there."""
    if not run_dir.run_json.exists():
        return False
    info = run_dir.read_info()
    last = checkpoint.latest(run_dir.checkpoints)
    return (info.get("status") == "completed" and info.get("iterations") == iterations
            and last is not None and last.name == checkpoint.folder_name(iterations))


def slurm_ranks() -> None:
    """A SLURM job of several tasks (hydra.launcher.tasks_per_node, nodes): each task is a rank. Export the
    environment torch.distributed reads, from SLURM's (the first node is the rendezvous host)."""
    from submitit.helpers import TorchDistributedEnvironment

    env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    log.info("SLURM task %d of %d (rendezvous %s:%d)", env.rank, env.world_size, env.master_addr, env.master_port)


def execute(cfg: Config, job: Job) -> str:
    """The run, as one rank (one of `distributed.processes`, or of an external launcher such as torchrun or
    SLURM tasks). Only the main rank writes the run directory, W&B and checkpoints."""
    if job.threads:
        torch.set_num_threads(job.threads)
    progress.share_terminal(job.shared_terminal)  # before the toy stages' progress, too
    runtime = Runtime.from_config(cfg)  # before any model loads
    # under an external launcher every rank started its own Hydra app: the main rank's directory is the run's
    job = runtime.broadcast(job)
    run_dir = RunDir(job.run_dir)
    latest = checkpoint.latest(run_dir.checkpoints)
    writer = runtime.is_main
    if writer:
        wandb_before = previous_record(run_dir)  # an earlier attempt's W&B run, continued below
        if not run_dir.run_json.exists():
            run_dir.write_info(new_run_info(cfg, job.arm, job.preset))
        elif latest is None:  # an earlier attempt died before its first checkpoint: start over, as the same run
            run_dir.truncate_from(0)
            run_dir.set_status("running", finished_at=None, iterations=cfg.iterations)
            log.info("no checkpoint in %s: restarting the run from step 0", run_dir.path)
    runtime.barrier()
    sink = WandbSink.open(cfg, run_dir, wandb_before, job.wandb_context) if writer else WandbSink()  # never raises
    step = 0
    with Preemption() as preemption:
        try:
            torch.manual_seed(cfg.seed)
            stages = prepare_stages(cfg, runtime)
            if writer and stages.rm_report is not None:  # the reward model's quality, beside the run's outcomes
                run_dir.update_info(reward_model=stages.rm_report)
                sink.record_reward_model(stages.rm_report)
            trainer = build_trainer(cfg, runtime, stages)
            if latest is not None:
                step = checkpoint.load(trainer, latest)
                if writer:
                    run_dir.truncate_from(step)
                    run_dir.set_status("running", finished_at=None, iterations=cfg.iterations)
                log.info("resuming %s at step %d", run_dir.path, step)
            else:
                for i, stats in enumerate(trainer.warm_up_iterations()):  # logged as they end: progress
                    if stats:
                        log.info("critic pre-training %d/%d: value loss %.4f, explained variance %.3f", i + 1,
                                 cfg.critic_pretrain.iterations, stats["ppo/value_loss"], stats["ppo/explained_var"])
                    else:
                        log.info("warm-up iteration %d/%d (no critic): reward statistics only", i + 1,
                                 cfg.critic_pretrain.iterations)
            if writer:
                info = run_dir.read_info()
                log.info("run %s (arm %s, seed %d) -> %s", info["run_id"], info["arm"], cfg.seed, run_dir.path)
            status = train_loop(cfg, trainer, run_dir if writer else None, step, preemption, sink)
            sink.finish(status)
            return status
        except Diverged as err:
            log.error("diverged: %s; last good checkpoint kept in %s", err, run_dir.checkpoints)
            if writer:
                run_dir.set_status("diverged", error=str(err))
            sink.finish("diverged")
            return "diverged"
        except Exception as err:  # noqa: BLE001 - a failed run must not take the sweep down with it
            log.error("failed:\n%s", traceback.format_exc())
            if writer:
                run_dir.set_status("failed", error=f"{type(err).__name__}: {err}", log=str(job.log_file))
            sink.finish("failed")
            return "failed"


def train_loop(cfg: Config, trainer: PPOTrainer, run_dir: RunDir | None, start: int, preemption: "Preemption",
               sink: "WandbSink") -> str:
    """PPO iterations `start .. cfg.iterations - 1`, logging every one (to the run directory, and to `sink`, a
    `WandbSink`, when given; `run_dir` is None on ranks that do not write). Returns "completed", or "preempted"
    after a checkpoint when SIGUSR2/SIGTERM arrived on any rank (under submitit its handler then requeues
    the job)."""
    runtime = trainer.runtime
    desc = f"ppo ({run_dir.read_info()['arm']}, seed {cfg.seed})" if run_dir else "ppo"  # whose, among parallel runs
    with progress.Progress(desc, cfg.iterations, initial=start, enabled=cfg.run.progress and bool(run_dir)) as bar:
        for step in range(start, cfg.iterations):
            metrics, batch = trainer.step()
            last = step == cfg.iterations - 1
            signalled = runtime.any_rank(preemption.signal is not None)
            if run_dir:
                run_dir.append_metrics({"step": step, **metrics})
                sink.log(step, metrics)
                if step % cfg.run.samples_every == 0 or last:
                    rows = samples(step, batch, cfg.run.samples_per_log)
                    run_dir.append_samples(rows)
                    sink.log_samples(step, rows)
            if (step + 1) % cfg.run.checkpoint_every == 0 or last or signalled:
                checkpoint.save(trainer, run_dir.checkpoints if run_dir else None, step + 1)
            bar.update(proxy=metrics["reward/proxy_mean"], gold=metrics.get("reward/gold_mean", float("nan")),
                       kl=metrics["kl/init_k1"])
            if signalled and not last:
                log.warning("signal at step %d: checkpoint saved, stopping", step)
                if run_dir:
                    run_dir.set_status("preempted")
                sink.finish("preempted")
                preemption.hand_over()
                return "preempted"
    if run_dir:
        run_dir.set_status("completed")
        log.info("completed %d iterations: %s", cfg.iterations, run_dir.path)
    return "completed"


def samples(step: int, batch, n: int) -> list[dict]:
    gold = batch.gold.tolist() if batch.gold is not None else [None] * len(batch.prompts)
    return [{"step": step, "prompt": p, "response": r, "reward_proxy": s, "reward_gold": g}
            for p, r, s, g in list(zip(batch.prompts, batch.responses, batch.scores.tolist(), gold))[:n]]
