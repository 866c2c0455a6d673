"""From a config to a ready `PPOTrainer`: the runtime (device and precision are checked before any model
loads), the toy stages, the four models (three for a critic-free estimator), what is done to them (LoRA, gradient checkpointing), their roles on
the runtime, the optimisers and the rollout engine.

`build_trainer(cfg)` loads everything; `assemble(cfg, runtime, ...)` takes models already loaded (tests and
benchmarks build their own).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from rlhf_lab.config import Config, ConfigError, Distributed, OnOff, TaskKind
from rlhf_lab.data import Stream, prompt_stream, sft_stream
from rlhf_lab.models import (enable_gradient_checkpointing, load_policy, load_reward_model, load_tokenizer,
                             make_critic, quiet_transformers, with_lora)
from rlhf_lab.paths import cache_dir
from rlhf_lab.roles import AdapterFreePolicy, Critic, Policy, RewardModel, check_forward, hf_model
from rlhf_lab.rollout import HFGenerate, generation_config, kv_cache
from rlhf_lab.runtime import Runtime
from rlhf_lab.trainer import PPOTrainer


def build_trainer(cfg: Config, runtime: Runtime | None = None) -> PPOTrainer:
    """Runtime (unless given), stages, then the models, tokenizer and data streams the PPO loop needs."""
    runtime = runtime or Runtime.from_config(cfg)
    check_ranks(cfg, runtime.world_size)
    quiet_transformers()
    language = gold = None
    if cfg.task.name == TaskKind.toy:
        from rlhf_lab.toy import stages
        from rlhf_lab.toy.gold import GoldReward

        if not runtime.is_main:  # the main rank builds (transformers saves from global rank 0 only)
            runtime.barrier()
        artefacts = stages.prepare(cfg, cache_dir(cfg.cache_dir))  # built once under a file lock
        if runtime.is_main:
            runtime.barrier()
        policy_path, rm_path, language = artefacts.sft_dir, artefacts.rm_dir, artefacts.language
        gold = GoldReward(language)
    else:
        policy_path, rm_path = cfg.model.policy, cfg.model.reward_model
    tokenizer = load_tokenizer(policy_path)
    lora = cfg.lora.name == OnOff.on
    torch.manual_seed(cfg.seed)  # the critic's fresh head (critic_init=sft|random) depends on the run's seed
    # trainable models in fp32 (master weights; autocast computes in the compute dtype), frozen ones in it
    return assemble(
        cfg, runtime,
        policy=load_policy(policy_path, torch.float32),
        reference=None if lora else load_policy(policy_path, runtime.compute_dtype),
        critic=(make_critic(cfg.critic_init.name, policy_path, rm_path, tokenizer.pad_token_id, torch.float32)
                if cfg.adv_estimator.uses_critic else None),  # [adv_estimator] critic-free: 3 models
        reward_model=load_reward_model(rm_path, runtime.compute_dtype),
        tokenizer=tokenizer,
        prompts=prompt_stream(cfg, language),
        sft_examples=sft_stream(cfg, language) if cfg.ptx_loss.name == OnOff.on else None,
        gold_reward=gold,
    )


def assemble(cfg: Config, runtime: Runtime, *, policy: PreTrainedModel, reference: PreTrainedModel | None,
             critic: PreTrainedModel | None, reward_model: PreTrainedModel, tokenizer, prompts: Stream,
             sft_examples: Stream | None = None, gold_reward=None) -> PPOTrainer:
    """Loaded models -> a trainer. `reference` is None under lora=on: it is the policy without its adapters.
    A critic-free estimator (adv_estimator != gae) uses no critic: `critic` is then dropped (or None)."""
    lora = cfg.lora.name == OnOff.on
    if lora and reference is not None:
        raise ValueError("lora=on: the reference is the policy with its adapters disabled; pass reference=None")
    if not cfg.adv_estimator.uses_critic:  # [adv_estimator]
        critic = None
    elif critic is None:
        raise ValueError(f"adv_estimator={cfg.adv_estimator.name.value} trains a critic: pass one")
    for frozen in (reference, reward_model):
        if frozen is not None:
            frozen.requires_grad_(False)
    if lora:  # [lora]
        policy = with_lora(policy, cfg.lora, "CAUSAL_LM")
        if cfg.lora.critic and critic is not None:
            critic = with_lora(critic, cfg.lora, "SEQ_CLS")
    policy_role, critic_role = Policy(policy), Critic(critic) if critic is not None else None
    reference_role = AdapterFreePolicy(policy_role) if lora else Policy(reference)
    reward_role = RewardModel(reward_model)
    trainable_roles = [role for role in (policy_role, critic_role) if role is not None]
    for role in (*trainable_roles, reference_role, reward_role):
        role.eval()  # always: dropout would make the PPO ratio != 1 and the KL != 0 on unchanged weights
    for model in (policy, reference, critic, reward_model):
        if model is not None:
            check_forward(model)
    if cfg.model.gradient_checkpointing:  # after eval(): see enable_gradient_checkpointing
        for role in trainable_roles:
            enable_gradient_checkpointing(hf_model(role.model))
    for trainable in trainable_roles:
        runtime.shard(trainable.to(runtime.device))  # [fsdp] in place, before the optimisers see the parameters
    for frozen in (reference_role, reward_role):
        runtime.place_frozen(frozen)
    lrs = (cfg.ppo.policy_lr, cfg.ppo.critic_lr)
    prepared = runtime.prepare(*trainable_roles, *[adamw(role, lr, cfg.ppo.weight_decay)
                                                   for role, lr in zip(trainable_roles, lrs)])
    prepared = list(prepared) if isinstance(prepared, (list, tuple)) else [prepared]
    roles, optimisers = prepared[:len(trainable_roles)], prepared[len(trainable_roles):]
    policy_role, policy_optimizer = roles[0], optimisers[0]
    critic_role, critic_optimizer = (roles[1], optimisers[1]) if critic is not None else (None, None)
    engine = HFGenerate(runtime.unwrap(policy_role), generation_config(
        cfg.ppo.max_new_tokens, cfg.ppo.temperature, tokenizer.eos_token_id, tokenizer.pad_token_id,
        kv_cache(cfg.rollout.cache, runtime.device)))
    return PPOTrainer(cfg, runtime, policy=policy_role, reference=reference_role, critic=critic_role,
                      reward_model=reward_role, policy_optimizer=policy_optimizer,
                      critic_optimizer=critic_optimizer, engine=engine, tokenizer=tokenizer, prompts=prompts,
                      sft_examples=sft_examples, gold_reward=gold_reward)


def check_ranks(cfg: Config, world_size: int) -> None:
    """Raise ConfigError unless the batch splits evenly over the ranks, and ranks come with distributed!=none."""
    if world_size > 1 and cfg.distributed.name == Distributed.none:
        raise ConfigError(f"distributed=none is not allowed with {world_size} ranks (a launcher started them); "
                          f"expected distributed=ddp or fsdp")
    size = cfg.ppo.batch_size // cfg.ppo.minibatches
    if size % world_size:
        raise ConfigError(f"ppo.batch_size={cfg.ppo.batch_size} is not allowed with {cfg.ppo.minibatches} "
                          f"minibatches on {world_size} ranks: expected each minibatch ({size}) to split evenly")
    if cfg.ptx_loss.name == OnOff.on and cfg.ptx_loss.batch_size % world_size:
        raise ConfigError(f"ptx_loss.batch_size={cfg.ptx_loss.batch_size} is not allowed on {world_size} ranks: "
                          f"expected a multiple of {world_size}")


def adamw(module: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the module's trainable parameters (with LoRA: the adapters). Fused: one kernel over all
    parameters instead of ~10 small ops per tensor (the same update)."""
    return torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr,
                             weight_decay=weight_decay, fused=True)
