"""Factorial designs (rlhf_lab/run/design.py): full factorials, and the smallest regular two-level fractions of
a stated resolution, checked against the textbook designs and by their alias structure."""

import itertools

import numpy as np
import pytest

from rlhf_lab.run.design import DesignError, find_generators, fraction, full_factorial


def coded(runs, factors) -> np.ndarray:
    """Runs x factors in -1/+1 (first level -1)."""
    return np.array([[-1 if run[f] == levels[0] else 1 for f, levels in factors.items()] for run in runs])


def test_full_factorial_has_every_combination_once():
    runs = full_factorial({"kl_penalty": ["off", "token", "adaptive"], "value_clip": ["off", "on"]})
    assert len(runs) == 6 and len({tuple(r.items()) for r in runs}) == 6
    assert runs[0] == {"kl_penalty": "off", "value_clip": "off"} and runs[1]["value_clip"] == "on"


@pytest.mark.parametrize("k,resolution,runs", [(3, 3, 4), (4, 4, 8), (5, 5, 16), (6, 5, 32), (7, 4, 16),
                                                (7, 5, 64), (8, 5, 64), (5, 4, 16), (4, 5, 16)])
def test_smallest_fraction_matches_the_textbook_sizes(k, resolution, runs):
    # Box, Hunter & Hunter table 6.22 / Montgomery table 8.14: 2^(3-1)_III, 2^(4-1)_IV, 2^(5-1)_V, 2^(6-1)_VI,
    # 2^(7-3)_IV, 2^(7-1)_VII, 2^(8-2)_V; no 8-run resolution IV design of 5 factors; 4 factors at V: full
    base, _ = find_generators(k, resolution)
    assert 2 ** base == runs


def test_resolution_v_half_fraction_of_five_factors():
    factors = {name: ["off", "on"] for name in ["a", "b", "c", "d", "e"]}
    runs, relation = fraction(factors, 5)
    assert relation == ["ABCDE"] and len(runs) == 16
    x = coded(runs, factors)
    assert (x.prod(axis=1) == 1).all()  # I = ABCDE on every run
    # main effects and two-way interactions: 15 columns, mutually orthogonal (nothing aliased among them)
    columns = [x[:, i] for i in range(5)] + [x[:, i] * x[:, j] for i, j in itertools.combinations(range(5), 2)]
    gram = np.array(columns) @ np.array(columns).T
    assert np.array_equal(gram, 16 * np.eye(15))


def test_resolution_iv_aliases_two_way_interactions_only_with_each_other():
    factors = {name: ["lo", "hi"] for name in "abcd"}
    runs, relation = fraction(factors, 4)
    assert relation == ["ABCD"] and len(runs) == 8
    x = coded(runs, factors)
    assert np.array_equal(x[:, 0] * x[:, 1], x[:, 2] * x[:, 3])  # AB = CD
    for i, (j, k) in itertools.product(range(4), itertools.combinations(range(4), 2)):
        assert x[:, i] @ (x[:, j] * x[:, k]) == 0  # no main effect aliased with a two-way interaction


def test_bad_designs_are_named():
    with pytest.raises(DesignError, match="two-level factors only; factor 'kl'"):
        fraction({"kl": ["off", "token", "adaptive"], "b": ["0", "1"], "c": ["0", "1"]}, 3)
    with pytest.raises(DesignError, match="resolution must be between 3 and"):
        fraction({f: ["0", "1"] for f in "abc"}, 6)
    with pytest.raises(DesignError, match="needs at least 2 levels"):
        full_factorial({"kl": ["off"]})
    with pytest.raises(DesignError, match="repeats a level"):
        full_factorial({"kl": ["off", "off"]})
