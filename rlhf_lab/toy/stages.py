"""The toy task's stages before PPO: tokenizer, SFT policy, proxy reward model. Each is an ordinary Hugging Face
checkpoint folder (model + tokenizer), cached by a hash of the config that produced it.

sft: a tiny Llama trained on demonstrations sampled from the toy language (loss on response tokens only).
rm:  the SFT backbone with a scalar head, trained with a Bradley-Terry loss on pairs of SFT-policy samples
     whose preference labels come from the gold reward through a noisy labeller. It never sees text far from
     the SFT policy, which is what makes it exploitable (README, "Toy testbed").
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rlhf_lab.artifacts import cached_build
from rlhf_lab.config import Config
from rlhf_lab.data import encode, sft_batch
from rlhf_lab.models import (generate, generation_config, lm_loss, load_policy, pad_left,
                             response_mask, sequence_scores)
from rlhf_lab.toy.gold import GoldReward
from rlhf_lab.toy.language import ToyLanguage

log = logging.getLogger(__name__)

STAGE_VERSION = 1  # bump when the builders change, so cached artefacts are rebuilt
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


def sft_examples(language: ToyLanguage, n: int, rng: random.Random) -> list[tuple[str, str]]:
    examples = []
    while len(examples) < n:
        prompt = language.sample_prompt(rng)
        response = language.sample_response(rng, prompt)
        if len(response.split()) <= MAX_RESPONSE_WORDS:
            examples.append((prompt, response))
    return examples


def _train_sft(out: Path, cfg: Config, language: ToyLanguage) -> None:
    sft, mc = cfg.task.sft, cfg.model
    rng = random.Random(cfg.task.language_seed)
    torch.manual_seed(cfg.task.language_seed)
    tokenizer = build_tokenizer(language)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=mc.hidden_size, intermediate_size=mc.intermediate_size,
        num_hidden_layers=mc.layers, num_attention_heads=mc.heads, num_key_value_heads=mc.heads,
        max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None, tie_word_embeddings=True))
    examples = sft_examples(language, sft.examples, rng)
    optimizer = torch.optim.AdamW(model.parameters(), lr=sft.lr)
    steps = sft.epochs * (len(examples) // sft.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=sft.lr, total_steps=steps, pct_start=0.1)
    model.train()
    for epoch in range(sft.epochs):
        rng.shuffle(examples)
        for start in range(0, len(examples) - sft.batch_size + 1, sft.batch_size):
            ids, mask, loss_mask = sft_batch(tokenizer, examples[start:start + sft.batch_size])
            loss = lm_loss(model, ids, mask, loss_mask)
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
    gen = generation_config(max_new_tokens, 1.0, tokenizer.eos_token_id, tokenizer.pad_token_id)
    texts, finished, token_ids = [], [], []
    for start in range(0, len(prompts), batch_size):
        ids, mask = pad_left(encode(tokenizer, prompts[start:start + batch_size]), tokenizer.pad_token_id)
        response = generate(model, ids, mask, gen)
        keep = response_mask(response, tokenizer.eos_token_id).bool()
        for row, row_keep in zip(response, keep):
            tokens = row[row_keep].tolist()
            done = bool(tokens) and tokens[-1] == tokenizer.eos_token_id
            token_ids.append(tokens)
            finished.append(done)
            texts.append(tokenizer.decode(tokens[:-1] if done else tokens))
    return texts, finished, token_ids


def _train_rm(out: Path, cfg: Config, language: ToyLanguage, sft_dir: Path) -> None:
    rmc = cfg.task.rm
    rng = random.Random(cfg.task.language_seed + 1)
    torch.manual_seed(cfg.task.language_seed + 1)
    tokenizer = build_tokenizer(language)
    policy = load_policy(sft_dir, torch.float32).eval()
    gold = GoldReward(language)

    prompts = [language.sample_prompt(rng) for _ in range(rmc.pairs)]
    both = prompts + prompts
    texts, finished, token_ids = sample_responses(policy, tokenizer, both, cfg.ppo.max_new_tokens)
    golds = gold(both, texts, finished)
    prompt_ids = encode(tokenizer, prompts)
    pairs = []  # (chosen ids, rejected ids, gold margin)
    for i in range(rmc.pairs):
        j = i + rmc.pairs
        p_first = torch.sigmoid(torch.tensor((golds[i] - golds[j]) / rmc.label_noise)).item()
        a, b = (i, j) if rng.random() < p_first else (j, i)
        pairs.append((prompt_ids[i] + token_ids[a], prompt_ids[i] + token_ids[b], golds[a] - golds[b]))
    n_eval = len(pairs) // 10
    eval_pairs, train_pairs = pairs[:n_eval], pairs[n_eval:]

    model = AutoModelForSequenceClassification.from_pretrained(str(sft_dir), num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=rmc.lr)
    model.train()
    for epoch in range(rmc.epochs):
        rng.shuffle(train_pairs)
        for start in range(0, len(train_pairs) - rmc.batch_size + 1, rmc.batch_size):
            batch = train_pairs[start:start + rmc.batch_size]
            ids, mask = pad_left([c for c, _, _ in batch] + [r for _, r, _ in batch], tokenizer.pad_token_id)
            scores = sequence_scores(model, ids, mask)
            chosen, rejected = scores.chunk(2)
            loss = -F.logsigmoid(chosen - rejected).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        log.info("rm epoch %d: loss %.3f", epoch, loss.item())
    model.eval()
    with torch.no_grad():
        ids, mask = pad_left([c for c, _, _ in eval_pairs] + [r for _, r, _ in eval_pairs], tokenizer.pad_token_id)
        chosen, rejected = sequence_scores(model, ids, mask).chunk(2)
    margins = torch.tensor([m for _, _, m in eval_pairs])
    decided = margins.abs() > 1e-6
    report = {
        "eval_pairs": n_eval,
        "label_accuracy": (chosen > rejected).float().mean().item(),
        "gold_accuracy": ((chosen > rejected) == (margins > 0))[decided].float().mean().item(),
        "sft_gold_mean": sum(golds) / len(golds),
        "sft_finished_frac": sum(finished) / len(finished),
    }
    log.info("reward model: %s", report)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "rm_report.json").write_text(json.dumps(report, indent=2))


def prepare(cfg: Config, cache_root: Path) -> ToyArtifacts:
    """Build (or find in the cache) the SFT policy and the proxy reward model of the toy task."""
    language = ToyLanguage.build(cfg.task.language_seed)
    sft_spec = {"stage": "sft", "version": STAGE_VERSION, "language_seed": cfg.task.language_seed,
                "sft": asdict(cfg.task.sft), "model": {k: v for k, v in asdict(cfg.model).items()
                                                        if k in ("hidden_size", "layers", "heads", "intermediate_size")}}
    sft_dir = cached_build(cache_root, "toy-sft", sft_spec, lambda out: _train_sft(out, cfg, language))
    rm_spec = {"stage": "rm", "version": STAGE_VERSION, "sft": sft_spec, "rm": asdict(cfg.task.rm),
               "max_new_tokens": cfg.ppo.max_new_tokens}
    rm_dir = cached_build(cache_root, "toy-rm", rm_spec, lambda out: _train_rm(out, cfg, language, sft_dir))
    return ToyArtifacts(sft_dir=sft_dir, rm_dir=rm_dir, language=language)
