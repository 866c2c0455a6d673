"""Compute of one run: device, precision and the process group. The only module that imports accelerate.

The PPO maths never asks where it runs: the trainer calls `Runtime` for placement (`prepare`, `borrow`),
mixed precision (`autocast`, `backward`, `clip_grad_norm_`), timing (`now`) and random state. On one CPU
process at fp32 every method is a thin wrapper over plain torch.

Precision: trainable models (policy, critic) keep fp32 master weights and AdamW states, and their forward
passes run under autocast in the compute dtype (bf16 weights with bf16 optimiser states lose small updates);
the frozen reference and reward model are loaded in the compute dtype itself (`compute_dtype`). fp16 adds
accelerate's gradient scaler, which `backward` and `clip_grad_norm_` apply.

Ranks (docs/architecture.md, "Ranks"): with `distributed=ddp` the trainable roles are wrapped by DDP; every
rank generates and scores its share of the batch, then `gather` gives every rank the whole batch, so every
statistic is a whole-batch one on every rank with no further communication. `mean_over_ranks` averages the
training statistics once per iteration. At one process each of these is the identity.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Iterator

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list

from rlhf_lab.config import ConfigError, Device, Precision

MIXED_PRECISION = {Precision.fp32: "no", Precision.bf16: "bf16", Precision.fp16: "fp16"}
COMPUTE_DTYPE = {Precision.fp32: torch.float32, Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}


def resolve_device(device: Device) -> torch.device:
    """`auto` -> cuda when a GPU is visible, else cpu. Raises ConfigError for `cuda` without one."""
    if device == Device.cuda and not torch.cuda.is_available():
        raise ConfigError("device='cuda' is not allowed: torch sees no CUDA device here; expected auto or cpu")
    if device == Device.auto:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device.value)


@dataclass
class Runtime:
    """Device and precision of one run (see the module docstring)."""

    accelerator: Accelerator
    precision: Precision
    offload_frozen: bool = False  # keep frozen models on the CPU between their uses (`borrow`)

    @classmethod
    def create(cls, device: Device = Device.cpu, precision: Precision = Precision.fp32,
               offload_frozen: bool = False) -> "Runtime":
        """Validate the pair, then build the accelerator. Raises ConfigError before any model is loaded."""
        where = resolve_device(device)
        if precision == Precision.fp16 and where.type != "cuda":
            raise ConfigError("precision='fp16' is not allowed on the CPU (no fp16 autocast there); expected fp32 "
                              "or bf16, or device=cuda")
        # accelerate keeps its state process-wide; one process may build several runs (tests, benchmarks) with
        # different precisions, so a state left by an earlier one is dropped first (one process, no group yet)
        if AcceleratorState._shared_state:
            AcceleratorState._reset_state()
        # DDP: no buffer broadcast before every forward pass (the models' buffers are constants such as RoPE
        # frequencies, identical on every rank)
        accelerator = Accelerator(cpu=where.type == "cpu", mixed_precision=MIXED_PRECISION[precision],
                                  kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])
        return cls(accelerator, precision, offload_frozen and where.type == "cuda")

    # ---------------------------------------------------------------- ranks
    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        """The one rank that writes the run directory, W&B and checkpoints."""
        return self.accelerator.is_main_process

    def share(self, n: int) -> slice:
        """This rank's contiguous share of `n` items (n is a multiple of the world size)."""
        size = n // self.world_size
        return slice(self.rank * size, (self.rank + 1) * size)

    def gather(self, x: torch.Tensor, pad_value: float = 0, left: bool = False) -> torch.Tensor:
        """Every rank's (b, ...) tensor, concatenated in rank order -> (W * b, ...). Dimension 1, where it
        exists, is padded to the longest over ranks first (on the left with `left`)."""
        if self.world_size == 1:
            return x
        if x.dim() > 1:
            x = self.accelerator.pad_across_processes(x, dim=1, pad_index=pad_value, pad_first=left)
        return self.accelerator.gather(x.contiguous())

    def mean_over_ranks(self, stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The mean over ranks of each 0-d statistic, in one all-reduce."""
        if self.world_size == 1 or not stats:
            return stats
        values = torch.stack([value.detach().float().reshape(()) for value in stats.values()])
        return dict(zip(stats, self.accelerator.reduce(values, reduction="mean")))

    def any_rank(self, flag: bool) -> bool:
        """True when `flag` is true on some rank (a preemption signal that reached one rank only)."""
        if self.world_size == 1:
            return flag
        return bool(self.accelerator.reduce(torch.tensor([float(flag)], device=self.device)).item() > 0)

    def broadcast(self, value):
        """The main rank's value of a small picklable object, on every rank."""
        if self.world_size == 1:
            return value
        return broadcast_object_list([value])[0]

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    @contextlib.contextmanager
    def rank_rng(self) -> Iterator[None]:
        """A random stream of this rank's own for the block (sampling), derived from the run's stream; the
        run's stream advances identically on every rank, so they stay in step (minibatch order, checkpoints).
        One process: the run's stream itself."""
        if self.world_size == 1:
            yield
            return
        seed = int(torch.randint(2**62, (1,)))  # the same draw on every rank
        with self.fork_rng():
            torch.manual_seed(seed + self.rank)
            yield

    # ---------------------------------------------------------------- placement
    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype autocast computes in, and that of the frozen models' weights."""
        return COMPUTE_DTYPE[self.precision]

    def prepare(self, *objects):
        """Trainable role modules and their optimisers, together: placed on the device, forward passes under
        autocast, optimisers aware of the gradient scaler."""
        return self.accelerator.prepare(*objects)

    def place_frozen(self, module: torch.nn.Module) -> torch.nn.Module:
        """A frozen role module on its home: the device, or the CPU when frozen models are offloaded."""
        return module.to("cpu" if self.offload_frozen else self.device)

    @contextlib.contextmanager
    def borrow(self, *modules: torch.nn.Module) -> Iterator[None]:
        """Frozen modules on the device for the duration of the block (a no-op unless offloading)."""
        if self.offload_frozen:
            for module in modules:
                module.to(self.device)
        try:
            yield
        finally:
            if self.offload_frozen:
                for module in modules:
                    module.to("cpu")

    def unwrap(self, module: torch.nn.Module) -> torch.nn.Module:
        return self.accelerator.unwrap_model(module)

    # ---------------------------------------------------------------- precision
    def autocast(self):
        """Autocast to the compute dtype (a no-op at fp32): for passes outside a prepared module's forward,
        such as generation. This run's own precision (accelerate's state is process-wide: another run built
        in the same process must not change it)."""
        return torch.autocast(self.device.type, dtype=self.compute_dtype, enabled=self.precision != Precision.fp32)

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def clip_grad_norm_(self, parameters, max_norm: float) -> torch.Tensor:
        """Unscale (fp16), clip to max_norm (inf: no clipping), return the norm before clipping (0-d tensor)."""
        return self.accelerator.clip_grad_norm_(parameters, max_norm)

    # ---------------------------------------------------------------- time and randomness
    def now(self) -> float:
        """Seconds, after the device's queued work is done (CUDA runs asynchronously: a bare clock would
        time the launch of the kernels, not their work)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def fork_rng(self):
        """A block whose random draws (CPU, and the device's) leave the run's random streams untouched."""
        return torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])

    def rng_state(self) -> dict:
        """The CPU and (when present) CUDA random states, for checkpoints."""
        return {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def set_rng_state(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():  # a GPU run continues its own random stream
            torch.cuda.set_rng_state_all(state["cuda"])
