"""From a config to a ready `PPOTrainer`: the runtime (device and precision are checked before any model
loads), the task's stages (toy, reviews), the four models (three for a critic-free estimator; K reward models for an
ensemble; the reference the `reference` group names), what is done to them (LoRA, gradient checkpointing), their roles on
the runtime, the optimisers and the rollout engine.

`build_trainer(cfg)` loads everything (`prepare_stages` first: the task's checkpoints, data and gold reward);
`assemble(cfg, runtime, ...)` takes models already loaded (tests and benchmarks build their own).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from torch import nn
from transformers import PreTrainedModel

from rlhf_lab.config.checks import check_batch_split
from rlhf_lab.config.schema import Config, OnOff, Reference, TaskKind
from rlhf_lab.engine.data import Stream, chat_prompts, read_jsonl_field
from rlhf_lab.engine.models import (enable_gradient_checkpointing, load_policy, load_reward_model, load_tokenizer,
                             make_critic, quiet_transformers, weight_soup, with_lora)
from rlhf_lab.config.paths import cache_dir
from rlhf_lab.config.preflight import PROMPT_FIELDS, SFT_FIELDS
from rlhf_lab.engine.roles import AdapterFreePolicy, Critic, Policy, RewardModel, RewardModels, check_forward, hf_model
from rlhf_lab.engine.rollout import HFGenerate, generation_config, kv_cache
from rlhf_lab.engine.runtime import Runtime
from rlhf_lab.reviews.prompts import load_prompts
from rlhf_lab.toy.language import ToyLanguage
from rlhf_lab.trainer import PPOTrainer

T = TypeVar("T")


@dataclass(frozen=True)
class Stages:
    """What the task's stages give a run (toy and reviews build them into the artefact cache; jsonl and hf take
    them from the config)."""

    policy: str | Path  # the initial policy's checkpoint
    tokenizer: str | Path  # its tokenizer's
    reward_model: str | Path  # the reward model's (critic_init=reward_model starts the critic from it)
    reward_models: list  # [reward_ensemble] every scoring member, in order
    references: list  # the reference's checkpoints (two for a soup)
    language: ToyLanguage | None = None  # the toy task's language
    gold: Any = None  # the task's gold reward (toy, reviews), else None
    hard_prompts: tuple = ()  # [reference=mpo] the prompts DPO did not train on
    demonstrations: tuple = ()  # the reviews task's ptx data: (chat prompt, response)
    rm_report: dict | None = None  # the stage-built reward model's rm_report.json (held-out agreement with gold...)


def _rm_report(rm_dir: Path) -> dict | None:
    path = Path(rm_dir) / "rm_report.json"
    return json.loads(path.read_text()) if path.is_file() else None


def prepare_stages(cfg: Config, runtime: Runtime) -> Stages:
    """The task's stages: built (or found in the artefact cache) on the main rank first, or named by the config."""
    if cfg.task.name == TaskKind.toy:
        from rlhf_lab.toy import stages
        from rlhf_lab.toy.gold import GoldReward

        artefacts = on_main_first(runtime, lambda: stages.prepare(cfg, cache_dir(cfg.cache_dir)))
        return Stages(policy=artefacts.policy_dir, tokenizer=artefacts.sft_dir, reward_model=artefacts.rm_dir,
                      reward_models=list(artefacts.rm_dirs), references=[artefacts.reference_dir],
                      language=artefacts.language, gold=GoldReward(artefacts.language),
                      hard_prompts=artefacts.hard_prompts, rm_report=_rm_report(artefacts.rm_dir))
    if cfg.task.name == TaskKind.reviews:
        from rlhf_lab.reviews import stages as reviews
        from rlhf_lab.reviews.gold import ReviewGold

        artefacts = on_main_first(runtime, lambda: reviews.prepare(cfg, cache_dir(cfg.cache_dir)))
        return Stages(policy=artefacts.sft_dir, tokenizer=artefacts.sft_dir, reward_model=artefacts.rm_dir,
                      reward_models=[artefacts.rm_dir], references=[artefacts.sft_dir], gold=ReviewGold(),
                      demonstrations=artefacts.demonstrations, rm_report=_rm_report(artefacts.rm_dir))
    # [reference=mpo] the policy starts from the DPO checkpoint it is held to
    policy = cfg.reference.path if cfg.reference.name == Reference.mpo else cfg.model.policy
    ensemble = cfg.reward_ensemble.members > 1  # [reward_ensemble] on: its list of checkpoints
    return Stages(policy=policy, tokenizer=cfg.model.policy, reward_model=cfg.model.reward_model,
                  reward_models=list(cfg.reward_ensemble.reward_models) if ensemble else [cfg.model.reward_model],
                  references={Reference.sft: [policy], Reference.soup: [policy, cfg.reference.soup_with],
                              Reference.mpo: [policy]}[cfg.reference.name])


