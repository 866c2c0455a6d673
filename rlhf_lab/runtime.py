"""Compute of one run: device, precision and (next) the process group. The only module that imports accelerate.

The PPO maths never asks where it runs: the trainer calls `Runtime` for placement (`prepare`, `borrow`),
mixed precision (`autocast`, `backward`, `clip_grad_norm_`), timing (`now`) and random state. On one CPU
process at fp32 every method is a thin wrapper over plain torch.

Precision: trainable models (policy, critic) keep fp32 master weights and AdamW states, and their forward
passes run under autocast in the compute dtype (bf16 weights with bf16 optimiser states lose small updates);
the frozen reference and reward model are loaded in the compute dtype itself (`frozen_dtype`). fp16 adds
accelerate's gradient scaler, which `backward` and `clip_grad_norm_` apply.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Iterator

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

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
        accelerator = Accelerator(cpu=where.type == "cpu", mixed_precision=MIXED_PRECISION[precision])
        return cls(accelerator, precision, offload_frozen and where.type == "cuda")

    # ---------------------------------------------------------------- placement
    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def frozen_dtype(self) -> torch.dtype:
        """Dtype of the frozen models' weights: the compute dtype."""
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
        such as generation."""
        return self.accelerator.autocast()

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
