"""The collapse detector on constructed traces with known onsets, stability metrics and arm summaries."""

import math

import numpy as np
import pandas as pd
import pytest
from analysis_fixtures import KL_INIT, KL_REF, old_style, synthetic_trace

from analysis import CollapseRules, arm_summary, detect_collapse, run_metrics, run_stability
from analysis.stability import (_hinge_breakpoint, noise_sd, reference_kl_runs, smooth, stability_criteria,
                                t95)

GOLD_FREE = CollapseRules(use_gold=False)


@pytest.mark.parametrize("onset", [40, 100, 180])
def test_gold_rule_finds_a_known_onset_exactly_without_noise(onset):
    result = detect_collapse(synthetic_trace(250, collapse_at=onset))
    assert result.collapsed and result.rule == "gold"
    assert abs(result.onset - onset) <= 1
    assert onset < result.confirmed_step <= onset + 30


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n_steps, onset", [(300, 100), (1000, 700)])
def test_gold_rule_finds_a_known_onset_in_noise(n_steps, onset, seed):
    result = detect_collapse(synthetic_trace(n_steps, collapse_at=onset, noise=1.0, seed=seed))
    assert result.collapsed and abs(result.onset - onset) <= 8


@pytest.mark.parametrize("onset", [60, 150])
@pytest.mark.parametrize("noise", [0.0, 2.0])
def test_proxy_free_rule_finds_a_known_onset(onset, noise):
    trace = synthetic_trace(250, collapse_at=onset, noise=noise, seed=onset)
    for result in (detect_collapse(trace, GOLD_FREE), detect_collapse(trace.drop(columns="reward/gold_mean"))):
        assert result.collapsed and result.rule == "proxy_free"
        assert onset <= result.onset <= onset + 6  # thresholds are crossed a few steps into the collapse
        assert result.confirmed_step == result.onset


@pytest.mark.parametrize("rules", [CollapseRules(), GOLD_FREE], ids=["gold", "proxy_free"])
def test_stable_traces_are_not_flagged(rules):
    for noise, seed in [(0.0, 0)] + [(noise, seed) for noise in (1.0, 2.0, 4.0) for seed in range(8)]:
        result = detect_collapse(synthetic_trace(400, noise=noise, seed=seed), rules)
        assert not result.collapsed, (noise, seed)
        assert result.rule == ("gold" if rules.use_gold else "proxy_free")


def test_noise_spikes_and_a_temporary_dip_are_not_flagged():
    trace = synthetic_trace(300, noise=1.0, seed=3)
    trace.loc[150, "reward/gold_mean"] -= 3.0  # one outlier batch
    trace.loc[200:205, "reward/gold_mean"] -= 0.5  # a dip shorter than patience
    assert not detect_collapse(trace).collapsed


def test_gold_falling_with_proxy_is_a_breakdown_not_pattern_collapse():
    trace = synthetic_trace(250, collapse_at=100)
    trace["reward/proxy_mean"] = trace["reward/gold_mean"] * 2
    assert not detect_collapse(trace).collapsed
    assert detect_collapse(trace, CollapseRules(require_proxy_up=False)).collapsed


def test_proxy_free_rule_needs_kl_and_enough_degeneration_signals():
    trace = synthetic_trace(250, collapse_at=100)
    calm = synthetic_trace(250)
    kl_only = trace.copy()
    kl_only[["ppl/policy", "length/response_mean", "diversity/repeat_ngram_frac"]] = \
        calm[["ppl/policy", "length/response_mean", "diversity/repeat_ngram_frac"]]
    assert not detect_collapse(kl_only, GOLD_FREE).collapsed

    one_signal = kl_only.copy()
    one_signal["ppl/policy"] = trace["ppl/policy"]
    assert not detect_collapse(one_signal, GOLD_FREE).collapsed
    assert detect_collapse(one_signal, CollapseRules(use_gold=False, min_degeneration_signals=1)).collapsed

    no_kl_blowup = trace.copy()
    no_kl_blowup[list(KL_INIT)] = calm[list(KL_INIT)]
    assert not detect_collapse(no_kl_blowup, GOLD_FREE).collapsed
    assert not detect_collapse(trace, CollapseRules(use_gold=False, kl_threshold=40)).collapsed


def test_insufficient_data_and_collapses_too_recent_to_confirm():
    short = synthetic_trace(12, collapse_at=3)
    assert detect_collapse(short).rule == "insufficient"
    assert detect_collapse(short[["reward/proxy_mean"]]).rule == "insufficient"
    assert detect_collapse(pd.DataFrame(index=pd.Index([], name="step"))).rule == "insufficient"
    recent = synthetic_trace(200, collapse_at=190)
    assert not detect_collapse(recent).collapsed


