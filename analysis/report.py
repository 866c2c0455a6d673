"""The stability report of a sweep: HTML (self-contained), Markdown, CSV tables and figures.

``write_report(runs, traces, out_dir)`` writes into ``out_dir``:

* ``report.html``: summary table, figures (embedded as base64 PNG data URIs), per-arm sample responses
  around the collapse onset (or at the last logged step), the runs table and the collapse rules;
* ``report.md``: the same, with the figures linked as files;
* ``summary.csv`` (``arm_summary``: one row per arm), ``runs.csv`` (``run_stability`` joined with the
  ``runs`` frame: one row per run);
* ``collapse.csv`` (``analysis.collapse.collapse_table``: per arm the collapse probability with its exact
  interval, the Kaplan-Meier median onset and survival at the last step; against the baseline the difference in
  probability and the log-rank p) and ``survival.csv`` (the Kaplan-Meier curves), the table in both reports;
* ``figures/{traces,frontier,stability_heatmap,survival}.{png,svg}``;
* for a factorial sweep (arms labelled ``key=level,...``): ``factorial.csv`` (``analysis.factorial``: main
  effects and two-way interactions with Holm-corrected p), its table and ``figures/interactions.{png,svg}``;
  ``factorial_plan.csv`` (``analysis.planner.factorial_plan``: the replicates of the design that would
  establish each effect were its true size the estimate) and its table;
* for runs with reward models of different recorded quality on one testbed instance: ``rm_quality.csv``
  (``analysis.rm_quality``: the slope of peak and final gold on the reward model's agreement with gold, per
  preset), its table and ``figures/rm_quality.{png,svg}``;
* with a ``baseline`` arm: ``effects.csv`` (``analysis.effects.arm_effects``), its table in both reports and
  ``figures/effects.{png,svg}`` (the forest plot); ``plan.csv`` (``analysis.planner.seed_plan``: the runs
  needed to detect each effect) and its table.
"""

from __future__ import annotations

import base64
import html
import math
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from analysis.collapse import collapse_table, display_collapse
from analysis.effects import arm_effects, display_effects
from analysis.factorial import design_levels, display_factorial, factorial_effects
from analysis.rm_quality import display_slopes, has_rm_axis, points, rm_quality_slopes
from analysis.load import SAMPLES_FILE, load_samples
from analysis.names import KL_PREFERENCE, kl_label
from analysis.planner import display_factorial_plan, display_plan, factorial_plan, seed_plan
from analysis.plots import write_figures
from analysis.stability import (DEFAULT_FINAL_WINDOW, DEFAULT_KL_BUDGETS, CollapseRules, arm_summary,
                                reference_kl_runs, run_stability)

FIGURE_TITLES = {
    "traces": "Training traces per arm (mean of smoothed runs, band: min-max over runs)",
    "frontier": "Reward vs sqrt(KL) frontier",
    "stability_heatmap": "Stability criteria: fraction of runs passing",
    "survival": "Time to collapse per arm (Kaplan-Meier)",
    "interactions": "Factorial effects: main effects and two-way interactions",
    "rm_quality": "Gold against the reward model's quality",
    "effects": "Effects against the baseline arm (forest plot)",
}
EFFECTS_NOTE = ("Each arm's mean minus the baseline's over runs, [95% CI]: paired by seed and testbed instance "
                "(\"pairs\": how many), else Welch's unpaired interval. Collapse probability: the difference in the "
                "share of runs collapsed (Newcombe's interval); collapse onset: over runs that collapsed.")
FACTORIAL_NOTE = ("The sweep is a factorial design (arms labelled key=level,...): each main effect is the change from "
                  "a factor's reference level, averaged over the other factors; each two-way interaction how much one "
                  "factor's effect changes with the other's level (a difference of differences). Least squares with "
                  "the testbed instance and the seed as blocks, [95% CI]; collapse: linear probability model with HC3 "
                  "errors. * : significant after Holm's correction over every effect of the table (family-wise error "
                  "5%). Details in factorial.csv.")
RM_QUALITY_NOTE = ("The runs used reward models of different quality (run.json reward_model.gold_accuracy: agreement "
                   "with gold on held-out pairs). Per group, the least-squares slope of peak and final gold on that "
                   "agreement, [95% t CI], and the correlation r: a slope above 0 says a better reward model buys more "
                   "gold. Details in rm_quality.csv; the figure has a dot per run.")
