"""Structured config schema: every node of `conf/` is backed by a dataclass here.

Hydra merges the YAML tree into these dataclasses, so an unknown key or a wrong type fails at composition
time, naming the key. Range checks live in `__post_init__` (run by `OmegaConf.to_object`) and the checks that
span several nodes in `validate`; both run before any model is loaded.
"""

from __future__ import annotations

import enum
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value is out of range or contradicts another one. The message names the key."""


def _check(ok: bool, key: str, allowed: str, value) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: expected {allowed}")


# ---------------------------------------------------------------- trick option names (one Enum per group)
class RewardScaling(str, enum.Enum):
    off = "off"
    running_std = "running_std"


class RewardNorm(str, enum.Enum):
    off = "off"
    running = "running"
    batch = "batch"


class OnOff(str, enum.Enum):
    off = "off"
    on = "on"


class AdvNorm(str, enum.Enum):
    off = "off"
    whiten = "whiten"
    center = "center"


class GroupScale(str, enum.Enum):
    group = "group"
    batch = "batch"
    none = "none"


class AdvEstimator(str, enum.Enum):
    gae = "gae"
    grpo = "grpo"
    rloo = "rloo"
    reinforce_pp = "reinforce_pp"
    remax = "remax"


class LossAgg(str, enum.Enum):
    token_mean = "token_mean"
    seq_mean_token_sum = "seq_mean_token_sum"
    seq_mean_token_mean = "seq_mean_token_mean"
    seq_mean_token_sum_norm = "seq_mean_token_sum_norm"


class Overlong(str, enum.Enum):
    off = "off"
    filter = "filter"
    soft_penalty = "soft_penalty"


class RewardEnsemble(str, enum.Enum):
    off = "off"
    mean = "mean"
    min = "min"
    mean_minus_std = "mean_minus_std"
    mean_min = "mean_min"


class PolicyFilter(str, enum.Enum):
    off = "off"
    best_of_n = "best_of_n"
    best_random = "best_random"
    best_worst = "best_worst"


class Reference(str, enum.Enum):
    sft = "sft"
    soup = "soup"
    mpo = "mpo"


class KLPenalty(str, enum.Enum):
    off = "off"
    token = "token"
    adaptive = "adaptive"
    loss = "loss"


class KLEstimator(str, enum.Enum):
    k1 = "k1"
    k2 = "k2"
    k3 = "k3"


class PolicyClip(str, enum.Enum):
    off = "off"
    ppo = "ppo"
    dual = "dual"


class CriticInit(str, enum.Enum):
    sft = "sft"
    reward_model = "reward_model"
    random = "random"


class CriticPretrain(str, enum.Enum):
    off = "off"
    steps = "steps"
    converge = "converge"


# `global` is a Python keyword, hence the functional form.
GradClip = enum.Enum("GradClip", {"off": "off", "global": "global"}, type=str)


class TaskKind(str, enum.Enum):
    toy = "toy"
    jsonl = "jsonl"


class ModelKind(str, enum.Enum):
    toy = "toy"
    hf = "hf"


class LoggerKind(str, enum.Enum):
    local = "local"
    wandb = "wandb"


class Device(str, enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(str, enum.Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Distributed(str, enum.Enum):
    none = "none"
    ddp = "ddp"
    fsdp = "fsdp"


class RolloutCache(str, enum.Enum):
    auto = "auto"
    dynamic = "dynamic"
    static = "static"


# ---------------------------------------------------------------- trick nodes
@dataclass
class RewardScalingConfig:
    name: RewardScaling = RewardScaling.off  # off | running_std: divide scores by the running std of returns
    eps: float = 1e-8  # added to the std before dividing

    def __post_init__(self):
        _check(self.eps > 0, "reward_scaling.eps", "> 0", self.eps)


@dataclass
class RewardNormConfig:
    name: RewardNorm = RewardNorm.off  # off | running (historical mean/std) | batch (this batch's mean/std)
    eps: float = 1e-8  # added to the std before dividing

    def __post_init__(self):
        _check(self.eps > 0, "reward_norm.eps", "> 0", self.eps)


@dataclass
class RewardEnsembleConfig:
    name: RewardEnsemble = RewardEnsemble.off  # off (one reward model) | mean | min | mean_minus_std | mean_min (lam * mean + (1 - lam) * min): how the members' scores become one
    size: Optional[int] = None  # members (null: 3 on the toy task, each trained on its own draw of preference pairs; with reward_models their number)
    reward_models: list[str] = field(default_factory=list)  # model=hf: the members' checkpoints (model.reward_model stays the critic's reward_model init)
    lam: float = 0.5  # mean_min: weight of the mean, 1 - lam on the minimum
    std_coef: float = 1.0  # mean_minus_std: k in mean - k * std

    def __post_init__(self):
        _check(0 <= self.lam <= 1, "reward_ensemble.lam", "a number in [0, 1]", self.lam)
        _check(self.std_coef >= 0, "reward_ensemble.std_coef", ">= 0", self.std_coef)
        _check(self.size is None or self.size >= 2, "reward_ensemble.size", ">= 2 or null", self.size)
        _check(self.size is None or not self.reward_models or self.size == len(self.reward_models),
               "reward_ensemble.size", f"null or len(reward_ensemble.reward_models) = {len(self.reward_models)}",
               self.size)

    @property
    def members(self) -> int:
        """The number of reward models scoring each response (1 when off)."""
        if self.name == RewardEnsemble.off:
            return 1
        return self.size or len(self.reward_models) or 3


@dataclass
class RewardClipConfig:
    name: OnOff = OnOff.off  # off | on: clamp the (normalised) score to [-clip, clip]
    clip: float = 5.0  # bound c of the clamp

    def __post_init__(self):
        _check(self.clip > 0, "reward_clip.clip", "> 0", self.clip)


@dataclass
class AdvNormConfig:
    name: AdvNorm = AdvNorm.off  # off | whiten (zero mean, unit variance over the batch's tokens) | center (zero mean); per-group normalisations belong to the estimator (adv_estimator.scale)
    eps: float = 1e-8  # added to the variance before the square root


@dataclass
class AdvEstimatorConfig:
    name: AdvEstimator = AdvEstimator.gae  # gae (critic) | grpo | rloo | reinforce_pp | remax (critic-free)
    scale: GroupScale = GroupScale.group  # grpo: the std the group-centred returns are divided by: group (GRPO) | batch (Lite PPO) | none (Dr. GRPO)
    eps: float = 1e-6  # grpo: added to that std

    @property
    def needs_groups(self) -> bool:
        """The estimator compares the responses to one prompt (ppo.samples_per_prompt >= 2)."""
        return self.name in (AdvEstimator.grpo, AdvEstimator.rloo)

    @property
    def uses_critic(self) -> bool:
        """Only GAE has a critic: the others build, train and checkpoint none."""
        return self.name == AdvEstimator.gae


@dataclass
class LossAggConfig:
    name: LossAgg = LossAgg.token_mean  # how token losses become one number (policy loss, entropy bonus, KL loss)
    length: Optional[int] = None  # seq_mean_token_sum_norm: the constant length divided by (null: ppo.max_new_tokens)

    def __post_init__(self):
        _check(self.length is None or self.length >= 1, "loss_agg.length", ">= 1 or null", self.length)


@dataclass
class OverlongConfig:
    name: Overlong = Overlong.off  # off | filter (truncated responses out of the policy loss) | soft_penalty (DAPO)
    cache: int = 8  # soft_penalty: the last `cache` tokens before the cap, where the penalty ramps from 0 to -coef
    coef: float = 1.0  # soft_penalty: the penalty at the cap, added to the shaped score

    def __post_init__(self):
        _check(self.cache >= 1, "overlong.cache", ">= 1", self.cache)
        _check(self.coef >= 0, "overlong.coef", ">= 0", self.coef)


@dataclass
class PolicyFilterConfig:
    name: PolicyFilter = PolicyFilter.off  # off | best_of_n | best_random | best_worst: PF-PPO's filters, which of each prompt's responses PPO trains on, ranked by reward-model score

    @property
    def kept_per_group(self) -> int | None:
        """Responses kept of each prompt's group (None when off: all)."""
        return {PolicyFilter.off: None, PolicyFilter.best_of_n: 1}.get(self.name, 2)


