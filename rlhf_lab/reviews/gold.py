"""The reviews task's gold reward: an offline stand-in for a human reader, computed by off-the-shelf libraries.
PPO never sees it (it optimises a learned proxy reward model); it is logged as `reward/gold_mean`, so that
over-optimising the proxy shows as gold going down.

A reader likes a short review that is positive, written in real English words, and finished, and dislikes
repetition, made-up words, rambling and near-empty answers. Concretely, for one response, whose words are
its lower-cased alphabetic tokens (`[a-z]+('[a-z]+)*`, curly apostrophes read as straight ones; numbers and
punctuation are not words, a hyphen splits two words):

    gold = sentiment - repetition - stuffing - nonwords - overlength - unfinished - too_short

    sentiment    VADER's compound score of the response text                                      in [-1, 1]
    repetition   2.0 x max(0, fraction of word bigrams that repeat an earlier bigram - 0.1)
                 (0 with fewer than 2 words; ordinary English repeats a bigram such as "of the" now and
                 then, a looping response repeats most of them)
    stuffing     2.0 x max(0, fraction of words in VADER's sentiment lexicon - 0.35)
                 (a fluent enthusiastic review stays near 0.3; a string of praise words is near 1: a list of
                 different positive words pleases nobody, and repeats nothing)
    nonwords     1.5 x max(0, fraction of words not in pyspellchecker's English dictionary - 0.1)
                 (the tolerance leaves room for a name or a rare word)
    overlength   0.05 per word beyond 60
    unfinished   1.0 if the response hit the length cap without the end-of-sequence token
    too_short    1.0 if the response has fewer than 3 words

The prompt is not read: every prompt of the task asks for a short piece of writing about its subject.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from spellchecker import SpellChecker
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

WORD_RE = re.compile(r"[a-z]+(?:'[a-z]+)*")
REPETITION_WEIGHT = 2.0
REPETITION_TOLERANCE = 0.1
STUFFING_WEIGHT = 2.0
STUFFING_TOLERANCE = 0.35
NONWORD_WEIGHT = 1.5
NONWORD_TOLERANCE = 0.1
MAX_WORDS = 60
OVERLENGTH_PER_WORD = 0.05
UNFINISHED_PENALTY = 1.0
MIN_WORDS = 3
TOO_SHORT_PENALTY = 1.0


@dataclass(frozen=True)
class GoldParts:
    sentiment: float
    repetition: float
    stuffing: float
    nonwords: float
    overlength: float
    unfinished: float
    too_short: float

    @property
    def total(self) -> float:
        return (self.sentiment - self.repetition - self.stuffing - self.nonwords - self.overlength
                - self.unfinished - self.too_short)


def words_of(text: str) -> list[str]:
    """The response's words: lower-cased alphabetic tokens (apostrophes inside a word kept)."""
    return WORD_RE.findall(text.lower().replace("\u2019", "'"))


def repeated_bigram_fraction(words: list[str]) -> float:
    """The fraction of word bigrams that repeat an earlier one (0 with fewer than 2 words)."""
    bigrams = list(zip(words, words[1:]))
    return 1.0 - len(set(bigrams)) / len(bigrams) if bigrams else 0.0


def penalty_beyond(fraction: float, tolerance: float, weight: float) -> float:
    """`weight` x the part of `fraction` above `tolerance`."""
    return weight * max(0.0, fraction - tolerance)


class ReviewGold:
    """Scores (prompt, response) pairs of the reviews task; loads its sentiment lexicon and dictionary once."""

    def __init__(self):
        self.analyzer = SentimentIntensityAnalyzer()
        self.spell = SpellChecker(language="en")

    def sentiment_word_fraction(self, words: list[str]) -> float:
        """The fraction of words that VADER's lexicon scores (positive or negative; 0 with no words)."""
        return sum(w in self.analyzer.lexicon for w in words) / len(words) if words else 0.0

    def nonword_fraction(self, words: list[str]) -> float:
        """The fraction of words the English dictionary does not know (0 with no words)."""
        known = self.spell.known(set(words))
        return sum(w not in known for w in words) / len(words) if words else 0.0

    def parts(self, prompt: str, response: str, finished: bool) -> GoldParts:
        words = words_of(response)
        return GoldParts(
            sentiment=self.analyzer.polarity_scores(response)["compound"],
            repetition=penalty_beyond(repeated_bigram_fraction(words), REPETITION_TOLERANCE, REPETITION_WEIGHT),
            stuffing=penalty_beyond(self.sentiment_word_fraction(words), STUFFING_TOLERANCE, STUFFING_WEIGHT),
            nonwords=penalty_beyond(self.nonword_fraction(words), NONWORD_TOLERANCE, NONWORD_WEIGHT),
            overlength=OVERLENGTH_PER_WORD * max(0, len(words) - MAX_WORDS),
            unfinished=0.0 if finished else UNFINISHED_PENALTY,
            too_short=TOO_SHORT_PENALTY if len(words) < MIN_WORDS else 0.0,
        )

    def __call__(self, prompts: list[str], responses: list[str], finished: list[bool]) -> list[float]:
        return [self.parts(p, r, f).total for p, r, f in zip(prompts, responses, finished)]
