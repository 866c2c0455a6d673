"""The rules that span config nodes, in one place, run when Hydra has composed the config (`to_config`).

A node's own ranges are checked in its `__post_init__` (rlhf_lab/config/schema.py); everything that relates two nodes
is here: contradictions raise `ConfigError` naming the key, suspicious combinations come back as warnings. Two
rules need the machine and run again when it is known: `check_device` (what `device=auto` became) and
`check_batch_split` (the ranks a launcher started). Nothing here imports torch.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rlhf_lab.config.schema import (
    TRICK_GROUPS, AdvNorm, Config, ConfigError, CriticInit, CriticPretrain, Device, Distributed, KLEstimator,
    KLPenalty, ModelKind, OnOff, Overlong, PolicyClip, Precision, Reference, RewardEnsemble, RewardNorm,
    RewardScaling, TaskKind,
)

SUSPICIOUS = {
    "scaling_and_norm": "reward_scaling=running_std with reward_norm!=off: the scores are rescaled twice",
    "clip_without_norm": "reward_clip=on with reward_norm=off: the clip bound applies to raw reward-model scores",
    "adaptive_without_target": "kl_penalty=adaptive with coef=0: the controller multiplies 0 and stays there",
    "value_clip_raw_rewards": "value_clip=on with unnormalised rewards: eps is tiny against raw return scale",
    "pretrain_random_critic": "critic_pretrain!=off with critic_init=random is fine but slow to converge",
}


def validate(cfg: Config) -> list[str]:
    """Every cross-node rule. Raises ConfigError on a contradiction; returns warnings for suspicious choices."""
    check_compute(cfg)
    check_batch_split(cfg, cfg.distributed.ranks)
    check_kl(cfg)
    check_groups(cfg)
    check_remedies(cfg)
    check_task(cfg)
    return suspicious(cfg)


def check_compute(cfg: Config) -> None:
    """Device, precision and sharding choices that exclude each other."""
    if cfg.device == Device.cpu:
        check_device(cfg.precision, "cpu")
    if cfg.distributed.name == Distributed.fsdp and cfg.precision == Precision.fp16:
        raise ConfigError("precision='fp16' is not allowed with distributed=fsdp (FSDP2 would need a sharded "
                          "gradient scaler); expected bf16 or fp32")
    if cfg.distributed.shard_frozen and cfg.model.offload_frozen:
        raise ConfigError("model.offload_frozen=true is not allowed with distributed.shard_frozen=true: sharded "
                          "models stay on their GPUs; expected false")


def check_device(precision: Precision, device_type: str) -> None:
    """fp16 autocast needs cuda. Run at compose time for device=cpu, and by the runtime once auto is resolved."""
    if precision == Precision.fp16 and device_type != "cuda":
        raise ConfigError("precision='fp16' is not allowed on the CPU (no fp16 autocast there); expected fp32 "
                          "or bf16, or device=cuda")


def check_batch_split(cfg: Config, ranks: int) -> None:
    """Each minibatch of the responses PPO trains on (after [policy_filter]) and each ptx batch split evenly over
    `ranks`: the ranks this run will start (compose time) or the world a launcher started (build time)."""
    if ranks > 1 and cfg.distributed.name == Distributed.none:
        raise ConfigError(f"distributed=none is not allowed with {ranks} ranks (a launcher started them); "
                          f"expected distributed=ddp or fsdp")
    rows, minibatches = cfg.train_rows, cfg.ppo.minibatches
    if rows % (minibatches * ranks):
        key = "ppo.batch_size" if rows == cfg.ppo.batch_size else "ppo.minibatches"
        kept = "" if rows == cfg.ppo.batch_size else f" ({rows} kept by policy_filter={cfg.policy_filter.name.value})"
        value = cfg.ppo.batch_size if key == "ppo.batch_size" else minibatches
        raise ConfigError(f"{key}={value} is not allowed: expected "
                          f"the {rows} trained responses{kept} to split into {minibatches} minibatches on "
                          f"{ranks} rank(s), a multiple of ppo.minibatches x ranks ({minibatches} x {ranks})")
    if cfg.ptx_loss.name == OnOff.on and cfg.ptx_loss.batch_size % ranks:
        raise ConfigError(f"ptx_loss.batch_size={cfg.ptx_loss.batch_size} is not allowed on {ranks} ranks: "
                          f"expected a multiple of {ranks}")


def check_kl(cfg: Config) -> None:
    """The KL penalty's coefficients and estimator against where the penalty goes."""
    kl = cfg.kl_penalty
    if kl.name == KLPenalty.token and kl.coef <= 0:
        raise ConfigError("kl_penalty=token needs kl_penalty.coef > 0 (use kl_penalty=off for no penalty)")
    if kl.in_loss and kl.loss_coef <= 0:
        raise ConfigError(f"kl_penalty={kl.name.value} with its term in the loss needs kl_penalty.loss_coef > 0 "
                          f"(use kl_penalty=off for no penalty)")
    if kl.in_loss and kl.per_token == KLEstimator.k1:
        raise ConfigError(
            "kl_penalty.estimator=k1 is not allowed with a KL term in the loss: on samples of the policy, "
            "E[grad k1] = E[grad log pi] = 0, so the term pulls nothing towards the reference; expected k2 or k3 "
            "(k1 is fine in the reward: kl_penalty=token|adaptive)")
    pc = cfg.policy_clip
    if pc.name == PolicyClip.dual and pc.dual_c <= 1 + pc.eps:
        raise ConfigError(f"policy_clip.dual_c={pc.dual_c} must be > 1 + policy_clip.eps = {1 + pc.eps}")


