"""Compute concerns without a GPU: device and precision checks, bf16 autocast on the CPU, every tensor of the
loop on the models' device, the KV-cache choice, gradient checkpointing."""

import inspect
import math
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from conftest import make_config, tiny_trainer
from rlhf_lab.algo import ppo
from rlhf_lab.config.schema import ConfigError, Device, Precision, RolloutCache
from rlhf_lab.engine.packing import pack
from rlhf_lab.engine.rollout import kv_cache
from rlhf_lab.engine.runtime import Runtime

RLHF_LAB = Path(__file__).resolve().parents[1] / "rlhf_lab"


# ---------------------------------------------------------------- checks before any model loads
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_and_fp16_on_the_cpu_are_named_errors():
    with pytest.raises(ConfigError, match="device='cuda'"):
        Runtime.create(Device.cuda)
    with pytest.raises(ConfigError, match="precision='fp16'"):
        Runtime.create(Device.auto, Precision.fp16)  # auto resolves to the CPU here
    with pytest.raises(ConfigError, match="precision"):
        make_config("device=cpu", "precision=fp16")  # caught at composition, before Hydra runs anything


def test_auto_kv_cache_is_static_on_cuda_and_dynamic_elsewhere():
    assert kv_cache(RolloutCache.auto, torch.device("cuda")) == "static"
    assert kv_cache(RolloutCache.auto, torch.device("cpu")) == "dynamic"
    assert kv_cache(RolloutCache.static, torch.device("cpu")) == "static"
    assert kv_cache(RolloutCache.dynamic, torch.device("cuda")) == "dynamic"


# ---------------------------------------------------------------- bf16 on the CPU (autocast over fp32 master weights)
def test_bf16_trains_with_fp32_master_weights_and_bf16_frozen_models(tiny_checkpoints):
    trainer = tiny_trainer(tiny_checkpoints, "precision=bf16")
    assert all(p.dtype == torch.bfloat16 for p in trainer.reference.parameters())
    assert all(p.dtype == torch.bfloat16 for p in trainer.reward_model.parameters())
    assert all(p.dtype == torch.float32 for p in trainer.policy.parameters())
    seen = []
    mlp = trainer.policy.hf.model.layers[0].mlp
    hook = mlp.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    metrics, _ = trainer.step()
    hook.remove()
    assert seen and set(seen) == {torch.bfloat16}  # generation and the PPO passes ran under autocast
    assert all(math.isfinite(v) for v in metrics.values())
    after = trainer.policy.state_dict()
    assert all(after[k].dtype == torch.float32 for k in before)
    assert any(not torch.equal(after[k], v) for k, v in before.items())
    exp_avg = next(iter(trainer.policy_optimizer.state.values()))["exp_avg"]
    assert exp_avg.dtype == torch.float32