@dataclass
class ReferenceConfig:
    name: Reference = Reference.sft  # sft (the initial policy) | soup (SALSA: the KL reference is a weight average of the SFT model and a second SFT model; the policy starts from the SFT model) | mpo (MPO's second stage: the policy starts from, and is held to, the SFT model after DPO on the easy preference pairs, and PPO trains on the hard prompts)
    soup_weight: float = 0.5  # soup: the SFT model's weight in the average (1 - soup_weight on the second model)
    soup_with: Optional[str] = None  # soup, model=hf: the second SFT checkpoint (toy: trained as a stage, task.sft with another seed)
    path: Optional[str] = None  # mpo, model=hf: the DPO-trained checkpoint of MPO's first stage, the policy's start and the reference (toy: built as a stage, task.dpo); task.prompts_file then holds the hard prompts

    @property
    def starts_policy(self) -> bool:
        """The policy starts from this reference (sft, mpo), so its KL to it is the distance travelled."""
        return self.name != Reference.soup

    def __post_init__(self):
        _check(0 < self.soup_weight < 1, "reference.soup_weight", "a number in (0, 1)", self.soup_weight)


@dataclass
class AdvClipConfig:
    name: OnOff = OnOff.off  # off | on: clamp advantages to [-clip, clip]
    clip: float = 5.0  # bound of the clamp

    def __post_init__(self):
        _check(self.clip > 0, "adv_clip.clip", "> 0", self.clip)