COLLAPSE_NOTE = ("Collapse probability per arm with the exact (Clopper-Pearson) 95% interval; the time to collapse "
                 "as a Kaplan-Meier curve, runs that never collapsed censored at their last step: its median onset "
                 "and the probability of no collapse by the arm's last step (95%, log-log). Against the baseline: "
                 "the difference in probability (Newcombe) and the log-rank test's p. Details in collapse.csv and "
                 "survival.csv.")
MAX_RESPONSE_CHARS = 1200
CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; }
pre { white-space: pre-wrap; background: #f7f7f7; padding: .5em; border-radius: 4px; margin: .2em 0 .8em; }
.meta { color: #555; } .collapsed { color: #b00; font-weight: bold; }
"""


def write_report(runs: pd.DataFrame, traces: pd.DataFrame, out_dir, rules: CollapseRules = CollapseRules(),
                 final_window: int = DEFAULT_FINAL_WINDOW, kl_budgets=DEFAULT_KL_BUDGETS,
                 samples_per_step: int = 3, sources=(), baseline: str | None = None,
                 planning: dict | None = None) -> Path:
    """Write the full report of ``load_runs``' frames into ``out_dir``; return the path of report.html.

    ``sources``: the input paths, listed in the report's header. ``baseline``: an arm; adds the effects of
    every other arm against it (effects.csv, a table and the forest plot; analysis.effects) and the seed
    planner's runs needed (plan.csv and a table; ``planning``: analysis.planner.seed_plan's effects, power,
    alpha). Raises ValueError
    when ``runs`` is empty or ``baseline`` is not one of its arms.
    """
    if runs.empty:
        raise ValueError("no runs to report")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stability = run_stability(runs, traces, rules, final_window, kl_budgets)
    summary = arm_summary(stability, rules)
    summary.to_csv(out_dir / "summary.csv", index=False)
    extra = runs[[c for c in runs.columns if c not in stability.columns or c == "run_id"]]
    per_run = stability.merge(extra, on="run_id", how="left")
    per_run.to_csv(out_dir / "runs.csv", index=False)
    effects = plan = None
    if baseline is not None:
        effects = arm_effects(per_run, baseline)
        effects.to_csv(out_dir / "effects.csv", index=False)
        plan = seed_plan(per_run, baseline, **(planning or {}))
        plan.to_csv(out_dir / "plan.csv", index=False)
    factorial = factorial_effects(per_run, levels=design_levels(per_run))
    replicates = None
    if len(factorial):
        factorial.to_csv(out_dir / "factorial.csv", index=False)
        power_alpha = {k: v for k, v in (planning or {}).items() if k in ("power", "alpha")}
        replicates = factorial_plan(factorial, per_run["arm"].nunique(), **power_alpha)
        replicates.to_csv(out_dir / "factorial_plan.csv", index=False)
    slopes = rm_points = None
    if has_rm_axis(per_run):
        slopes, rm_points = rm_quality_slopes(per_run), points(per_run)
        slopes.to_csv(out_dir / "rm_quality.csv", index=False)
    collapse, curves = collapse_table(stability, baseline)
    collapse.to_csv(out_dir / "collapse.csv", index=False)
    curves.to_csv(out_dir / "survival.csv", index=False)
    figures = write_figures(runs, traces, stability, summary, out_dir / "figures", rules.window, effects, curves,
                            factorial, rm_points)
    report = {
        "header": _header(runs, stability, sources) + reference_kl_note(runs, stability),
        "summary": display_summary(summary, kl_budgets),
        "collapse": display_collapse(collapse),
        "factorial": display_factorial(factorial) if len(factorial) else None,
        "rm_quality": None if slopes is None else display_slopes(slopes),
        "effects": None if effects is None else (baseline, display_effects(effects)),
        "plan": None if plan is None else (plan_note(plan), display_plan(plan)),
        "replicates": None if replicates is None else (replicates_note(replicates, **power_alpha),
                                                       display_factorial_plan(replicates)),
        "figures": figures,
        "samples": arm_samples(runs, stability, samples_per_step),
        "runs": display_runs(stability),
        "rules": rules_text(rules, final_window, stability),
    }
    (out_dir / "report.md").write_text(render_markdown(report, out_dir))
    html_path = out_dir / "report.html"
    html_path.write_text(render_html(report))
    return html_path


def replicates_note(replicates: pd.DataFrame, power: float = 0.8, alpha: float = 0.05) -> str:
    """What the factorial planner's table means."""
    now = replicates["replicates_now"].iloc[0] if len(replicates) else math.nan
    return (f"Replicates of the design (every arm once: one seed on one testbed instance; this sweep has {now:g}) "
            f"at which each effect, were its true size the estimate, would be found with power {power:g} by a "
            f"two-sided test at {alpha:g} divided by the {len(replicates)} effects (Bonferroni; Holm's step-down "
            "is at least as powerful), the standard error shrinking as 1/sqrt(runs); in brackets the runs. "
            "Details in factorial_plan.csv.")


def plan_note(plan: pd.DataFrame) -> str:
    """What the seed planner's table means, with its power and alpha."""
    power, alpha = (plan[c].iloc[0] if len(plan) else math.nan for c in ("power", "alpha"))
    return (f"Runs needed to detect each effect against {plan['baseline'].iloc[0] if len(plan) else 'the baseline'} "
            f"with power {power:g} at alpha {alpha:g} (two-sided), this sweep's spread taken as a pilot: pairs of "
            "runs (paired by seed and instance, paired t test) or runs per arm (two-sample t test; collapse: test "
            "of proportions). The effect is the pilot's own unless given (rlhf-report --effect METRIC=SIZE); "
            "'–': the pilot cannot say (under 2 runs a side, or no effect). Details in plan.csv; "
            "rlhf-report --plan prints it.")


def _fmt(value, digits: int = 3) -> str:
    """A number with ``digits`` significant digits; "–" for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "–"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _mean_ci(summary: pd.DataFrame, metric: str) -> pd.Series:
    """"mean ± ci95" strings of ``metric`` per arm (just the mean when there is no interval)."""
    return pd.Series([
        _fmt(mean) if math.isnan(ci) else f"{_fmt(mean)} ± {_fmt(ci, 2)}"
        for mean, ci in zip(summary[f"{metric}_mean"], summary[f"{metric}_ci95"])
    ], index=summary.index)


def _count_of(summary: pd.DataFrame, frac_column: str) -> pd.Series:
    """"k/n" strings: how many of each arm's n_runs a fraction column stands for."""
    counts = (summary[frac_column] * summary["n_runs"]).round().astype("int64")
    return counts.astype(str) + "/" + summary["n_runs"].astype(str)


def display_summary(summary: pd.DataFrame, kl_budgets) -> pd.DataFrame:
    """The per-arm summary as strings for the report (mean ± 95% CI over seeds)."""
    table = pd.DataFrame({
        "arm": summary["arm"], "runs": summary["n_runs"], "completed": summary["n_completed"],
        "diverged": _count_of(summary, "diverged_frac"), "collapsed": _count_of(summary, "collapse_frac"),
        "median onset": summary["collapse_onset_median"].map(lambda v: _fmt(v, 6)),
    })
    metrics = ["final_proxy", "peak_proxy", "final_gold", "peak_gold"]
    metrics += [f"gold_at_kl_{b:g}" for b in kl_budgets]
    metrics += ["max_kl", "final_kl", "ppl_ratio", "length_ratio", "final_repeat_frac"]
    for metric in metrics:
        if f"{metric}_mean" in summary and summary[f"{metric}_mean"].notna().any():
            table[metric.replace("_", " ")] = _mean_ci(summary, metric)
    return table


def display_runs(stability: pd.DataFrame) -> pd.DataFrame:
    """The per-run table of the report, as strings."""
    columns = ["run_id", "arm", "seed", "status", "n_steps", "collapsed", "collapse_onset", "collapse_rule",
               "diverged", "final_proxy", "final_gold", "max_kl", "kl_metric", "ppl_ratio", "length_ratio"]
    return stability[columns].map(_fmt)


def rules_text(rules: CollapseRules, final_window: int, stability: pd.DataFrame) -> list[str]:
    """The collapse rules and conventions in words, with this report's values and the KL metrics its runs used
    (``stability``: ``run_stability``'s rows)."""
    r = rules
    return [
        f"All signals are smoothed with a centred rolling mean over {r.window} logged steps; "
        f"a rule must hold on {r.patience} consecutive logged steps.",
        f"Gold rule (gold reward logged{'' if r.use_gold else '; disabled here'}): the smoothed gold reward "
        f"falls below its running peak by more than max({r.gold_drop_frac:g} × (peak − initial gold), "
        f"{r.noise_sigmas:g} noise sd)"
        + (", while the smoothed proxy reward has not fallen below its value at the gold peak. " if
           r.require_proxy_up else ". ") + "Onset: where the gold decline began (the kink of a two-slope "
        "line fitted to the gold reward around its last peak).",
        f"Proxy-free rule (no gold): smoothed KL > {r.kl_threshold:g} nats and at least "
        f"{r.min_degeneration_signals} of: perplexity ≤ {r.ppl_ratio_max:g} × initial, repeated n-gram "
        f"fraction ≥ initial + {r.repeat_rise:g}, response length ≥ {r.length_ratio_min:g} × initial. "
        "Onset: the first step of the sustained window.",
        f"Initial = smoothed value at the first logged step (the SFT policy); final = mean of the last "
        f"{final_window} logged steps; KL = kl/init_k3 (to the initial policy; else k1, else k2) in every "
        "KL column, KL budget, criterion, rule and figure, the same distance travelled whatever an arm's KL "
        "reference; only a run logged before kl/init_* existed, whose reference is not its initial policy, has its "
        f"KL to the reference instead (kl/ref_k3, else k1, else k2). Used here: {kl_used(stability)}.",
    ]


def kl_used(stability: pd.DataFrame) -> str:
    """The KL metrics ``run_stability``'s runs were measured with, in words: "kl/init_k3 (KL to the initial
    policy; 6 runs), ..." ("none" when no run logged KL)."""
    counts = sorted(stability["kl_metric"].value_counts().items(), key=lambda item: KL_PREFERENCE.index(item[0]))
    return ", ".join(f"{metric} ({kl_label(metric)}; {_runs_count(n)})" for metric, n in counts) or "none"


def reference_kl_note(runs: pd.DataFrame, stability: pd.DataFrame) -> list[str]:
    """A header line naming the runs whose KL is to their reference, not to their initial policy (run
    directories from before kl/init_* whose reference is not their initial policy); none when there are none."""
    flagged = reference_kl_runs(stability)
    if flagged.empty:
        return []
    reference = runs.set_index("run_id").get("tricks.reference", pd.Series(dtype=object))
    names = ", ".join(f"{run_id} (reference={reference.get(run_id, '?')})" for run_id in flagged)
    return [f"Not comparable across arms: the KL of {_runs_count(len(flagged))} is to the reference, not to the "
            f"initial policy (logged before kl/init_* existed): {names}."]


def _runs_count(n: int) -> str:
    """"1 run", "2 runs"."""
    return f"{n} run" if n == 1 else f"{n} runs"


def _header(runs: pd.DataFrame, stability: pd.DataFrame, sources) -> list[str]:
    """Facts listed under the report's title."""
    statuses = ", ".join(f"{n} {status}" for status, n in runs["status"].value_counts().items())
    return [
        f"Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from "
        f"{', '.join(str(s) for s in sources) or 'loaded frames'}.",
        f"{len(runs)} runs ({statuses}) in {runs['arm'].nunique()} arms; "
        f"{int(stability['collapsed'].sum())} collapsed, {int(stability['diverged'].sum())} diverged.",
    ]


def arm_samples(runs: pd.DataFrame, stability: pd.DataFrame, per_step: int) -> list[dict]:
    """Per arm, up to ``per_step`` sample responses of one representative run at one or two steps.

    The run: the arm's first collapsed run that logged samples, else its first run that did. The steps:
    the last sample step at or before the collapse onset and the first one after it; without a collapse,
    the last sample step. Returns [{arm, run_id, onset, steps: [(label, samples frame)]}] (steps empty
    when no run of the arm logged samples).
    """
    table = stability.merge(runs[["run_id", "run_dir"]], on="run_id")
    sections = []
    for arm, arm_runs in table.groupby("arm", sort=False):
        section = {"arm": arm, "run_id": None, "onset": None, "steps": []}
        for run in arm_runs.sort_values("collapsed", ascending=False, kind="stable").to_dict("records"):
            if not (Path(run["run_dir"]) / SAMPLES_FILE).is_file():
                continue
            samples = load_samples(run["run_dir"])
            if len(samples):
                onset = None if pd.isna(run["collapse_onset"]) else int(run["collapse_onset"])
                section.update(run_id=run["run_id"], onset=onset, steps=_sample_steps(samples, onset, per_step))
                break
        sections.append(section)
    return sections


def _sample_steps(samples: pd.DataFrame, onset: int | None, per_step: int) -> list[tuple[str, pd.DataFrame]]:
    """(label, first ``per_step`` samples) around ``onset``, or at the last step when onset is None."""
    steps = sorted(samples["step"].unique())
    if onset is None:
        chosen = [(f"step {steps[-1]} (last logged)", steps[-1])]
    else:
        before = [s for s in steps if s <= onset]
        after = [s for s in steps if s > onset]
        chosen = ([(f"step {before[-1]} (before onset {onset})", before[-1])] if before else []) + \
                 ([(f"step {after[0]} (after onset {onset})", after[0])] if after else [])
    return [(label, samples[samples["step"] == step].head(per_step)) for label, step in chosen]


def _clip(text) -> str:
    """A response or prompt as text, cut to MAX_RESPONSE_CHARS."""
    text = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text)
    return text if len(text) <= MAX_RESPONSE_CHARS else text[:MAX_RESPONSE_CHARS] + " […]"


