"""The toy task's stages before PPO: tokenizer, SFT policy, proxy reward model(s), and the reference the
`reference` group asks for. Each is an ordinary Hugging Face checkpoint folder (model + tokenizer), cached by
a hash of the config that produced it and of this code.

sft:  a tiny decoder trained on demonstrations sampled from the toy language (loss on response tokens only).
rm:   the SFT backbone with a scalar head, trained with a Bradley-Terry loss on pairs of SFT-policy samples
      whose preference labels come from the gold reward through a noisy labeller, then calibrated so that the
      SFT policy's responses score mean 0 and std 1 (the same reward scale on every machine and testbed
      instance). It never sees text far from the SFT policy, which is what makes it exploitable
      (docs/toy-testbed.md). [reward_ensemble]: member k > 0 is the same recipe on its own draw of pairs and its
      own seed (member 0 is the usual RM).
soup: [reference=soup] the weight average of the SFT model and a second SFT model: the same initial weights,
      its own draw of demonstrations and order (SALSA's two SFT runs from one base; see `_train_sft`).
dpo:  [reference=mpo] MPO's first stage: the SFT model after DPO on the "easy" pairs, a fresh draw of labelled pairs
      of which the share `task.dpo.easy_fraction` with the largest proxy-RM score gap; the prompts of the other
      (hard) pairs are PPO's prompts in the second stage (hard_prompts.json; see `_train_dpo`).
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (AutoModelForSequenceClassification, PreTrainedTokenizerFast, Starcoder2Config,
                          Starcoder2ForCausalLM)

from rlhf_lab.engine.artifacts import cached_build, code_fingerprint
from rlhf_lab.algo import ppo
from rlhf_lab.config.schema import Config, Reference
from rlhf_lab.engine.data import encode, sft_batch
from rlhf_lab.engine.models import load_policy, load_reward_model, weight_soup
from rlhf_lab.engine.packing import pad_left
from rlhf_lab.engine.preference import (Pair, agreement, learned_nothing, one_cycle, preference_pairs, reward_scores,
                                        sample_responses, train_bradley_terry, train_step)
from rlhf_lab.engine.progress import Progress
from rlhf_lab.engine.roles import Policy, lm_loss, sequence_logprobs
from rlhf_lab.toy.gold import GoldReward
from rlhf_lab.toy.language import ToyLanguage

log = logging.getLogger(__name__)

SPECIALS = ("<pad>", "<eos>", "<unk>")
MAX_RESPONSE_WORDS = 30  # SFT demonstrations are kept shorter than the default PPO length cap (32)
MEMBER_SEED_STRIDE = 7919  # member k of a stage draws its data from seed + k * stride (k = 0: the usual stage)
HELD_OUT_SEED = 99  # offset of the seed of held-out demonstrations and prompts in the stages' reports
HARD_PROMPTS = "hard_prompts.json"  # [reference=mpo] in the dpo stage's folder: MPO's hard prompts, PPO's prompts


@dataclass(frozen=True)
class ToyArtifacts:
    sft_dir: Path  # the SFT policy (the initial policy but with reference=mpo)
    rm_dir: Path  # the proxy reward model (member 0 of an ensemble)
    language: ToyLanguage
    rm_dirs: tuple[Path, ...] = ()  # [reward_ensemble] every member, rm_dir first
    reference_dir: Path | None = None  # [reference] the KL reference's checkpoint
    hard_prompts: tuple[str, ...] = ()  # [reference=mpo] the prompts PPO trains on (else: the language's prompts)
    policy_dir: Path | None = None  # the checkpoint the policy starts from: sft_dir, or [reference=mpo] the DPO model


def build_tokenizer(language: ToyLanguage) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the language's vocabulary, left padding, EOS distinct from PAD."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + tuple(language.vocabulary))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>", padding_side="left")


def toy_model_config(cfg: Config, tokenizer) -> Starcoder2Config:
    """The toy decoder: Llama-like (rotary positions, pre-norm blocks, tied embeddings, no dropout), with the
    Starcoder2 family's LayerNorm, whose bias lets the reward model carry its calibration (`calibrate`)."""
    mc = cfg.model
    return Starcoder2Config(
        vocab_size=len(tokenizer), hidden_size=mc.hidden_size, intermediate_size=mc.intermediate_size,
        num_hidden_layers=mc.layers, num_attention_heads=mc.heads, num_key_value_heads=mc.heads,
        max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None, tie_word_embeddings=True, hidden_act="gelu", residual_dropout=0.0,
        embedding_dropout=0.0, attention_dropout=0.0)


