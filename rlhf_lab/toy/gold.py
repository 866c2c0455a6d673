"""The gold reward: the toy stand-in for human judgement. PPO never sees it; it is logged as `reward/gold_mean`.

A reader of a toy review likes it when it is positive, grammatical, on topic and concise, and dislikes
repetition, run-on length and word salad. Concretely, for one response:

    gold = sentiment + relevance - ungrammatical - repetition - overlength - unfinished

    sentiment    tanh((distinct positive adjectives - negative adjectives) / 2), counted in grammatical
                 sentences only (a positive word in word salad pleases nobody)                 in (-1, 1)
    relevance    0.3 if the response mentions a noun of the prompt
    ungrammatical  1.0 x the fraction of sentences that do not parse (a trailing fragment counts)
    repetition   2.0 x the fraction of content words (noun, verb, adjective) that repeat an earlier one,
                 beyond a tolerance of 0.2
    overlength   0.1 per word beyond 24
    unfinished   1.0 if the response hit the length cap without the end-of-sequence token
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rlhf_lab.toy.language import PERIOD, SENTENCE_RE, TAG_OF_CLASS, ToyLanguage

MAX_WORDS = 24
REPEAT_TOLERANCE = 0.2


@dataclass(frozen=True)
class GoldParts:
    sentiment: float
    relevance: float
    ungrammatical: float
    repetition: float
    overlength: float
    unfinished: float

    @property
    def total(self) -> float:
        return (self.sentiment + self.relevance - self.ungrammatical - self.repetition - self.overlength
                - self.unfinished)


class GoldReward:
    """Scores (prompt, response) pairs of one toy language."""

    def __init__(self, language: ToyLanguage):
        self.word_class = language.word_class

    def parts(self, prompt: str, response: str, finished: bool) -> GoldParts:
        words = response.split()
        classes = [self.word_class.get(w, "unk") for w in words]

        sentences, start = [], 0
        for i, w in enumerate(words):
            if w == PERIOD:
                sentences.append(range(start, i))
                start = i + 1
        fragment = start < len(words)
        grammatical = [s for s in sentences if SENTENCE_RE.fullmatch("".join(TAG_OF_CLASS.get(classes[i], "?")
                                                                             for i in s))]
        n_units = len(sentences) + int(fragment)
        ungrammatical = 1.0 - len(grammatical) / n_units if n_units else 1.0

        positive, negative = set(), 0
        for s in grammatical:
            for i in s:
                if classes[i] == "pos":
                    positive.add(words[i])
                negative += classes[i] == "neg"
        sentiment = math.tanh((len(positive) - negative) / 2)

        topic_nouns = {w for w in prompt.split() if self.word_class.get(w) == "noun"}
        relevance = 0.3 if topic_nouns.intersection(words) else 0.0

        content = [w for w, c in zip(words, classes) if c in ("noun", "verb", "pos", "neg", "neu")]
        repeats = len(content) - len(set(content))
        repetition = 2.0 * max(0.0, repeats / len(content) - REPEAT_TOLERANCE) if content else 0.0

        overlength = 0.1 * max(0, len(words) - MAX_WORDS)
        return GoldParts(sentiment, relevance, ungrammatical, repetition, overlength, 0.0 if finished else 1.0)

    def __call__(self, prompts: list[str], responses: list[str], finished: list[bool]) -> list[float]:
        return [self.parts(p, r, f).total for p, r, f in zip(prompts, responses, finished)]
