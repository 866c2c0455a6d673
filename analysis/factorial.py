"""Main effects and two-way interactions of a factorial sweep, with intervals and a family-wise error control.

A factorial sweep (hydra_plugins/rlhf_lab_sweeper: `factors`, or any cartesian sweep) labels each arm by its
levels, `key=level,key=level`; ``factor_levels`` reads them back (levels in order of first appearance: the first
is the reference). Each outcome of ``FACTORIAL_OUTCOMES`` is fitted by least squares (statsmodels OLS) on

    y = b0 + sum_f b_f x_f + sum_{f<g} b_fg x_f x_g + instance block + seed block + error

where x_f is the indicator of factor f's non-reference level, centred over the runs (two balanced levels: -1/2
and +1/2), one column per non-reference level of a factor with more. The blocks are indicator columns of the
testbed instance (`task.language_seed`) and of the PPO seed, when they vary. Then:
- a **main effect** b_f is the change in y from the reference level to the other, averaged over the other
  factors' levels (the classical main effect of a two-level design);
- a **two-way interaction** b_fg is a difference of differences: how much f's effect changes when g moves from
  its reference to its other level (twice the classical "AB effect" of Box, Hunter & Hunter).
Intervals and p values are the OLS t ones (for `collapsed`, a 0/1 outcome, the linear probability model with
HC3 heteroscedasticity-robust standard errors). **Holm's step-down correction** over every effect in the table
(all outcomes and terms together) controls the family-wise error rate at ``alpha``: `significant` is the
Holm-adjusted p <= alpha. In a fractional design of resolution IV, two-way interactions alias each other: a
column that adds nothing to the model's rank is not estimated and `aliased_with` says so.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import statsmodels.api as sm
from statsmodels.stats.multitest import multipletests

from analysis.effects import INSTANCE

FACTORIAL_OUTCOMES = {"final_gold": "final gold", "peak_gold": "peak gold", "final_kl": "final KL",
                      "collapsed": "collapse probability"}
DESIGN_FILE = "design.json"  # written by the sweeper (hydra_plugins/rlhf_lab_sweeper) into the sweep directory
EFFECT_COLUMNS = ["outcome", "label", "term", "kind", "contrast", "estimate", "se", "ci95_low", "ci95_high", "p",
                  "p_holm", "significant", "n_runs", "df_resid", "aliased_with"]


def parse_label(label: str) -> dict[str, str] | None:
    """{key: level} of an arm label `key=level,key=level`; None when the label is not of that form."""
    parts = [part.split("=", 1) for part in str(label).split(",")]
    if not parts or any(len(part) != 2 or not part[0] or not part[1] for part in parts):
        return None
    keys = [key for key, _ in parts]
    return dict(parts) if len(set(keys)) == len(keys) else None


def factor_levels(arms) -> dict[str, list[str]] | None:
    """The factors of a factorial sweep and their levels (first appearance first), from its arm labels: every
    label `key=level,...` over the same keys, and at least two keys each with at least two levels. None when the
    arms are not such a design (named arms, a one-factor sweep)."""
    parsed = [parse_label(arm) for arm in dict.fromkeys(arms)]
    if not parsed or any(p is None for p in parsed) or len({tuple(p) for p in parsed}) != 1:
        return None
    levels = {key: list(dict.fromkeys(p[key] for p in parsed)) for key in parsed[0]}
    levels = {key: values for key, values in levels.items() if len(values) >= 2}
    return levels if len(levels) >= 2 else None


def design_levels(runs: pd.DataFrame) -> dict[str, list[str]] | None:
    """The factors and their levels as the sweep declared them (reference first), from the design.json the
    sweeper writes into the sweep directory (the parent of the runs' directories); None without one."""
    if "run_dir" not in runs:
        return None
    for parent in dict.fromkeys(Path(d).parent for d in runs["run_dir"].dropna()):
        path = parent / DESIGN_FILE
        if path.is_file():
            return {key: [str(v) for v in values] for key, values in json.loads(path.read_text())["factors"].items()}
    return None


def _columns(runs: pd.DataFrame, levels: dict[str, list[str]]) -> tuple[pd.DataFrame, dict[str, tuple]]:
    """Centred indicator columns of every non-reference level and their pairwise products across factors.
    -> (columns, {column: (kind, factor(s), contrast text)})."""
    settings = runs["arm"].map(parse_label)
    mains, meta = {}, {}
    for factor, values in levels.items():
        for level in values[1:]:
            name = f"{factor}={level}"
            indicator = settings.map(lambda s, f=factor, v=level: float(s[f] == v))
            mains[name] = indicator - indicator.mean()
            meta[name] = ("main", (factor,), f"{factor}: {level} vs {values[0]}")
    columns = dict(mains)
    for (a, col_a), (b, col_b) in itertools.combinations(mains.items(), 2):
        fa, fb = meta[a][1][0], meta[b][1][0]
        if fa == fb:
            continue
        name = f"{a} x {b}"
        columns[name] = col_a * col_b
        meta[name] = ("interaction", (fa, fb), f"change in ({meta[a][2]}) when {meta[b][2]}")
    return pd.DataFrame(columns, index=runs.index), meta


def _blocks(runs: pd.DataFrame) -> pd.DataFrame:
    """Indicator columns (all levels but the first) of the instance and seed blocks that vary."""
    blocks = []
    for column, prefix in ((INSTANCE, "instance"), ("seed", "seed")):
        if column in runs and runs[column].nunique(dropna=True) > 1:
            blocks.append(pd.get_dummies(runs[column].astype(str), prefix=prefix, drop_first=True, dtype="float64"))
    return pd.concat(blocks, axis=1) if blocks else pd.DataFrame(index=runs.index)


def _estimable(design: pd.DataFrame, names: list[str]) -> tuple[list[str], dict[str, str]]:
    """The columns that add to the rank, in order, and for each that does not the earlier term it aliases
    (the column it equals up to sign, when one does)."""
    kept, aliased = [], {}
    for name in names:
        trial = design[kept + [name]].to_numpy("float64")
        if np.linalg.matrix_rank(trial) > len(kept):
            kept.append(name)
        else:
            column = design[name].to_numpy("float64")
            twin = next((k for k in kept if np.allclose(np.abs(design[k].to_numpy("float64")), np.abs(column))
                         and abs(np.dot(design[k], column)) > 1e-9), "a combination of other terms")
            aliased[name] = twin
    return kept, aliased


def factorial_effects(stability: pd.DataFrame, alpha: float = 0.05,
                      levels: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Main effects and two-way interactions of every outcome (see the module doc): one row per (outcome,
    term), EFFECT_COLUMNS. ``levels``: the factors and their levels, reference first (design_levels); default:
    read from the arm labels, first appearance first. Empty when the runs are not a factorial design. Runs whose
    outcome is unknown (NaN; for `collapsed`, an undecided detector) are left out of that outcome's fit."""
    if levels is None:
        levels = factor_levels(stability["arm"]) if len(stability) else None
    if levels is None:
        return pd.DataFrame(columns=EFFECT_COLUMNS)
    rows = []
    for outcome, label in FACTORIAL_OUTCOMES.items():
        if outcome not in stability:
            continue
        runs = stability.copy()
        if outcome == "collapsed" and "collapse_rule" in runs:
            runs = runs[runs["collapse_rule"].astype(str) != "insufficient"]
        y = runs[outcome].astype("float64")
        runs = runs[y.notna()]
        y = y[y.notna()]
        if len(runs) == 0:
            continue
        columns, meta = _columns(runs, levels)
        design = pd.concat([pd.Series(1.0, index=runs.index, name="intercept"), columns, _blocks(runs)], axis=1)
        kept, aliased = _estimable(design, list(design.columns))
        fit = None
        if len(runs) > len(kept):
            model = sm.OLS(y.to_numpy(), design[kept].to_numpy("float64"))
            fit = model.fit(cov_type="HC3") if outcome == "collapsed" else model.fit()
        for name in columns.columns:
            kind, _, contrast = meta[name]
            row = {"outcome": outcome, "label": label, "term": name, "kind": kind, "contrast": contrast,
                   "estimate": math.nan, "se": math.nan, "ci95_low": math.nan, "ci95_high": math.nan,
                   "p": math.nan, "n_runs": len(runs), "df_resid": math.nan, "aliased_with": aliased.get(name)}
            if fit is not None and name in kept:
                i = kept.index(name)
                low, high = fit.conf_int(0.05)[i]
                estimate, se = float(fit.params[i]), float(fit.bse[i])
                exact = se == 0 or not np.isfinite(se)  # a noiseless outcome: the estimate is exact
                row.update(estimate=estimate, se=se, ci95_low=float(low), ci95_high=float(high),
                           p=(0.0 if estimate != 0 else 1.0) if exact else float(fit.pvalues[i]),
                           df_resid=float(fit.df_resid))
            rows.append(row)
    effects = pd.DataFrame(rows)
    known = effects["p"].notna()
    effects["p_holm"] = math.nan
    if known.any():
        effects.loc[known, "p_holm"] = multipletests(effects.loc[known, "p"], alpha=alpha, method="holm")[1]
    effects["significant"] = effects["p_holm"] <= alpha
    return effects[EFFECT_COLUMNS]


def display_factorial(effects: pd.DataFrame) -> pd.DataFrame:
    """One row per term, one column per outcome: "estimate [low, high]" with * where Holm-significant."""
    def cell(row) -> str:
        if row["aliased_with"]:
            return f"aliased with {row['aliased_with']}"
        if math.isnan(row["estimate"]):
            return "–"
        star = " *" if row["significant"] else ""
        return f"{row['estimate']:+.3f} [{row['ci95_low']:+.3f}, {row['ci95_high']:+.3f}]{star}"

    table = {}
    for row in effects.to_dict("records"):
        entry = table.setdefault(row["term"], {"term": row["term"], "kind": row["kind"]})
        entry[row["label"]] = cell(row)
    return pd.DataFrame(list(table.values()))
