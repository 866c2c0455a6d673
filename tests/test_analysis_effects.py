"""Effects against a baseline arm (analysis.effects): the interval arithmetic against hand-computed values and
scipy's own t tests, the pairing by seed and testbed instance, and rlhf-report's --baseline."""

import contextlib
import io
import math

import numpy as np
import pandas as pd
import pytest
from analysis_fixtures import KL_INIT, KL_REF, synthetic_trace, write_run, write_sweep
from scipy import stats

from analysis.cli import main
from analysis.effects import (INSTANCE, arm_effects, default_baseline, newcombe_interval, paired_interval,
                              welch_interval)


def runs(arm, seeds, final_gold, collapsed=None, onset=None, instances=None):
    n = len(seeds)
    frame = pd.DataFrame({"arm": arm, "seed": seeds, "final_gold": final_gold, "peak_gold": final_gold,
                          "final_kl": [1.0] * n, "collapsed": collapsed or [False] * n,
                          "collapse_onset": pd.array(onset or [None] * n, dtype="Int64")})
    if instances is not None:
        frame[INSTANCE] = instances
    return frame


def effect(effects, arm, metric):
    return effects[(effects["arm"] == arm) & (effects["metric"] == metric)].iloc[0]


def test_paired_interval_by_hand():
    mean, half, n = paired_interval([1.0, 2.0, 3.0])  # sd 1, t(0.975, 2) = 4.302653
    assert (mean, n) == (2.0, 3) and half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert math.isnan(paired_interval([5.0])[1])


def test_intervals_match_scipy_t_tests():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 1.0, 7), rng.normal(0.0, 2.0, 5)
    difference, half = welch_interval(a, b)
    low, high = stats.ttest_ind(a, b, equal_var=False).confidence_interval()
    assert difference == pytest.approx(a.mean() - b.mean()) and (difference - half, difference + half) == pytest.approx(
        (low, high))
    x, y = rng.normal(0, 1, 6), rng.normal(0, 1, 6)
    mean, half, _ = paired_interval(x - y)
    low, high = stats.ttest_rel(x, y).confidence_interval()
    assert (mean - half, mean + half) == pytest.approx((low, high))


def test_runs_pair_by_seed_whatever_their_order():
    """The arm is the baseline plus exactly 1 on every seed: paired, the effect is 1 with no spread; unpaired
    the seeds' spread (0, 10, 20) would swamp it."""
    frame = pd.concat([runs("base", [0, 1, 2], [0.0, 10.0, 20.0]), runs("arm", [2, 0, 1], [21.0, 1.0, 11.0])])
    row = effect(arm_effects(frame, "base"), "arm", "final_gold")
    assert row["paired"] and row["n_pairs"] == 3
    assert (row["effect"], row["ci95_low"], row["ci95_high"]) == pytest.approx((1.0, 1.0, 1.0))
    unpaired = welch_interval([21.0, 1.0, 11.0], [0.0, 10.0, 20.0])
    assert unpaired[1] > 10


def test_pairs_are_seed_and_instance():
    """Two instances x two seeds: pairing on the seed alone would be ambiguous; with the instance each run has
    one partner. A missing partner leaves its run unpaired."""
    base = runs("base", [0, 1, 0, 1], [0.0, 1.0, 5.0, 6.0], instances=[0, 0, 1, 1])
    arm = runs("arm", [0, 1, 0], [0.5, 1.5, 7.0], instances=[0, 0, 1])
    row = effect(arm_effects(pd.concat([base, arm]), "base"), "arm", "final_gold")
    assert row["n_pairs"] == 3 and row["effect"] == pytest.approx((0.5 + 0.5 + 2.0) / 3)
    d = np.array([0.5, 0.5, 2.0])
    assert row["ci95_high"] - row["effect"] == pytest.approx(stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3))
    no_instance = pd.concat([base, arm]).drop(columns=INSTANCE)  # seeds repeat: no pairing, Welch
    row = effect(arm_effects(no_instance, "base"), "arm", "final_gold")
    assert not row["paired"] and row["effect"] == pytest.approx(3.0 - 3.0)


def test_collapse_fraction_and_onset():
    base = runs("base", [0, 1, 2], [0.0] * 3, collapsed=[True, False, False], onset=[15, None, None])
    arm = runs("arm", [0, 1, 2], [0.0] * 3, collapsed=[True, True, False], onset=[10, 20, None])
    effects = arm_effects(pd.concat([base, arm]), "base")
    collapsed = effect(effects, "arm", "collapsed")
    assert collapsed["effect"] == pytest.approx(1 / 3) and not collapsed["paired"]
    assert -1 <= collapsed["ci95_low"] < 0 < 1 / 3 < collapsed["ci95_high"] <= 1  # a score interval, within [-1, 1]
    onset = effect(effects, "arm", "collapse_onset")  # one pair where both collapsed: unpaired, base has 1 value
    assert not onset["paired"] and onset["effect"] == pytest.approx(0.0) and math.isnan(onset["ci95_low"])
    with pytest.raises(ValueError, match="nowhere"):
        arm_effects(pd.concat([base, arm]), "nowhere")


def test_newcombe_interval_matches_the_papers_examples():
    """Newcombe (1998), "Interval estimation for the difference between independent proportions", Table II,
    method 10: 56/70 - 48/80 = 0.2000 in [0.0524, 0.3339]; 9/10 - 3/10 = 0.6 in [0.1705, 0.8090]."""
    for (x1, n1, x2, n2), expected in (((56, 70, 48, 80), (0.2, 0.0524, 0.3339)),
                                       ((9, 10, 3, 10), (0.6, 0.1705, 0.8090))):
        got = newcombe_interval([1] * x1 + [0] * (n1 - x1), [1] * x2 + [0] * (n2 - x2))
        assert got == pytest.approx(expected, abs=5e-5)
    difference, low, high = newcombe_interval([0, 0, 0], [1, 1, 1])  # every run collapses in one arm only
    assert difference == -1 and low == pytest.approx(-1) and -1 < high < 0
    assert all(math.isnan(v) for v in newcombe_interval([], [1.0]))