def build_trainer(cfg: Config, runtime: Runtime | None = None, stages: Stages | None = None) -> PPOTrainer:
    """Runtime (unless given), stages (unless given: prepare_stages), then the models, tokenizer and data streams
    the PPO loop needs."""
    runtime = runtime or Runtime.from_config(cfg)
    check_batch_split(cfg, runtime.world_size)
    quiet_transformers()
    stages = stages or prepare_stages(cfg, runtime)
    policy_path, rm_path, rm_paths = stages.policy, stages.reward_model, stages.reward_models
    reference_paths, tokenizer_path, language = stages.references, stages.tokenizer, stages.language
    tokenizer = load_tokenizer(tokenizer_path)
    prompts = prompt_stream(cfg, language, stages.hard_prompts, tokenizer)
    lora = cfg.lora.name == OnOff.on
    torch.manual_seed(cfg.seed)  # the critic's fresh head (critic_init=sft|random) depends on the run's seed
    # trainable models in fp32 (master weights; autocast computes in the compute dtype), frozen ones in it
    return assemble(
        cfg, runtime,
        policy=load_policy(policy_path, torch.float32),
        reference=None if lora else load_reference(reference_paths, cfg.reference.soup_weight, runtime.compute_dtype),
        # the initial policy, for the KL travelled (kl/init_*), where the reference is not where the policy starts
        initial=None if cfg.reference.starts_policy else load_policy(policy_path, runtime.compute_dtype),
        critic=(make_critic(cfg.critic_init.name, policy_path, rm_path, tokenizer.pad_token_id, torch.float32)
                if cfg.adv_estimator.uses_critic else None),  # [adv_estimator] critic-free: 3 models
        reward_model=[load_reward_model(path, runtime.compute_dtype) for path in rm_paths],  # [reward_ensemble]
        tokenizer=tokenizer,
        prompts=prompts,
        sft_examples=sft_stream(cfg, language, stages.demonstrations) if cfg.ptx_loss.name == OnOff.on else None,
        gold_reward=stages.gold,
    )


def on_main_first(runtime: Runtime, build: Callable[[], T]) -> T:
    """`build()` on the main rank first, then on the others (which find its artefacts in the cache: each is built
    once under a file lock; transformers saves from global rank 0 only)."""
    if not runtime.is_main:
        runtime.barrier()
    result = build()
    if runtime.is_main:
        runtime.barrier()
    return result


