"""One rank of the DDP equivalence test (tests/test_distributed.py), started with RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT in its environment:

    python tests/ddp_worker.py SFT_DIR RM_DIR BATCH_FILE OUT_FILE OVERRIDES...

Builds the tiny trainer, runs one PPO update (`train`) on the rollout batch saved in BATCH_FILE, and on rank 0
saves the trained parameters and the statistics to OUT_FILE.
"""

import sys
from pathlib import Path

import torch

from conftest import tiny_trainer

sft_dir, rm_dir, batch_file, out_file, *overrides = sys.argv[1:]
torch.set_num_threads(1)
trainer = tiny_trainer((Path(sft_dir), Path(rm_dir)), *overrides)
saved = torch.load(batch_file, weights_only=False)
torch.manual_seed(saved["seed"])  # the minibatch order: the same on every rank, and as on one rank
stats = trainer.train(saved["batch"], saved["advantages"], saved["returns"])
if trainer.runtime.is_main:
    torch.save({"policy": trainer.runtime.unwrap(trainer.policy).state_dict(),
                "critic": trainer.runtime.unwrap(trainer.critic).state_dict(),
                "stats": {k: float(v) for k, v in stats.items()}}, out_file)
trainer.runtime.barrier()
