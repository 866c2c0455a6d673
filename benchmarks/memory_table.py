"""Memory per GPU of a PPO run, worked out from parameter counts: what fits with FSDP, gradient checkpointing
and LoRA, for docs/real-models.md's table.

    python benchmarks/memory_table.py                 # the table (markdown)
    python benchmarks/memory_table.py --gpu-gb 141    # another GPU's memory

Parameter counts come from the models' shapes (built on the meta device: nothing is downloaded or allocated).
The four models have one backbone size: policy (causal LM), reference (the same), critic and reward model
(sequence classification: the backbone and a one-output head), as in PPO-max's 7B runs. Bytes per parameter,
as rlhf_lab's runtime keeps them at precision=bf16 (rlhf_lab/engine/runtime.py):
- a trained model: fp32 weights 4 + fp32 gradients 4 + AdamW moments 8 = 16; divided by W under FSDP;
- a LoRA-wrapped model: its frozen fp32 base 4 (/W under FSDP), plus 16 per adapter parameter;
- a frozen model (reference, reward model): bf16 weights 2, replicated; /W with distributed.shard_frozen;
- generation: the policy's weights gathered (FSDP) or cast (autocast) to bf16 for the rollout: 2.
Not counted: activations (with model.gradient_checkpointing about one layer's per sequence, plus one
hidden state per layer), the KV cache, logits, the CUDA context and allocator slack: the table calls a setting
"fits" when what it counts stays 10 GB under the GPU's memory.
The same arithmetic at fp32 for the 124M model of benchmarks/memory.py (four fp32 models on the CPU) gives
4.96 GB of weights, gradients and AdamW moments; that benchmark measures 5.9 GB of peak RSS in all.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

# name -> Llama shape (vocabulary 32,000, untied embeddings)
SHAPES = {
    "1.1B (TinyLlama)": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                             num_attention_heads=32, num_key_value_heads=4),
    "7B (Llama-2)": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32),
    "13B (Llama-2)": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                          num_attention_heads=40, num_key_value_heads=40),
}
LORA_RANK = 8  # lora.rank, on every linear layer of the decoder (lora.target_modules=all-linear)


@dataclass(frozen=True)
class Counts:
    policy: int  # causal LM parameters
    scorer: int  # sequence-classification model parameters (critic, reward model)
    adapters: int  # LoRA parameters of one model at LORA_RANK


def count(shape: dict) -> Counts:
    config = LlamaConfig(vocab_size=32_000, num_labels=1, tie_word_embeddings=False, **shape)
    with torch.device("meta"):
        policy, scorer = LlamaForCausalLM(config), LlamaForSequenceClassification(config)
    adapters = sum(LORA_RANK * (m.in_features + m.out_features) for name, m in policy.model.named_modules()
                   if isinstance(m, torch.nn.Linear))
    return Counts(sum(p.numel() for p in policy.parameters()), sum(p.numel() for p in scorer.parameters()),
                  adapters)


@dataclass(frozen=True)
class Setting:
    label: str  # the column header: the command line's switches
    gpus: int  # W
    fsdp: bool
    shard_frozen: bool = False
    lora: bool = False  # lora=on lora.critic=true


SETTINGS = (
    Setting("1 GPU", 1, fsdp=False),
    Setting("1 GPU, LoRA", 1, fsdp=False, lora=True),
    Setting("fsdp, 8 GPUs", 8, fsdp=True),
    Setting("fsdp + shard_frozen, 8 GPUs", 8, fsdp=True, shard_frozen=True),
    Setting("fsdp + shard_frozen, 16 GPUs (2 nodes)", 16, fsdp=True, shard_frozen=True),
    Setting("fsdp + shard_frozen, LoRA, 8 GPUs", 8, fsdp=True, shard_frozen=True, lora=True),
)


def gigabytes(n: Counts, s: Setting) -> float:
    """Bytes per GPU (GB, 1e9) that the module docstring counts, for one model size and one setting."""
    shard = s.gpus if s.fsdp else 1
    if s.lora:  # the reference is the policy without its adapters: no copy
        trained = (4 * (n.policy + n.scorer) + 16 * 2 * n.adapters) / shard
        frozen = 2 * n.scorer
    else:
        trained = 16 * (n.policy + n.scorer) / shard
        frozen = 2 * (n.policy + n.scorer)
    if s.shard_frozen:
        frozen /= s.gpus
    return (trained + frozen + 2 * n.policy) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-gb", type=float, default=80, help="GPU memory in GB (80: H100/A100)")
    args = parser.parse_args()
    print("| model (policy / critic parameters) | " + " | ".join(s.label for s in SETTINGS) + " |")
    print("|---|" + "---|" * len(SETTINGS))
    for name, shape in SHAPES.items():
        n = count(shape)
        cells = []
        for s in SETTINGS:
            gb = gigabytes(n, s)
            cells.append(f"{gb:.0f} GB {'fits' if gb <= args.gpu_gb - 10 else 'no'}")
        print(f"| {name}: {n.policy / 1e9:.2f}B / {n.scorer / 1e9:.2f}B | " + " | ".join(cells) + " |")
    print(f"\n(per GPU, weights + gradients + AdamW states + the rollout's bf16 policy; 'fits': at most "
          f"{args.gpu_gb - 10:.0f} GB of a {args.gpu_gb:.0f} GB GPU, the rest for activations)")


if __name__ == "__main__":
    main()
