"""Collapse as a probability with its time course, per arm of a sweep.

- **Probability**: k collapsed runs of n, p = k / n, with the exact (Clopper-Pearson) binomial 95 % interval
  (scipy.stats.binomtest): never outside [0, 1], and honest at n = 3.
- **Time course**: the time to collapse is the detector's onset step (analysis.stability); a run that never
  collapsed is right-censored at its last logged step (it was seen not to collapse that far, no further). The
  Kaplan-Meier estimate of S(t) = P(no collapse by step t), with its pointwise 95 % interval (Greenwood's
  variance on the log(-log) scale: scipy.stats.ecdf on scipy.stats.CensoredData).
- **Arms compared** with a baseline arm: the difference in collapse probability with Newcombe's interval
  (analysis.effects) and the log-rank test of equal survival curves (scipy.stats.logrank; two-sided p).

Input rows: run_stability's (analysis.stability) with ``arm``, ``collapsed``, ``collapse_onset``,
``collapse_rule`` and ``last_step`` (else ``n_steps`` - 1). A run whose detector had too little data
(``collapse_rule == "insufficient"``) is left out: neither an event nor a censored time.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from analysis.effects import newcombe_interval

COLLAPSE_COLUMNS = ["arm", "n_runs", "collapsed", "p_collapse", "p_low", "p_high", "median_onset",
                    "survival_end", "survival_end_low", "survival_end_high", "last_step", "baseline", "difference",
                    "difference_low", "difference_high", "logrank_p"]
SURVIVAL_COLUMNS = ["arm", "step", "survival", "low", "high"]


def collapse_probability(collapsed) -> tuple[int, int, float, float, float]:
    """k of n runs collapsed (0/1 or bools; NaN ignored), p = k / n and the exact 95 % (Clopper-Pearson)
    interval. -> (k, n, p, low, high); NaN p and interval when n = 0."""
    values = np.asarray(collapsed, dtype="float64")
    values = values[~np.isnan(values)]
    k, n = int(values.sum()), len(values)
    if n == 0:
        return 0, 0, math.nan, math.nan, math.nan
    interval = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return k, n, k / n, float(interval.low), float(interval.high)


def collapse_cell(collapsed) -> str:
    """"k/n [low, high]": collapse_probability as a table cell."""
    k, n, _, low, high = collapse_probability(collapsed)
    return f"{k}/{n} [{low:.2f}, {high:.2f}]"


def _known(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs whose detector could decide (not "insufficient")."""
    if "collapse_rule" not in runs:
        return runs
    return runs[runs["collapse_rule"].astype(str) != "insufficient"]


def _last_steps(runs: pd.DataFrame) -> pd.Series:
    if "last_step" in runs:
        return runs["last_step"].astype("float64")
    return runs["n_steps"].astype("float64") - 1


def censored_times(runs: pd.DataFrame) -> stats.CensoredData:
    """Times to collapse of ``runs``: the onset step of each collapsed run, the last step (right-censored) of
    each other run."""
    runs = _known(runs)
    collapsed = runs["collapsed"].astype(bool).to_numpy()
    onset = runs["collapse_onset"].astype("float64").to_numpy()
    last = _last_steps(runs).to_numpy()
    return stats.CensoredData(uncensored=onset[collapsed], right=last[~collapsed])


def _events(data: stats.CensoredData) -> int:
    """How many of the times are observed collapses (not censored)."""
    return len(data) - data.num_censored()


def survival_curve(runs: pd.DataFrame) -> pd.DataFrame:
    """Kaplan-Meier S(t) = P(no collapse by step t) of ``runs`` with its pointwise 95 % interval (log-log
    Greenwood). -> rows (step, survival, low, high), starting at step 0 with S = 1; empty without runs."""
    data = censored_times(runs)
    if len(data) == 0:
        return pd.DataFrame({column: pd.Series(dtype="float64") for column in ("step", "survival", "low", "high")})
    sf = stats.ecdf(data).sf
    if _events(data) == 0:  # no event: S = 1 throughout, no interval to compute
        low = high = np.ones_like(sf.quantiles)
    else:
        with warnings.catch_warnings():  # undefined where S = 0 (every run at risk collapsed): left NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            interval = sf.confidence_interval(0.95, method="log-log")
        low, high = interval.low.probabilities, interval.high.probabilities
    curve = pd.DataFrame({"step": sf.quantiles, "survival": sf.probabilities, "low": low, "high": high})
    start = pd.DataFrame({"step": [0.0], "survival": [1.0], "low": [1.0], "high": [1.0]})
    return pd.concat([start, curve[curve["step"] > 0]], ignore_index=True)