@dataclass
class KLPenaltyConfig:
    name: KLPenalty = KLPenalty.off  # off | token | adaptive | loss
    estimator: KLEstimator = KLEstimator.k1  # per-token estimator of KL(policy || reference)
    coef: float = 0.0  # coefficient of the in-reward penalty (initial value for adaptive)
    loss_coef: float = 0.0  # coefficient of the KL term in the policy loss (kind loss)
    target: float = 6.0  # adaptive: target KL per sequence (nats)
    horizon: int = 10000  # adaptive: controller horizon in samples (Ziegler et al. 2019)
    allow_reward_and_loss: bool = False  # permit a KL penalty in the reward AND in the loss at once

    def __post_init__(self):
        _check(self.coef >= 0, "kl_penalty.coef", ">= 0", self.coef)
        _check(self.loss_coef >= 0, "kl_penalty.loss_coef", ">= 0", self.loss_coef)
        _check(self.target > 0, "kl_penalty.target", "> 0", self.target)
        _check(self.horizon > 0, "kl_penalty.horizon", "> 0", self.horizon)

    @property
    def in_reward(self) -> bool:
        return self.name in (KLPenalty.token, KLPenalty.adaptive)

    @property
    def in_loss(self) -> bool:
        return self.name == KLPenalty.loss or (self.in_reward and self.loss_coef > 0)


@dataclass
class EntropyBonusConfig:
    name: OnOff = OnOff.off  # off | on: subtract coef * entropy from the policy loss
    coef: float = 0.01  # entropy coefficient

    def __post_init__(self):
        _check(self.coef >= 0, "entropy_bonus.coef", ">= 0", self.coef)


@dataclass
class PolicyClipConfig:
    name: PolicyClip = PolicyClip.ppo  # off (plain surrogate) | ppo (ratio clip eps) | dual (eps and c)
    eps: float = 0.2  # ratio clip range [1 - eps, 1 + eps_high]
    eps_high: Optional[float] = None  # upper clip (DAPO's clip-higher, e.g. 0.28); null: eps
    dual_c: float = 3.0  # dual clip: lower bound c * A on the objective for negative advantages

    def __post_init__(self):
        _check(0 < self.eps < 1, "policy_clip.eps", "a number in (0, 1)", self.eps)
        _check(self.eps_high is None or self.eps_high > 0, "policy_clip.eps_high", "> 0 or null", self.eps_high)

    @property
    def upper(self) -> float:
        """The upper clip eps_high, defaulting to eps."""
        return self.eps if self.eps_high is None else self.eps_high


@dataclass
class ValueClipConfig:
    name: OnOff = OnOff.off  # off | on: clip new values to old values +- eps in the value loss
    eps: float = 0.2  # value clip range

    def __post_init__(self):
        _check(self.eps > 0, "value_clip.eps", "> 0", self.eps)


@dataclass
class CriticInitConfig:
    name: CriticInit = CriticInit.sft  # sft | reward_model | random: where the critic's weights come from


@dataclass
class CriticPretrainConfig:
    name: CriticPretrain = CriticPretrain.off  # off | steps | converge
    steps: int = 20  # number of critic-only iterations (the cap for converge)
    target_explained_var: float = 0.5  # converge: stop once explained variance reaches this

    def __post_init__(self):
        _check(self.steps >= 1, "critic_pretrain.steps", ">= 1", self.steps)
        _check(self.target_explained_var <= 1, "critic_pretrain.target_explained_var", "<= 1",
               self.target_explained_var)


