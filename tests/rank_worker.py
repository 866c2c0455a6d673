"""One rank of the DDP/FSDP equivalence test (tests/test_distributed.py), started with RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT in its environment:

    python tests/rank_worker.py SFT_DIR RM_DIR CASES_FILE

CASES_FILE is a JSON list of cases {"batch": BATCH_FILE, "out": OUT_FILE, "overrides": [...]}, run one after the
other in the one process group (a launch per case would cost a pair of process start-ups each). For each case:
build the tiny trainer, run one PPO update (`train`) on the rollout batch saved in BATCH_FILE, and on rank 0 save
the trained parameters (whole, gathered under FSDP) and the statistics to OUT_FILE; under FSDP also what each
rank holds of the policy and the all-gathers of one rollout (OUT_FILE with -gathers before .pt).
"""

import json
import sys
from pathlib import Path

import torch

from conftest import tiny_trainer


def run_case(checkpoints: tuple[Path, Path], batch_file: str, out_file: str, overrides: list[str]) -> None:
    trainer = tiny_trainer(checkpoints, *overrides)
    saved = torch.load(batch_file, weights_only=False)
    torch.manual_seed(saved["seed"])  # the minibatch order: the same on every rank, and as on one rank
    stats = trainer.train(saved["batch"], saved["advantages"], saved["returns"])
    runtime = trainer.runtime
    policy, critic = (runtime.trainable_state(runtime.unwrap(role)) if role is not None else {}
                      for role in (trainer.policy, trainer.critic))
    if runtime.is_main:
        torch.save({"policy": policy, "critic": critic, "sharded": runtime.shards,
                    "stats": {k: float(v) for k, v in stats.items()}}, out_file)
    runtime.barrier()

    # Under FSDP: what each rank holds of the policy, and the all-gathers of one rollout (generation of
    # max_new_tokens steps, then the scoring passes)
    if not runtime.shards:
        return
    from torch.distributed.fsdp import FSDPModule

    gathers = []
    held = {"local": sum(p.to_local().numel() for p in trainer.policy.parameters()),
            "whole": sum(p.numel() for p in trainer.policy.parameters())}
    all_gather = torch.distributed.all_gather_single

    def counted(*args, **kwargs):
        gathers.append(1)
        return all_gather(*args, **kwargs)

    torch.distributed.all_gather_single = counted
    trainer.rollout()
    torch.distributed.all_gather_single = all_gather
    units = {role: sum(isinstance(m, FSDPModule) for m in getattr(trainer, role).modules())
             if getattr(trainer, role) is not None else 0 for role in ("policy", "critic", "reference", "reward_model")}
    if runtime.is_main:
        torch.save({"gathers": len(gathers), "units": units, "held": held}, out_file.replace(".pt", "-gathers.pt"))
    runtime.barrier()


if __name__ == "__main__":
    sft_dir, rm_dir, cases_file = sys.argv[1:]
    torch.set_num_threads(1)
    for case in json.loads(Path(cases_file).read_text()):
        run_case((Path(sft_dir), Path(rm_dir)), case["batch"], case["out"], case["overrides"])
