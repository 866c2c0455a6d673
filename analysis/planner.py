"""How many runs a sweep needs: from a pilot sweep's spread, the runs per arm (seeds x testbed instances) that
detect an effect of a given size against the baseline arm with a given power, before a cluster is spent on it.

For each arm other than the baseline and each metric of ``PLANNED_METRICS``:
- a continuous metric (final and peak gold, final KL): where the pilot's runs pair up with the baseline's (by
  seed and instance, as in analysis.effects) the sd of the paired differences and the one-sample t test's power
  (statsmodels TTestPower): the number of pairs; otherwise the pooled sd of the two arms and the two-sample t
  test's power (TTestIndPower, equal sizes): the runs per arm;
- the collapse probability: the two-sample test of proportions on Cohen's h = 2 asin(sqrt(p1)) - 2 asin(sqrt(p2))
  (NormalIndPower), p of each arm from the pilot, or the baseline's p plus the difference asked for.

The effect to detect is, per metric, the size given (``effects``: metric -> size, e.g. final_gold=0.1), else the
pilot's own observed effect ("how many runs would confirm what the pilot saw"). Two-sided tests at ``alpha``;
with several effects tested at once, give alpha / their number (Bonferroni) or expect less power per effect.
Power analysis on a pilot's sd is itself noisy: with 3 pilot runs the sd can be off by a factor of 2, so the
answer is a size to plan around, not a guarantee.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy.stats import norm
from statsmodels.stats.power import NormalIndPower, TTestIndPower, TTestPower
from statsmodels.stats.proportion import proportion_effectsize

from analysis.effects import arms_against, metric_values

PLANNED_METRICS = {"final_gold": "final gold", "peak_gold": "peak gold", "final_kl": "final KL",
                   "collapsed": "collapse probability"}
PLAN_COLUMNS = ["arm", "metric", "label", "baseline", "pilot_effect", "effect", "sd", "design", "pilot_n",
                "runs_needed", "power", "alpha"]
MIN_RUNS = 2  # a t test needs 2 values a side


def _solve(analysis, effect_size: float, power: float, alpha: float) -> float:
    """The smallest whole number of runs (at least MIN_RUNS) at which ``analysis`` (a statsmodels power class;
    equal group sizes) reaches ``power``; NaN when its solver finds none."""
    options = {"alpha": alpha, "alternative": "two-sided"}
    if not isinstance(analysis, TTestPower):
        options["ratio"] = 1.0
    if analysis.power(effect_size, MIN_RUNS, **options) >= power:
        return float(MIN_RUNS)  # a large effect: the solver would search below 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n = analysis.solve_power(effect_size=effect_size, power=power, **options)
    return math.nan if n is None or not np.isfinite(n) else float(max(MIN_RUNS, math.ceil(float(n) - 1e-9)))


def paired_runs_needed(sd: float, effect: float, power: float = 0.8, alpha: float = 0.05) -> float:
    """Pairs (arm run, baseline run) for a two-sided paired t test to find ``effect`` when the paired
    differences spread with ``sd``. NaN when sd or effect is unknown or 0 effect; 2 when sd is 0."""
    if not (np.isfinite(sd) and np.isfinite(effect)) or effect == 0:
        return math.nan
    if sd == 0:
        return float(MIN_RUNS)
    return _solve(TTestPower(), abs(effect) / sd, power, alpha)


def unpaired_runs_needed(sd: float, effect: float, power: float = 0.8, alpha: float = 0.05) -> float:
    """Runs per arm for a two-sided two-sample t test (equal sizes, pooled ``sd``) to find ``effect``."""
    if not (np.isfinite(sd) and np.isfinite(effect)) or effect == 0:
        return math.nan
    if sd == 0:
        return float(MIN_RUNS)
    return _solve(TTestIndPower(), abs(effect) / sd, power, alpha)


def proportion_runs_needed(p_arm: float, p_base: float, power: float = 0.8, alpha: float = 0.05) -> float:
    """Runs per arm for the two-sided two-sample test of proportions (normal approximation on Cohen's h) to
    tell collapse probability ``p_arm`` from ``p_base``."""
    if not (np.isfinite(p_arm) and np.isfinite(p_base)) or p_arm == p_base:
        return math.nan
    h = proportion_effectsize(min(max(p_arm, 0.0), 1.0), min(max(p_base, 0.0), 1.0))
    return _solve(NormalIndPower(), abs(h), power, alpha)


def pooled_sd(a, b) -> float:
    """sqrt of the mean of the two sample variances (equal weights), NaN below 2 values a side."""
    a, b = (np.asarray(v, dtype="float64") for v in (a, b))
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if len(a) < 2 or len(b) < 2:
        return math.nan
    return math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)


def seed_plan(stability: pd.DataFrame, baseline: str, effects: dict[str, float] | None = None,
              power: float = 0.8, alpha: float = 0.05) -> pd.DataFrame:
    """The plan: one row per (arm other than ``baseline``, metric). Columns: pilot_effect (arm mean minus
    baseline mean in the pilot), effect (the size planned for), sd (of the paired differences, or pooled),
    design ("paired": runs_needed counts pairs; "unpaired": runs per arm), pilot_n (pairs or runs per arm in
    the pilot), runs_needed (NaN where the pilot cannot say: under 2 values a side, or no effect).
    Raises ValueError for an unknown baseline or metric, or a power / alpha outside (0, 1)."""
    effects = dict(effects or {})
    unknown = set(effects) - set(PLANNED_METRICS)
    if unknown:
        raise ValueError(f"cannot plan for {', '.join(sorted(unknown))}: expected one of {', '.join(PLANNED_METRICS)}")
    if not (0 < power < 1 and 0 < alpha < 1):
        raise ValueError(f"power and alpha must lie in (0, 1), got power={power}, alpha={alpha}")
    rows = []
    for arm, runs, base, pairs in arms_against(stability, baseline):
        for metric, label in PLANNED_METRICS.items():
            if metric not in stability:
                continue
            arm_values, base_values = metric_values(runs, metric).dropna(), metric_values(base, metric).dropna()
            pilot = float(arm_values.mean() - base_values.mean()) if len(arm_values) and len(base_values) else math.nan
            target = effects.get(metric, pilot)
            if metric == "collapsed":
                p_base = float(base_values.mean()) if len(base_values) else math.nan
                needed = proportion_runs_needed(p_base + target, p_base, power, alpha)
                sd, design, pilot_n = math.nan, "unpaired", min(len(arm_values), len(base_values))
            else:
                differences = (metric_values(pairs, metric) - metric_values(pairs, metric, "_base")).dropna()
                if len(differences) >= 2:
                    sd, design, pilot_n = float(differences.std(ddof=1)), "paired", len(differences)
                    needed = paired_runs_needed(sd, target, power, alpha)
                else:
                    sd, design = pooled_sd(arm_values, base_values), "unpaired"
                    pilot_n = min(len(arm_values), len(base_values))
                    needed = unpaired_runs_needed(sd, target, power, alpha)
            rows.append({"arm": arm, "metric": metric, "label": label, "baseline": baseline,
                         "pilot_effect": pilot, "effect": target, "sd": sd, "design": design, "pilot_n": pilot_n,
                         "runs_needed": needed, "power": power, "alpha": alpha})
    return pd.DataFrame(rows, columns=PLAN_COLUMNS)


def display_plan(plan: pd.DataFrame) -> pd.DataFrame:
    """The plan as strings: one row per (arm, metric)."""
    def number(value, spec: str = "+.3g") -> str:
        return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)

    return pd.DataFrame({
        "arm": plan["arm"], "metric": plan["label"],
        "pilot effect": plan["pilot_effect"].map(number), "effect to detect": plan["effect"].map(number),
        "sd": plan["sd"].map(lambda v: number(v, ".3g")), "pilot": plan["pilot_n"].astype(str) + " "
        + plan["design"].map({"paired": "pairs", "unpaired": "runs/arm"}),
        "runs needed": [("–" if math.isnan(n) else f"{int(n)} " + ("pairs" if d == "paired" else "runs/arm"))
                        for n, d in zip(plan["runs_needed"], plan["design"])],
    })


def factorial_plan(effects: pd.DataFrame, arms: int, power: float = 0.8, alpha: float = 0.05) -> pd.DataFrame:
    """How many replicates of a factorial design (every arm once: one seed on one testbed instance) would
    establish each effect of ``effects`` (analysis.factorial.factorial_effects) that the sweep estimated, if its
    true size were the estimate: the two-sided test at the Bonferroni level alpha / m (m: the estimated effects
    in the table; Holm's step-down is at least as powerful) with the normal approximation, the standard error
    shrinking as 1 / sqrt(runs):

        replicates = r * ((z(1 - alpha / 2m) + z(power)) * se / |estimate|)^2,   r = n_runs / arms now.

    One row per estimated effect: outcome, label, term, estimate, se, replicates_now (r), replicates_needed
    (rounded up, at least 1; NaN for a zero estimate), runs_needed (replicates_needed * arms)."""
    if not (0 < power < 1 and 0 < alpha < 1):
        raise ValueError(f"power and alpha must lie in (0, 1), got power={power}, alpha={alpha}")
    estimated = effects[effects["se"].notna() & effects["estimate"].notna()]
    z = norm.ppf(1 - alpha / (2 * max(len(estimated), 1))) + norm.ppf(power)
    rows = []
    for row in estimated.to_dict("records"):
        now = row["n_runs"] / arms
        needed = math.nan
        if row["estimate"] != 0:
            needed = float(max(1, math.ceil(now * (z * row["se"] / abs(row["estimate"])) ** 2 - 1e-9)))
        rows.append({"outcome": row["outcome"], "label": row["label"], "term": row["term"],
                     "estimate": row["estimate"], "se": row["se"], "replicates_now": now,
                     "replicates_needed": needed, "runs_needed": needed * arms})
    return pd.DataFrame(rows, columns=["outcome", "label", "term", "estimate", "se", "replicates_now",
                                       "replicates_needed", "runs_needed"])


def display_factorial_plan(plan: pd.DataFrame) -> pd.DataFrame:
    """One row per term, one column per outcome: the replicates needed (and the runs they make)."""
    table = {}
    for row in plan.to_dict("records"):
        entry = table.setdefault(row["term"], {"term": row["term"]})
        needed = row["replicates_needed"]
        entry[row["label"]] = "–" if math.isnan(needed) else f"{int(needed)} ({int(row['runs_needed'])} runs)"
    return pd.DataFrame(list(table.values()))