def median_onset(curve: pd.DataFrame) -> float:
    """The first step where S(t) <= 0.5 (the median time to collapse); NaN when S stays above 0.5."""
    reached = curve[curve["survival"] <= 0.5]
    return float(reached["step"].iloc[0]) if len(reached) else math.nan


def logrank_p(runs: pd.DataFrame, base: pd.DataFrame) -> float:
    """Two-sided p of the log-rank test that ``runs`` and ``base`` share one survival curve; NaN when neither
    has a collapse (nothing to compare) or either has no run."""
    x, y = censored_times(runs), censored_times(base)
    if min(len(x), len(y)) == 0 or _events(x) + _events(y) == 0:
        return math.nan
    return float(stats.logrank(x, y).pvalue)


def collapse_table(stability: pd.DataFrame, baseline: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per arm (in order of appearance): the collapse probability with its exact interval, the median onset
    and S at the arm's last step from its Kaplan-Meier curve, and, against ``baseline`` when given, the
    difference in probability (Newcombe interval) and the log-rank p. -> (table, survival curves), the
    curves in long form (arm, step, survival, low, high)."""
    rows, curves = [], []
    base = _known(stability[stability["arm"] == baseline]) if baseline is not None else None
    for arm, runs in stability.groupby("arm", sort=False):
        runs = _known(runs)
        k, n, p, low, high = collapse_probability(runs["collapsed"].astype("float64"))
        curve = survival_curve(runs)
        curves.append(curve.assign(arm=arm))
        end = curve.iloc[-1] if len(curve) else pd.Series({"step": math.nan, "survival": math.nan,
                                                           "low": math.nan, "high": math.nan})
        row = {"arm": arm, "n_runs": n, "collapsed": k, "p_collapse": p, "p_low": low, "p_high": high,
               "median_onset": median_onset(curve), "survival_end": float(end["survival"]),
               "survival_end_low": float(end["low"]), "survival_end_high": float(end["high"]),
               "last_step": float(end["step"]), "baseline": baseline, "difference": math.nan,
               "difference_low": math.nan, "difference_high": math.nan, "logrank_p": math.nan}
        if base is not None and arm != baseline and len(base):
            difference, d_low, d_high = newcombe_interval(runs["collapsed"].astype("float64"),
                                                          base["collapsed"].astype("float64"))
            row.update(difference=difference, difference_low=d_low, difference_high=d_high,
                       logrank_p=logrank_p(runs, base))
        rows.append(row)
    curves = [curve for curve in curves if len(curve)]
    survival = pd.concat(curves, ignore_index=True)[SURVIVAL_COLUMNS] if curves else pd.DataFrame(
        columns=SURVIVAL_COLUMNS)
    return pd.DataFrame(rows, columns=COLLAPSE_COLUMNS), survival


def display_collapse(table: pd.DataFrame) -> pd.DataFrame:
    """The collapse table as strings for the report."""
    def number(value, digits: int = 2) -> str:
        return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"

    def interval(value, low, high, sign: str = "") -> str:
        if isinstance(value, float) and math.isnan(value):
            return "–"
        low, high = ("–" if math.isnan(v) else f"{v:{sign}.2f}" for v in (low, high))
        return f"{value:{sign}.2f} [{low}, {high}]"

    out = pd.DataFrame({
        "arm": table["arm"],
        "collapsed": table["collapsed"].astype(str) + "/" + table["n_runs"].astype(str),
        "P(collapse) [95% exact]": [interval(*v) for v in zip(table["p_collapse"], table["p_low"], table["p_high"])],
        "median onset": table["median_onset"].map(lambda v: number(v, 0)),
        "S(last step) [95%]": [interval(*v) for v in zip(table["survival_end"], table["survival_end_low"],
                                                         table["survival_end_high"])],
    })
    if table["baseline"].notna().any():
        baseline = table["baseline"].dropna().iloc[0]
        out[f"ΔP vs {baseline} [95%]"] = [interval(v, lo, hi, "+") for v, lo, hi in
                                          zip(table["difference"], table["difference_low"], table["difference_high"])]
        out["log-rank p"] = table["logrank_p"].map(lambda v: number(v, 3))
    return out
