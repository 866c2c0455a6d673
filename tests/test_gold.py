"""The toy language and its gold reward behave as a human reader would."""

import random

import pytest

from rlhf_lab.toy.gold import GoldReward
from rlhf_lab.toy.language import SENTENCE_RE, TAG_OF_CLASS, ToyLanguage


@pytest.fixture(scope="module")
def lang():
    return ToyLanguage.build(0)


@pytest.fixture(scope="module")
def gold(lang):
    return GoldReward(lang)


def test_language_is_seeded(lang):
    assert ToyLanguage.build(0) == lang
    assert ToyLanguage.build(1).nouns != lang.nouns
    assert 250 <= len(lang.vocabulary) <= 500


def test_sft_responses_are_grammatical(lang):
    rng = random.Random(0)
    classes = lang.word_class
    for _ in range(200):
        response = lang.sample_response(rng, lang.sample_prompt(rng))
        for sentence in response.split(" . "):
            tags = "".join(TAG_OF_CLASS[classes[w]] for w in sentence.rstrip(" .").split())
            assert SENTENCE_RE.fullmatch(tags), sentence


def test_positive_beats_negative(gold, lang):
    prompt = f"the {lang.nouns[0]} {lang.verbs[0]} a {lang.nouns[1]} . review :"
    good = gold([prompt], [f"the {lang.nouns[0]} is great ."], [True])[0]
    bad = gold([prompt], [f"the {lang.nouns[0]} is awful ."], [True])[0]
    assert good > bad


def test_repetition_scores_lower(gold, lang):
    noun = lang.nouns[0]
    prompt = f"the {noun} {lang.verbs[0]} a {lang.nouns[1]} . review :"
    once = f"the {noun} is great . a {lang.nouns[2]} was lovely ."
    repeated = f"the {noun} is great . the {noun} is great . the {noun} is great ."
    spam = "great great great great great great"
    scores = gold([prompt] * 3, [once, repeated, spam], [True] * 3)
    assert scores[0] > scores[1] > scores[2]


def test_run_on_and_unfinished_score_lower(gold, lang):
    noun = lang.nouns[0]
    prompt = f"the {noun} {lang.verbs[0]} a {lang.nouns[1]} . review :"
    short = f"the {noun} is great ."
    run_on = " ".join(f"the {n} is {a} ." for n, a in zip(lang.nouns[2:9], ("red", "old", "new", "flat", "wide",
                                                                          "thin", "tall")))
    assert gold([prompt], [short], [True])[0] > gold([prompt], [run_on], [True])[0]
    assert gold([prompt], [short], [True])[0] > gold([prompt], [short], [False])[0]


def test_ungrammatical_scores_lower(gold, lang):
    noun = lang.nouns[0]
    prompt = f"the {noun} {lang.verbs[0]} a {lang.nouns[1]} . review :"
    parts = gold.parts(prompt, f"great the is {noun} .", True)
    assert parts.ungrammatical == 1.0 and parts.sentiment == 0.0
    assert gold([prompt], [f"the {noun} is great ."], [True])[0] > parts.total