def assemble(cfg: Config, runtime: Runtime, *, policy: PreTrainedModel, reference: PreTrainedModel | None,
             critic: PreTrainedModel | None, reward_model: PreTrainedModel | list[PreTrainedModel], tokenizer,
             prompts: Stream, sft_examples: Stream | None = None, gold_reward=None,
             initial: PreTrainedModel | None = None) -> PPOTrainer:
    """Loaded models -> a trainer. `reference` is None under lora=on: it is the policy without its adapters.
    `initial` is a frozen copy of the initial policy where the reference is not the policy's start
    (reference=soup): KL to it is the distance travelled (kl/init_*); None: the reference is the start.
    A critic-free estimator (adv_estimator != gae) uses no critic: `critic` is then dropped (or None).
    `reward_model` is one model or, for [reward_ensemble], the list of members (their number checked)."""
    lora = cfg.lora.name == OnOff.on
    if lora and reference is not None:
        raise ValueError("lora=on: the reference is the policy with its adapters disabled; pass reference=None")
    if not cfg.adv_estimator.uses_critic:  # [adv_estimator]
        critic = None
    elif critic is None:
        raise ValueError(f"adv_estimator={cfg.adv_estimator.name.value} trains a critic: pass one")
    reward_models = list(reward_model) if isinstance(reward_model, (list, tuple)) else [reward_model]
    if len(reward_models) != cfg.reward_ensemble.members:
        raise ValueError(f"reward_ensemble={cfg.reward_ensemble.name.value} scores with "
                         f"{cfg.reward_ensemble.members} reward models: got {len(reward_models)}")
    for frozen in (reference, initial, *reward_models):
        if frozen is not None:
            frozen.requires_grad_(False)
    if lora:  # [lora]
        policy = with_lora(policy, cfg.lora, "CAUSAL_LM")
        if cfg.lora.critic and critic is not None:
            critic = with_lora(critic, cfg.lora, "SEQ_CLS")
    policy_role, critic_role = Policy(policy), Critic(critic) if critic is not None else None
    reference_role = AdapterFreePolicy(policy_role) if lora else Policy(reference)
    reward_role = RewardModels([RewardModel(model) for model in reward_models])
    initial_role = Policy(initial) if initial is not None else None
    trainable_roles = [role for role in (policy_role, critic_role) if role is not None]
    frozen_roles = [role for role in (reference_role, reward_role, initial_role) if role is not None]
    for role in (*trainable_roles, *frozen_roles):
        role.eval()  # always: dropout would make the PPO ratio != 1 and the KL != 0 on unchanged weights
    for model in (policy, reference, critic, initial, *reward_models):
        if model is not None:
            check_forward(model)
    if cfg.model.gradient_checkpointing:  # after eval(): see enable_gradient_checkpointing
        for role in trainable_roles:
            enable_gradient_checkpointing(hf_model(role.model))
    for trainable in trainable_roles:
        runtime.shard(trainable.to(runtime.device))  # [fsdp] in place, before the optimisers see the parameters
    for frozen in frozen_roles:
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
                      reward_model=reward_role, initial=initial_role, policy_optimizer=policy_optimizer,
                      critic_optimizer=critic_optimizer, engine=engine, tokenizer=tokenizer, prompts=prompts,
                      sft_examples=sft_examples, gold_reward=gold_reward)


def prompt_stream(cfg: Config, language: ToyLanguage | None, hard_prompts: tuple[str, ...] = (),
                  tokenizer=None) -> Stream[str]:
    """PPO's prompts, drawn with replacement: the toy language's (or, with [reference=mpo], MPO's hard prompts),
    the reviews task's train prompts, or the prompts file's; in the tokenizer's chat template when
    task.chat_template is on."""
    if cfg.task.name == TaskKind.toy and not hard_prompts:
        return Stream(language.sample_prompt, cfg.seed)
    if hard_prompts:
        prompts = list(hard_prompts)
    elif cfg.task.name == TaskKind.reviews:
        prompts = load_prompts("train")
    else:
        prompts = read_jsonl_field("task.prompts_file", cfg.task.prompts_file, *PROMPT_FIELDS)
    if cfg.task.uses_chat_template:
        prompts = chat_prompts(tokenizer, prompts)
    return Stream(lambda rng: rng.choice(prompts), cfg.seed)


def sft_stream(cfg: Config, language: ToyLanguage | None,
               demonstrations: tuple[tuple[str, str], ...] = ()) -> Stream[tuple[str, str]]:
    """(prompt, response) demonstrations for the ptx loss: the toy language's, the reviews task's (the chosen
    responses of its reward model's pairs, prompts in the chat template), or the SFT file's."""
    if cfg.task.name == TaskKind.toy:
        def draw(rng: random.Random) -> tuple[str, str]:
            prompt = language.sample_prompt(rng)
            return prompt, language.sample_response(rng, prompt)
        return Stream(draw, cfg.seed + 1)
    pairs = list(demonstrations) or read_jsonl_field("task.sft_file", cfg.task.sft_file, *SFT_FIELDS)
    return Stream(lambda rng: rng.choice(pairs), cfg.seed + 1)


def adamw(module: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the module's trainable parameters (with LoRA: the adapters). Fused: one kernel over all
    parameters instead of ~10 small ops per tensor (the same update)."""
    return torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr,
                             weight_decay=weight_decay, fused=True)


def load_reference(paths: list, soup_weight: float, dtype: torch.dtype) -> PreTrainedModel:
    """[reference] The frozen KL reference: the checkpoint at `paths[0]`, or with two paths their weight soup,
    soup_weight * first + (1 - soup_weight) * second (reference=soup on model=hf; the toy task builds its soup as
    a stage)."""
    reference = load_policy(paths[0], dtype)
    if len(paths) == 2:
        other = load_policy(paths[1], dtype)
        reference.load_state_dict(weight_soup([reference.state_dict(), other.state_dict()],
                                              [soup_weight, 1 - soup_weight]))
    return reference