def _sample_caption(sample) -> str:
    """The rewards of one sample, as a caption."""
    return f"proxy {_fmt(sample['reward_proxy'])}, gold {_fmt(sample['reward_gold'])}"


def render_html(report: dict) -> str:
    """The self-contained HTML page (every figure inlined as a base64 PNG data URI)."""
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>RLHF stability report</title>", f"<style>{CSS}</style></head><body>",
             "<h1>RLHF stability report</h1>"]
    parts += [f'<p class="meta">{e(line)}</p>' for line in report["header"]]
    parts += ["<h2>Summary per arm</h2>", "<p>Mean ± 95% CI (t) over seeds; details in summary.csv.</p>",
              report["summary"].to_html(index=False, border=0, na_rep="–")]
    if report.get("factorial") is not None:
        parts += ["<h2>Factorial effects</h2>", f"<p>{e(FACTORIAL_NOTE)}</p>",
                  report["factorial"].to_html(index=False, border=0, na_rep="–")]
    if report.get("rm_quality") is not None:
        parts += ["<h2>Reward-model quality</h2>", f"<p>{e(RM_QUALITY_NOTE)}</p>",
                  report["rm_quality"].to_html(index=False, border=0, na_rep="–")]
    parts += ["<h2>Collapse: probability and time course</h2>", f"<p>{e(COLLAPSE_NOTE)}</p>",
              report["collapse"].to_html(index=False, border=0, na_rep="–")]
    if report.get("effects") is not None:
        baseline, table = report["effects"]
        parts += [f"<h2>Effects against {e(baseline)}</h2>", f"<p>{e(EFFECTS_NOTE)} Details in effects.csv.</p>",
                  table.to_html(index=False, border=0, na_rep="–")]
    if report.get("plan") is not None:
        note, table = report["plan"]
        parts += ["<h2>Runs needed (seed planner)</h2>", f"<p>{e(note)}</p>",
                  table.to_html(index=False, border=0, na_rep="–")]
    if report.get("replicates") is not None:
        note, table = report["replicates"]
        parts += ["<h2>Replicates needed (factorial)</h2>", f"<p>{e(note)}</p>",
                  table.to_html(index=False, border=0, na_rep="–")]
    parts.append("<h2>Figures</h2>")
    for name, png in report["figures"].items():
        data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
        parts += [f"<h3>{e(FIGURE_TITLES[name])}</h3>",
                  f'<img src="data:image/png;base64,{data}" alt="{e(FIGURE_TITLES[name])}">',
                  f'<p class="meta">Files: figures/{name}.png, figures/{name}.svg</p>']
    parts.append("<h2>Sample responses</h2>")
    for section in report["samples"]:
        parts.append(f"<h3>{e(section['arm'])}</h3>")
        if not section["steps"]:
            parts.append('<p class="meta">No samples logged.</p>')
            continue
        parts.append(f'<p class="meta">Run {e(section["run_id"])}'
                     + (f', <span class="collapsed">collapse onset at step {section["onset"]}</span>'
                        if section["onset"] is not None else ", no collapse detected") + "</p>")
        for label, samples in section["steps"]:
            parts.append(f"<h4>{e(label)}</h4>")
            for sample in samples.to_dict("records"):
                parts += [f"<p><b>Prompt:</b> {e(_clip(sample['prompt']))} "
                          f'<span class="meta">({e(_sample_caption(sample))})</span></p>',
                          f"<pre>{e(_clip(sample['response']))}</pre>"]
    parts += ["<h2>Runs</h2>", f"<details><summary>{len(report['runs'])} runs (all columns in runs.csv)"
              "</summary>", report["runs"].to_html(index=False, border=0), "</details>"]
    parts += ["<h2>Collapse rules</h2>", "<ul>"] + [f"<li>{e(line)}</li>" for line in report["rules"]]
    parts += ["</ul>", "</body></html>"]
    return "\n".join(parts) + "\n"