def test_rules_validate_their_values():
    with pytest.raises(ValueError):
        CollapseRules(window=0)
    with pytest.raises(ValueError):
        CollapseRules(gold_drop_frac=1.5)
    with pytest.raises(ValueError):
        CollapseRules(min_degeneration_signals=4)


def test_smoothing_noise_estimate_and_hinge_fit():
    series = pd.Series(np.random.default_rng(0).standard_normal(500))
    pd.testing.assert_series_equal(smooth(series, 5), series.rolling(5, center=True, min_periods=1).mean())
    assert noise_sd(series + np.linspace(0, 50, 500)) == pytest.approx(1.0, rel=0.15)
    y = np.concatenate([np.linspace(0, 1, 31), 1 - 0.1 * np.arange(1, 20)])
    assert _hinge_breakpoint(y) == 30
    assert _hinge_breakpoint(np.array([0.0, 1.0, 0.0])) == 1


def test_run_metrics_on_a_handcrafted_trace():
    steps = pd.Index(range(30), name="step")
    trace = pd.DataFrame({
        "reward/proxy_mean": np.arange(30.0), "reward/gold_mean": np.full(30, 2.0),
        "kl/ref_k1": np.full(30, 99.0), "kl/ref_k3": np.arange(30.0) / 10,
        "ppl/policy": np.r_[np.full(15, 10.0), np.full(15, 5.0)], "length/response_mean": np.full(30, 20.0),
        "diversity/repeat_ngram_frac": np.r_[np.full(20, 0.1), np.full(10, 0.3)],
    }, index=steps)
    m = run_metrics(trace, CollapseRules(window=3), final_window=10, kl_budgets=(1, 2.5))

    assert m["kl_metric"] == "kl/ref_k3"
    assert m["initial_proxy"] == 0.5 and m["final_proxy"] == 24.5 and m["peak_proxy"] == 28.5
    assert m["final_gold"] == 2.0 and m["peak_gold"] == 2.0
    assert m["max_kl"] == pytest.approx(2.85) and m["final_kl"] == pytest.approx(2.45)
    assert m["proxy_at_kl_1"] == pytest.approx(10.0)  # smoothed KL <= 1 up to step 10
    assert m["gold_at_kl_2.5"] == 2.0
    assert m["ppl_ratio"] == 0.5 and m["length_ratio"] == 1.0
    assert m["initial_repeat_frac"] == pytest.approx(0.1) and m["final_repeat_frac"] == pytest.approx(0.3)
    assert math.isnan(m["final_entropy"])
    assert not m["collapsed"] and m["collapse_rule"] == "gold"


def test_kl_is_to_the_initial_policy_not_to_the_reference():
    """A run whose reference is not its initial policy (soup): KL to the reference starts high and stays high,
    KL to the initial policy starts at 0. Every KL quantity follows the latter."""
    trace = synthetic_trace(60, noise=1.0, seed=1)
    trace[list(KL_REF)] = trace[list(KL_INIT)].to_numpy() + 12.0
    rules = CollapseRules(window=5)
    m = run_metrics(trace, rules, final_window=10, kl_budgets=(1.5,))

    init = trace["kl/init_k3"]
    assert m["kl_metric"] == "kl/init_k3"
    assert m["final_kl"] == pytest.approx(init.tail(10).mean())
    assert m["max_kl"] == pytest.approx(smooth(init, 5).max())
    assert m["max_kl"] < rules.kl_threshold < trace["kl/ref_k3"].min()
    within = smooth(init, 5) <= 1.5
    assert 0 < within.sum() < len(trace)
    assert m["gold_at_kl_1.5"] == pytest.approx(smooth(trace["reward/gold_mean"], 5)[within].max())


def test_proxy_free_rule_reads_kl_to_the_initial_policy():
    collapsing = synthetic_trace(250, collapse_at=100)
    calm = synthetic_trace(250)
    far_reference = collapsing.copy()  # degenerates, but travels little: a reference far from the initial policy
    far_reference[list(KL_INIT)] = calm[list(KL_INIT)]
    assert detect_collapse(collapsing, GOLD_FREE).collapsed
    assert not detect_collapse(far_reference, GOLD_FREE).collapsed
    close_reference = collapsing.copy()  # travels far; the reference moved along (KL to it stays low)
    close_reference[list(KL_REF)] = calm[list(KL_REF)]
    assert detect_collapse(close_reference, GOLD_FREE).collapsed


def _stability_table():
    rows = []
    for arm, onset in [("vanilla", 80), ("ppo_max", None)]:
        for seed in range(3):
            trace = synthetic_trace(200, collapse_at=onset, noise=1.0, seed=seed)
            rows.append(trace.assign(run_id=f"{arm}-{seed}").reset_index())
    traces = pd.concat(rows).melt(id_vars=["run_id", "step"], var_name="metric", value_name="value")
    traces = traces.astype({"run_id": "category", "metric": "category"})
    runs = pd.DataFrame({
        "run_id": [f"{arm}-{seed}" for arm in ("vanilla", "ppo_max") for seed in range(3)],
        "arm": ["vanilla"] * 3 + ["ppo_max"] * 3, "seed": [0, 1, 2] * 2,
        "status": ["completed"] * 5 + ["diverged"], "n_steps": [200] * 6, "nonfinite_values": [0] * 6,
    })
    return run_stability(runs, traces)