def _progress(cfg: Config, stage: str, member: int, what: str, total: int, unit: str) -> Progress:
    """The progress of one step of a stage build (unless run.progress is off), named with the member and the
    testbed instance: a parallel sweep may build several at once."""
    name = f"{stage} member {member}" if member else stage
    return Progress(f"{name}: {what} (testbed {cfg.task.language_seed})", total, unit=unit, enabled=cfg.run.progress)


def sft_examples(language: ToyLanguage, n: int, rng: random.Random) -> list[tuple[str, str]]:
    examples = []
    while len(examples) < n:
        prompt = language.sample_prompt(rng)
        response = language.sample_response(rng, prompt)
        if len(response.split()) <= MAX_RESPONSE_WORDS:
            examples.append((prompt, response))
    return examples


def _train_sft(out: Path, cfg: Config, language: ToyLanguage, member: int = 0) -> None:
    """Member 0 is the SFT policy. Member 1 (reference=soup's second model) starts from the same initial weights
    (the torch seed is the language's) and draws its own demonstrations and order: two fine-tuning runs from one
    base, as SALSA's soup needs (independently initialised networks do not average into a working one)."""
    sft = cfg.task.sft
    rng = random.Random(cfg.task.language_seed + MEMBER_SEED_STRIDE * member)
    torch.manual_seed(cfg.task.language_seed)
    tokenizer = build_tokenizer(language)
    model = Starcoder2ForCausalLM(toy_model_config(cfg, tokenizer))
    examples = sft_examples(language, sft.examples, rng)
    steps = sft.epochs * (len(examples) // sft.batch_size)
    optimizer, scheduler = one_cycle(model, sft.lr, steps)
    model.train()
    with _progress(cfg, "sft", member, "training", steps, "steps") as bar:
        for epoch in range(sft.epochs):
            rng.shuffle(examples)
            for start in range(0, len(examples) - sft.batch_size + 1, sft.batch_size):
                ids, mask, loss_mask = sft_batch(tokenizer, examples[start:start + sft.batch_size])
                loss = lm_loss(Policy(model), ids, mask, loss_mask)
                train_step(optimizer, scheduler, loss)
                bar.update(loss=loss.item())
            log.info("sft epoch %d: loss %.3f", epoch, loss.item())
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "sft_report.json").write_text(json.dumps({"final_loss": loss.item(), "examples": len(examples)}))


def _preference_pairs(policy, tokenizer, language: ToyLanguage, gold: GoldReward, n: int, noise: float,
                      max_new_tokens: int, rng: random.Random, progress: Progress) -> list[Pair]:
    """`n` pairs of SFT-policy responses to one fresh prompt each, labelled by the noisy judge on the gold
    reward (rlhf_lab.engine.preference)."""
    prompts = [language.sample_prompt(rng) for _ in range(n)]
    return preference_pairs(policy, tokenizer, prompts, gold, noise, max_new_tokens, rng, progress)


def calibrate(model, mean: float, std: float) -> None:
    """Fold `score -> (score - mean) / std` into the model's own weights, so the saved checkpoint outputs
    calibrated scores to anyone who loads it.

    The score is linear in the final LayerNorm's output, w . (gamma * n + beta): dividing w by std scales it,
    and moving beta by -mean * w / |w|^2 shifts it by exactly -mean / std. Needs a final norm with a bias (the
    toy model's LayerNorm has one).
    """
    norm, head = model.base_model.norm, model.score
    if getattr(norm, "bias", None) is None:
        raise ValueError(f"{type(model).__name__}: the final norm has no bias to carry the reward calibration")
    with torch.no_grad():
        w = head.weight[0].clone()
        norm.bias -= mean * w / w.dot(w)
        head.weight /= std


