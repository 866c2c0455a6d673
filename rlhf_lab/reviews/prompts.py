"""The reviews task's prompts: prompts.jsonl beside this module, one `{"prompt": ..., "split": ...}` per line
(written by scripts/make_review_prompts.py; the file is the source of truth). The held-out split asks about
subjects the train split never mentions."""

from __future__ import annotations

import hashlib
import json
from importlib.resources import files

SPLITS = ("train", "held_out")


def _text() -> str:
    return files(__package__).joinpath("prompts.jsonl").read_text(encoding="utf-8")


def read_rows() -> list[dict]:
    """Every row of prompts.jsonl, in file order."""
    return [json.loads(line) for line in _text().splitlines() if line.strip()]


def prompts_digest() -> str:
    """sha256 of prompts.jsonl (16 hex digits): part of the key of every artefact built from the prompts."""
    return hashlib.sha256(_text().encode()).hexdigest()[:16]


def load_prompts(split: str) -> list[str]:
    """The prompts of one split, in file order."""
    if split not in SPLITS:
        raise ValueError(f"unknown reviews prompt split {split!r}: expected one of {', '.join(SPLITS)}")
    return [row["prompt"] for row in read_rows() if row["split"] == split]
