"""The reviews task's prompts: prompts.jsonl beside this module, one `{"prompt": ..., "split": ...}` per line
(written by scripts/make_review_prompts.py; the file is the source of truth). The held-out split asks about
subjects the train split never mentions."""

from __future__ import annotations

import json
from importlib.resources import files

SPLITS = ("train", "held_out")


def read_rows() -> list[dict]:
    """Every row of prompts.jsonl, in file order."""
    text = files(__package__).joinpath("prompts.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_prompts(split: str) -> list[str]:
    """The prompts of one split, in file order."""
    if split not in SPLITS:
        raise ValueError(f"unknown reviews prompt split {split!r}: expected one of {', '.join(SPLITS)}")
    return [row["prompt"] for row in read_rows() if row["split"] == split]
