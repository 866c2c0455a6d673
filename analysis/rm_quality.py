"""Reward-model quality as an axis (the PPO-max paper's RQ1: does the reward model's quality bound what PPO
reaches?): each run's peak and final gold against its reward model's agreement with gold on held-out pairs
(run.json `reward_model.gold_accuracy`, recorded by runs on the toy and reviews tasks), one line per policy
group (the preset, else the trick setting that is not the reward model's).

For each group and outcome, the least-squares line outcome = a + b x agreement over the group's runs, with the
95 % t interval of the slope b (scipy.stats.linregress): b > 0 with an interval above 0 says that a better reward
model buys more gold under that group's tricks.
"""

from __future__ import annotations

import math

import pandas as pd
from scipy import stats

from analysis.effects import INSTANCE

AGREEMENT = "reward_model.gold_accuracy"
OUTCOMES = {"peak_gold": "peak gold", "final_gold": "final gold"}
SLOPE_COLUMNS = ["group", "outcome", "label", "n_runs", "slope", "slope_low", "slope_high", "p", "r"]


def has_rm_axis(runs: pd.DataFrame) -> bool:
    """Whether the runs span at least two reward models of different recorded quality on one testbed instance.
    Each instance builds its own reward model, so a sweep over instances alone (one reward model each) records
    different agreements too, but there the agreement moves with everything else the instance changes: no axis."""
    if AGREEMENT not in runs:
        return False
    rated = runs.dropna(subset=[AGREEMENT])
    if INSTANCE not in rated:
        return rated[AGREEMENT].nunique() >= 2
    return bool((rated.groupby(INSTANCE)[AGREEMENT].nunique() >= 2).any())


def policy_group(runs: pd.DataFrame) -> pd.Series:
    """The group a run's line belongs to: its preset when the runs have several, else its arm."""
    if "preset" in runs and runs["preset"].nunique(dropna=True) >= 2:
        return runs["preset"].astype(str)
    return runs["arm"].astype(str)


def rm_quality_slopes(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (group, outcome): the slope of the outcome on the reward model's agreement with gold, its 95 % t
    interval (n - 2 degrees of freedom), p and the correlation r; NaN below 3 runs or one agreement value.
    ``runs``: run_stability rows joined with the runs frame (the report's runs.csv)."""
    rows = []
    groups = policy_group(runs)
    for group, members in runs.groupby(groups, sort=False):
        for outcome, label in OUTCOMES.items():
            data = members[[AGREEMENT, outcome]].astype("float64").dropna()
            row = {"group": group, "outcome": outcome, "label": label, "n_runs": len(data), "slope": math.nan,
                   "slope_low": math.nan, "slope_high": math.nan, "p": math.nan, "r": math.nan}
            if len(data) >= 3 and data[AGREEMENT].nunique() >= 2:
                fit = stats.linregress(data[AGREEMENT], data[outcome])
                half = stats.t.ppf(0.975, len(data) - 2) * fit.stderr
                row.update(slope=fit.slope, slope_low=fit.slope - half, slope_high=fit.slope + half, p=fit.pvalue,
                           r=fit.rvalue)
            rows.append(row)
    return pd.DataFrame(rows, columns=SLOPE_COLUMNS)


def display_slopes(slopes: pd.DataFrame) -> pd.DataFrame:
    """One row per group: "slope [low, high]" per outcome."""
    def cell(row) -> str:
        if math.isnan(row["slope"]):
            return "–"
        return f"{row['slope']:+.2f} [{row['slope_low']:+.2f}, {row['slope_high']:+.2f}] (r {row['r']:+.2f})"

    table = {}
    for row in slopes.to_dict("records"):
        entry = table.setdefault(row["group"], {"group": row["group"], "runs": row["n_runs"]})
        entry[f"{row['label']} per unit of agreement"] = cell(row)
    return pd.DataFrame(list(table.values()))


def points(runs: pd.DataFrame) -> pd.DataFrame:
    """Per run: group, agreement and the outcomes (the figure's dots)."""
    out = runs[[AGREEMENT, *OUTCOMES]].astype("float64").assign(group=policy_group(runs).to_numpy())
    return out.dropna(subset=[AGREEMENT])
