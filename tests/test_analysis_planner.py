"""The seed planner (analysis.planner): its sample sizes against the power of the t tests worked out from the
noncentral t distribution, Cohen's published table and the arcsine formula for proportions."""

import math

import pandas as pd
import pytest
from scipy import stats

from analysis.planner import (factorial_plan, paired_runs_needed, proportion_runs_needed, seed_plan, unpaired_runs_needed,
                              display_plan)


def t_power(d: float, n: int, two_sample: bool, alpha: float = 0.05) -> float:
    """Power of the two-sided t test with standardised effect d: one sample of n (paired differences), or two
    samples of n each, from the noncentral t."""
    df, nc = (2 * n - 2, d * math.sqrt(n / 2)) if two_sample else (n - 1, d * math.sqrt(n))
    crit = stats.t.ppf(1 - alpha / 2, df)
    return stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)


@pytest.mark.parametrize("sd,effect", [(0.2, 0.1), (1.0, 1.0), (0.05, 0.03)])
def test_paired_size_is_the_smallest_with_the_power(sd, effect):
    n = int(paired_runs_needed(sd, effect))
    assert t_power(effect / sd, n, two_sample=False) >= 0.8 > t_power(effect / sd, n - 1, two_sample=False)


def test_unpaired_size_matches_cohens_table_and_the_noncentral_t():
    assert unpaired_runs_needed(2.0, 1.0) == 64  # d = 0.5: Cohen (1988), table 2.4.1: 64 per group
    assert unpaired_runs_needed(1.0, -1.0) == 17  # d = 1, either sign: 17
    n = int(unpaired_runs_needed(0.3, 0.25))
    assert t_power(0.25 / 0.3, n, two_sample=True) >= 0.8 > t_power(0.25 / 0.3, n - 1, two_sample=True)


def test_proportions_by_the_arcsine_formula():
    # n = 2 (z_0.975 + z_0.8)^2 / h^2, h = 2 asin(sqrt(0.5)) - 2 asin(sqrt(0.1))
    h = 2 * math.asin(math.sqrt(0.5)) - 2 * math.asin(math.sqrt(0.1))
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    assert proportion_runs_needed(0.5, 0.1) == math.ceil(2 * (z / h) ** 2)
    assert math.isnan(proportion_runs_needed(0.3, 0.3))


def test_edge_cases():
    assert paired_runs_needed(0.0, 0.1) == 2  # no spread: the smallest test
    assert math.isnan(paired_runs_needed(math.nan, 0.1)) and math.isnan(unpaired_runs_needed(0.1, 0.0))


def pilot() -> pd.DataFrame:
    """Baseline and one arm on 4 seeds, paired; collapse 0/4 against 2/4."""
    rows = []
    for seed, (base, arm) in enumerate([(0.0, 0.1), (0.1, 0.4), (0.2, 0.4), (0.3, 0.5)]):
        rows.append({"arm": "ppo_max", "seed": seed, "final_gold": base, "collapsed": False, "collapse_onset": None})
        rows.append({"arm": "no_kl", "seed": seed, "final_gold": arm, "collapsed": seed < 2, "collapse_onset": 50})
    return pd.DataFrame(rows)


def test_plan_from_a_paired_pilot():
    plan = seed_plan(pilot(), "ppo_max").set_index("metric")
    gold = plan.loc["final_gold"]
    differences = pd.Series([0.1, 0.3, 0.2, 0.2])
    assert gold["design"] == "paired" and gold["pilot_n"] == 4
    assert gold["pilot_effect"] == pytest.approx(0.2) and gold["sd"] == pytest.approx(differences.std())
    assert gold["runs_needed"] == paired_runs_needed(differences.std(), 0.2)
    assert plan.loc["collapsed", "runs_needed"] == proportion_runs_needed(0.5, 0.0)
    smaller = seed_plan(pilot(), "ppo_max", {"final_gold": 0.05}).set_index("metric").loc["final_gold"]
    assert smaller["effect"] == 0.05 and smaller["runs_needed"] > gold["runs_needed"]  # a smaller effect needs more
    shown = display_plan(seed_plan(pilot(), "ppo_max"))
    assert shown.iloc[0]["runs needed"].endswith("pairs")


def test_plan_rejects_bad_input():
    with pytest.raises(ValueError, match="final_kl"):
        seed_plan(pilot(), "ppo_max", {"final_reward": 0.1})
    with pytest.raises(ValueError, match="baseline arm 'vanilla'"):
        seed_plan(pilot(), "vanilla")
    with pytest.raises(ValueError, match="power"):
        seed_plan(pilot(), "ppo_max", power=1.5)


def test_factorial_plan_scales_the_replicates_by_the_standard_error():
    # two estimated effects (m = 2) and one not estimated; 96 runs of a 16-arm design: 6 replicates now.
    # z = z(1 - 0.05 / 4) + z(0.8) = 2.2414 + 0.8416 = 3.0830
    # A: se 0.1, estimate 0.2: 6 * (3.0830 * 0.5)^2 = 14.26 -> 15 replicates, 240 runs
    # B: se 0.05, estimate -0.5: 6 * (3.0830 * 0.1)^2 = 0.570 -> 1 replicate
    effects = pd.DataFrame([
        {"outcome": "final_gold", "label": "final gold", "term": "A", "estimate": 0.2, "se": 0.1, "n_runs": 96},
        {"outcome": "final_gold", "label": "final gold", "term": "B", "estimate": -0.5, "se": 0.05, "n_runs": 96},
        {"outcome": "final_gold", "label": "final gold", "term": "A x B", "estimate": math.nan, "se": math.nan,
         "n_runs": 96}])
    plan = factorial_plan(effects, arms=16).set_index("term")
    assert list(plan.index) == ["A", "B"]
    assert plan.loc["A", "replicates_now"] == 6
    assert plan.loc["A", "replicates_needed"] == 15 and plan.loc["A", "runs_needed"] == 240
    assert plan.loc["B", "replicates_needed"] == 1
    with pytest.raises(ValueError, match="power"):
        factorial_plan(effects, arms=16, power=1.0)
