"""What adding or removing a trick did: each arm's effect relative to a baseline arm, with 95% intervals.

For every arm other than the baseline and every metric of ``EFFECT_METRICS``, the effect is the arm's mean
minus the baseline's mean over runs. Its interval is a t interval:
- **paired**, when at least 2 runs of the arm have a baseline run with the same pairing key (the PPO seed
  and, where the runs record it, the testbed instance `config.task.language_seed`; each key once per arm)
  and both values are known: the mean and t interval of the per-pair differences (sd / sqrt(n), n - 1 dof);
- **unpaired** otherwise (Welch): the difference of the means, sqrt(s1^2 / n1 + s2^2 / n2), with
  Welch-Satterthwaite dof; no interval with fewer than 2 known values on either side.
``final_kl`` is KL to each run's initial policy (the stability ``kl_metric``: kl/init_k3, else k1, else k2), so
arms with different KL references are compared on the distance travelled; only a run from before kl/init_* whose
reference is not its initial policy has its KL to the reference there (the report names such runs).
``collapsed`` is 0/1, so its effect is the difference in collapse probability; its interval is Newcombe's hybrid score
interval for a difference of two proportions (Newcombe 1998, method 10: from the two Wilson intervals), never
paired and never outside [-1, 1] (a t interval on 3 runs of 0/1 spans several units). ``collapse_onset`` is
defined for collapsed runs only, so its pairs are the pairs where both collapsed.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from analysis.stability import t95

# stability column -> label in tables and plots
EFFECT_METRICS = {"final_gold": "final gold", "peak_gold": "peak gold", "final_kl": "final KL",
                  "collapsed": "collapse probability", "collapse_onset": "collapse onset (step)"}
INSTANCE = "config.task.language_seed"  # the testbed instance, in the runs frame of analysis.load
BASE_ARMS = ("ppo_max", "vanilla")  # the bases of the leave-one-out and add-one-in sweeps


def default_baseline(arms) -> str | None:
    """The arm the others are measured against: `ppo_max` or `vanilla` when one is among ``arms`` (the
    ablation sweeps' bases, ppo_max first), else None."""
    arms = list(arms)
    return next((arm for arm in BASE_ARMS if arm in arms), None)


def pair_keys(stability: pd.DataFrame) -> list[str]:
    """The columns runs are paired on: seed, plus the testbed instance when the runs record one."""
    return ["seed"] + ([INSTANCE] if INSTANCE in stability and stability[INSTANCE].notna().any() else [])


def paired_interval(differences) -> tuple[float, float, int]:
    """Mean and 95% t half-width of paired differences (NaN half-width below 2). -> (mean, half, n)."""
    d = np.asarray(differences, dtype="float64")
    d = d[~np.isnan(d)]
    n = len(d)
    if n == 0:
        return math.nan, math.nan, 0
    if n < 2:
        return float(d.mean()), math.nan, n
    return float(d.mean()), t95(n - 1) * float(stats.sem(d)), n


def welch_interval(arm, base) -> tuple[float, float]:
    """Difference of means (arm - base) and its 95% Welch t half-width (scipy's ttest_ind with unequal
    variances). -> (difference, half)."""
    a, b = (np.asarray(v, dtype="float64") for v in (arm, base))
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if len(a) == 0 or len(b) == 0:
        return math.nan, math.nan
    difference = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return difference, math.nan
    if a.var(ddof=1) + b.var(ddof=1) == 0:
        return difference, 0.0
    low, high = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    return difference, float(high - low) / 2


def wilson_interval(successes: int, n: int, z: float) -> tuple[float, float]:
    """Wilson's score interval for a proportion successes / n at normal quantile z. -> (low, high)."""
    p, shrink = successes / n, 1 + z * z / n
    center = (p + z * z / (2 * n)) / shrink
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / shrink
    return center - half, center + half


def newcombe_interval(arm, base, level: float = 0.95) -> tuple[float, float, float]:
    """Difference of two proportions (the 0/1 values ``arm`` minus ``base``, NaN ignored) and Newcombe's hybrid
    score interval (1998, method 10). -> (difference, low, high); NaN without a value on either side."""
    a, b = (np.asarray(v, dtype="float64") for v in (arm, base))
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if len(a) == 0 or len(b) == 0:
        return math.nan, math.nan, math.nan
    z = float(stats.norm.ppf(0.5 + level / 2))
    p1, p2 = a.mean(), b.mean()
    (l1, u1), (l2, u2) = wilson_interval(a.sum(), len(a), z), wilson_interval(b.sum(), len(b), z)
    difference = float(p1 - p2)
    return (difference, difference - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
            difference + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def metric_values(runs: pd.DataFrame, metric: str, suffix: str = "") -> pd.Series:
    """``metric`` of each run as floats (collapsed: 0/1); the onset only where the run collapsed."""
    values = runs[metric + suffix].astype("float64")
    if metric == "collapse_onset":
        values = values.where(runs["collapsed" + suffix].astype(bool))
    return values


def arms_against(stability: pd.DataFrame, baseline: str):
    """Each arm other than ``baseline``, in order of appearance, with the baseline's runs and the pairs: yields
    (arm, its runs, the baseline's runs, pairs), pairs being the arm's runs merged with the baseline's on
    ``pair_keys`` (the baseline's columns suffixed ``_base``); no pairs when a key repeats within either arm (the
    pairs would be ambiguous). Raises ValueError when ``baseline`` is not one of the arms."""
    arms = list(dict.fromkeys(stability["arm"]))
    if baseline not in arms:
        raise ValueError(f"baseline arm {baseline!r} is not among the runs' arms: {', '.join(arms)}")
    keys = pair_keys(stability)
    base = stability[stability["arm"] == baseline]
    for arm in arms:
        if arm == baseline:
            continue
        runs = stability[stability["arm"] == arm]
        unique = not runs.duplicated(keys).any() and not base.duplicated(keys).any()
        pairs = runs.merge(base, on=keys, suffixes=("", "_base")) if unique else runs.iloc[:0].assign(
            **{f"{c}_base": [] for c in base.columns if c not in keys})
        yield arm, runs, base, pairs


def arm_effects(stability: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """One row per (arm, metric), arms other than ``baseline`` in order of appearance: metric, label, arm and
    baseline means, effect, ci95_low, ci95_high, n_pairs (0 when unpaired), n_arm, n_baseline, paired.

    ``stability``: ``run_stability``'s rows, with the runs' pairing columns (seed; `config.task.language_seed`
    when present). Raises ValueError when ``baseline`` is not one of its arms."""
    rows = []
    for arm, runs, base, pairs in arms_against(stability, baseline):
        for metric, label in EFFECT_METRICS.items():
            if metric not in stability:
                continue
            arm_values, base_values = metric_values(runs, metric), metric_values(base, metric)
            differences = (metric_values(pairs, metric) - metric_values(pairs, metric, "_base")).dropna()
            if metric == "collapsed":
                (effect, low, high), n_pairs = newcombe_interval(arm_values, base_values), 0
            else:
                if len(differences) >= 2:
                    effect, half, n_pairs = paired_interval(differences)
                else:
                    (effect, half), n_pairs = welch_interval(arm_values, base_values), 0
                low, high = effect - half, effect + half
            rows.append({"arm": arm, "metric": metric, "label": label, "baseline": baseline,
                         "arm_mean": float(arm_values.mean()), "baseline_mean": float(base_values.mean()),
                         "effect": effect, "ci95_low": low, "ci95_high": high,
                         "n_pairs": n_pairs, "n_arm": int(arm_values.notna().sum()),
                         "n_baseline": int(base_values.notna().sum()), "paired": n_pairs >= 2})
    return pd.DataFrame(rows, columns=["arm", "metric", "label", "baseline", "arm_mean", "baseline_mean", "effect",
                                       "ci95_low", "ci95_high", "n_pairs", "n_arm", "n_baseline", "paired"])


def display_effects(effects: pd.DataFrame) -> pd.DataFrame:
    """The effects as a table of strings, one row per arm: "effect [low, high]" per metric."""
    def cell(row) -> str:
        if math.isnan(row["effect"]):
            return "–"
        interval = "" if math.isnan(row["ci95_low"]) else f" [{row['ci95_low']:+.2f}, {row['ci95_high']:+.2f}]"
        return f"{row['effect']:+.2f}{interval}"

    table = {}
    for arm, rows in effects.groupby("arm", sort=False):
        table[arm] = {"arm": arm, "pairs": int(rows["n_pairs"].max()) or "unpaired",
                      **{row["label"]: cell(row) for row in rows.to_dict("records")}}
    return pd.DataFrame(list(table.values()))