def _train_rm(out: Path, cfg: Config, language: ToyLanguage, sft_dir: Path, member: int = 0) -> None:
    """Member 0 is the proxy RM; member k of an ensemble draws its own pairs and head from seed + k * stride."""
    rmc = cfg.task.rm
    seed = cfg.task.language_seed + 1 + MEMBER_SEED_STRIDE * member
    rng = random.Random(seed)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(language)
    policy = load_policy(sft_dir, torch.float32).eval()
    gold = GoldReward(language)
    pad = tokenizer.pad_token_id
    with _progress(cfg, "rm", member, "sampling pairs", 2 * (rmc.pairs + rmc.eval_pairs), "responses") as bar:
        train_pairs = _preference_pairs(policy, tokenizer, language, gold, rmc.pairs, rmc.label_noise,
                                        cfg.ppo.max_new_tokens, rng, bar)
        eval_pairs = _preference_pairs(policy, tokenizer, language, gold, rmc.eval_pairs, rmc.label_noise,
                                       cfg.ppo.max_new_tokens, rng, bar)

    model = AutoModelForSequenceClassification.from_pretrained(str(sft_dir), num_labels=1)
    model.config.pad_token_id = pad
    final_loss = train_bradley_terry(model, train_pairs, pad, rmc.epochs, rmc.lr, rmc.batch_size, rng,
                                     lambda steps: _progress(cfg, "rm", member, "training", steps, "steps"))
    log.info("rm: final loss %.3f", final_loss)

    # calibration: the SFT policy's responses to fresh prompts score mean 0, std 1
    calib_prompts = [language.sample_prompt(rng) for _ in range(rmc.calibration_samples)]
    with _progress(cfg, "rm", member, "calibration samples", len(calib_prompts), "responses") as bar:
        calib_texts, calib_finished, calib_tokens = sample_responses(policy, tokenizer, calib_prompts,
                                                                     cfg.ppo.max_new_tokens, bar)
    calib_gold = torch.tensor(gold(calib_prompts, calib_texts, calib_finished))
    calib_ids = [p + t for p, t in zip(encode(tokenizer, calib_prompts), calib_tokens)]
    raw = reward_scores(model, calib_ids, pad)
    calibrate(model, raw.mean().item(), raw.std().item())
    calibrated = reward_scores(model, calib_ids, pad)

    probe_prompt = language.sample_prompt(random.Random(0))
    topic = probe_prompt.split()[1]
    probes = {"clean": f"the {topic} is great .", "stuffed": f"the {topic} is " + "great " * 8 + "."}
    probe_scores = reward_scores(model, [encode(tokenizer, [probe_prompt + " " + text])[0]
                                         + [tokenizer.eos_token_id] for text in probes.values()], pad)
    report = {
        "train_pairs": len(train_pairs),
        "eval_pairs": len(eval_pairs),
        "final_loss": final_loss,
        **agreement(model, eval_pairs, pad),
        "raw_sft_score_mean": raw.mean().item(),
        "raw_sft_score_std": raw.std().item(),
        "calibrated_sft_score_mean": calibrated.mean().item(),
        "calibrated_sft_score_std": calibrated.std().item(),
        "sft_gold_mean": calib_gold.mean().item(),
        "sft_finished_frac": sum(calib_finished) / len(calib_finished),
        "score_gold_correlation": torch.corrcoef(torch.stack([calibrated, calib_gold]))[0, 1].item(),
        "probes": {name: {"text": text, "score": score}
                   for (name, text), score in zip(probes.items(), probe_scores.tolist())},
    }
    log.info("reward model: %s", report)
    if why := learned_nothing(report):
        log.warning("the proxy reward model of testbed %d%s learned nothing: %s. PPO against it optimises noise: "
                    "check task.rm.lr (a stall at ln 2 came from too high a rate) and task.rm.pairs "
                    "(docs/toy-testbed.md)", cfg.task.language_seed, f" (member {member})" if member else "", why)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "rm_report.json").write_text(json.dumps(report, indent=2))


def _held_out_demonstrations(cfg: Config, language: ToyLanguage, n: int = 512) -> list[tuple[str, str]]:
    return sft_examples(language, n, random.Random(cfg.task.language_seed + HELD_OUT_SEED))


@torch.no_grad()
def _demonstration_loss(model, tokenizer, examples: list[tuple[str, str]]) -> float:
    """Mean next-token NLL of the responses of `examples` under `model`."""
    return lm_loss(Policy(model), *sft_batch(tokenizer, examples)).item()


def _build_soup(out: Path, cfg: Config, language: ToyLanguage, sft_dir: Path, second_dir: Path) -> None:
    """[reference=soup] soup_weight * SFT + (1 - soup_weight) * the second SFT model, with the held-out
    demonstration loss of all three in soup_report.json (a soup of unrelated weights would show a loss far above
    both)."""
    weight = cfg.reference.soup_weight
    first, second = load_policy(sft_dir, torch.float32).eval(), load_policy(second_dir, torch.float32).eval()
    soup = load_policy(sft_dir, torch.float32).eval()
    soup.load_state_dict(weight_soup([first.state_dict(), second.state_dict()], [weight, 1 - weight]))
    tokenizer = build_tokenizer(language)
    held_out = _held_out_demonstrations(cfg, language)
    report = {"weight": weight, **{f"{name}_demonstration_loss": _demonstration_loss(model, tokenizer, held_out)
                                   for name, model in (("sft", first), ("second_sft", second), ("soup", soup))}}
    log.info("reference soup: %s", report)
    soup.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "soup_report.json").write_text(json.dumps(report, indent=2))