def check_groups(cfg: Config) -> None:
    """Every trick whose node `needs_groups` gets groups of responses, and a filter does not break the groups
    an estimator compares."""
    group = cfg.ppo.samples_per_prompt
    for name in TRICK_GROUPS:
        node = getattr(cfg, name)
        if node.needs_groups and group < 2:
            raise ConfigError(f"{name}={node.name.value} compares the responses to one prompt: it needs "
                              f"ppo.samples_per_prompt >= 2 (got {group})")
    pf, est = cfg.policy_filter, cfg.adv_estimator
    if pf.needs_groups and est.needs_groups:
        raise ConfigError(f"policy_filter={pf.name.value} is not allowed with adv_estimator={est.name.value}: the "
                          f"filter breaks up the groups it compares; expected adv_estimator=gae|reinforce_pp|remax")


def check_remedies(cfg: Config) -> None:
    """The remedies' inputs (reward_ensemble, reference) against the model kind and LoRA."""
    hf = cfg.model.name == ModelKind.hf
    ens, ref = cfg.reward_ensemble, cfg.reference
    if ens.name != RewardEnsemble.off and hf and len(ens.reward_models) < 2:
        raise ConfigError(f"reward_ensemble={ens.name.value} with model=hf needs reward_ensemble.reward_models: "
                          f"a list of at least 2 reward-model checkpoints (got {list(ens.reward_models)})")
    if ens.name == RewardEnsemble.off and ens.reward_models:
        raise ConfigError("reward_ensemble.reward_models is set with reward_ensemble=off: choose an aggregation "
                          "(mean, min, mean_minus_std, mean_min) or drop the list")
    if ref.name != Reference.sft and cfg.lora.name == OnOff.on:
        raise ConfigError(f"reference={ref.name.value} is not allowed with lora=on: the LoRA reference is the policy "
                          f"with its adapters off, the SFT model; expected reference=sft")
    if hf and ref.name == Reference.soup and not ref.soup_with:
        raise ConfigError("reference=soup with model=hf needs reference.soup_with: the second SFT checkpoint")
    if hf and ref.name == Reference.mpo and not ref.path:
        raise ConfigError("reference=mpo with model=hf needs reference.path: a DPO-trained checkpoint "
                          "(the toy task builds its own)")


def check_task(cfg: Config) -> None:
    """The task against the model and the tricks that read its data."""
    if cfg.model.name == ModelKind.toy and cfg.task.name != TaskKind.toy:
        raise ConfigError(f"model=toy is built from the toy task; with task={cfg.task.name.value} choose "
                          f"{'model=smollm2' if cfg.task.name == TaskKind.reviews else 'model=hf'}")
    if (cfg.model.name == ModelKind.smollm2) != (cfg.task.name == TaskKind.reviews):
        raise ConfigError("task=reviews and model=smollm2 go together (the reviews task builds its reward model "
                          f"on SmolLM2): got task={cfg.task.name.value} model={cfg.model.name.value}")
    if cfg.task.name == TaskKind.reviews:
        for group, node, allowed in (("reward_ensemble", cfg.reward_ensemble, RewardEnsemble.off),
                                     ("reference", cfg.reference, Reference.sft)):
            if node.name != allowed:
                raise ConfigError(f"{group}={node.name.value} is not built for task=reviews (its stages build one "
                                  f"reward model and no second reference); expected {group}={allowed.value}")
    if cfg.task.chat_template and cfg.task.name == TaskKind.toy:
        raise ConfigError("task.chat_template=true is not allowed with task=toy (the toy tokenizer has no chat "
                          "template); expected false or null")
    if cfg.ptx_loss.name == OnOff.on and cfg.task.name == TaskKind.jsonl and not cfg.task.sft_file:
        raise ConfigError("ptx_loss=on with task=jsonl needs task.sft_file (SFT data for the LM loss)")
    if cfg.overlong.name == Overlong.soft_penalty and cfg.overlong.cache >= cfg.ppo.max_new_tokens:
        raise ConfigError(f"overlong.cache={cfg.overlong.cache} is not allowed: expected fewer than "
                          f"ppo.max_new_tokens={cfg.ppo.max_new_tokens} tokens")