@dataclass
class GradClipConfig:
    name: GradClip = GradClip.off  # off | global: clip each model's global gradient norm to max_norm
    max_norm: float = 1.0  # bound on the global L2 norm

    def __post_init__(self):
        _check(self.max_norm > 0, "grad_clip.max_norm", "> 0", self.max_norm)


@dataclass
class PtxLossConfig:
    name: OnOff = OnOff.off  # off | on: add coef * LM loss on SFT data to the policy loss
    coef: float = 0.5  # weight of the pre-training (SFT) loss
    batch_size: int = 16  # SFT sequences per PPO minibatch

    def __post_init__(self):
        _check(self.coef >= 0, "ptx_loss.coef", ">= 0", self.coef)
        _check(self.batch_size >= 1, "ptx_loss.batch_size", ">= 1", self.batch_size)


TRICK_GROUPS = ("reward_ensemble", "reward_scaling", "reward_norm", "reward_clip", "policy_filter", "adv_estimator",
                "adv_norm", "adv_clip", "reference", "kl_penalty", "entropy_bonus", "policy_clip", "loss_agg",
                "overlong", "value_clip", "critic_init", "critic_pretrain", "grad_clip", "ptx_loss")


# ---------------------------------------------------------------- task / model / ppo / logger / run
@dataclass
class ToySFTConfig:
    examples: int = 8000  # SFT demonstrations drawn from the toy language
    epochs: int = 4  # passes over them
    lr: float = 2e-3  # peak AdamW learning rate (one-cycle schedule)
    batch_size: int = 64  # sequences per step


@dataclass
class ToyRMConfig:
    pairs: int = 4000  # training preference pairs among SFT-policy samples
    eval_pairs: int = 1000  # held-out pairs for the agreement report (rm_report.json)
    calibration_samples: int = 1024  # held-out SFT-policy responses whose scores are calibrated to mean 0, std 1
    label_noise: float = 0.5  # temperature of the Bradley-Terry labeller: P(a > b) = sigmoid((g_a - g_b) / noise)
    epochs: int = 4  # passes over the pairs
    lr: float = 2e-3  # peak AdamW learning rate (one-cycle schedule)
    batch_size: int = 64  # pairs per step


@dataclass
class ToyDPOConfig:
    pairs: int = 4000  # preference pairs among SFT-policy samples (a fresh draw, labelled like the RM's)
    easy_fraction: float = 0.5  # the share of pairs with the largest |proxy RM score gap| that DPO trains on (MPO's easy pairs); the prompts of the others are PPO's (the hard ones)
    beta: float = 0.3  # DPO's beta (the implicit KL coefficient); README "Remedies" says how 0.3 and lr were chosen
    epochs: int = 2  # passes over the easy pairs
    lr: float = 2e-4  # peak AdamW learning rate (one-cycle schedule)
    batch_size: int = 64  # pairs per step

    def __post_init__(self):
        _check(0 < self.easy_fraction < 1, "task.dpo.easy_fraction", "a number in (0, 1): the rest are the hard pairs",
               self.easy_fraction)
        _check(self.beta > 0, "task.dpo.beta", "> 0", self.beta)
        _check(self.pairs * self.easy_fraction >= self.batch_size, "task.dpo.pairs",
               f"at least task.dpo.batch_size / easy_fraction ({self.batch_size} / {self.easy_fraction})",
               self.pairs)


@dataclass
class TaskConfig:
    name: TaskKind = TaskKind.toy  # toy (embedded synthetic testbed) | jsonl (prompts from a file)
    language_seed: int = 0  # toy: seed of the synthetic language, its prompts and SFT data
    prompts_file: Optional[str] = None  # jsonl: one {"prompt": str} per line
    sft_file: Optional[str] = None  # jsonl: optional {"prompt","response"} lines for the ptx loss
    sft: ToySFTConfig = field(default_factory=ToySFTConfig)  # toy: SFT stage
    rm: ToyRMConfig = field(default_factory=ToyRMConfig)  # toy: proxy reward-model stage
    dpo: ToyDPOConfig = field(default_factory=ToyDPOConfig)  # toy: DPO stage of reference=mpo

    def __post_init__(self):
        _check(self.rm.label_noise > 0, "task.rm.label_noise", "> 0", self.rm.label_noise)
        _check(self.rm.eval_pairs >= 1, "task.rm.eval_pairs", ">= 1", self.rm.eval_pairs)
        _check(self.rm.calibration_samples >= 2, "task.rm.calibration_samples", ">= 2",
               self.rm.calibration_samples)
        if self.name == TaskKind.jsonl:
            _check(bool(self.prompts_file), "task.prompts_file", "a path to a JSONL file of prompts",
                   self.prompts_file)