def markdown_table(table: pd.DataFrame) -> str:
    """A pipe table of a frame of strings."""
    def row(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
    lines = [row(table.columns), "|" + "---|" * len(table.columns)]
    return "\n".join(lines + [row(values) for values in table.itertuples(index=False)])


def _fence(text: str) -> str:
    """A fenced code block whose fence is longer than any backtick run in ``text``."""
    fence = "`" * max(3, _longest_backtick_run(text) + 1)
    return f"{fence}\n{text}\n{fence}"


def _longest_backtick_run(text: str) -> int:
    """Length of the longest run of consecutive backticks in ``text``."""
    best = current = 0
    for char in text:
        current = current + 1 if char == "`" else 0
        best = max(best, current)
    return best


def render_markdown(report: dict, out_dir: Path) -> str:
    """The Markdown version of the report (figures linked as files relative to ``out_dir``)."""
    lines = ["# RLHF stability report", ""] + [f"{line}  " for line in report["header"]]
    lines += ["", "## Summary per arm", "", "Mean ± 95% CI (t) over seeds; details in summary.csv.", "",
              markdown_table(report["summary"].astype(str)), ""]
    if report.get("factorial") is not None:
        lines += ["## Factorial effects", "", FACTORIAL_NOTE, "", markdown_table(report["factorial"].astype(str)), ""]
    if report.get("rm_quality") is not None:
        lines += ["## Reward-model quality", "", RM_QUALITY_NOTE, "", markdown_table(report["rm_quality"].astype(str)), ""]
    lines += ["## Collapse: probability and time course", "", COLLAPSE_NOTE, "",
              markdown_table(report["collapse"].astype(str)), ""]
    if report.get("effects") is not None:
        baseline, table = report["effects"]
        lines += [f"## Effects against {baseline}", "", f"{EFFECTS_NOTE} Details in effects.csv.", "",
                  markdown_table(table.astype(str)), ""]
    if report.get("plan") is not None:
        note, table = report["plan"]
        lines += ["## Runs needed (seed planner)", "", note, "", markdown_table(table.astype(str)), ""]
    if report.get("replicates") is not None:
        note, table = report["replicates"]
        lines += ["## Replicates needed (factorial)", "", note, "", markdown_table(table.astype(str)), ""]
    lines += ["## Figures", ""]
    for name, png in report["figures"].items():
        lines += [f"### {FIGURE_TITLES[name]}", "", f"![{FIGURE_TITLES[name]}]({Path(png).relative_to(out_dir)})",
                  "", f"SVG: figures/{name}.svg", ""]
    lines += ["## Sample responses", ""]
    for section in report["samples"]:
        lines += [f"### {section['arm']}", ""]
        if not section["steps"]:
            lines += ["No samples logged.", ""]
            continue
        onset = section["onset"]
        lines += [f"Run {section['run_id']}, "
                  + (f"collapse onset at step {onset}" if onset is not None else "no collapse detected"), ""]
        for label, samples in section["steps"]:
            lines += [f"#### {label}", ""]
            for sample in samples.to_dict("records"):
                lines += [f"Prompt ({_sample_caption(sample)}):", "", _fence(_clip(sample["prompt"])), "",
                          "Response:", "", _fence(_clip(sample["response"])), ""]
    lines += ["## Runs", "", markdown_table(report["runs"]), "", "## Collapse rules", ""]
    lines += [f"- {line}" for line in report["rules"]]
    return "\n".join(lines) + "\n"
