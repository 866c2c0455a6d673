"""Starting a run's ranks on this machine (`distributed.processes` > 1), so a multi-rank run stays one command.

The process Hydra started becomes the launcher: it starts one process per rank (spawned: a fresh interpreter,
no state copied), each with the environment torch.distributed reads (RANK, WORLD_SIZE, MASTER_ADDR, ...),
waits for them, passes a preemption signal on to them, and reports the run's status from run.json. Under
torchrun, `accelerate launch` or SLURM tasks the ranks already exist and nothing is started here.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
from typing import Any, Callable

from rlhf_lab.config.schema import Config
from rlhf_lab.run.preemption import Preemption
from rlhf_lab.run.rundir import RunDir

log = logging.getLogger("rlhf_lab")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(execute: Callable[[Config, Any], str], cfg: Config, job, processes: int) -> str:
    """Run `execute(cfg, job)` (rlhf_lab.run.train.execute: a module-level function, which the spawned ranks
    import by name) on `processes` local ranks; return the run's status."""
    port, context = free_port(), multiprocessing.get_context("spawn")
    ranks = [context.Process(target=_rank, args=(execute, cfg, job, rank, processes, port), name=f"rank-{rank}")
             for rank in range(processes)]
    with Preemption() as preemption:
        for process in ranks:
            process.start()
        forwarded = False
        while any(process.is_alive() for process in ranks):
            for process in ranks:
                process.join(timeout=0.5)
            if preemption.signal and not forwarded:  # each rank checkpoints with the others, then stops
                for process in ranks:
                    if process.is_alive():
                        os.kill(process.pid, preemption.signal)
                forwarded = True
            failed = [p for p in ranks if p.exitcode not in (None, 0)]
            if failed and not preemption.signal:  # a rank died: the others would wait for it forever
                for process in ranks:
                    if process.is_alive():
                        process.terminate()
        codes = [process.exitcode for process in ranks]
    status = RunDir(job.run_dir).read_info()["status"]
    if any(codes) and status == "running":
        RunDir(job.run_dir).set_status("failed", error=f"a rank exited with code {codes}", log=str(job.log_file))
        status = "failed"
    if preemption.signal:
        preemption.hand_over()
    return status


def _rank(execute: Callable[[Config, Any], str], cfg: Config, job, rank: int, world_size: int, port: int) -> None:
    """One rank's process."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    handlers = [logging.StreamHandler(sys.stderr)]
    if rank == 0:
        handlers.append(logging.FileHandler(job.log_file))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, handlers=handlers,
                        format=f"[%(asctime)s][rank {rank}][%(name)s][%(levelname)s] - %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the launcher, which stops the ranks
    execute(cfg, job)
