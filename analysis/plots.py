"""Figures of a sweep, each saved as PNG and SVG (matplotlib's Figure API: Agg, no pyplot state).

* ``traces``: one panel per metric (proxy and gold reward, KL, perplexity, response length, entropy,
  repetition), one colour per arm: the mean over the arm's runs of each run's smoothed trace, a band from
  the minimum to the maximum run, and a triangle on the mean line at each run's collapse onset.
* ``frontier``: proxy and gold reward against sqrt(KL), the arm means over training; dots: each run's
  final values.
* ``stability_heatmap``: arms x stability criteria, the fraction of the arm's runs passing each.
* ``survival``: the Kaplan-Meier curve of each arm, P(no collapse by step t), with its 95 % band
  (analysis.collapse); a tick where a run that never collapsed ends (censored).
* ``rm_quality`` (runs with reward models of different quality): peak and final gold against the reward
  model's agreement with gold, one colour and least-squares line per policy group (analysis.rm_quality).
* ``interactions`` (a factorial sweep): per outcome, a terms x terms heatmap: main effects on the diagonal,
  two-way interactions off it (analysis.factorial), * where Holm-significant.
* ``effects`` (with a baseline arm): a forest plot, one panel per metric, one row per arm: its effect
  against the baseline with the 95% interval (filled: paired by seed and instance; open: unpaired), and a line
  at 0 (no effect).

KL = kl/init_k3 (to the initial policy; else k1, else k2), the same metric for every run of a figure:
``names.pick_kl_metric`` over the metrics the runs logged (KL to the reference, kl/ref_*, only when no run
logged KL to its initial policy); the panel titles and axes name the metric used. A run without that metric
(from before kl/init_*, with a reference that is not its initial policy) has no KL trace and no frontier dot.
Every figure aggregates per arm first, so a sweep of hundreds of runs draws as fast as a handful.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.frames import wide_traces
from analysis.names import ENTROPY, GOLD, LENGTH, PPL, PROXY, REPEAT, kl_label, pick_kl_metric

KL = "kl"  # placeholder in TRACE_PANELS for the preferred KL metric, titled by what it measures (kl_label)
TRACE_PANELS = (
    (PROXY, "proxy reward"), (GOLD, "gold reward"), (KL, None), (PPL, "policy perplexity"),
    (LENGTH, "mean response length"), (ENTROPY, "policy entropy"), (REPEAT, "repeated n-gram fraction"),
)
PNG_DPI = 110


def arm_colours(arms) -> dict[str, tuple]:
    """A distinct colour per arm (tab10, tab20 beyond 10 arms, repeating beyond 20)."""
    arms = list(arms)
    cmap = matplotlib.colormaps["tab10" if len(arms) <= 10 else "tab20"]
    return {arm: cmap(i % cmap.N) for i, arm in enumerate(arms)}


def arm_bands(runs: pd.DataFrame, traces: pd.DataFrame, metrics, window: int) -> pd.DataFrame:
    """Per (arm, step): mean, min and max over the arm's runs of each run's smoothed trace.

    Columns are a (metric, statistic) MultiIndex; smoothing is a centred rolling mean over ``window``
    logged steps; non-finite values are ignored.
    """
    wide = wide_traces(traces, metrics).replace([np.inf, -np.inf], np.nan)
    smoothed = wide.groupby(level="run_id", observed=True, group_keys=False).apply(
        lambda frame: frame.rolling(window, center=True, min_periods=1).mean())
    arm_of = runs.set_index("run_id")["arm"]
    keys = [arm_of.reindex(smoothed.index.get_level_values("run_id")).to_numpy(),
            smoothed.index.get_level_values("step")]
    bands = smoothed.groupby(keys).agg(["mean", "min", "max"])
    bands.index.names = ["arm", "step"]
    return bands


def save_figure(fig: Figure, out_dir: Path, name: str) -> Path:
    """Save ``fig`` as name.png and name.svg in out_dir; return the PNG path."""
    png = out_dir / f"{name}.png"
    fig.savefig(png, dpi=PNG_DPI)
    fig.savefig(out_dir / f"{name}.svg")
    return png


def _legend(fig: Figure, colours: dict, extra: list | None = None) -> None:
    """One legend for the whole figure, above the panels."""
    handles = [Line2D([], [], color=c, lw=2, label=arm) for arm, c in colours.items()]
    handles += extra or []
    fig.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 6), frameon=False)


def trace_grid(bands: pd.DataFrame, panels, stability: pd.DataFrame, colours: dict) -> Figure:
    """The trace grid: one panel per (metric, title) in ``panels``; see the module docstring."""
    ncols = 3 if len(panels) > 4 else 2
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(5 * ncols, 3.4 * nrows + 0.8), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    onsets = stability.dropna(subset=["collapse_onset"])
    for ax, (metric, title) in zip(axes, panels):
        for arm, colour in colours.items():
            if arm not in bands.index.get_level_values("arm"):
                continue
            arm_band = bands.loc[arm, metric].dropna(subset=["mean"])
            ax.plot(arm_band.index, arm_band["mean"], color=colour, lw=1.5)
            ax.fill_between(arm_band.index, arm_band["min"], arm_band["max"], color=colour, alpha=0.2, lw=0)
            steps = onsets.loc[onsets["arm"] == arm, "collapse_onset"].astype("int64").to_numpy()
            if len(steps) and len(arm_band):
                at = arm_band["mean"].reindex(steps, method="nearest")
                ax.plot(steps, at, "v", color=colour, mec="black", mew=0.6, ms=7, ls="none")
        ax.set_title(f"{title}\n({metric})", fontsize=10)
        ax.set_xlabel("PPO iteration")
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    onset_handle = Line2D([], [], marker="v", color="grey", mec="black", ls="none",
                                           label="collapse onset (per run)")
    _legend(fig, colours, [onset_handle])
    return fig


def frontier(bands: pd.DataFrame, kl_metric: str, rewards, stability: pd.DataFrame, colours: dict) -> Figure:
    """Reward (each of ``rewards``: (metric, title)) against sqrt(KL): arm-mean paths and the final values of
    the runs measured with ``kl_metric``."""
    fig = Figure(figsize=(5.5 * len(rewards), 4.6), layout="constrained")
    axes = fig.subplots(1, len(rewards), squeeze=False).ravel()
    final_of = {PROXY: "final_proxy", GOLD: "final_gold"}
    for ax, (metric, title) in zip(axes, rewards):
        for arm, colour in colours.items():
            if arm not in bands.index.get_level_values("arm"):
                continue
            path = pd.DataFrame({"kl": bands.loc[arm, (kl_metric, "mean")],
                                 "reward": bands.loc[arm, (metric, "mean")]}).dropna()
            x = np.sqrt(path["kl"].clip(lower=0))
            ax.plot(x, path["reward"], color=colour, lw=1.5)
            if len(path):
                ax.plot(x.iloc[0], path["reward"].iloc[0], "o", color=colour, mec="black", ms=5)
            runs = stability[(stability["arm"] == arm) & (stability["kl_metric"] == kl_metric)]
            ax.plot(np.sqrt(runs["final_kl"].clip(lower=0)), runs[final_of[metric]], ".", color=colour,
                    alpha=0.6, ms=6)
        ax.set_title(f"{title} vs sqrt({kl_label(kl_metric)})", fontsize=10)
        ax.set_xlabel(f"sqrt({kl_metric})  [sqrt nats]")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    extra = [Line2D([], [], marker="o", color="grey", mec="black", ls="none", label="step 0"),
             Line2D([], [], marker=".", color="grey", ls="none", label="run final")]
    _legend(fig, colours, extra)
    return fig


def stability_heatmap(summary: pd.DataFrame) -> Figure:
    """Arms x criteria heatmap of the ``pass_*`` columns of arm_summary (fraction of runs passing)."""
    matrix = summary.set_index("arm")[[c for c in summary.columns if c.startswith("pass_")]]
    labels = [c.removeprefix("pass_").replace("_", " ") for c in matrix.columns]
    fig = Figure(figsize=(1.1 * len(labels) + 2.5, 0.45 * len(matrix) + 2.2), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(matrix.to_numpy("float64"), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(matrix)), matrix.index)
    for (row, col), value in np.ndenumerate(matrix.to_numpy("float64")):
        dark = not np.isnan(value) and abs(value - 0.5) > 0.3
        ax.text(col, row, "n/a" if np.isnan(value) else f"{value:.2f}", ha="center", va="center", fontsize=8,
                color="white" if dark else "black")
    fig.colorbar(image, ax=ax, label="fraction of runs passing")
    ax.set_title("stability criteria per arm", fontsize=10)
    return fig


def forest(effects: pd.DataFrame) -> Figure:
    """Effects against the baseline (``analysis.effects.arm_effects``): one panel per metric, arms top-down."""
    known = effects.groupby("label", sort=False)["effect"].apply(lambda e: e.notna().any())
    labels = [label for label, any_known in known.items() if any_known]  # e.g. no onset without collapses
    arms = list(dict.fromkeys(effects["arm"]))
    fig = Figure(figsize=(3.2 * len(labels), 0.9 + 0.38 * len(arms)), layout="constrained")
    axes = fig.subplots(1, len(labels), sharey=True, squeeze=False)[0]
    y = {arm: i for i, arm in enumerate(reversed(arms))}
    for ax, label in zip(axes, labels):
        rows = effects[effects["label"] == label]
        for row in rows.to_dict("records"):
            at = y[row["arm"]]
            if not np.isnan(row["ci95_low"]):
                ax.plot([row["ci95_low"], row["ci95_high"]], [at, at], color="#3465a4", lw=1.6)
            ax.plot(row["effect"], at, "o", color="#3465a4", mfc="#3465a4" if row["paired"] else "white", ms=5)
        ax.axvline(0, color="#888", lw=0.8, ls="--")
        if rows["metric"].eq("collapsed").all():
            ax.set_xlim(-1.1, 1.1)  # a difference of two fractions: the whole range, so 0 reads as "no change"
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=8)
    axes[0].set_yticks(list(y.values()), list(y.keys()))
    axes[0].set_ylim(-0.6, len(arms) - 0.4)
    baseline = effects["baseline"].iloc[0] if len(effects) else ""
    fig.suptitle(f"effect of each arm against {baseline} (95% CI; filled: paired by seed and instance)",
                 fontsize=10)
    return fig


def survival(curves: pd.DataFrame, stability: pd.DataFrame, colours: dict) -> Figure:
    """Kaplan-Meier curves (``analysis.collapse.collapse_table``'s long frame), one step line per arm with its
    95 % band, and a tick at the last step of each run that never collapsed (right-censored there)."""
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.subplots()
    for arm, curve in curves.groupby("arm", sort=False):
        colour = colours.get(arm, "#333")
        ax.step(curve["step"], curve["survival"], where="post", color=colour, lw=1.6, label=arm)
        ax.fill_between(curve["step"], curve["low"], curve["high"], step="post", color=colour, alpha=0.15, lw=0)
        censored = stability[(stability["arm"] == arm) & ~stability["collapsed"].astype(bool)]["last_step"]
        at = curve.set_index("step")["survival"]
        steps = censored.dropna().astype("float64")
        ax.plot(steps, [at[at.index <= s].iloc[-1] for s in steps], "|", color=colour, ms=9)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("step")
    ax.set_ylabel("P(no collapse by step)")
    ax.set_title("time to collapse (Kaplan-Meier, 95% band; |: run ended without collapse)", fontsize=9)
    ax.legend(fontsize=8, loc="lower left")
    return fig


def rm_quality(points: pd.DataFrame) -> Figure:
    """Peak and final gold against the reward model's held-out agreement with gold (``analysis.rm_quality.points``):
    a dot per run and a least-squares line per group."""
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    colours = arm_colours(dict.fromkeys(points["group"]))
    for ax, (outcome, label) in zip(axes, (("peak_gold", "peak gold"), ("final_gold", "final gold"))):
        for group, rows in points.groupby("group", sort=False):
            data = rows[["reward_model.gold_accuracy", outcome]].dropna()
            x, y = data.iloc[:, 0].to_numpy(), data.iloc[:, 1].to_numpy()
            ax.plot(x, y, "o", color=colours[group], ms=4, alpha=0.8, label=group)
            if len(np.unique(x)) >= 2:
                slope, intercept = np.polyfit(x, y, 1)
                grid = np.linspace(x.min(), x.max(), 20)
                ax.plot(grid, intercept + slope * grid, color=colours[group], lw=1.4)
        ax.set_xlabel("reward model's agreement with gold (held-out pairs)")
        ax.set_title(label, fontsize=9)
    axes[0].set_ylabel("gold reward")
    axes[0].legend(fontsize=8)
    fig.suptitle("does the reward model's quality bound the policy? (one dot per run)", fontsize=10)
    return fig


def interactions(effects: pd.DataFrame) -> Figure:
    """Heatmaps of ``analysis.factorial.factorial_effects``: one panel per outcome, rows and columns the main
    terms, the diagonal their main effects, cell (i, j) the interaction of terms i and j; coloured (scaled per
    panel, red negative, blue positive) only where Holm-significant, grey elsewhere."""
    outcomes = list(dict.fromkeys(effects["label"]))
    mains = list(dict.fromkeys(effects.loc[effects["kind"] == "main", "term"]))
    size = 0.55 * len(mains) + 2.2
    fig = Figure(figsize=(size * len(outcomes), size), layout="constrained")
    axes = fig.subplots(1, len(outcomes), squeeze=False)[0]
    for ax, outcome in zip(axes, outcomes):
        rows = effects[effects["label"] == outcome].set_index("term")
        matrix = np.full((len(mains), len(mains)), np.nan)
        stars = np.zeros_like(matrix, dtype=bool)
        for i, a in enumerate(mains):
            for j, b in enumerate(mains):
                term = a if i == j else next((t for t in (f"{a} x {b}", f"{b} x {a}") if t in rows.index), None)
                if term is not None:
                    matrix[i, j], stars[i, j] = rows.loc[term, "estimate"], bool(rows.loc[term, "significant"])
        shown = np.where(stars, matrix, np.nan)  # only what survives Holm's correction is coloured
        bound = np.nanmax(np.abs(shown)) if np.isfinite(shown).any() else 1.0
        ax.imshow(np.isfinite(matrix) * 0.0, cmap="Greys", vmin=0, vmax=8)  # light grey under every cell
        ax.imshow(shown, cmap="RdBu", vmin=-bound or -1, vmax=bound or 1)
        for (i, j), value in np.ndenumerate(matrix):
            if np.isfinite(value):
                ax.text(j, i, f"{value:+.2f}" + ("*" if stars[i, j] else ""), ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(mains)), mains, rotation=40, ha="right", fontsize=7)
        ax.set_yticks(range(len(mains)), mains if ax is axes[0] else [""] * len(mains), fontsize=7)
        ax.set_title(outcome, fontsize=9)
    fig.suptitle("factorial effects: main (diagonal) and two-way interactions (* Holm-significant)", fontsize=10)
    return fig


def write_figures(runs: pd.DataFrame, traces: pd.DataFrame, stability: pd.DataFrame, summary: pd.DataFrame,
                  out_dir, window: int, effects: pd.DataFrame | None = None,
                  curves: pd.DataFrame | None = None, factorial: pd.DataFrame | None = None,
                  rm_points: pd.DataFrame | None = None) -> dict[str, Path]:
    """Draw and save every figure into ``out_dir`` (PNG + SVG); return {figure name: PNG path}.

    Figures whose metrics no run logged are left out (e.g. no frontier without KL); ``curves`` (the survival
    curves of analysis.collapse) adds the time-to-collapse plot, ``factorial`` (analysis.factorial's effects) the
    interaction heatmaps, ``rm_points`` (analysis.rm_quality.points) the reward-model quality plot, ``effects``
    the forest plot.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    present = set(traces["metric"].unique())
    kl_metric = pick_kl_metric(present)
    panels = [(kl_metric, kl_label(kl_metric)) if metric == KL else (metric, title) for metric, title in TRACE_PANELS]
    panels = [(metric, title) for metric, title in panels if metric in present]
    colours = arm_colours(summary["arm"])
    figures = {}
    if panels:
        bands = arm_bands(runs, traces, [metric for metric, _ in panels], window)
        figures["traces"] = save_figure(trace_grid(bands, panels, stability, colours), out_dir, "traces")
        rewards = [(metric, title) for metric, title in panels if metric in (PROXY, GOLD)]
        if kl_metric and rewards:
            figures["frontier"] = save_figure(frontier(bands, kl_metric, rewards, stability, colours), out_dir,
                                        "frontier")
    figures["stability_heatmap"] = save_figure(stability_heatmap(summary), out_dir, "stability_heatmap")
    if curves is not None and len(curves):
        figures["survival"] = save_figure(survival(curves, stability, colours), out_dir, "survival")
    if rm_points is not None and len(rm_points):
        figures["rm_quality"] = save_figure(rm_quality(rm_points), out_dir, "rm_quality")
    if factorial is not None and len(factorial):
        figures["interactions"] = save_figure(interactions(factorial), out_dir, "interactions")
    if effects is not None and len(effects):
        figures["effects"] = save_figure(forest(effects), out_dir, "effects")
    return figures