def test_bf16_ratio_is_one_at_the_first_minibatch(tiny_checkpoints):
    """Under bf16 the KV-cache decode and the full training pass round differently, so the log-probs recorded
    while sampling are not the training pass's; the rollout recomputes them with the training pass (as verl and
    OpenRLHF do), and the PPO ratio at the first minibatch, before any update, is 1."""
    def first_minibatch_log_ratio(trainer):
        batch = trainer.rollout()
        rows, n = batch.tokens.shape
        mb = torch.randperm(rows)[:rows // trainer.cfg.ppo.minibatches]  # as `train` draws it
        with torch.no_grad():
            logits = trainer.policy(pack(batch.ids[mb], batch.attention[mb]), n, trainer.cfg.ppo.temperature)
        new = ppo.logprobs_from_logits(logits, batch.tokens[mb])
        return ((new - batch.logprobs[mb]) * batch.mask[mb]).abs().max().item(), batch.tokens

    sampled = tiny_trainer(tiny_checkpoints, "precision=bf16", "ppo.max_new_tokens=16",
                           "rollout.recompute_logprobs=false")
    mismatch, tokens = first_minibatch_log_ratio(sampled)  # each trainer seeds the global generator: draw at once
    recomputed = tiny_trainer(tiny_checkpoints, "precision=bf16", "ppo.max_new_tokens=16")
    exact, same_tokens = first_minibatch_log_ratio(recomputed)
    assert recomputed.recompute_logprobs and not sampled.recompute_logprobs
    assert not tiny_trainer(tiny_checkpoints).recompute_logprobs  # fp32: the sampled log-probs are exact enough
    assert torch.equal(tokens, same_tokens)  # one seed: the same responses
    assert mismatch > 1e-5  # the sampling pass and the training pass disagree under bf16 ...
    assert exact <= 1e-6  # ... but the ratio of the recomputed log-probs is 1 to fp32 rounding


def test_fp32_is_unchanged_by_the_runtime(tiny_checkpoints):
    """At fp32 no autocast runs: the policy role's pass equals the plain model's logits exactly."""
    trainer = tiny_trainer(tiny_checkpoints, "precision=fp32")
    batch = trainer.rollout()
    with torch.no_grad():
        ours = trainer.policy(pack(batch.ids, batch.attention), batch.tokens.shape[1])
        theirs = trainer.policy.hf(input_ids=batch.ids, attention_mask=batch.attention).logits
    assert ours.dtype == torch.float32
    on = batch.mask.bool()
    torch.testing.assert_close(ours[on], theirs[:, -batch.tokens.shape[1] - 1:-1][on], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- every tensor on the models' device
FACTORIES = {"tensor", "as_tensor", "zeros", "ones", "full", "empty", "arange", "randperm", "rand", "randn",
             "randint", "linspace", "eye", "scalar_tensor"}
# built on the host on purpose (token lists, Python lists), then copied to the device once
HOST_SIDE = {("engine/packing.py", "pad_left"), ("engine/data.py", "sft_batch")}


class FactoryCalls(TorchFunctionMode):
    """Records each tensor factory that rlhf_lab code calls without a `device`: on a GPU such a tensor would be
    created on the CPU, away from the models."""

    def __init__(self):
        super().__init__()
        self.undirected: set[tuple[str, str]] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) in FACTORIES and kwargs.get("device") is None:
            caller = inspect.currentframe().f_back
            path = Path(caller.f_code.co_filename).resolve()
            if path.is_relative_to(RLHF_LAB):
                self.undirected.add((str(path.relative_to(RLHF_LAB)), caller.f_code.co_name))
        return func(*args, **kwargs)


@pytest.mark.parametrize("overrides", [
    ("preset=ppo_max", "critic_pretrain.steps=1"),  # running statistics, ptx, clipping, critic pre-training
    ("preset=vanilla", "kl_penalty=adaptive", "kl_penalty.coef=0.1", "entropy_bonus=on", "reward_norm=batch",
     "policy_clip=dual", "adv_clip=on"),
])
def test_the_loop_creates_no_tensor_away_from_the_models(tiny_checkpoints, overrides):
    trainer = tiny_trainer(tiny_checkpoints, *overrides)
    trainer.gold_reward = lambda prompts, responses, finished: [float(len(r)) for r in responses]
    with FactoryCalls() as calls:
        trainer.warm_up()
        trainer.step()
        trainer.step()
    assert calls.undirected <= HOST_SIDE, f"tensors created without a device: {calls.undirected - HOST_SIDE}"


def test_the_factory_check_sees_a_tensor_made_without_a_device():
    """The check above can fail: a factory called from rlhf_lab without `device` is recorded."""
    from rlhf_lab.algo import ppo

    with FactoryCalls() as calls:
        ppo.masked_mean(torch.ones(3), torch.ones(3))  # called from here: not rlhf_lab code
        exec(compile("torch.zeros(2)", str(RLHF_LAB / "algo" / "ppo.py"), "exec"), {"torch": torch})
    assert calls.undirected == {("algo/ppo.py", "<module>")}


# ---------------------------------------------------------------- KV cache and gradient checkpointing
def test_static_kv_cache_samples_what_it_records(tiny_checkpoints):
    """`rollout.cache=static` passes the engine's start-up check and gives the dynamic cache's tokens and
    log-probs for the same random stream."""
    static, dynamic = (tiny_trainer(tiny_checkpoints, f"rollout.cache={c}") for c in ("static", "dynamic"))
    assert static.engine.gen_config.cache_implementation == "static"
    torch.manual_seed(4)
    a = static.rollout()
    torch.manual_seed(4)
    b = dynamic.rollout()
    assert torch.equal(a.tokens, b.tokens)
    on = a.mask.bool()
    torch.testing.assert_close(a.logprobs[on], b.logprobs[on], rtol=1e-4, atol=1e-4)


def test_gradient_checkpointing_recomputes_layers_with_the_same_gradients(tiny_checkpoints):
    grads, calls = [], []
    for flag in ("false", "true"):
        trainer = tiny_trainer(tiny_checkpoints, f"model.gradient_checkpointing={flag}")
        torch.manual_seed(1)
        batch = trainer.rollout()
        mlp = trainer.policy.hf.model.layers[0].mlp
        count = []
        mlp.register_forward_pre_hook(lambda *_: count.append(1))
        logp = trainer.policy(pack(batch.ids, batch.attention), batch.tokens.shape[1]).log_softmax(-1)
        logp.gather(-1, batch.tokens.unsqueeze(-1)).mean().backward()
        calls.append(len(count))
        grads.append({k: p.grad.clone() for k, p in trainer.policy.named_parameters() if p.grad is not None})
        dropouts = [m for m in trainer.policy.modules() if isinstance(m, torch.nn.Dropout)]
        assert not any(m.training for m in dropouts)
    assert calls == [1, 2]  # checkpointing runs the layer again in backward
    for key, grad in grads[0].items():
        torch.testing.assert_close(grads[1][key], grad, rtol=1e-5, atol=1e-6)