def _pair_batch(pairs, pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chosen then rejected sequences of `pairs`, left-padded, with the loss mask on their response tokens.
    -> ids, attention mask, loss mask, each (2 * len(pairs), T)."""
    sequences = [c for c, *_ in pairs] + [r for _, r, *_ in pairs]
    prompt_lengths = [p for *_, p in pairs] * 2
    ids, mask = pad_left(sequences, pad)
    loss_mask, _ = pad_left([[0] * p + [1] * (len(seq) - p) for seq, p in zip(sequences, prompt_lengths)], 0)
    return ids, mask, loss_mask


@torch.no_grad()
def _pair_logprobs(model, pairs, pad: int, batch_size: int = 256) -> torch.Tensor:
    """Sequence log-probs of the chosen and rejected responses. -> (len(pairs), 2)."""
    out = [sequence_logprobs(Policy(model), *_pair_batch(pairs[i:i + batch_size], pad)).reshape(2, -1).T
           for i in range(0, len(pairs), batch_size)]
    return torch.cat(out)


def _train_dpo(out: Path, cfg: Config, language: ToyLanguage, sft_dir: Path, rm_dir: Path) -> None:
    """[reference=mpo] MPO's first stage (Gou & Nguyen 2024, "Mixed Preference Optimization", §3): DPO from the
    SFT model on the easy pairs, and the hard prompts for its second stage.

    The pairs are a fresh draw made like the reward model's (two SFT-policy responses to a prompt, labelled by the
    noisy judge on the gold reward). The proxy RM scores both responses; the `easy_fraction` of pairs with the
    largest |score gap| are the easy ones, and DPO (its own reference: the SFT model) trains on them with the
    judge's labels; the prompts of the other pairs (small gaps: the hard ones) go to hard_prompts.json. The report
    has the split, DPO's held-out preference accuracy, and the gold reward and KL to the SFT model of the DPO
    model's own samples."""
    dpo, rmc = cfg.task.dpo, cfg.task.rm
    seed = cfg.task.language_seed + 3
    rng = random.Random(seed)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(language)
    pad = tokenizer.pad_token_id
    sft = load_policy(sft_dir, torch.float32).eval()
    sft.requires_grad_(False)
    gold = GoldReward(language)
    with _progress(cfg, "dpo", 0, "sampling pairs", 2 * (dpo.pairs + rmc.eval_pairs), "responses") as bar:
        pairs = _preference_pairs(sft, tokenizer, language, gold, dpo.pairs, rmc.label_noise, cfg.ppo.max_new_tokens,
                                  rng, bar)
        held_out = _preference_pairs(sft, tokenizer, language, gold, rmc.eval_pairs, rmc.label_noise,
                                     cfg.ppo.max_new_tokens, rng, bar)
    rm = load_reward_model(rm_dir, torch.float32).eval()
    chosen, rejected = reward_scores(rm, [c for c, *_ in pairs] + [r for _, r, *_ in pairs], pad).chunk(2)
    gaps = (chosen - rejected).abs()
    easy_rows, hard_rows = ppo.mpo_split(gaps, dpo.easy_fraction)
    easy = [pairs[i] for i in easy_rows.tolist()]
    hard_prompts = [tokenizer.decode(pairs[i][0][:pairs[i][3]]) for i in hard_rows.tolist()]
    easy_ref = _pair_logprobs(sft, easy, pad)  # (E, 2): the SFT model's, fixed

    model = load_policy(sft_dir, torch.float32).eval()  # no dropout (the toy model has none)
    steps = dpo.epochs * (len(easy) // dpo.batch_size)
    optimizer, scheduler = one_cycle(model, dpo.lr, steps)
    index = list(range(len(easy)))
    with _progress(cfg, "dpo", 0, "training", steps, "steps") as bar:
        for epoch in range(dpo.epochs):
            rng.shuffle(index)
            for start in range(0, len(index) - dpo.batch_size + 1, dpo.batch_size):
                rows = index[start:start + dpo.batch_size]
                logp = sequence_logprobs(Policy(model), *_pair_batch([easy[i] for i in rows], pad)).reshape(2, -1)
                ref = easy_ref[rows]
                loss, accuracy = ppo.dpo_loss(logp[0], logp[1], ref[:, 0], ref[:, 1], dpo.beta)
                train_step(optimizer, scheduler, loss)
                bar.update(loss=loss.item())
            log.info("dpo epoch %d: loss %.3f, accuracy %.3f", epoch, loss.item(), accuracy.item())

    model.eval()
    held = _pair_logprobs(model, held_out, pad) - _pair_logprobs(sft, held_out, pad)  # (H, 2) implicit rewards
    margins = torch.tensor([m for _, _, m, _ in held_out])
    decided = margins.abs() > 1e-6
    prefers_chosen = held[:, 0] > held[:, 1]
    prompts = [language.sample_prompt(random.Random(cfg.task.language_seed + HELD_OUT_SEED + i)) for i in range(512)]
    report = {"pairs": len(pairs), "easy_pairs": len(easy), "hard_prompts": len(hard_prompts),
              "easy_gap_threshold": gaps[easy_rows[-1]].item(),
              "median_gap": gaps.median().item(), "final_loss": loss.item(), "final_batch_accuracy": accuracy.item(),
              "held_out_label_accuracy": prefers_chosen.float().mean().item(),
              "held_out_gold_accuracy": (prefers_chosen == (margins > 0))[decided].float().mean().item()}
    with _progress(cfg, "dpo", 0, "report samples", 2 * len(prompts), "responses") as bar:
        for name, policy in (("sft", sft), ("dpo", model)):
            texts, finished, tokens = sample_responses(policy, tokenizer, prompts, cfg.ppo.max_new_tokens, bar)
            report[f"{name}_gold_mean"] = sum(gold(prompts, texts, finished)) / len(prompts)
            if name == "dpo":  # KL(dpo || sft) per response, on the DPO model's own samples
                samples = [(p + t, p + t, 0.0, len(p)) for p, t in zip(encode(tokenizer, prompts), tokens)]
                kl = _pair_logprobs(model, samples, pad)[:, 0] - _pair_logprobs(sft, samples, pad)[:, 0]
                report["dpo_kl_to_sft"] = kl.mean().item()
    log.info("reference dpo: %s", report)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "dpo_report.json").write_text(json.dumps(report, indent=2))
    (out / HARD_PROMPTS).write_text(json.dumps(hard_prompts))