@dataclass
class ModelConfig:
    name: ModelKind = ModelKind.toy  # toy (tiny decoder built locally) | hf (Hugging Face ids or local paths)
    policy: Optional[str] = None  # hf: SFT policy checkpoint (also the reference and the critic's backbone)
    reward_model: Optional[str] = None  # hf: reward model checkpoint (AutoModelForSequenceClassification)
    gradient_checkpointing: bool = False  # recompute the policy's and critic's layers in backward (less memory)
    offload_frozen: bool = False  # cuda: keep the reference and reward model on the CPU between their uses
    hidden_size: int = 128  # toy: width of the tiny decoder
    layers: int = 4  # toy: decoder layers
    heads: int = 4  # toy: attention heads
    intermediate_size: int = 256  # toy: MLP width

    def __post_init__(self):
        if self.name == ModelKind.hf:
            _check(bool(self.policy), "model.policy", "a Hugging Face id or a local checkpoint path", self.policy)
            _check(bool(self.reward_model), "model.reward_model", "a Hugging Face id or a local checkpoint path",
                   self.reward_model)
        _check(self.hidden_size % self.heads == 0, "model.hidden_size", "a multiple of model.heads",
               self.hidden_size)


@dataclass
class PPOConfig:
    batch_size: int = 64  # responses (rollouts) per PPO iteration: batch_size / samples_per_prompt prompts
    samples_per_prompt: int = 1  # responses sampled per prompt (a group, for group-based baselines); the work per iteration stays batch_size
    max_new_tokens: int = 32  # response length cap
    temperature: float = 1.0  # sampling temperature (log-probs are taken at the same temperature)
    epochs: int = 2  # PPO epochs over each rollout batch
    minibatches: int = 2  # minibatches per epoch
    gamma: float = 1.0  # GAE discount
    lam: float = 0.95  # GAE lambda
    policy_lr: float = 2e-4  # AdamW learning rate of the policy (tiny toy model: large)
    critic_lr: float = 1e-4  # AdamW learning rate of the critic
    weight_decay: float = 0.0  # AdamW weight decay (both models)

    def __post_init__(self):
        _check(self.batch_size >= 1, "ppo.batch_size", ">= 1", self.batch_size)
        _check(self.samples_per_prompt >= 1, "ppo.samples_per_prompt", ">= 1", self.samples_per_prompt)
        _check(self.batch_size % self.samples_per_prompt == 0, "ppo.samples_per_prompt",
               f"a divisor of ppo.batch_size ({self.batch_size})", self.samples_per_prompt)
        _check(self.max_new_tokens >= 1, "ppo.max_new_tokens", ">= 1", self.max_new_tokens)
        _check(self.temperature > 0, "ppo.temperature", "> 0", self.temperature)
        _check(self.epochs >= 1, "ppo.epochs", ">= 1", self.epochs)
        _check(1 <= self.minibatches <= self.batch_size, "ppo.minibatches", "between 1 and ppo.batch_size",
               self.minibatches)
        _check(self.batch_size % self.minibatches == 0, "ppo.minibatches", "a divisor of ppo.batch_size",
               self.minibatches)
        _check(0 <= self.gamma <= 1, "ppo.gamma", "a number in [0, 1]", self.gamma)
        _check(0 <= self.lam <= 1, "ppo.lam", "a number in [0, 1]", self.lam)
        _check(self.policy_lr > 0, "ppo.policy_lr", "> 0", self.policy_lr)
        _check(self.critic_lr > 0, "ppo.critic_lr", "> 0", self.critic_lr)


@dataclass
class RolloutConfig:
    cache: RolloutCache = RolloutCache.auto  # KV cache of generate: auto (static on cuda, dynamic on cpu) | dynamic | static
    recompute_logprobs: Optional[bool] = None  # the old log-probs from the training forward pass, not from sampling (null: when precision != fp32, where the KV-cache decode and the full pass round differently)


