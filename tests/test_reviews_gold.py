"""The reviews task's gold reward matches its formula (penalties worked out by hand) and ranks responses as a
reader would; its prompts file has two disjoint splits."""

import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from rlhf_lab.reviews.gold import ReviewGold, repeated_bigram_fraction, words_of
from rlhf_lab.reviews.prompts import SPLITS, load_prompts, read_rows

POSITIVE = ("These headphones are wonderful. The sound is rich and clear, the noise cancelling works well on "
            "trains, and they stay comfortable for hours. I would happily recommend them.")
NEUTRAL = ("The headphones come in black and grey. They fold flat, charge over a cable and weigh about two hundred "
           "grams.")
NEGATIVE = ("These headphones are disappointing. The sound is muddy, the ear pads hurt after an hour, and the battery "
            "died within a month. I would not buy them again.")
STUFFED = ("These headphones are wonderful. The sound is rich and clear. The sound is rich and clear. The sound is "
           "rich and clear. I would happily recommend them.")
GREAT = " ".join(["great"] * 12)
GIBBERISH = "Thse hedphones are wondarful, great snd and blorf qwzx."


@pytest.fixture(scope="module")
def gold():
    return ReviewGold()


def compound(text):
    return SentimentIntensityAnalyzer().polarity_scores(text)["compound"]


def test_words_are_lower_cased_alphabetic_tokens():
    assert words_of("It’s GREAT: 5 stars, well-made & cheap!") == ["it's", "great", "stars", "well", "made", "cheap"]


def test_repeated_bigram_fraction():
    assert repeated_bigram_fraction([]) == 0.0 and repeated_bigram_fraction(["great"]) == 0.0
    assert repeated_bigram_fraction(["great"] * 5) == pytest.approx(3 / 4)  # 4 bigrams, the last 3 repeat the first


def test_a_clean_review_scores_its_sentiment(gold):
    parts = gold.parts("", POSITIVE, True)
    assert parts.sentiment == pytest.approx(compound(POSITIVE)) and parts.sentiment > 0.5
    assert parts.total == pytest.approx(parts.sentiment)


def test_two_of_eight_bigrams_repeated(gold):
    text = "Good coffee and good service and good coffee again."  # 9 words: "and good", "good coffee" repeat
    parts = gold.parts("", text, True)
    assert parts.repetition == pytest.approx(2.0 * (2 / 8 - 0.1))
    assert parts.total == pytest.approx(compound(text) - 0.3)


def test_ordinary_english_repeats_a_bigram_without_penalty(gold):
    text = "The battery lasts all day and the screen is sharp. The camera is quick and the speakers are loud."
    assert repeated_bigram_fraction(words_of(text)) == pytest.approx(1 / 18)  # "and the" twice
    assert gold.parts("", text, True).repetition == 0.0


def test_one_non_word_of_five(gold):
    text = "The soup was very blorf."
    parts = gold.parts("", text, True)
    assert parts.nonwords == pytest.approx(1.5 * (1 / 5 - 0.1))
    assert parts.total == pytest.approx(compound(text) - 0.15)


def test_numbers_and_punctuation_are_not_non_words(gold):
    assert gold.parts("", "The soup cost 12 dollars!! Worth it :)", True).nonwords == 0.0


def test_unfinished_costs_one(gold):
    finished, unfinished = gold.parts("", POSITIVE, True), gold.parts("", POSITIVE, False)
    assert (finished.unfinished, unfinished.unfinished) == (0.0, 1.0)
    assert unfinished.total == pytest.approx(finished.total - 1.0)


def test_overlength(gold):
    sixty = " ".join(["nice"] * 60)
    assert gold.parts("", sixty, True).overlength == 0.0
    assert gold.parts("", sixty + " and more words here too", True).overlength == pytest.approx(0.05 * 5)


def test_too_short(gold):
    assert gold.parts("", "", True).total == pytest.approx(-1.0)
    assert gold.parts("", "Great phone!", True).too_short == 1.0
    assert gold.parts("", "Great phone, thanks!", True).too_short == 0.0


def test_a_reader_prefers_fluent_positive_writing(gold):
    score = {name: gold.parts("", text, True).total for name, text in
             [("positive", POSITIVE), ("neutral", NEUTRAL), ("negative", NEGATIVE), ("stuffed", STUFFED),
              ("great", GREAT), ("gibberish", GIBBERISH)]}
    assert score["positive"] > score["stuffed"] > score["great"]
    assert score["positive"] > score["neutral"] > score["negative"]
    assert score["gibberish"] < 0 < score["neutral"]


def test_call_scores_each_response(gold):
    scores = gold(["p1", "p2"], [POSITIVE, POSITIVE], [True, False])
    assert scores == pytest.approx([gold.parts("", POSITIVE, True).total, gold.parts("", POSITIVE, False).total])


def test_prompts_have_two_disjoint_splits_without_duplicates():
    rows = read_rows()
    assert {row["split"] for row in rows} == set(SPLITS)
    train, held_out = load_prompts("train"), load_prompts("held_out")
    assert (len(train), len(held_out)) == (320, 80)
    assert len(set(train)) == len(train) and len(set(held_out)) == len(held_out)
    assert not set(train) & set(held_out)


def test_a_bad_split_names_the_allowed_ones():
    with pytest.raises(ValueError, match="train, held_out"):
        load_prompts("bad")


def test_a_string_of_different_praise_words_is_stuffing(gold):
    text = "Amazing, wonderful, fantastic, great, excellent, lovely, superb!"  # 7 words, all in VADER's lexicon
    parts = gold.parts("", text, True)
    assert parts.repetition == 0.0 and parts.stuffing == pytest.approx(2.0 * (1.0 - 0.35))
    assert parts.total < gold.parts("", POSITIVE, True).total


def test_a_fluent_enthusiastic_review_is_not_stuffing(gold):
    assert gold.sentiment_word_fraction(words_of(POSITIVE)) == pytest.approx(8 / 28)  # below the 0.35 tolerance
    assert gold.parts("", POSITIVE, True).stuffing == 0.0
