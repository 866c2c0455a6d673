"""Stability metrics per run and per arm, and the pattern-collapse detector.

Conventions (all on the logged steps of one run; non-finite values are ignored):

* smoothed: centred rolling mean over ``CollapseRules.window`` logged steps (fewer at the ends);
* initial: the smoothed value at the first logged step (the SFT baseline: mean of the first
  ceil(window/2) steps);
* final: the mean of the last ``final_window`` logged raw values (default 10);
* peak / max: the maximum of the smoothed trace;
* KL = kl/init_k3 (to the initial policy; else k1, else k2): the distance travelled, the same for every arm
  whatever its KL reference; for a run from before kl/init_* whose reference is not its initial policy,
  its KL to the reference (kl/ref_k3, else k1, else k2; ``names.pick_kl_metric``). The KL of each run is
  picked among the KL metrics it logged; ``run_metrics``' ``kl_metric`` names it;
* reward at KL budget b: the best smoothed reward over the steps whose smoothed KL is <= b.

The collapse rules are documented on ``CollapseRules`` and ``detect_collapse``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from analysis.frames import INITIAL_REFERENCES, wide_traces
from analysis.names import (ANALYSED, ENTROPY, GOLD, KL_PREFERENCE, LENGTH, PPL, PROXY, REPEAT, is_init_kl,
                            pick_kl_metric)

DEFAULT_FINAL_WINDOW = 10
DEFAULT_KL_BUDGETS = (1.0, 3.0, 10.0)
# Two-sided 95% Student t quantiles for 1..30 degrees of freedom.
@dataclass(frozen=True)
class CollapseRules:
    """Thresholds of the pattern-collapse detector (see ``detect_collapse``).

    Shared:
        window: steps of the centred rolling mean applied to every signal.
        patience: a collapse condition must hold on this many consecutive logged steps.
    Gold rule (used when the gold reward is logged and ``use_gold``):
        use_gold: False forces the proxy-free rule, e.g. to check what a real task would see.
        gold_drop_frac: the gold drawdown from its running peak must exceed this fraction of the gain
            (running peak minus initial gold)...
        noise_sigmas: ...and this many noise standard deviations of the smoothed gold trace.
        require_proxy_up: the smoothed proxy reward must not have fallen (by more than noise_sigmas noise
            sds) below its value at the gold peak: over-optimisation, not a general breakdown.
    Proxy-free rule, using neither reward (used when gold is absent or ``use_gold`` is False):
        kl_threshold: smoothed KL to the initial policy (nats per sequence) above which KL has "exploded".
        ppl_ratio_max: smoothed policy perplexity / initial at or below this = perplexity dropped.
        repeat_rise: smoothed repeated-n-gram fraction minus initial at or above this = repetitive.
        length_ratio_min: smoothed mean response length / initial at or above this = run-on responses.
        min_degeneration_signals: how many of (perplexity drop, repetition rise, length rise) must fire
            together with the KL rule.
    """

    window: int = 5
    patience: int = 10
    use_gold: bool = True
    gold_drop_frac: float = 0.25
    noise_sigmas: float = 5.0
    require_proxy_up: bool = True
    kl_threshold: float = 10.0
    ppl_ratio_max: float = 0.8
    repeat_rise: float = 0.1
    length_ratio_min: float = 1.5
    min_degeneration_signals: int = 2

    def __post_init__(self):
        if self.window < 1 or self.patience < 1:
            raise ValueError("window and patience must be >= 1")
        if not 0 < self.gold_drop_frac <= 1:
            raise ValueError("gold_drop_frac must be in (0, 1]")
        if not 1 <= self.min_degeneration_signals <= 3:
            raise ValueError("min_degeneration_signals must be 1, 2 or 3")


@dataclass(frozen=True)
class CollapseResult:
    """What detect_collapse found for one run.

    rule: "gold", "proxy_free", or "insufficient" (too few logged values for either rule).
    onset: the step the collapse started (None if not collapsed).
    confirmed_step: the first step of the sustained window that confirmed it.
    """

    collapsed: bool
    onset: int | None
    confirmed_step: int | None
    rule: str


def smooth(series: pd.Series, window: int) -> pd.Series:
    """Centred rolling mean over ``window`` logged values (fewer at both ends); expects finite values.

    The mean at position i covers positions i - window//2 .. i + (window-1)//2, clipped to the series (pandas'
    centred window).
    """
    return series.astype("float64").rolling(window, center=True, min_periods=1).mean()


def noise_sd(series: pd.Series) -> float:
    """Robust per-step noise sd of a trace: 1.4826 * MAD of its first differences / sqrt(2).

    Differencing removes a slow trend, so this measures step-to-step noise, not the trend.
    """
    diffs = np.diff(series.to_numpy())
    if len(diffs) < 2:
        return 0.0
    return float(1.4826 * np.median(np.abs(diffs - np.median(diffs))) / math.sqrt(2))


def _finite(trace: pd.DataFrame, metric: str | None) -> pd.Series:
    """The finite values of ``metric`` in a wide per-run trace (indexed by step); empty if absent."""
    if metric is None or metric not in trace:
        return pd.Series([], dtype="float64")
    series = trace[metric]
    return series[np.isfinite(series)]


def kl_metric_of(trace: pd.DataFrame) -> str | None:
    """The KL metric of one run's wide trace: ``pick_kl_metric`` among the KL metrics it has finite values of
    (a per-run frame cut from a sweep's wide frame has every run's columns)."""
    return pick_kl_metric(name for name in KL_PREFERENCE if len(_finite(trace, name)))


def reference_kl_runs(stability: pd.DataFrame) -> pd.Series:
    """The run ids (of ``run_stability``'s rows) whose KL is to their reference, not to their initial policy:
    runs from before kl/init_* whose reference is not their initial policy. A row whose ``tricks.reference``
    (when the frame has it) is the initial policy is never one, whatever its ``kl_metric`` says (a results file
    written before kl/init_* named kl/ref_* for every run)."""
    kl_metric = stability["kl_metric"]
    flagged = kl_metric.notna() & ~kl_metric.map(is_init_kl)
    if "tricks.reference" in stability:
        flagged &= ~stability["tricks.reference"].map(lambda ref: pd.isna(ref) or ref in INITIAL_REFERENCES)
    return stability.loc[flagged, "run_id"]


def _first_sustained(condition: np.ndarray, patience: int) -> int | None:
    """Index of the first run of ``patience`` consecutive True values in ``condition``, or None."""
    if len(condition) < patience:
        return None
    counts = np.concatenate([[0], np.cumsum(condition)])
    hits = np.flatnonzero(counts[patience:] - counts[:-patience] == patience)
    return int(hits[0]) if len(hits) else None


def detect_collapse(trace: pd.DataFrame, rules: CollapseRules = CollapseRules()) -> CollapseResult:
    """Detect pattern collapse in one run's wide trace (index: step, columns: metric names).

    Gold rule, when the gold reward has at least ``window + patience`` finite values and ``use_gold``:
    on smoothed traces, a step t is degenerate when
        running_peak(gold)_t - gold_t > max(gold_drop_frac * (running_peak(gold)_t - initial gold),
                                            noise_sigmas * noise_sd(gold) / sqrt(window))
    and (``require_proxy_up``, when proxy is logged)
        proxy_t >= proxy_at_gold_peak - noise_sigmas * noise_sd(proxy) / sqrt(window).
    Collapse = ``patience`` consecutive degenerate steps (confirmed_step = the first of them); onset = where
    the gold decline began: the kink of a two-slope line fitted to the raw gold around its last peak (see
    ``_gold_onset``), never after confirmed_step.

    Proxy-free rule (uses neither reward), otherwise; it needs KL with at least ``window + patience``
    finite values and at least ``min_degeneration_signals`` of perplexity, repetition, length logged. A
    step t is degenerate when
    smoothed KL_t > kl_threshold and at least ``min_degeneration_signals`` of
        ppl_t / ppl_initial <= ppl_ratio_max,  repeat_t - repeat_initial >= repeat_rise,
        length_t / length_initial >= length_ratio_min
    hold. Collapse = ``patience`` consecutive degenerate steps; onset = the first of them.

    A condition that starts fewer than ``patience`` logged steps before the end is not (yet) reported.
    """
    gold = _finite(trace, GOLD)
    if rules.use_gold and len(gold) >= rules.window + rules.patience:
        return _detect_gold(gold, _finite(trace, PROXY), rules)
    kl = _finite(trace, kl_metric_of(trace))
    signals = _degeneration_signals(trace, kl.index, rules)
    if len(kl) >= rules.window + rules.patience and len(signals) >= rules.min_degeneration_signals:
        return _detect_proxy_free(kl, signals, rules)
    return CollapseResult(False, None, None, "insufficient")


def _detect_gold(gold: pd.Series, proxy: pd.Series, rules: CollapseRules) -> CollapseResult:
    """The gold rule of detect_collapse."""
    g = smooth(gold, rules.window).to_numpy()
    positions = np.arange(len(g))
    running_peak = np.maximum.accumulate(g)
    peak_at = np.maximum.accumulate(np.where(g >= running_peak, positions, 0))
    noise_floor = rules.noise_sigmas * noise_sd(gold) / math.sqrt(rules.window)
    threshold = np.maximum(rules.gold_drop_frac * (running_peak - g[0]), noise_floor)
    tolerance = 1e-9 * (1.0 + np.abs(g).max())  # floating-point noise of the rolling mean
    degenerate = running_peak - g > threshold + tolerance
    if rules.require_proxy_up and len(proxy):
        p = smooth(proxy, rules.window).reindex(gold.index).to_numpy()
        proxy_floor = rules.noise_sigmas * noise_sd(proxy) / math.sqrt(rules.window)
        degenerate &= p >= p[peak_at] - proxy_floor
    first = _first_sustained(degenerate, rules.patience)
    if first is None:
        return CollapseResult(False, None, None, "gold")
    onset = _gold_onset(gold.to_numpy(), g, running_peak[first] - threshold[first], first, rules.patience)
    return CollapseResult(True, int(gold.index[onset]), int(gold.index[first]), "gold")


def _gold_onset(raw: np.ndarray, smoothed: np.ndarray, band_floor: float, first: int, patience: int) -> int:
    """Position where the gold decline confirmed at ``first`` began.

    Rough estimate: the last position before ``first`` where the smoothed gold was at or above the median
    of its near-peak stretch (from its first entry into the band above ``band_floor`` up to ``first``).
    Refined: the kink of a two-slope line fitted to the raw gold on a window around the rough estimate
    (it reaches twice the detection lag, plus ``patience``, before it and ends with the confirmation
    window).
    """
    near_peak = int(np.flatnonzero(smoothed[: first + 1] >= band_floor)[0])
    level = np.median(smoothed[near_peak: first + 1])
    rough = int(np.flatnonzero(smoothed[: first + 1] >= level)[-1])
    start = max(near_peak, rough - 2 * (first - rough) - patience)
    end = min(first + patience, len(raw))
    return min(start + _hinge_breakpoint(raw[start:end]), first) if end - start >= 3 else rough


def _hinge_breakpoint(y: np.ndarray) -> int:
    """Position b (1 <= b <= len(y) - 2) of the kink of the best continuous two-slope line through y.

    Least squares of y_i ~ c + s1 * min(i - b, 0) + s2 * max(i - b, 0), for every b at once through
    prefix sums; needs len(y) >= 3.
    """
    n = len(y)
    i = np.arange(n, dtype="float64")
    kinks = np.arange(1, n - 1)
    b = kinks.astype("float64")

    def split(values):
        """(sum over positions < b, sum over positions >= b) for every candidate b."""
        left = np.concatenate([[0.0], np.cumsum(values)])[kinks]
        return left, values.sum() - left

    (n_l, n_r), (i_l, i_r), (ii_l, ii_r), (y_l, y_r), (iy_l, iy_r) = (
        split(values) for values in (np.ones(n), i, i * i, y, i * y))
    # Sums of the regressors u = min(i - b, 0) and v = max(i - b, 0), their squares and products with y.
    u, v = i_l - b * n_l, i_r - b * n_r
    uu, vv = ii_l - 2 * b * i_l + b**2 * n_l, ii_r - 2 * b * i_r + b**2 * n_r
    uy, vy = iy_l - b * y_l, iy_r - b * y_r
    zero = np.zeros_like(b)
    gram = np.stack([np.stack([np.full_like(b, n), u, v], -1), np.stack([u, uu, zero], -1),
                     np.stack([v, zero, vv], -1)], -2)
    moments = np.stack([np.full_like(b, y.sum()), uy, vy], -1)
    coef = np.linalg.solve(gram, moments[..., None])[..., 0]
    # Residual sum of squares = sum(y^2) - coef . moments: the best kink maximises the second term.
    return int(kinks[np.argmax((coef * moments).sum(-1))])


def _degeneration_signals(trace: pd.DataFrame, steps: pd.Index, rules: CollapseRules) -> list[np.ndarray]:
    """Boolean arrays over ``steps`` for each logged degeneration signal (perplexity, repetition, length)."""
    tests = (
        (PPL, lambda s: s / s.iloc[0] <= rules.ppl_ratio_max),
        (REPEAT, lambda s: s - s.iloc[0] >= rules.repeat_rise),
        (LENGTH, lambda s: s / s.iloc[0] >= rules.length_ratio_min),
    )
    signals = []
    for metric, test in tests:
        series = _finite(trace, metric)
        if len(series):
            fired = test(smooth(series, rules.window)).reindex(steps, fill_value=False)
            signals.append(fired.to_numpy(dtype=bool))
    return signals


def _detect_proxy_free(kl: pd.Series, signals: list[np.ndarray], rules: CollapseRules) -> CollapseResult:
    """The proxy-free rule of detect_collapse."""
    kl_high = smooth(kl, rules.window).to_numpy() > rules.kl_threshold
    degenerate = kl_high & (np.sum(signals, axis=0) >= rules.min_degeneration_signals)
    first = _first_sustained(degenerate, rules.patience)
    if first is None:
        return CollapseResult(False, None, None, "proxy_free")
    return CollapseResult(True, int(kl.index[first]), int(kl.index[first]), "proxy_free")


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when the denominator is 0 or NaN."""
    return numerator / denominator if denominator else math.nan


class _Signal:
    """One metric of one run: its finite raw values and their smoothed trace."""

    def __init__(self, trace: pd.DataFrame, metric: str | None, window: int):
        self.raw = _finite(trace, metric)
        self.smoothed = smooth(self.raw, window)

    def initial(self) -> float:
        """Smoothed value at the first logged step (NaN if never logged)."""
        return float(self.smoothed.iloc[0]) if len(self.raw) else math.nan

    def final(self, final_window: int) -> float:
        """Mean of the last ``final_window`` raw values (NaN if never logged)."""
        return float(self.raw.iloc[-final_window:].mean()) if len(self.raw) else math.nan

    def peak(self) -> float:
        """Maximum of the smoothed trace (NaN if never logged)."""
        return float(self.smoothed.max()) if len(self.raw) else math.nan

    def best_within(self, kl: "_Signal", budget: float) -> float:
        """Best smoothed value over the steps whose smoothed KL is <= budget (NaN if none)."""
        within = self.smoothed[kl.smoothed.reindex(self.smoothed.index) <= budget]
        return float(within.max()) if len(within) else math.nan


def run_metrics(trace: pd.DataFrame, rules: CollapseRules = CollapseRules(),
                final_window: int = DEFAULT_FINAL_WINDOW, kl_budgets=DEFAULT_KL_BUDGETS) -> dict:
    """Stability metrics of one run's wide trace (index: step, columns: metric names); see module doc."""
    kl_metric = kl_metric_of(trace)
    proxy, gold, kl, ppl, length, repeat, entropy = (
        _Signal(trace, metric, rules.window) for metric in (PROXY, GOLD, kl_metric, PPL, LENGTH, REPEAT, ENTROPY))
    out = {
        "initial_proxy": proxy.initial(), "final_proxy": proxy.final(final_window), "peak_proxy": proxy.peak(),
        "initial_gold": gold.initial(), "final_gold": gold.final(final_window), "peak_gold": gold.peak(),
        "peak_gold_step": gold.smoothed.idxmax() if len(gold.raw) else None,
        "kl_metric": kl_metric, "max_kl": kl.peak(), "final_kl": kl.final(final_window),
    }
    for budget in kl_budgets:
        out[f"proxy_at_kl_{budget:g}"] = proxy.best_within(kl, budget)
        out[f"gold_at_kl_{budget:g}"] = gold.best_within(kl, budget)
    out.update({
        "ppl_ratio": _ratio(ppl.final(final_window), ppl.initial()),
        "length_ratio": _ratio(length.final(final_window), length.initial()),
        "final_length": length.final(final_window),
        "initial_repeat_frac": repeat.initial(), "final_repeat_frac": repeat.final(final_window),
        "final_entropy": entropy.final(final_window),
    })
    result = detect_collapse(trace, rules)
    out.update({"collapsed": result.collapsed, "collapse_onset": result.onset,
                "collapse_confirmed_step": result.confirmed_step, "collapse_rule": result.rule})
    return out


def run_stability(runs: pd.DataFrame, traces: pd.DataFrame, rules: CollapseRules = CollapseRules(),
                  final_window: int = DEFAULT_FINAL_WINDOW, kl_budgets=DEFAULT_KL_BUDGETS) -> pd.DataFrame:
    """One row per run of ``runs``: run_id, arm, seed, status, n_steps, last_step, diverged and ``run_metrics``.

    ``diverged`` is True when the status is "diverged" or the run logged a NaN or infinite value.
    """
    wide = wide_traces(traces, ANALYSED)
    per_run = {run_id: frame.droplevel("run_id") for run_id, frame in wide.groupby(level="run_id", observed=True)}
    empty = pd.DataFrame(index=pd.Index([], dtype="int64", name="step"))
    rows = []
    for run in runs.to_dict("records"):
        rows.append({
            "run_id": run["run_id"], "arm": run["arm"], "seed": run["seed"], "status": run["status"],
            "n_steps": run["n_steps"], "last_step": run.get("last_step"),
            "diverged": run["status"] == "diverged" or run["nonfinite_values"] > 0,
            **run_metrics(per_run.get(run["run_id"], empty), rules, final_window, kl_budgets),
        })
    stability = pd.DataFrame(rows)
    for column in ("seed", "n_steps", "last_step", "peak_gold_step", "collapse_onset", "collapse_confirmed_step"):
        stability[column] = stability[column].astype("Int64")
    return stability


def stability_criteria(stability: pd.DataFrame, rules: CollapseRules = CollapseRules()) -> pd.DataFrame:
    """Per run, whether it passes each stability criterion: 1.0 pass, 0.0 fail, NaN unknown.

    no_collapse (detector), no_divergence, kl_bounded (max KL <= kl_threshold), gold_above_initial
    (final > initial gold), ppl_kept (ppl ratio > ppl_ratio_max), length_kept (length ratio <
    length_ratio_min), repetition_kept (final - initial repeat fraction < repeat_rise).
    """
    s = stability

    def check(passed: pd.Series, known: pd.Series) -> pd.Series:
        return passed.astype("float64").where(known)

    repeat_rise = s["final_repeat_frac"] - s["initial_repeat_frac"]
    return pd.DataFrame({
        "no_collapse": check(~s["collapsed"], s["collapse_rule"] != "insufficient"),
        "no_divergence": check(~s["diverged"], s["diverged"].notna()),
        "kl_bounded": check(s["max_kl"] <= rules.kl_threshold, s["max_kl"].notna()),
        "gold_above_initial": check(s["final_gold"] > s["initial_gold"], s["final_gold"].notna()),
        "ppl_kept": check(s["ppl_ratio"] > rules.ppl_ratio_max, s["ppl_ratio"].notna()),
        "length_kept": check(s["length_ratio"] < rules.length_ratio_min, s["length_ratio"].notna()),
        "repetition_kept": check(repeat_rise < rules.repeat_rise, repeat_rise.notna()),
    }, index=s.index)


def t95(dof: float) -> float:
    """Two-sided 95% Student t quantile (scipy); NaN below 1 degree of freedom."""
    return float(stats.t.ppf(0.975, dof)) if dof >= 1 else math.nan


def _mean_sd_ci(values: pd.Series) -> tuple[float, float, float]:
    """Mean, sample sd and 95% CI half-width (t distribution) of the non-NaN values."""
    values = values.dropna().astype("float64")
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    sd = float(values.std(ddof=1)) if n > 1 else math.nan
    return float(values.mean()), sd, t95(n - 1) * sd / math.sqrt(n) if n > 1 else math.nan


def arm_summary(stability: pd.DataFrame, rules: CollapseRules = CollapseRules()) -> pd.DataFrame:
    """One row per arm (in order of first appearance) summarising ``run_stability`` over its seeds.

    Columns: arm, n_runs, n_completed, diverged_frac, collapse_frac (fraction of all the arm's runs),
    collapse_onset_median (over collapsed runs); ``<metric>_mean``, ``<metric>_sd`` and ``<metric>_ci95``
    (half-width of the 95% t interval) for every float metric (not the integer steps); and
    ``pass_<criterion>`` (fraction of runs passing each ``stability_criteria`` criterion, unknowns left
    out).
    """
    metrics = [c for c in stability.columns if pd.api.types.is_float_dtype(stability[c])]
    criteria = stability_criteria(stability, rules).add_prefix("pass_")
    rows = []
    for arm, runs in stability.groupby("arm", sort=False):
        row = {
            "arm": arm, "n_runs": len(runs), "n_completed": int((runs["status"] == "completed").sum()),
            "diverged_frac": float(runs["diverged"].mean()), "collapse_frac": float(runs["collapsed"].mean()),
            "collapse_onset_median": float(runs["collapse_onset"].astype("float64").median()),
        }
        for metric in metrics:
            row[f"{metric}_mean"], row[f"{metric}_sd"], row[f"{metric}_ci95"] = _mean_sd_ci(runs[metric])
        row.update(criteria.loc[runs.index].mean().to_dict())
        rows.append(row)
    return pd.DataFrame(rows)