def test_run_stability_and_arm_summary():
    stability = _stability_table()
    assert stability["collapsed"].tolist() == [True] * 3 + [False] * 3
    assert stability["diverged"].tolist() == [False] * 5 + [True]
    assert str(stability["collapse_onset"].dtype) == "Int64"

    summary = arm_summary(stability)
    assert list(summary["arm"]) == ["vanilla", "ppo_max"]
    vanilla, ppo_max = summary.iloc[0], summary.iloc[1]
    assert (vanilla["n_runs"], vanilla["collapse_frac"], ppo_max["collapse_frac"]) == (3, 1.0, 0.0)
    assert abs(vanilla["collapse_onset_median"] - 80) <= 8 and math.isnan(ppo_max["collapse_onset_median"])
    assert ppo_max["n_completed"] == 2 and ppo_max["diverged_frac"] == pytest.approx(1 / 3)
    gold = stability.loc[:2, "final_gold"]
    assert vanilla["final_gold_mean"] == pytest.approx(gold.mean())
    assert vanilla["final_gold_ci95"] == pytest.approx(4.303 * gold.std() / math.sqrt(3), rel=1e-4)  # t(0.975, 2)
    assert vanilla["final_gold_mean"] < 0 < ppo_max["final_gold_mean"]
    assert {"final_kl_mean", "final_kl_sd", "max_kl_ci95", "gold_at_kl_3_mean"} <= set(summary.columns)
    assert vanilla["pass_no_collapse"] == 0 and ppo_max["pass_no_collapse"] == 1
    assert ppo_max["pass_kl_bounded"] == 1 and vanilla["pass_gold_above_initial"] == 0


def test_criteria_are_unknown_where_metrics_are_missing():
    stability = _stability_table()
    stability.loc[0, ["final_gold", "initial_gold"]] = np.nan
    stability.loc[1, "collapse_rule"] = "insufficient"
    criteria = stability_criteria(stability)
    assert math.isnan(criteria.loc[0, "gold_above_initial"]) and math.isnan(criteria.loc[1, "no_collapse"])
    assert set(criteria.columns) == {"no_collapse", "no_divergence", "kl_bounded", "gold_above_initial",
                                     "ppl_kept", "length_kept", "repetition_kept"}


def test_t_quantiles():
    assert t95(1) == pytest.approx(12.706, abs=1e-3) and t95(30) == pytest.approx(2.042, abs=1e-3)
    assert t95(31) == pytest.approx(2.040, abs=1e-3) and t95(1000) == pytest.approx(1.962, abs=1e-3)
    assert math.isnan(t95(0))


def _long(traces: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, traces) frames, as analysis.load builds them, of wide traces keyed by run id (arm = run id)."""
    rows = [trace.assign(run_id=run_id).reset_index() for run_id, trace in traces.items()]
    long = pd.concat(rows).melt(id_vars=["run_id", "step"], var_name="metric", value_name="value").dropna()
    long = long.astype({"run_id": "category", "metric": "category"})
    runs = pd.DataFrame({"run_id": list(traces), "arm": list(traces), "seed": 0, "status": "completed",
                         "n_steps": [len(t) for t in traces.values()], "nonfinite_values": 0})
    return runs, long


def test_each_run_is_measured_with_the_kl_it_logged():
    """In a sweep mixing new runs and an old one that logged KL to its reference only, the new runs are measured
    by KL to their initial policy and the old one falls back to its KL to the reference (which the report flags)."""
    new = synthetic_trace(40, noise=1.0, seed=2)
    new[list(KL_REF)] = new[list(KL_INIT)].to_numpy() + 12.0
    old = old_style(synthetic_trace(40, noise=1.0, seed=3))
    stability = run_stability(*_long({"new": new, "old": old}), final_window=10)
    assert new["kl/ref_k3"].min() > CollapseRules().kl_threshold
    assert stability_criteria(stability).loc[0, "kl_bounded"] == 1.0
    stability = stability.set_index("run_id")

    assert stability.loc["new", "kl_metric"] == "kl/init_k3" and stability.loc["old", "kl_metric"] == "kl/ref_k3"
    assert stability.loc["new", "final_kl"] == pytest.approx(new["kl/init_k3"].tail(10).mean())
    assert stability.loc["old", "final_kl"] == pytest.approx(old["kl/ref_k3"].tail(10).mean())
    assert list(reference_kl_runs(stability.reset_index())) == ["old"]