def prepare(cfg: Config, cache_root: Path) -> ToyArtifacts:
    """Build (or find in the cache) the SFT policy, the proxy reward model (every member of a
    [reward_ensemble]) and the [reference] of the toy task."""
    language = ToyLanguage.build(cfg.task.language_seed)
    code = code_fingerprint(__name__)  # any change to the builders (or what they import) rebuilds
    sft_spec = {"stage": "sft", "code": code, "language_seed": cfg.task.language_seed,
                "sft": asdict(cfg.task.sft), "model": {k: v for k, v in asdict(cfg.model).items()
                                                        if k in ("hidden_size", "layers", "heads", "intermediate_size")}}
    sft_dir = cached_build(cache_root, "toy-sft", sft_spec, lambda out: _train_sft(out, cfg, language))
    rm_spec = {"stage": "rm", "code": code, "sft": sft_spec, "rm": asdict(cfg.task.rm),
               "max_new_tokens": cfg.ppo.max_new_tokens}
    rm_dirs = tuple(cached_build(cache_root, "toy-rm", {**rm_spec, "member": k} if k else rm_spec,
                                 lambda out, k=k: _train_rm(out, cfg, language, sft_dir, k))
                    for k in range(cfg.reward_ensemble.members))
    reference_dir = sft_dir
    if cfg.reference.name == Reference.soup:
        second_spec = {**sft_spec, "member": 1}
        second_dir = cached_build(cache_root, "toy-sft", second_spec, lambda out: _train_sft(out, cfg, language, 1))
        soup_spec = {"stage": "soup", "code": code, "models": [sft_spec, second_spec],
                     "weight": cfg.reference.soup_weight}
        reference_dir = cached_build(cache_root, "toy-soup", soup_spec,
                                     lambda out: _build_soup(out, cfg, language, sft_dir, second_dir))
    hard_prompts = ()
    if cfg.reference.name == Reference.mpo:
        dpo_spec = {"stage": "dpo", "code": code, "sft": sft_spec, "rm": rm_spec, "dpo": asdict(cfg.task.dpo)}
        reference_dir = cached_build(cache_root, "toy-dpo", dpo_spec,
                                     lambda out: _train_dpo(out, cfg, language, sft_dir, rm_dirs[0]))
        hard_prompts = tuple(json.loads((reference_dir / HARD_PROMPTS).read_text()))
    return ToyArtifacts(sft_dir=sft_dir, rm_dir=rm_dirs[0], language=language, rm_dirs=rm_dirs,
                        reference_dir=reference_dir, hard_prompts=hard_prompts,
                        policy_dir=reference_dir if cfg.reference.starts_policy else sft_dir)
