"""Reward-model quality as an axis (analysis/rm_quality.py): the slope of gold on the reward model's recorded
agreement with gold, per preset, against the least-squares formula; and through rlhf-report on run directories
whose run.json records their reward model's report."""

import json

import numpy as np
import pandas as pd
import pytest
from analysis_fixtures import synthetic_trace, write_run
from scipy import stats

from analysis.cli import main
from analysis.effects import INSTANCE
from analysis.rm_quality import AGREEMENT, has_rm_axis, rm_quality_slopes

AGREEMENTS = (0.6, 0.7, 0.8, 0.9)


def frame() -> pd.DataFrame:
    """ppo_max's peak gold rises 2 per unit of agreement; vanilla's does not move."""
    rows = []
    for preset in ("vanilla", "ppo_max"):
        for i, agreement in enumerate(AGREEMENTS):
            for seed in (0, 1):
                wobble = 0.01 * (-1) ** (i + seed)
                gold = (2.0 * agreement if preset == "ppo_max" else 0.5) + wobble
                rows.append({"arm": f"preset={preset},task.rm.pairs={i}", "preset": preset, "seed": seed,
                             AGREEMENT: agreement, "peak_gold": gold, "final_gold": gold - 0.1})
    return pd.DataFrame(rows)


def test_slopes_match_least_squares_by_hand():
    runs = frame()
    slopes = rm_quality_slopes(runs).set_index(["group", "outcome"])
    ppo_max = runs[runs["preset"] == "ppo_max"]
    x, y = ppo_max[AGREEMENT].to_numpy(), ppo_max["peak_gold"].to_numpy()
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    residuals = y - (y.mean() + slope * (x - x.mean()))
    se = np.sqrt((residuals ** 2).sum() / (len(x) - 2) / ((x - x.mean()) ** 2).sum())
    half = stats.t.ppf(0.975, len(x) - 2) * se
    row = slopes.loc[("ppo_max", "peak_gold")]
    assert row["slope"] == pytest.approx(slope) and row["slope"] == pytest.approx(2.0, abs=0.1)
    assert (row["slope_low"], row["slope_high"]) == pytest.approx((slope - half, slope + half))
    flat = slopes.loc[("vanilla", "peak_gold")]
    assert flat["slope_low"] < 0 < flat["slope_high"]  # no effect: the interval covers 0
    assert has_rm_axis(runs) and not has_rm_axis(runs.assign(**{AGREEMENT: 0.7}))


def test_one_reward_model_per_instance_is_no_axis():
    """Instances each build their own reward model: agreements that differ only between instances are not an
    axis (the instance changes everything else too); two reward models on one instance are."""
    runs = frame()
    runs[INSTANCE] = [AGREEMENTS.index(a) for a in runs[AGREEMENT]]  # one reward model per instance
    assert not has_rm_axis(runs)
    runs.loc[runs.index[0], AGREEMENT] = 0.65  # a second reward model on instance 0
    assert has_rm_axis(runs)


def test_rlhf_report_reads_the_recorded_reward_model(tmp_path):
    for i, row in enumerate(frame().to_dict("records")):
        trace = synthetic_trace(60, None, noise=0.0, seed=i)
        trace["reward/gold_mean"] += row["peak_gold"]
        run_dir = write_run(tmp_path / "sweep" / str(i), run_id=f"r{i}", arm=row["arm"], seed=row["seed"], trace=trace)
        info = json.loads((run_dir / "run.json").read_text())
        info.update(preset=row["preset"], reward_model={"gold_accuracy": row[AGREEMENT], "label_accuracy": 0.6,
                                                        "probes": {"clean": {"score": 1.0}}})
        (run_dir / "run.json").write_text(json.dumps(info))
    assert main([str(tmp_path / "sweep"), "--no-progress", "-o", str(tmp_path / "out")]) == 0
    slopes = pd.read_csv(tmp_path / "out" / "rm_quality.csv").set_index(["group", "outcome"])
    assert slopes.loc[("ppo_max", "peak_gold"), "slope"] == pytest.approx(2.0, abs=0.1)
    assert (tmp_path / "out" / "figures" / "rm_quality.png").is_file()
    assert "## Reward-model quality" in (tmp_path / "out" / "report.md").read_text()
