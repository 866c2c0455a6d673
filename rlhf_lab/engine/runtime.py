"""Compute of one run: device, precision and the process group. The only module that imports accelerate.

The PPO maths never asks where it runs: the trainer calls `Runtime` for placement (`prepare`, `borrow`),
mixed precision (`autocast`, `backward`, `clip_grad_norm_`), timing (`now`) and random state. On one CPU
process at fp32 every method is a thin wrapper over plain torch.

Precision: trainable models (policy, critic) keep fp32 master weights and AdamW states, and their forward
passes run under autocast in the compute dtype (bf16 weights with bf16 optimiser states lose small updates);
the frozen reference and reward model are loaded in the compute dtype itself (`compute_dtype`). fp16 adds
accelerate's gradient scaler, which `backward` and `clip_grad_norm_` apply.

Ranks (docs/architecture.md, "Ranks"): every rank generates and scores its share of the batch, then `gather`
gives every rank the whole batch, so every statistic is a whole-batch one on every rank with no further
communication. `mean_over_ranks` averages the training statistics once per iteration. At one process each of
these is the identity. The trainable roles are
- `distributed=ddp`: wrapped by DDP through accelerate (every rank holds them whole; gradients averaged);
- `distributed=fsdp`: sharded by FSDP2 (`torch.distributed.fsdp.fully_shard`), one unit per decoder layer and
  one for the rest: every rank holds 1/W of each parameter, gradient and AdamW state, and a layer's full
  weights only while it runs. accelerate 1.15 applies FSDP on GPU process groups only (a CPU group stays
  MULTI_CPU), so the runtime calls `fully_shard` itself, with accelerate's per-layer layout: one code path on
  CPU ranks (the tests) and GPUs. Mixed precision is FSDP's own: bf16 all-gathers and compute, fp32 master
  weights and fp32 gradient reduction. `gathered` keeps the policy's full weights for a whole rollout
  (one all-gather per rollout, not one per decoding step); `trainable_state` / `load_trainable_state` and
  `optimizer_state` / `load_optimizer_state` move full (unsharded) tensors, so checkpoints are the same files
  at any world size and under any strategy. The frozen reference and reward model are replicated: see
  `place_frozen`. An fsdp run of one process (`launch` starts it) shards over a world of 1; a trainer built
  in a process without a process group (tests, benchmarks) runs unsharded.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list

from rlhf_lab.config.checks import check_device
from rlhf_lab.config.schema import ConfigError, Device, Distributed, Precision

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
    shards: bool = False  # distributed=fsdp in a process group: the trainable roles are sharded (FSDP2)
    shard_frozen: bool = False  # ... and the frozen ones too (distributed.shard_frozen)

    @classmethod
    def from_config(cls, cfg) -> "Runtime":
        """The runtime a run's config asks for (rlhf_lab.config.schema.Config)."""
        return cls.create(cfg.device, cfg.precision, cfg.model.offload_frozen, cfg.distributed.name,
                          cfg.distributed.shard_frozen)

    @classmethod
    def create(cls, device: Device = Device.cpu, precision: Precision = Precision.fp32,
               offload_frozen: bool = False, distributed: Distributed = Distributed.none,
               shard_frozen: bool = False) -> "Runtime":
        """Validate the choices, then build the accelerator. Raises ConfigError before any model is loaded."""
        where = resolve_device(device)
        check_device(precision, where.type)  # what device=auto became (the config's rules ran at compose time)
        if distributed == Distributed.fsdp and "WORLD_SIZE" in os.environ and not torch.distributed.is_initialized():
            # a launched rank (a world of 1 included, which accelerate would leave without a group)
            torch.distributed.init_process_group("nccl" if where.type == "cuda" else "gloo")
        # accelerate keeps its state process-wide; one process may build several runs (tests, benchmarks) with
        # different precisions, so a state left by an earlier one is dropped first (one process, no group yet)
        if AcceleratorState._shared_state:
            AcceleratorState._reset_state()
        # DDP: no buffer broadcast before every forward pass (the models' buffers are constants such as RoPE
        # frequencies, identical on every rank)
        accelerator = Accelerator(cpu=where.type == "cpu", mixed_precision=MIXED_PRECISION[precision],
                                  kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])
        shards = distributed == Distributed.fsdp and torch.distributed.is_initialized()
        return cls(accelerator, precision, offload_frozen and where.type == "cuda", shards, shards and shard_frozen)

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

    def shard(self, role: nn.Module, frozen: bool = False) -> nn.Module:
        """A trainable role (or with `frozen` a frozen one), sharded in place under FSDP (see the module
        docstring); unchanged otherwise. Before its optimiser is built: sharding replaces the parameters."""
        if not self.shards:
            return role
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

        mesh = init_device_mesh(self.device.type, (self.world_size,))
        mixed = (MixedPrecisionPolicy(param_dtype=self.compute_dtype, reduce_dtype=torch.float32)
                 if self.precision != Precision.fp32 else MixedPrecisionPolicy())
        layer_classes = {name for module in role.modules() for name in getattr(module, "_no_split_modules", None) or ()}
        for layer in [m for m in role.modules() if type(m).__name__ in layer_classes]:
            fully_shard(layer, mesh=mesh, mp_policy=mixed, reshard_after_forward=True)
        # the rest (embeddings, final norm, heads) stays gathered from the forward pass to the backward pass
        fully_shard(role, mesh=mesh, mp_policy=mixed, reshard_after_forward=frozen)
        if hasattr(role, "generate"):  # generation enters through the root's hooks, like a forward pass
            register_fsdp_forward_method(role, "generate")
        return role

    def prepare(self, *objects):
        """Trainable role modules and their optimisers, together: placed on the device, forward passes under
        autocast (DDP-wrapped at several ranks), optimisers aware of the gradient scaler. Sharded roles
        (`shard`) are returned as they are: FSDP's mixed precision replaces autocast."""
        if not self.shards:
            return self.accelerator.prepare(*objects)
        prepared = self.accelerator.prepare(*[o for o in objects if not isinstance(o, nn.Module)])
        prepared = iter(prepared if isinstance(prepared, tuple) else (prepared,))
        return tuple(o if isinstance(o, nn.Module) else next(prepared) for o in objects)

    @contextlib.contextmanager
    def gathered(self, role: nn.Module) -> Iterator[None]:
        """A sharded role's full weights on every rank for the whole block (a rollout's decoding steps): one
        all-gather per unit, instead of one per unit per pass. A no-op unless sharded."""
        if not self.shards:
            yield
            return
        from torch.distributed.fsdp import FSDPModule

        units = [m for m in role.modules() if isinstance(m, FSDPModule)]
        for unit in units:
            unit.set_reshard_after_forward(False, recurse=False)
            unit.unshard()
        try:
            yield
        finally:
            for unit in units:
                unit.reshard()
                unit.set_reshard_after_forward(unit is not role, recurse=False)  # as `shard` set them

    def place_frozen(self, module: torch.nn.Module) -> torch.nn.Module:
        """A frozen role module on its home: the device, or the CPU when frozen models are offloaded. Under
        FSDP it is replicated (every rank scores its share with no communication; 2 bytes per parameter in
        bf16), or sharded with `shard_frozen` (2 / W bytes, one all-gather per layer per scoring pass)."""
        if self.shard_frozen:
            return self.shard(module.to(self.device), frozen=True)
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
        """Unscale (fp16), clip to max_norm (inf: no clipping), return the norm before clipping (0-d tensor;
        of the whole gradient when it is sharded)."""
        return _full(self.accelerator.clip_grad_norm_(parameters, max_norm))

    # ---------------------------------------------------------------- full states (checkpoints)
    def trainable_state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """The trainable parameters by name (a tied weight once), whole, on the CPU. Called on every rank;
        under FSDP each is gathered, and kept on the main rank only ({} on the others)."""
        state = {}
        for name, param in module.named_parameters():
            if param.requires_grad:
                full = _full(param.detach())
                if self.is_main or not self.shards:
                    state[name] = full.cpu().contiguous()
        return state

    def load_trainable_state(self, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Copy whole tensors (`trainable_state`'s, on every rank) into the parameters: each rank keeps its shard."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        with torch.no_grad():
            for name, param in module.named_parameters():
                if name not in state:
                    continue
                value = state[name].to(param.device, param.dtype)
                if isinstance(param, DTensor):  # this rank's shard of the whole tensor, no communication
                    value = distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)
                param.copy_(value)

    def all_finite(self, module: nn.Module) -> bool:
        """Whether every trainable parameter is finite, on every rank (each checks its shards)."""
        finite = all(bool(torch.isfinite(_local(p)).all()) for p in module.parameters() if p.requires_grad)
        return not self.any_rank(not finite)

    def optimizer_state(self, module: nn.Module, optimizer) -> dict:
        """The optimiser's state_dict; under FSDP with whole tensors by parameter name (main rank; {} elsewhere)."""
        if not self.shards:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(module, _inner(optimizer),
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_optimizer_state(self, module: nn.Module, optimizer, state: dict) -> None:
        """Restore `optimizer_state`'s dict (read on every rank: each keeps its shards)."""
        if not self.shards:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(module, _inner(optimizer), state, options=StateDictOptions(full_state_dict=True))

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


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a sharded (DTensor) tensor; a plain tensor itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole of a sharded (DTensor) tensor on every rank (a collective); a plain tensor itself."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _inner(optimizer) -> torch.optim.Optimizer:
    """The torch optimiser inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)
