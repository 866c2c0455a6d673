"""The rollout engine records, step by step, the log-prob and entropy of each sampled token (never a
(B, R, V) tensor), and they equal those computed from the full logits."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhf_lab.algo import ppo
from rlhf_lab.engine.data import encode
from rlhf_lab.engine.models import load_tokenizer
from rlhf_lab.engine.packing import pad_left
from rlhf_lab.engine.rollout import HFGenerate, StepLogprobs, generation_config


@pytest.mark.parametrize("late_steps", [0, 1])
def test_step_logprobs_match_the_full_logits(late_steps):
    """A generation loop that checks for its end a step late runs one step more: `result` drops it."""
    torch.manual_seed(0)
    batch, vocab, steps, temperature = 3, 7, 4, 0.7
    logits = torch.randn(batch, steps + late_steps, vocab) * 3
    tokens = torch.randint(0, vocab, (batch, steps + late_steps))
    recorder, ids = StepLogprobs(temperature), torch.zeros(batch, 2, dtype=torch.long)
    for k in range(steps + late_steps):
        scores = logits[:, k]
        assert recorder(ids, scores) is scores  # the scores pass through unchanged
        ids = torch.cat([ids, tokens[:, k:k + 1]], dim=1)
    logprobs, entropy = recorder.result(tokens[:, :steps])
    torch.testing.assert_close(logprobs, ppo.logprobs_from_logits(logits[:, :steps] / temperature, tokens[:, :steps]))
    torch.testing.assert_close(entropy, ppo.entropy_from_logits(logits[:, :steps] / temperature))


def test_hf_engine_samples_what_it_records(tiny_checkpoints):
    sft_dir, _ = tiny_checkpoints
    tokenizer = load_tokenizer(sft_dir)
    policy = AutoModelForCausalLM.from_pretrained(str(sft_dir)).eval()
    engine = HFGenerate(policy, generation_config(8, 0.7, tokenizer.eos_token_id, tokenizer.pad_token_id))
    query_ids, query_mask = pad_left(encode(tokenizer, ["the dote is great . review :", "a dote ."]),
                                     tokenizer.pad_token_id)
    engine.check(query_ids, query_mask)
    torch.manual_seed(3)
    generated = engine.sample(query_ids, query_mask)
    torch.manual_seed(3)  # the same draw again, this time with every step's logits kept
    out = policy.generate(input_ids=query_ids, attention_mask=query_mask, generation_config=engine.gen_config,
                          return_dict_in_generate=True, output_logits=True)
    tokens = out.sequences[:, query_ids.shape[1]:]
    assert torch.equal(generated.tokens, tokens) and tokens.shape == (2, 8)
    logits = torch.stack(out.logits, 1).float() / 0.7
    torch.testing.assert_close(generated.logprobs, ppo.logprobs_from_logits(logits, tokens))
    torch.testing.assert_close(generated.entropy, ppo.entropy_from_logits(logits))
