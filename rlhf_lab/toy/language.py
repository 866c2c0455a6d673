"""The toy language: a seeded, tiny, English-like language of reviews.

A prompt is a neutral context sentence followed by `review :`; a response is one to three sentences
of a small grammar, ended by the end-of-sequence token:

    SENTENCE := CLAUSE [CONJ CLAUSE] "."
    CLAUSE   := NP VERB NP  |  NP COPULA [ADVERB] ADJ
    NP       := DET [ADJ] NOUN

Adjectives carry sentiment (positive, negative or neutral). Nouns and verbs are made-up words drawn from
the seed, so two seeds give two languages with the same grammar. Every word has exactly one part of speech,
which makes parsing (for the gold reward) a regular-expression match on the tag string.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

POSITIVE = ("great lovely wonderful superb brilliant delightful charming excellent splendid fantastic joyful "
            "gorgeous elegant marvelous radiant cheerful graceful pleasant stunning fabulous glorious perfect "
            "amazing beautiful kind warm bright gentle fine sweet").split()
NEGATIVE = ("awful terrible dreadful horrible boring ugly nasty poor bleak dull grim gloomy clumsy rotten shabby "
            "bitter harsh sloppy weak rude tedious lousy dismal cruel bland messy noisy stale sour broken").split()
NEUTRAL = ("red blue green small large old new round square wooden metal tall short heavy light plain early "
           "late northern southern flat narrow wide thick thin empty full daily yearly hollow").split()
DETERMINERS = "the a this that every my".split()
ADVERBS = "very really quite rather truly so".split()
COPULAS = "is was".split()
CONJUNCTIONS = "and but".split()
PROMPT_MARK = ("review", ":")
PERIOD = "."

# one letter per part of speech, for the grammar's regular expressions
TAG_OF_CLASS = {"det": "D", "noun": "N", "verb": "V", "pos": "A", "neg": "A", "neu": "A", "adv": "R",
                "cop": "C", "conj": "J", "mark": "M", "period": "."}
_CLAUSE = r"(?:DA?N(?:VDA?N|CR?A))"
SENTENCE_RE = re.compile(rf"{_CLAUSE}(?:J{_CLAUSE})?")

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


@dataclass(frozen=True)
class ToyLanguage:
    """Word lists of one seeded toy language and samplers for prompts and SFT responses."""

    seed: int
    nouns: tuple[str, ...]
    verbs: tuple[str, ...]

    @classmethod
    def build(cls, seed: int, n_nouns: int = 120, n_verbs: int = 60) -> "ToyLanguage":
        rng = random.Random(seed)
        taken = set(POSITIVE + NEGATIVE + NEUTRAL + DETERMINERS + ADVERBS + COPULAS + CONJUNCTIONS)
        taken.update(PROMPT_MARK)

        def fresh(suffix: str) -> str:
            while True:
                word = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(2)) + suffix
                if word not in taken:
                    taken.add(word)
                    return word

        nouns = tuple(fresh("") for _ in range(n_nouns))
        verbs = tuple(fresh("s") for _ in range(n_verbs))
        return cls(seed=seed, nouns=nouns, verbs=verbs)

    # ------------------------------------------------------------------ vocabulary and tags
    @property
    def word_class(self) -> dict[str, str]:
        """Every word of the language -> its class (det, noun, verb, pos, neg, neu, adv, cop, conj, mark, period)."""
        classes = {}
        for name, words in (("det", DETERMINERS), ("noun", self.nouns), ("verb", self.verbs), ("pos", POSITIVE),
                            ("neg", NEGATIVE), ("neu", NEUTRAL), ("adv", ADVERBS), ("cop", COPULAS),
                            ("conj", CONJUNCTIONS), ("mark", PROMPT_MARK), ("period", (PERIOD,))):
            classes.update(dict.fromkeys(words, name))
        return classes

    @property
    def vocabulary(self) -> list[str]:
        return list(self.word_class)

    # ------------------------------------------------------------------ sampling
    def _adjective(self, rng: random.Random) -> str:
        kind = rng.random()
        pool = POSITIVE if kind < 0.3 else NEGATIVE if kind < 0.6 else NEUTRAL
        return rng.choice(pool)

    def _noun_phrase(self, rng: random.Random, noun: str | None = None) -> list[str]:
        words = [rng.choice(DETERMINERS)]
        if rng.random() < 0.4:
            words.append(self._adjective(rng))
        words.append(noun or rng.choice(self.nouns))
        return words

    def _clause(self, rng: random.Random, subject: str | None = None) -> list[str]:
        words = self._noun_phrase(rng, subject)
        if rng.random() < 0.5:
            return words + [rng.choice(self.verbs)] + self._noun_phrase(rng)
        words.append(rng.choice(COPULAS))
        if rng.random() < 0.3:
            words.append(rng.choice(ADVERBS))
        return words + [self._adjective(rng)]

    def sentence(self, rng: random.Random, subject: str | None = None) -> list[str]:
        words = self._clause(rng, subject)
        if rng.random() < 0.25:
            words += [rng.choice(CONJUNCTIONS)] + self._clause(rng)
        return words + [PERIOD]

    def sample_prompt(self, rng: random.Random) -> str:
        """A neutral context sentence about a topic noun, then `review :`."""
        words = [rng.choice(DETERMINERS), rng.choice(self.nouns), rng.choice(self.verbs), rng.choice(DETERMINERS),
                 rng.choice(self.nouns), PERIOD, *PROMPT_MARK]
        return " ".join(words)

    def sample_response(self, rng: random.Random, prompt: str) -> str:
        """An SFT demonstration: one to three grammatical sentences, often about the prompt's topic."""
        topic = prompt.split()[1]
        sentences = []
        for i in range(rng.choice((1, 2, 2, 3))):
            subject = topic if (i == 0 and rng.random() < 0.7) else None
            sentences += self.sentence(rng, subject)
        return " ".join(sentences)
