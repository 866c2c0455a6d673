"""The toy task's stages before PPO: tokenizer, SFT policy, proxy reward model. Each is an ordinary Hugging Face
checkpoint folder (model + tokenizer), cached by a hash of the config that produced it and of this code.

sft: a tiny decoder trained on demonstrations sampled from the toy language (loss on response tokens only).
rm:  the SFT backbone with a scalar head, trained with a Bradley-Terry loss on pairs of SFT-policy samples
     whose preference labels come from the gold reward through a noisy labeller, then calibrated so that the
     SFT policy's responses score mean 0 and std 1 (the same reward scale on every machine and testbed
     instance). It never sees text far from the SFT policy, which is what makes it exploitable (README,
     "The toy testbed").
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (AutoModelForSequenceClassification, PreTrainedTokenizerFast, Starcoder2Config,
                          Starcoder2ForCausalLM)

from rlhf_lab.artifacts import cached_build, code_fingerprint
from rlhf_lab.config import Config
from rlhf_lab.data import encode, sft_batch
from rlhf_lab.models import load_policy
from rlhf_lab.packing import pack, pad_left, response_mask
from rlhf_lab.roles import Policy, RewardModel, lm_loss
from rlhf_lab.rollout import HFGenerate, generation_config
from rlhf_lab.toy.gold import GoldReward
from rlhf_lab.toy.language import ToyLanguage

log = logging.getLogger(__name__)

SPECIALS = ("<pad>", "<eos>", "<unk>")
MAX_RESPONSE_WORDS = 30  # SFT demonstrations are kept shorter than the default PPO length cap (32)


@dataclass(frozen=True)
class ToyArtifacts:
    sft_dir: Path
    rm_dir: Path
    language: ToyLanguage


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


def sft_examples(language: ToyLanguage, n: int, rng: random.Random) -> list[tuple[str, str]]:
    examples = []
    while len(examples) < n:
        prompt = language.sample_prompt(rng)
        response = language.sample_response(rng, prompt)
        if len(response.split()) <= MAX_RESPONSE_WORDS:
            examples.append((prompt, response))
    return examples


def _train_sft(out: Path, cfg: Config, language: ToyLanguage) -> None:
    sft = cfg.task.sft
    rng = random.Random(cfg.task.language_seed)
    torch.manual_seed(cfg.task.language_seed)
    tokenizer = build_tokenizer(language)
    model = Starcoder2ForCausalLM(toy_model_config(cfg, tokenizer))
    examples = sft_examples(language, sft.examples, rng)
    optimizer = torch.optim.AdamW(model.parameters(), lr=sft.lr)
    steps = sft.epochs * (len(examples) // sft.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=sft.lr, total_steps=steps, pct_start=0.1)
    model.train()
    for epoch in range(sft.epochs):
        rng.shuffle(examples)
        for start in range(0, len(examples) - sft.batch_size + 1, sft.batch_size):
            ids, mask, loss_mask = sft_batch(tokenizer, examples[start:start + sft.batch_size])
            loss = lm_loss(Policy(model), ids, mask, loss_mask)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        log.info("sft epoch %d: loss %.3f", epoch, loss.item())
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "sft_report.json").write_text(json.dumps({"final_loss": loss.item(), "examples": len(examples)}))


@torch.no_grad()
def sample_responses(model, tokenizer, prompts: list[str], max_new_tokens: int,
                     batch_size: int = 256) -> tuple[list[str], list[bool], list[list[int]]]:
    """Sample one response per prompt. -> texts, finished (EOS seen), token ids (with the EOS if any)."""
    engine = HFGenerate(model, generation_config(max_new_tokens, 1.0, tokenizer.eos_token_id, tokenizer.pad_token_id))
    texts, finished, token_ids = [], [], []
    for start in range(0, len(prompts), batch_size):
        ids, mask = pad_left(encode(tokenizer, prompts[start:start + batch_size]), tokenizer.pad_token_id)
        response = engine.sample(ids, mask).tokens
        keep = response_mask(response, tokenizer.eos_token_id).bool()
        for row, row_keep in zip(response, keep):
            tokens = row[row_keep].tolist()
            done = bool(tokens) and tokens[-1] == tokenizer.eos_token_id
            token_ids.append(tokens)
            finished.append(done)
            texts.append(tokenizer.decode(tokens[:-1] if done else tokens))
    return texts, finished, token_ids


def _preference_pairs(policy, tokenizer, language: ToyLanguage, gold: GoldReward, n: int, noise: float,
                      max_new_tokens: int, rng: random.Random) -> list[tuple[list[int], list[int], float]]:
    """`n` pairs of SFT-policy responses to one prompt each, ordered by a noisy Bradley-Terry judge on the gold
    reward, P(a > b) = sigmoid((gold_a - gold_b) / noise). -> (chosen ids, rejected ids, gold margin)."""
    prompts = [language.sample_prompt(rng) for _ in range(n)]
    both = prompts + prompts
    texts, finished, token_ids = sample_responses(policy, tokenizer, both, max_new_tokens)
    golds = gold(both, texts, finished)
    prompt_ids = encode(tokenizer, prompts)
    pairs = []
    for i in range(n):
        j = i + n
        p_first = 1 / (1 + math.exp(-(golds[i] - golds[j]) / noise))
        a, b = (i, j) if rng.random() < p_first else (j, i)
        pairs.append((prompt_ids[i] + token_ids[a], prompt_ids[i] + token_ids[b], golds[a] - golds[b]))
    return pairs


@torch.no_grad()
def _scores(model, sequences: list[list[int]], pad_id: int, batch_size: int = 512) -> torch.Tensor:
    """Reward-model scores of token sequences, in batches. -> (len(sequences),)."""
    reward_model = RewardModel(model)
    return torch.cat([reward_model(pack(*pad_left(sequences[i:i + batch_size], pad_id)))
                      for i in range(0, len(sequences), batch_size)])


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


def _train_rm(out: Path, cfg: Config, language: ToyLanguage, sft_dir: Path) -> None:
    rmc = cfg.task.rm
    rng = random.Random(cfg.task.language_seed + 1)
    torch.manual_seed(cfg.task.language_seed + 1)
    tokenizer = build_tokenizer(language)
    policy = load_policy(sft_dir, torch.float32).eval()
    gold = GoldReward(language)
    pad = tokenizer.pad_token_id
    train_pairs = _preference_pairs(policy, tokenizer, language, gold, rmc.pairs, rmc.label_noise,
                                    cfg.ppo.max_new_tokens, rng)
    eval_pairs = _preference_pairs(policy, tokenizer, language, gold, rmc.eval_pairs, rmc.label_noise,
                                   cfg.ppo.max_new_tokens, rng)

    model = AutoModelForSequenceClassification.from_pretrained(str(sft_dir), num_labels=1)
    model.config.pad_token_id = pad
    optimizer = torch.optim.AdamW(model.parameters(), lr=rmc.lr)
    steps = rmc.epochs * (len(train_pairs) // rmc.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=rmc.lr, total_steps=steps, pct_start=0.1)
    model.eval()  # no dropout: the toy model has none, and a real RM's would only add noise to the scores
    for epoch in range(rmc.epochs):
        rng.shuffle(train_pairs)
        for start in range(0, len(train_pairs) - rmc.batch_size + 1, rmc.batch_size):
            batch = train_pairs[start:start + rmc.batch_size]
            ids, mask = pad_left([c for c, _, _ in batch] + [r for _, r, _ in batch], pad)
            chosen, rejected = RewardModel(model)(pack(ids, mask)).chunk(2)
            loss = -F.logsigmoid(chosen - rejected).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        log.info("rm epoch %d: loss %.3f", epoch, loss.item())

    # calibration: the SFT policy's responses to fresh prompts score mean 0, std 1
    calib_prompts = [language.sample_prompt(rng) for _ in range(rmc.calibration_samples)]
    calib_texts, calib_finished, calib_tokens = sample_responses(policy, tokenizer, calib_prompts,
                                                                 cfg.ppo.max_new_tokens)
    calib_gold = torch.tensor(gold(calib_prompts, calib_texts, calib_finished))
    calib_ids = [p + t for p, t in zip(encode(tokenizer, calib_prompts), calib_tokens)]
    raw = _scores(model, calib_ids, pad)
    calibrate(model, raw.mean().item(), raw.std().item())
    calibrated = _scores(model, calib_ids, pad)

    chosen, rejected = _scores(model, [c for c, _, _ in eval_pairs] + [r for _, r, _ in eval_pairs], pad).chunk(2)
    margins = torch.tensor([m for _, _, m in eval_pairs])
    decided = margins.abs() > 1e-6
    probe_prompt = language.sample_prompt(random.Random(0))
    topic = probe_prompt.split()[1]
    probes = {"clean": f"the {topic} is great .", "stuffed": f"the {topic} is " + "great " * 8 + "."}
    probe_scores = _scores(model, [encode(tokenizer, [probe_prompt + " " + text])[0] + [tokenizer.eos_token_id]
                                   for text in probes.values()], pad)
    report = {
        "train_pairs": len(train_pairs),
        "eval_pairs": len(eval_pairs),
        "label_accuracy": (chosen > rejected).float().mean().item(),
        "gold_accuracy": ((chosen > rejected) == (margins > 0))[decided].float().mean().item(),
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
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "rm_report.json").write_text(json.dumps(report, indent=2))


def prepare(cfg: Config, cache_root: Path) -> ToyArtifacts:
    """Build (or find in the cache) the SFT policy and the proxy reward model of the toy task."""
    language = ToyLanguage.build(cfg.task.language_seed)
    code = code_fingerprint(__name__)  # any change to the builders (or what they import) rebuilds
    sft_spec = {"stage": "sft", "code": code, "language_seed": cfg.task.language_seed,
                "sft": asdict(cfg.task.sft), "model": {k: v for k, v in asdict(cfg.model).items()
                                                        if k in ("hidden_size", "layers", "heads", "intermediate_size")}}
    sft_dir = cached_build(cache_root, "toy-sft", sft_spec, lambda out: _train_sft(out, cfg, language))
    rm_spec = {"stage": "rm", "code": code, "sft": sft_spec, "rm": asdict(cfg.task.rm),
               "max_new_tokens": cfg.ppo.max_new_tokens}
    rm_dir = cached_build(cache_root, "toy-rm", rm_spec, lambda out: _train_rm(out, cfg, language, sft_dir))
    return ToyArtifacts(sft_dir=sft_dir, rm_dir=rm_dir, language=language)
