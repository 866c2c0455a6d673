"""Collapse as a probability with its time course (analysis.collapse), against values worked out by hand from
the formulas: Clopper-Pearson's exact interval, the Kaplan-Meier product with Greenwood's variance on the
log(-log) scale, and the log-rank statistic."""

import math

import pandas as pd
import pytest
from scipy import stats

from analysis.collapse import (collapse_probability, collapse_table, display_collapse, logrank_p, median_onset,
                               survival_curve)
from analysis.effects import newcombe_interval


def runs(arm: str, events=(), censored=(), insufficient=()) -> pd.DataFrame:
    """Stability rows: one collapsed run per onset in ``events``, one run that never collapsed per last step in
    ``censored``, one undecided run per last step in ``insufficient``."""
    rows = [{"arm": arm, "collapsed": True, "collapse_onset": t, "collapse_rule": "gold", "last_step": 99}
            for t in events]
    rows += [{"arm": arm, "collapsed": False, "collapse_onset": None, "collapse_rule": "gold", "last_step": t}
             for t in censored]
    rows += [{"arm": arm, "collapsed": False, "collapse_onset": None, "collapse_rule": "insufficient",
              "last_step": t} for t in insufficient]
    frame = pd.DataFrame(rows)
    frame["collapse_onset"] = frame["collapse_onset"].astype("Int64")
    return frame


def test_exact_interval_at_the_edges_and_in_between():
    # k = 0 of 3: [0, 1 - 0.025^(1/3)]; k = 3 of 3: [0.025^(1/3), 1]
    assert collapse_probability([0, 0, 0])[2:] == pytest.approx((0.0, 0.0, 1 - 0.025 ** (1 / 3)))
    assert collapse_probability([1, 1, 1])[2:] == pytest.approx((1.0, 0.025 ** (1 / 3), 1.0))
    # k = 1 of 2: 1 - (1 - p)^2 = 0.025 and 1 - p^2 = 0.025
    k, n, p, low, high = collapse_probability([1, 0, float("nan")])
    assert (k, n, p) == (1, 2, 0.5)
    assert (low, high) == pytest.approx((1 - math.sqrt(0.975), math.sqrt(0.975)))
    assert math.isnan(collapse_probability([])[2])


def test_kaplan_meier_with_censoring_matches_the_product_limit_by_hand():
    # collapses at 10 and 20; runs that never collapsed end at 15, 30, 30
    curve = survival_curve(runs("a", events=(10, 20), censored=(15, 30, 30)))
    by_step = curve.set_index("step")
    assert by_step.loc[0, "survival"] == 1.0
    assert by_step.loc[10, "survival"] == pytest.approx(4 / 5)  # 5 at risk, 1 collapses
    assert by_step.loc[15, "survival"] == pytest.approx(4 / 5)  # a censored run removes itself, no drop
    assert by_step.loc[20, "survival"] == pytest.approx(4 / 5 * 2 / 3)  # 3 at risk, 1 collapses
    assert by_step.loc[30, "survival"] == pytest.approx(8 / 15)
    # Greenwood at 10: V = 1 / (5 * 4); on the log(-log) scale se = sqrt(V) / |log S|; S^exp(-/+ 1.96 se)
    z, s = stats.norm.ppf(0.975), 0.8
    se = math.sqrt(1 / 20) / abs(math.log(s))
    assert by_step.loc[10, "low"] == pytest.approx(s ** math.exp(z * se), rel=1e-6)
    assert by_step.loc[10, "high"] == pytest.approx(s ** math.exp(-z * se), rel=1e-6)
    assert math.isnan(median_onset(curve))  # S never reaches 0.5


def test_median_onset_and_undecided_runs_left_out():
    arm = runs("a", events=(5, 8), censored=(30,), insufficient=(2,))
    curve = survival_curve(arm)
    assert curve["survival"].tolist() == pytest.approx([1, 2 / 3, 1 / 3, 1 / 3])  # the undecided run is not at risk
    assert median_onset(curve) == 8


def test_no_collapse_is_a_flat_curve():
    curve = survival_curve(runs("a", censored=(40, 50)))
    assert curve["survival"].tolist() == [1.0, 1.0, 1.0]
    assert curve["step"].tolist() == [0, 40, 50]


def test_logrank_by_hand():
    # x collapses at 2, y is censored at 3: at step 2 both at risk, 1 collapse; E_x = 1/2, V = 1/4, Z = 1
    p = logrank_p(runs("x", events=(2,)), runs("y", censored=(3,)))
    assert p == pytest.approx(2 * stats.norm.sf(1.0))
    assert math.isnan(logrank_p(runs("x", censored=(5,)), runs("y", censored=(3,))))  # no collapse to compare


def test_collapse_table_against_a_baseline():
    stability = pd.concat([runs("ppo_max", censored=(99, 99, 99)), runs("vanilla", events=(40, 60, 80))])
    table, survival = collapse_table(stability, baseline="ppo_max")
    vanilla = table.set_index("arm").loc["vanilla"]
    assert (vanilla["collapsed"], vanilla["n_runs"]) == (3, 3)
    assert vanilla["p_low"] == pytest.approx(0.025 ** (1 / 3))
    assert vanilla["median_onset"] == 60
    expected = newcombe_interval([1, 1, 1], [0, 0, 0])
    assert (vanilla["difference"], vanilla["difference_low"], vanilla["difference_high"]) == pytest.approx(expected)
    assert 0 < vanilla["logrank_p"] < 0.05  # three early collapses against none
    assert math.isnan(table.set_index("arm").loc["ppo_max", "logrank_p"])
    assert set(survival["arm"]) == {"ppo_max", "vanilla"}
    shown = display_collapse(table).set_index("arm")
    assert shown.loc["vanilla", "collapsed"] == "3/3"
    assert shown.loc["vanilla", "P(collapse) [95% exact]"] == "1.00 [0.29, 1.00]"
    assert shown.loc["vanilla", "ΔP vs ppo_max [95%]"].startswith("+1.00 [+")


def test_arms_the_detector_cannot_decide_yet():
    # two runs that have only just started: no curve, no probability, and the other arm unaffected
    stability = pd.concat([runs("early", insufficient=(3, 4)), runs("vanilla", events=(40,), censored=(90,))])
    table, survival = collapse_table(stability, baseline="vanilla")
    early = table.set_index("arm").loc["early"]
    assert early["n_runs"] == 0 and math.isnan(early["p_collapse"])
    assert set(survival["arm"]) == {"vanilla"} and survival["survival"].dtype == "float64"