def test_default_baseline():
    assert default_baseline(["ppo_max_no_kl", "ppo_max", "vanilla"]) == "ppo_max"
    assert default_baseline(["vanilla_kl", "vanilla"]) == "vanilla"
    assert default_baseline(["a", "b"]) is None


def test_rlhf_report_writes_the_effects(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", {"ppo_max": None, "no_kl": 60}, seeds=(0, 1, 2), n_steps=120)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([str(sweep), "-o", str(tmp_path / "out"), "--baseline", "ppo_max", "--no-progress"]) == 0
    out = tmp_path / "out"
    effects = pd.read_csv(out / "effects.csv")
    assert set(effects["arm"]) == {"no_kl"}
    means = effects[~effects["metric"].isin(["collapse_onset", "collapsed"])]  # ppo_max never collapses: no onset
    assert means["paired"].all() and (means["n_pairs"] == 3).all()
    collapsed = effects[effects["metric"] == "collapsed"].iloc[0]  # a difference of proportions: Newcombe's interval
    assert not collapsed["paired"] and -1 <= collapsed["ci95_low"] <= collapsed["ci95_high"] <= 1
    summary = pd.read_csv(out / "summary.csv").set_index("arm")
    assert collapsed["effect"] == pytest.approx(summary.loc["no_kl", "collapse_frac"]
                                                - summary.loc["ppo_max", "collapse_frac"])
    for ext in ("png", "svg"):
        assert (out / "figures" / f"effects.{ext}").stat().st_size > 1000
    markdown = (out / "report.md").read_text()
    assert "## Effects against ppo_max" in markdown and "figures/effects.png" in markdown
    assert "Effects against ppo_max" in (out / "report.html").read_text()
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        assert main([str(sweep), "-o", str(tmp_path / "bad"), "--baseline", "nope", "--no-progress"]) == 2
    assert "nope" in stderr.getvalue() and "ppo_max" in stderr.getvalue()
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([str(sweep), "-o", str(tmp_path / "off"), "--baseline", "none", "--no-progress"]) == 0
    assert not (tmp_path / "off" / "effects.csv").exists()


def test_final_kl_effect_is_the_difference_in_distance_travelled(tmp_path):
    """A soup-reference arm logs a KL to its reference 10 nats above its KL to its initial policy: its effect on
    final KL against an SFT-reference baseline is the difference in KL to the initial policy."""
    finals = {}
    for job, (arm, reference, seed) in enumerate([(arm, reference, seed) for arm, reference in
                                                  [("ppo_max", "sft"), ("soup", "soup")] for seed in (0, 1, 2)]):
        trace = synthetic_trace(60, noise=1.0, seed=job)
        trace[list(KL_REF)] = trace[list(KL_INIT)].to_numpy() + (10.0 if reference == "soup" else 0.0)
        write_run(tmp_path / "sweep" / str(job), run_id=f"{arm}-{seed}", arm=arm, seed=seed, trace=trace,
                  tricks={"reference": reference})
        finals[arm, seed] = trace["kl/init_k3"].tail(10).mean()
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([str(tmp_path / "sweep"), "-o", str(tmp_path / "out"), "--baseline", "ppo_max",
                     "--final-window", "10", "--no-progress"]) == 0
    row = effect(pd.read_csv(tmp_path / "out" / "effects.csv"), "soup", "final_kl")
    expected = np.mean([finals["soup", seed] - finals["ppo_max", seed] for seed in (0, 1, 2)])
    assert row["paired"] and row["effect"] == pytest.approx(expected, abs=1e-6)
    assert abs(row["effect"]) < 5  # not the 10 nats between the references


def test_the_atlas_script_rebuilds_tables_and_forest_plots(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    sweep = write_sweep(tmp_path / "leave_one_out", {"ppo_max": None, "no_kl_penalty": 60, "no_grad_clip": None},
                        seeds=(0, 1), n_steps=100)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "ablation_atlas.py"
    out = subprocess.run([sys.executable, str(script), f"{sweep}=ppo_max", "-o", str(tmp_path / "atlas")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| no_kl_penalty | 2 |" in out.stdout and "| no_grad_clip | 2 |" in out.stdout
    effects = pd.read_csv(tmp_path / "atlas" / "leave_one_out_effects.csv")
    assert set(effects["arm"]) == {"no_kl_penalty", "no_grad_clip"}
    for ext in ("png", "svg"):
        assert (tmp_path / "atlas" / f"leave_one_out_forest.{ext}").stat().st_size > 1000


def test_forest_plot_has_a_panel_per_defined_metric_and_a_full_range_for_collapse():
    """No run collapsed in either arm: no onset panel; the collapse-fraction panel spans -1..1, so a zero effect
    does not read like a finely resolved one."""
    from analysis.plots import forest

    frame = pd.concat([runs("base", [0, 1, 2], [0.0, 1.0, 2.0]), runs("arm", [0, 1, 2], [0.1, 1.2, 2.3])])
    figure = forest(arm_effects(frame, "base"))
    titles = [ax.get_title() for ax in figure.axes]
    assert titles == ["final gold", "peak gold", "final KL", "collapse probability"]
    collapse = figure.axes[titles.index("collapse probability")]
    low, high = collapse.get_xlim()
    assert low <= -1 and high >= 1
    assert figure.axes[0].get_xlim()[1] < 1  # the other panels keep their own scale (gold: 0.2 +- 0.25)