@dataclass
class LoraConfig:
    name: OnOff = OnOff.off  # off | on: train low-rank adapters (peft); the reference is the policy without them
    rank: int = 8  # rank r of each adapter
    alpha: float = 16.0  # scaling numerator: the update is (alpha / r) * B A
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])  # module names; all-linear: every linear but the head
    critic: bool = False  # adapters on the critic too (its score head then trains in full)

    def __post_init__(self):
        _check(self.rank >= 1, "lora.rank", ">= 1", self.rank)
        _check(self.alpha > 0, "lora.alpha", "> 0", self.alpha)
        _check(bool(self.target_modules), "lora.target_modules", "a non-empty list of module names",
               self.target_modules)


@dataclass
class DistributedConfig:
    name: Distributed = Distributed.none  # none (one process) | ddp (every rank holds the models; gradients averaged) | fsdp (the trainable models sharded over the ranks, FSDP2)
    processes: int = 1  # ranks this run starts on this machine (ranks from torchrun or SLURM tasks are used as they come)
    shard_frozen: bool = False  # fsdp: shard the frozen reference and reward model too (1/W of their weights per rank, a gather per layer per scoring pass) instead of replicating them

    def __post_init__(self):
        _check(self.processes >= 1, "distributed.processes", ">= 1", self.processes)
        _check(self.processes == 1 or self.name != Distributed.none, "distributed.processes",
               "1 with distributed=none (choose distributed=ddp or fsdp for several ranks)", self.processes)
        _check(not self.shard_frozen or self.name == Distributed.fsdp, "distributed.shard_frozen",
               "false unless distributed=fsdp", self.shard_frozen)


@dataclass
class LoggerConfig:
    name: LoggerKind = LoggerKind.local  # local (run directory only) | wandb (run directory + Weights & Biases)
    project: Optional[str] = None  # wandb: project (default: $WANDB_PROJECT or "rlhf-lab")
    entity: Optional[str] = None  # wandb: entity (default: $WANDB_ENTITY)
    mode: Optional[str] = None  # wandb: online | offline | disabled (default: $WANDB_MODE or online)
    group: Optional[str] = None  # wandb: run group (default: the sweep directory in a multirun, else the run id)
    tags: list[str] = field(default_factory=list)  # wandb: extra tags (the tricks that are on are tags anyway)
    init_timeout: Optional[float] = None  # wandb: seconds wandb.init may wait for the server (default 90)

    def __post_init__(self):
        _check(self.mode in (None, "online", "offline", "disabled"), "logger.mode",
               "one of [online, offline, disabled] or null", self.mode)
        _check(self.init_timeout is None or self.init_timeout > 0, "logger.init_timeout", "> 0 or null",
               self.init_timeout)


@dataclass
class RunConfig:
    samples_every: int = 10  # write samples.jsonl every N iterations (and at the last one)
    samples_per_log: int = 8  # responses written each time
    checkpoint_every: int = 50  # save a resumable checkpoint every N iterations (and at the end)
    threads: int = 0  # torch intra-op threads (0: torch's default)
    progress: bool = True  # show progress of the toy stages and of PPO: a bar on a terminal, else a log line every 30 s

    def __post_init__(self):
        _check(self.samples_every >= 1, "run.samples_every", ">= 1", self.samples_every)
        _check(self.checkpoint_every >= 1, "run.checkpoint_every", ">= 1", self.checkpoint_every)
        _check(self.threads >= 0, "run.threads", ">= 0", self.threads)


