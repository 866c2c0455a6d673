"""The GPU setting of benchmarks/vs_trl.py (`--model 1b|125m|tiny`): randomly initialised Llama models, a
word-level tokenizer over their vocabulary whose EOS (and pad) ids lie outside it, fixed-length random prompts,
and the peak dense bf16 FLOP/s of a few GPUs. Nothing is downloaded.

The EOS id equals the vocabulary size V (the pad id is V + 1) while the models' LM head has V outputs, so
neither can ever be sampled: generation never stops early, no response is truncated, and no sampled token is
mistaken for padding (TRL derives its attention masks and sequence lengths from `token != pad_token_id`, so a
pad id inside the vocabulary would cut ~1 in 4 of its batches short at V = 32,000).
"""

from __future__ import annotations

import copy
import random

import torch

PROMPT_TOKENS = 64  # every prompt: this many random words, so no prompt is padded
RESPONSE_TOKENS = 128  # every response: exactly this many tokens (EOS cannot be sampled)
EOS, PAD = "<eos>", "<pad>"

# --model -> Llama shape (random weights). Untied embeddings, 2,048 positions, RMSNorm eps 1e-5.
SHAPES = {
    # TinyLlama-1.1B's shape: 1.10B parameters (policy), 1.03B (reward/value model: no LM head)
    "1b": dict(vocab_size=32_000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
               num_attention_heads=32, num_key_value_heads=4),
    # GPT-2-small width and depth, Llama MLP 4x: 162M parameters (policy), 138M (reward/value model)
    "125m": dict(vocab_size=32_000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, num_key_value_heads=12),
    # a smoke check of the script on the CPU, not a benchmark: 0.6M parameters
    "tiny": dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4),
}

# peak dense bf16 tensor-core FLOP/s, by a substring of torch.cuda.get_device_name() (first match wins)
PEAK_BF16_FLOPS = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 80GB HBM3", 989e12),  # SXM5
    ("H100 SXM", 989e12),
    ("A100", 312e12),
)


def peak_bf16_flops(device_name: str) -> float | None:
    """Peak dense bf16 FLOP/s of the named GPU, or None when it is not in the table."""
    for key, flops in PEAK_BF16_FLOPS:
        if key in device_name:
            return flops
    return None


def vocab_size(model: str) -> int:
    return SHAPES[model]["vocab_size"]


def word_tokenizer(vocab: int):
    """Words t0 .. t{V-1} -> ids 0 .. V-1 (whitespace-split), EOS -> V, pad -> V + 1 (see the module docstring)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    words = {f"t{i}": i for i in range(vocab)}
    words[EOS], words[PAD] = vocab, vocab + 1
    backend = Tokenizer(WordLevel(words, unk_token=PAD))
    backend.pre_tokenizer = WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, pad_token=PAD,
                                        padding_side="left")
    assert tokenizer.eos_token_id == vocab and tokenizer.pad_token_id == vocab + 1
    return tokenizer


def prompt_drawer(vocab: int):
    """draw(rng) -> a prompt of PROMPT_TOKENS random words (for rlhf_lab.engine.data.Stream)."""
    def draw(rng: random.Random) -> str:
        return " ".join(f"t{rng.randrange(vocab)}" for _ in range(PROMPT_TOKENS))
    return draw


def llama_config(model: str):
    from transformers import LlamaConfig

    # no bos/eos/pad in the model config: EOS lies outside the vocabulary (the generation configs of both sides
    # name it); a pad id here would also zero and freeze that embedding row (nn.Embedding padding_idx)
    return LlamaConfig(**SHAPES[model], max_position_embeddings=2048, tie_word_embeddings=False,
                       rms_norm_eps=1e-5, bos_token_id=None, eos_token_id=None, pad_token_id=None, num_labels=1)


def build_models(model: str, device: torch.device, seed: int):
    """(policy, reward model): a random LlamaForCausalLM and a random LlamaForSequenceClassification (one label)
    of the same shape, fp32, built directly on `device`. Every side's models are copies of these two."""
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    torch.manual_seed(seed)
    with torch.device(device):
        policy = LlamaForCausalLM(llama_config(model))
        reward = LlamaForSequenceClassification(llama_config(model))
    # only transformers' own sequence-classification pooling reads this (rlhf-lab's start-up check compares its
    # packed pass with it; neither trainer pools that way): any id inside the vocabulary, set after construction
    reward.config.pad_token_id = 0
    return policy.eval(), reward.eval()


def copy_as(model, dtype: torch.dtype):
    """An independent copy of `model` with weights in `dtype`."""
    return copy.deepcopy(model).to(dtype)


def matmul_params(model) -> int:
    """Parameters that take part in matrix multiplications: all but the input embedding (a lookup)."""
    return sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
