"""Batch layout, and packing a padded batch without its padding.

Layout of a batch: `ids` (B, T) = left-padded prompt (B, P) + response (B, R), `mask` (B, T) its attention
mask. Position ids always come from the mask, so padded and unpadded sequences see the same positions in
generation and in every later forward pass. The PPO forward passes run on the batch packed without its
padding (`pack`), which gives the same outputs with less work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) attention mask -> (B, T) positions counting real tokens only."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass(frozen=True)
class Packing:
    """A padded batch (B, T) re-laid without its padding into N rows of W tokens (W = 2T by default).

    Padding (mask 0: left padding, and every response token after the first EOS) is dropped and the sequences
    are placed end to end, first-fit decreasing, each keeping its own positions 0 .. len-1. A position that does
    not follow its predecessor starts a new sequence: transformers' masking utilities then build a block-diagonal
    causal mask ("packed sequences"), so every token attends exactly to the tokens it attended to in the padded
    batch. Same outputs up to float rounding, with the padding (~40% of the toy task's rollouts) skipped.
    Rows of 2T fill ~95% (sequences longer than T/2 cannot share a row of T); attention work per token grows
    with W, which is why W is not larger.
    """

    input_ids: torch.Tensor  # (N, W) packed rows; the tail of a row is filler (pad ids at position 0)
    position_ids: torch.Tensor  # (N, W)
    slot: torch.Tensor  # (B, T) index of each token in the flattened (N * W) rows; 0 where mask is 0
    last: torch.Tensor  # (B,) slot of each sequence's last real token


def pack(ids: torch.Tensor, mask: torch.Tensor, pad_id: int = 0, width: int | None = None) -> Packing:
    """(B, T) ids and attention mask -> `Packing` into rows of `width` (default 2T) tokens.

    The loop runs over sequences (first-fit decreasing), never over tokens.
    """
    batch, length = ids.shape
    width = width or 2 * length
    real = mask.bool()
    lengths = real.sum(1).tolist()
    room: list[int] = []  # free tokens left in each row
    start = [0] * batch  # flat slot of each sequence's first token
    for i in sorted(range(batch), key=lambda i: -lengths[i]):
        row = next((r for r, free in enumerate(room) if free >= lengths[i]), len(room))
        if row == len(room):
            room.append(width)
        start[i] = row * width + width - room[row]
        room[row] -= lengths[i]
    rank = position_ids(mask)  # (B, T) position of each real token within its sequence
    start_t = torch.tensor(start, device=ids.device)
    slot = torch.where(real, start_t.unsqueeze(1) + rank, torch.zeros_like(rank))
    packed_ids = torch.full((len(room), width), pad_id, dtype=ids.dtype, device=ids.device)
    packed_positions = torch.zeros_like(packed_ids)  # a filler token at position 0 is a sequence of its own
    packed_ids.view(-1)[slot[real]] = ids[real]
    packed_positions.view(-1)[slot[real]] = rank[real]
    last = start_t + torch.tensor(lengths, device=ids.device) - 1
    return Packing(packed_ids, packed_positions, slot, last)


def response_mask(response_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1.0 on response tokens up to and including the first EOS, 0.0 after it. (B, R) -> (B, R)."""
    is_eos = (response_ids == eos_id).int()
    after_first_eos = (is_eos.cumsum(1) - is_eos) > 0
    return (~after_first_eos).float()


def pad_left(sequences: list[list[int]], pad_id: int,
             device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists to one length, built on the host and copied to `device` once.
    -> ids (B, T) long, mask (B, T) long."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if seq:
            ids[i, length - len(seq):] = torch.tensor(seq)
            mask[i, length - len(seq):] = 1
    return ids.to(device), mask.to(device)