def suspicious(cfg: Config) -> list[str]:
    """Combinations that run but probably do not do what was meant: one warning each."""
    kl, group = cfg.kl_penalty, cfg.ppo.samples_per_prompt
    found = []
    if cfg.reward_scaling.name != RewardScaling.off and cfg.reward_norm.name != RewardNorm.off:
        found.append(SUSPICIOUS["scaling_and_norm"])
    if cfg.reward_clip.name == OnOff.on and cfg.reward_norm.name == RewardNorm.off:
        found.append(SUSPICIOUS["clip_without_norm"])
    if kl.name == KLPenalty.adaptive and kl.coef <= 0:
        found.append(SUSPICIOUS["adaptive_without_target"])
    if (cfg.value_clip.name == OnOff.on and cfg.reward_norm.name == RewardNorm.off
            and cfg.reward_scaling.name == RewardScaling.off):
        found.append(SUSPICIOUS["value_clip_raw_rewards"])
    if cfg.critic_pretrain.name != CriticPretrain.off and cfg.critic_init.name == CriticInit.random:
        found.append(SUSPICIOUS["pretrain_random_critic"])
    pf = cfg.policy_filter
    if pf.kept_per_group is not None and group <= pf.kept_per_group:
        found.append(f"policy_filter={pf.name.value} with ppo.samples_per_prompt={group} keeps every response")
    if cfg.reference.name != Reference.sft and not (kl.in_reward or kl.in_loss):
        found.append(f"reference={cfg.reference.name.value} with kl_penalty=off: the reference only enters the KL "
                     f"penalty, so it has no effect")
    if cfg.adv_estimator.needs_groups and cfg.adv_norm.name != AdvNorm.off:
        found.append(f"adv_norm={cfg.adv_norm.name.value} after adv_estimator={cfg.adv_estimator.name.value}: "
                     f"re-normalising over the batch's tokens undoes the per-group baseline's zero mean (and its "
                     f"scale); the estimator's papers use adv_norm=off")
    if not cfg.adv_estimator.uses_critic:
        unused = [f"{key}={value}" for key, value, used in (
            ("value_clip", cfg.value_clip.name.value, cfg.value_clip.name == OnOff.on),
            ("critic_init", cfg.critic_init.name.value, cfg.critic_init.name != CriticInit.sft)) if used]
        if unused:
            found.append(f"adv_estimator={cfg.adv_estimator.name.value} trains no critic: "
                         f"{', '.join(unused)} has no effect")
    return found


RESUME_MAY_CHANGE = ("resume", "iterations", "run", "logger")


def resumed_config(current: DictConfig, overrides: list[str]) -> DictConfig:
    """The saved config of the run directory `current.resume`. `iterations`, `run.*` and `logger.*` may be
    overridden on the command line (`overrides`); any other override that differs from the saved value is a
    ConfigError naming the keys."""
    saved_file = Path(current.resume) / ".hydra" / "config.yaml"
    if not saved_file.is_file():
        raise ConfigError(f"resume={current.resume!r} is not allowed: expected a run directory with "
                          f".hydra/{saved_file.name}")
    saved = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(saved_file))
    keys = [o.lstrip("+~").split("=", 1)[0] for o in overrides]
    conflicts = [key for key in keys if not key.startswith(RESUME_MAY_CHANGE)
                 and OmegaConf.select(current, key) != OmegaConf.select(saved, key)]
    if conflicts:
        raise ConfigError(f"resume: {', '.join(conflicts)} differ from the run being resumed; drop those overrides "
                          f"(only iterations, run.* and logger.* may change)")
    saved.resume = current.resume
    for key in keys:
        if key.startswith(RESUME_MAY_CHANGE) and key != "resume":
            OmegaConf.update(saved, key, OmegaConf.select(current, key), merge=False)
    return saved


def to_config(cfg: DictConfig, overrides: list[str] = ()) -> Config:
    """Turn Hydra's composed DictConfig into a validated `Config` (range checks and combination checks).

    With `resume` set, the saved config of that run directory is used (see `resumed_config`); `overrides` are
    the command line's."""
    if cfg.resume:
        cfg = resumed_config(cfg, list(overrides))
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, Config)
    for message in validate(obj):
        warnings.warn(message, stacklevel=2)
    return obj
