"""Real checkpoints train on the log-probs they sampled (model=hf): tiny random Gemma-2 (final-logit
soft-capping), Cohere (logit scale), GPT-2 with dropout 0.1, and a Llama whose generation_config.json sets a
repetition penalty. Before any update, the PPO ratio of the first minibatch is 1 and the KL of the rollout to
the reference is 0, to float tolerance."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import (AutoModelForSequenceClassification, CohereConfig, CohereForCausalLM, Gemma2Config,
                          Gemma2ForCausalLM, GenerationConfig, GPT2Config, GPT2LMHeadModel)

from conftest import make_config
from rlhf_lab.algo import ppo
from rlhf_lab.engine.data import encode
from rlhf_lab.engine.packing import pack, pad_left
from rlhf_lab.engine.roles import check_forward
from rlhf_lab.engine.rollout import HFGenerate, generation_config
from rlhf_lab.toy.language import ToyLanguage
from rlhf_lab.toy.stages import build_tokenizer
from rlhf_lab.run.build import build_trainer

TOL = 1e-4


def save_figure(model, tokenizer, folder: Path, with_reward_model: bool) -> tuple[Path, Path | None]:
    model.save_pretrained(folder / "sft")
    tokenizer.save_pretrained(folder / "sft")
    if not with_reward_model:
        return folder / "sft", None
    rm = AutoModelForSequenceClassification.from_pretrained(str(folder / "sft"), num_labels=1)
    torch.nn.init.normal_(rm.score.weight, std=0.5)
    rm.save_pretrained(folder / "rm")
    tokenizer.save_pretrained(folder / "rm")
    return folder / "sft", folder / "rm"


def family(name: str, tokenizer):
    """A tiny random causal LM of one family with a logit post-processing or dropout of its own."""
    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
               bos_token_id=None)
    torch.manual_seed(0)
    if name == "gemma2":  # final_logit_softcapping 30 by default: a cap of 2 makes it bite at random init
        return Gemma2ForCausalLM(Gemma2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                              num_attention_heads=2, num_key_value_heads=2, head_dim=16,
                                              max_position_embeddings=64, final_logit_softcapping=2.0, **ids))
    if name == "cohere":
        return CohereForCausalLM(CohereConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                              num_attention_heads=2, num_key_value_heads=2,
                                              max_position_embeddings=64, logit_scale=4.0, **ids))
    if name == "gpt2_dropout":
        return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, resid_pdrop=0.1,
                                          embd_pdrop=0.1, attn_pdrop=0.1, **ids))
    raise KeyError(name)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(ToyLanguage.build(0))


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    import random
    language, rng = ToyLanguage.build(0), random.Random(0)
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": language.sample_prompt(rng)}) + "\n" for _ in range(32)))
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer, tiny_checkpoints) -> dict[str, tuple[Path, Path, str]]:
    """name -> (policy dir, reward model dir, critic_init)."""
    root = tmp_path_factory.mktemp("families")
    out = {}
    for name in ("gemma2", "cohere", "gpt2_dropout"):
        has_head = name != "cohere"  # transformers has no CohereForSequenceClassification
        sft, rm = save_figure(family(name, tokenizer), tokenizer, root / name, with_reward_model=has_head)
        out[name] = (sft, rm or tiny_checkpoints[1], "sft" if has_head else "reward_model")
    penalised = root / "repetition_penalty" / "sft"
    shutil.copytree(tiny_checkpoints[0], penalised)
    GenerationConfig(repetition_penalty=1.5, no_repeat_ngram_size=2, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id).save_pretrained(penalised)
    out["repetition_penalty"] = (penalised, tiny_checkpoints[1], "sft")
    return out


def hf_trainer(paths: tuple[Path, Path, str], prompts_file: Path):
    policy, rm, critic_init = paths
    cfg = make_config("model=hf", f"model.policy={policy}", f"model.reward_model={rm}", "task=jsonl",
                      f"task.prompts_file={prompts_file}", "ptx_loss=off", f"critic_init={critic_init}",
                      "critic_pretrain=off", "ppo.batch_size=8", "ppo.minibatches=2", "ppo.max_new_tokens=10",
                      "ppo.temperature=0.7")
    return build_trainer(cfg)


@pytest.mark.parametrize("name", ["gemma2", "cohere", "gpt2_dropout", "repetition_penalty"])
def test_ratio_is_one_and_kl_is_zero_before_any_update(name, checkpoints, prompts_file):
    trainer = hf_trainer(checkpoints[name], prompts_file)
    batch = trainer.rollout()
    on = batch.mask.bool()
    assert on.sum() > 8
    # the reference is the same checkpoint: the rollout's KL to it is 0
    torch.testing.assert_close(batch.logprobs[on], batch.ref_logprobs[on], rtol=0, atol=TOL)
    # the first minibatch, as PPO trains on it: the ratio to the rollout's log-probs is 1
    mb = slice(0, 4)
    packing = pack(batch.ids[mb], batch.attention[mb])
    logits = trainer.policy(packing, batch.tokens.shape[1], 0.7)
    new = ppo.logprobs_from_logits(logits, batch.tokens[mb])
    ratio = (new - batch.logprobs[mb]).exp()[on[mb]]
    torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=0, atol=TOL)
    stats = trainer.policy_update(packing, batch.tokens[mb], batch.mask[mb],
                                  batch.logprobs[mb], batch.ref_logprobs[mb], torch.randn_like(batch.mask[mb]),
                                  batch.tokens.shape[1])
    assert stats["ppo/clipfrac"] == 0 and abs(stats["ppo/approx_kl"]) < TOL
    # dropout stays off in every model, after a training step too
    roles = (trainer.policy, trainer.reference, trainer.critic, trainer.reward_model)
    assert not any(module.training for role in roles for module in role.modules())


def test_gpt2_dropout_would_break_the_ratio(checkpoints, prompts_file):
    """The check above can fail: the same pass in train mode (dropout 0.1) moves the log-probs."""
    trainer = hf_trainer(checkpoints["gpt2_dropout"], prompts_file)
    batch = trainer.rollout()
    trainer.policy.train()
    logits = trainer.policy(pack(batch.ids, batch.attention), batch.tokens.shape[1], 0.7)
    new = ppo.logprobs_from_logits(logits, batch.tokens)
    assert (new - batch.logprobs)[batch.mask.bool()].abs().max() > 1e-2


def test_unknown_logit_post_processing_is_caught_at_start_up(tokenizer):
    model = family("cohere", tokenizer).eval()
    check_forward(model)  # logit_scale reproduced
    model.config.logit_scale = None  # our pass now skips the scale the model's forward still applies
    with pytest.raises(ValueError, match="post-processes its logits"):
        check_forward(model)


def test_a_checkpoint_generation_config_is_neutralised_and_checked(checkpoints, tokenizer):
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(str(checkpoints["repetition_penalty"][0])).eval()
    assert policy.generation_config.repetition_penalty == 1.5
    gen = generation_config(6, 0.7, tokenizer.eos_token_id, tokenizer.pad_token_id)
    query = pad_left(encode(tokenizer, ["the dote is great . review :", "a dote ."]), tokenizer.pad_token_id)
    engine = HFGenerate(policy, gen)  # neutralises the checkpoint's generation config
    assert policy.generation_config.repetition_penalty in (None, 1.0)
    engine.check(*query)
    policy.generation_config.repetition_penalty = 1.5  # as if it were not neutralised
    with pytest.raises(ValueError, match="logits processor"):
        engine.check(*query)