@dataclass
class Config:
    seed: int = 0  # seed of everything in the PPO stage
    iterations: int = 150  # PPO iterations
    resume: Optional[str] = None  # a run directory to continue
    arm: Optional[str] = None  # human label of the ablation arm (default: derived from the overrides)
    cache_dir: Optional[str] = None  # where sft/rm artefacts are cached (default: $RLHF_LAB_CACHE or ~/.cache/rlhf-lab)
    device: Device = Device.auto  # auto (cuda when present) | cpu | cuda
    precision: Precision = Precision.fp32  # fp32 | bf16 | fp16 (fp16: cuda only); see rlhf_lab/runtime.py
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    run: RunConfig = field(default_factory=RunConfig)
    reward_ensemble: RewardEnsembleConfig = field(default_factory=RewardEnsembleConfig)
    reward_scaling: RewardScalingConfig = field(default_factory=RewardScalingConfig)
    reward_norm: RewardNormConfig = field(default_factory=RewardNormConfig)
    reward_clip: RewardClipConfig = field(default_factory=RewardClipConfig)
    policy_filter: PolicyFilterConfig = field(default_factory=PolicyFilterConfig)
    adv_estimator: AdvEstimatorConfig = field(default_factory=AdvEstimatorConfig)
    adv_norm: AdvNormConfig = field(default_factory=AdvNormConfig)
    adv_clip: AdvClipConfig = field(default_factory=AdvClipConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    kl_penalty: KLPenaltyConfig = field(default_factory=KLPenaltyConfig)
    entropy_bonus: EntropyBonusConfig = field(default_factory=EntropyBonusConfig)
    policy_clip: PolicyClipConfig = field(default_factory=PolicyClipConfig)
    loss_agg: LossAggConfig = field(default_factory=LossAggConfig)
    overlong: OverlongConfig = field(default_factory=OverlongConfig)
    value_clip: ValueClipConfig = field(default_factory=ValueClipConfig)
    critic_init: CriticInitConfig = field(default_factory=CriticInitConfig)
    critic_pretrain: CriticPretrainConfig = field(default_factory=CriticPretrainConfig)
    grad_clip: GradClipConfig = field(default_factory=GradClipConfig)
    ptx_loss: PtxLossConfig = field(default_factory=PtxLossConfig)

    def __post_init__(self):
        _check(self.iterations >= 1, "iterations", ">= 1", self.iterations)
        _check(not (self.device == Device.cpu and self.precision == Precision.fp16), "precision",
               "fp32 or bf16 with device=cpu (fp16 autocast needs cuda)", self.precision.value)
        _check(not (self.distributed.name == Distributed.fsdp and self.precision == Precision.fp16), "precision",
               "fp32 or bf16 with distributed=fsdp", self.precision.value)
        _check(not (self.distributed.shard_frozen and self.model.offload_frozen), "model.offload_frozen",
               "false with distributed.shard_frozen=true (sharded models stay on their GPUs)", True)
        ranks = self.distributed.processes
        _check((self.ppo.batch_size // self.ppo.minibatches) % ranks == 0, "ppo.batch_size",
               f"a multiple of ppo.minibatches x distributed.processes ({self.ppo.minibatches} x {ranks})",
               self.ppo.batch_size)
        kept = self.policy_filter.kept_per_group
        if kept is not None and self.ppo.samples_per_prompt > kept:
            _check(self.train_rows % (self.ppo.minibatches * ranks) == 0, "ppo.minibatches",
                   f"a divisor of the {self.train_rows} responses policy_filter={self.policy_filter.name.value} "
                   f"keeps (with distributed.processes={ranks})", self.ppo.minibatches)

    @property
    def train_rows(self) -> int:
        """Responses each PPO iteration trains on: ppo.batch_size, fewer after [policy_filter]."""
        kept, group = self.policy_filter.kept_per_group, self.ppo.samples_per_prompt
        if kept is None or group <= kept:
            return self.ppo.batch_size
        return self.ppo.batch_size // group * kept

    def tricks(self) -> dict[str, str]:
        """The chosen option of every trick group, e.g. {"kl_penalty": "token", ...}."""
        return {group: getattr(self, group).name.value for group in TRICK_GROUPS}


def register_schema() -> None:
    """Store the schema so `conf/config.yaml` can name it first in its defaults list."""
    ConfigStore.instance().store(name="schema", node=Config)


# ---------------------------------------------------------------- combination checks
SUSPICIOUS = {
    "scaling_and_norm": "reward_scaling=running_std with reward_norm!=off: the scores are rescaled twice",
    "clip_without_norm": "reward_clip=on with reward_norm=off: the clip bound applies to raw reward-model scores",
    "adaptive_without_target": "kl_penalty=adaptive with coef=0: the controller multiplies 0 and stays there",
    "value_clip_raw_rewards": "value_clip=on with unnormalised rewards: eps is tiny against raw return scale",
    "pretrain_random_critic": "critic_pretrain!=off with critic_init=random is fine but slow to converge",
}


def validate(cfg: Config) -> list[str]:
    """Check combinations of tricks. Raises ConfigError on contradictions; returns warnings for suspicious ones."""
    kl = cfg.kl_penalty
    if kl.in_reward and kl.loss_coef > 0 and not kl.allow_reward_and_loss:
        raise ConfigError(
            f"kl_penalty={kl.name.value} puts the KL penalty in the reward and kl_penalty.loss_coef="
            f"{kl.loss_coef} adds it to the loss too; set kl_penalty.allow_reward_and_loss=true to ask for both")
    if kl.name == KLPenalty.token and kl.coef <= 0:
        raise ConfigError("kl_penalty=token needs kl_penalty.coef > 0 (use kl_penalty=off for no penalty)")
    if kl.name == KLPenalty.loss and kl.loss_coef <= 0:
        raise ConfigError("kl_penalty=loss needs kl_penalty.loss_coef > 0 (use kl_penalty=off for no penalty)")
    if kl.in_loss and kl.estimator == KLEstimator.k1:
        raise ConfigError(
            "kl_penalty.estimator=k1 is not allowed with a KL term in the loss: on samples of the policy, "
            "E[grad k1] = E[grad log pi] = 0, so the term pulls nothing towards the reference; expected k2 or k3 "
            "(k1 is fine in the reward: kl_penalty=token|adaptive)")
    pc = cfg.policy_clip
    if pc.name == PolicyClip.dual and pc.dual_c <= 1 + pc.eps:
        raise ConfigError(f"policy_clip.dual_c={pc.dual_c} must be > 1 + policy_clip.eps = {1 + pc.eps}")
    if cfg.model.name == ModelKind.toy and cfg.task.name != TaskKind.toy:
        raise ConfigError("model=toy is built from the toy task; with task=jsonl choose model=hf")
    if cfg.ptx_loss.name == OnOff.on and cfg.task.name == TaskKind.jsonl and not cfg.task.sft_file:
        raise ConfigError("ptx_loss=on with task=jsonl needs task.sft_file (SFT data for the LM loss)")
    group = cfg.ppo.samples_per_prompt
    if cfg.adv_estimator.needs_groups and group < 2:
        raise ConfigError(f"adv_estimator={cfg.adv_estimator.name.value} compares the responses to one prompt: it "
                          f"needs ppo.samples_per_prompt >= 2 (got {group})")
    check_remedies(cfg)
    if cfg.overlong.name == Overlong.soft_penalty and cfg.overlong.cache >= cfg.ppo.max_new_tokens:
        raise ConfigError(f"overlong.cache={cfg.overlong.cache} is not allowed: expected fewer than "
                          f"ppo.max_new_tokens={cfg.ppo.max_new_tokens} tokens")

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


def check_remedies(cfg: Config) -> None:
    """The remedies' contradictions (reward_ensemble, policy_filter, reference): raise ConfigError."""
    group, hf = cfg.ppo.samples_per_prompt, cfg.model.name == ModelKind.hf
    ens, pf, ref = cfg.reward_ensemble, cfg.policy_filter, cfg.reference
    if ens.name != RewardEnsemble.off and hf and len(ens.reward_models) < 2:
        raise ConfigError(f"reward_ensemble={ens.name.value} with model=hf needs reward_ensemble.reward_models: "
                          f"a list of at least 2 reward-model checkpoints (got {list(ens.reward_models)})")
    if ens.name == RewardEnsemble.off and ens.reward_models:
        raise ConfigError("reward_ensemble.reward_models is set with reward_ensemble=off: choose an aggregation "
                          "(mean, min, mean_minus_std, mean_min) or drop the list")
    if pf.name != PolicyFilter.off:
        if group < 2:
            raise ConfigError(f"policy_filter={pf.name.value} ranks the responses to one prompt: it needs "
                              f"ppo.samples_per_prompt >= 2 (got {group})")
        if cfg.adv_estimator.needs_groups:
            raise ConfigError(f"policy_filter={pf.name.value} is not allowed with adv_estimator="
                              f"{cfg.adv_estimator.name.value}: the filter breaks up the groups it compares; expected "
                              f"adv_estimator=gae|reinforce_pp|remax")
    if ref.name != Reference.sft and cfg.lora.name == OnOff.on:
        raise ConfigError(f"reference={ref.name.value} is not allowed with lora=on: the LoRA reference is the policy "
                          f"with its adapters off, the SFT model; expected reference=sft")
    if hf and ref.name == Reference.soup and not ref.soup_with:
        raise ConfigError("reference=soup with model=hf needs reference.soup_with: the second SFT checkpoint")
    if hf and ref.name == Reference.mpo and not ref.path:
        raise ConfigError("reference=mpo with model=hf needs reference.path: a DPO-trained checkpoint "
                          "(the toy task builds its own)")


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
