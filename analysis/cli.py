"""``rlhf-report <run or sweep dirs...> [-o OUT]``: the stability report of a sweep (see analysis.report).

``rlhf-report <sweep dir> --plan [--effect final_gold=0.1] [--power 0.8]`` prints the seed planner's answer
(analysis.planner): how many runs per arm detect that effect against the baseline.

``rlhf-report --wandb ENTITY/PROJECT [--group G] -o OUT`` reports on W&B runs instead (cloud API); W&B
offline run directories (``.../wandb/offline-run-*``) are accepted as paths."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.effects import default_baseline
from analysis.frames import frames_from_runs
from analysis.load import RUN_FILE, read_runs
from analysis.planner import PLANNED_METRICS, display_plan, seed_plan
from analysis.report import markdown_table, write_report
from analysis.stability import DEFAULT_FINAL_WINDOW, DEFAULT_KL_BUDGETS, CollapseRules, run_stability

_DEFAULTS = CollapseRules()


def _budgets(text: str) -> tuple[float, ...]:
    """Parse "1,3,10" into (1.0, 3.0, 10.0)."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of rlhf-report."""
    parser = argparse.ArgumentParser(
        prog="rlhf-report",
        description="Stability report (HTML, Markdown, CSV, PNG/SVG) of RLHF runs: run directories or "
                    "sweep directories containing them at any depth, W&B offline run directories "
                    "(.../wandb/offline-run-*) or folders of them, or W&B runs in the cloud (--wandb).")
    parser.add_argument("paths", nargs="*", type=Path,
                        help="run directories, sweep directories and/or W&B offline run directories")
    parser.add_argument("-o", "--output", type=Path,
                        help="output directory (default: <first path>/report, or ./report with --wandb only)")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT",
                        help="also read the W&B runs of this project through the W&B API (needs a login)")
    parser.add_argument("--group", metavar="G",
                        help="with --wandb: only the runs of this W&B group (one sweep: its sweep directory)")
    rules = parser.add_argument_group("collapse detector (see the Collapse rules section of the report)")
    rules.add_argument("--window", type=int, default=_DEFAULTS.window,
                       help="smoothing window in logged steps (default %(default)s)")
    rules.add_argument("--patience", type=int, default=_DEFAULTS.patience,
                       help="consecutive steps a rule must hold (default %(default)s)")
    rules.add_argument("--gold-drop-frac", type=float, default=_DEFAULTS.gold_drop_frac,
                       help="gold drawdown as a fraction of the gain (default %(default)s)")
    rules.add_argument("--noise-sigmas", type=float, default=_DEFAULTS.noise_sigmas,
                       help="minimum drawdown in noise sds of the smoothed trace (default %(default)s)")
    rules.add_argument("--kl-threshold", type=float, default=_DEFAULTS.kl_threshold,
                       help="KL (nats) above which KL has exploded, proxy-free rule (default %(default)s)")
    rules.add_argument("--ppl-ratio-max", type=float, default=_DEFAULTS.ppl_ratio_max,
                       help="perplexity/initial at or below this = dropped (default %(default)s)")
    rules.add_argument("--repeat-rise", type=float, default=_DEFAULTS.repeat_rise,
                       help="rise of the repeated n-gram fraction = repetitive (default %(default)s)")
    rules.add_argument("--length-ratio-min", type=float, default=_DEFAULTS.length_ratio_min,
                       help="length/initial at or above this = run-on (default %(default)s)")
    rules.add_argument("--no-gold", action="store_true",
                       help="ignore the gold reward: use the proxy-free rule, as on a real task")
    parser.add_argument("--final-window", type=int, default=DEFAULT_FINAL_WINDOW,
                        help="'final' = mean of this many last logged steps (default %(default)s)")
    parser.add_argument("--kl-budgets", type=_budgets, default=DEFAULT_KL_BUDGETS,
                        help="KL budgets (nats) for reward-at-KL, comma-separated (default 1,3,10)")
    parser.add_argument("--samples-per-step", type=int, default=3,
                        help="sample responses shown per arm and step (default %(default)s)")
    parser.add_argument("--baseline", metavar="ARM",
                        help="add each arm's effect against this arm, paired by seed and instance (effects.csv, "
                             "table, forest plot); default: ppo_max or vanilla when one is an arm; 'none': off")
    plan = parser.add_argument_group("seed planner (analysis/planner.py): runs needed against the baseline, "
                                     "from this sweep's spread as a pilot")
    plan.add_argument("--plan", action="store_true",
                      help="print the plan and exit (the report has it too, as plan.csv and a table)")
    plan.add_argument("--effect", action="append", type=_effect, default=[], metavar="METRIC=SIZE",
                      help="the effect to detect, e.g. final_gold=0.1 (repeatable; default: the pilot's own "
                           "effect); metrics: " + ", ".join(PLANNED_METRICS))
    plan.add_argument("--power", type=float, default=0.8, help="power to detect it (default %(default)s)")
    plan.add_argument("--alpha", type=float, default=0.05,
                      help="two-sided significance level per effect (default %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _effect(text: str) -> tuple[str, float]:
    """Parse "final_gold=0.1"."""
    metric, _, size = text.partition("=")
    if metric not in PLANNED_METRICS:
        raise argparse.ArgumentTypeError(f"unknown metric {metric!r} in {text!r}: expected one of "
                                         + ", ".join(PLANNED_METRICS))
    try:
        return metric, float(size)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected METRIC=SIZE with a number, got {text!r}") from None


def _rules(args: argparse.Namespace) -> CollapseRules:
    """CollapseRules from the parsed flags."""
    return CollapseRules(
        window=args.window, patience=args.patience, use_gold=not args.no_gold,
        gold_drop_frac=args.gold_drop_frac, noise_sigmas=args.noise_sigmas, kl_threshold=args.kl_threshold,
        ppl_ratio_max=args.ppl_ratio_max, repeat_rise=args.repeat_rise, length_ratio_min=args.length_ratio_min)


def default_output(first_path: Path) -> Path:
    """<first path>/report (a run.json path counts as its directory)."""
    return (first_path.parent if first_path.name == RUN_FILE else first_path) / "report"


def main(argv=None) -> int:
    """Entry point of rlhf-report; returns the exit status (0 ok, 1 nothing to report, 2 bad usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rules = _rules(args)
    except ValueError as error:
        parser.error(str(error))
    if not args.paths and not args.wandb:
        parser.error("give run or sweep directories, or --wandb ENTITY/PROJECT")
    if args.group and not args.wandb:
        parser.error("--group needs --wandb ENTITY/PROJECT")
    if not (0 < args.power < 1 and 0 < args.alpha < 1):
        parser.error(f"--power and --alpha must lie in (0, 1), got {args.power} and {args.alpha}")
    try:
        pairs = read_runs(args.paths, progress=not args.no_progress)
    except FileNotFoundError as error:
        print(f"rlhf-report: error: {error}", file=sys.stderr)
        return 1
    sources = list(args.paths)
    if args.wandb:
        from analysis.wandb_runs import read_api_runs

        try:
            pairs += read_api_runs(args.wandb, args.group)
        except Exception as error:  # noqa: BLE001 - network, login, unknown project: say so and stop
            print(f"rlhf-report: error: W&B {args.wandb}: {type(error).__name__}: {error}", file=sys.stderr)
            return 1
        sources.append(f"W&B {args.wandb}" + (f" group {args.group}" if args.group else ""))
    runs, traces = frames_from_runs(pairs)
    if runs.empty:
        print("rlhf-report: error: no run directories (directories containing run.json) or W&B runs found in "
              + ", ".join(str(p) for p in sources), file=sys.stderr)
        return 1
    arms = list(dict.fromkeys(runs["arm"]))
    baseline = default_baseline(arms) if args.baseline is None else (None if args.baseline == "none" else args.baseline)
    if baseline is not None and baseline not in arms:
        print(f"rlhf-report: error: --baseline {baseline!r} is not an arm of these runs; expected one of: "
              + ", ".join(arms), file=sys.stderr)
        return 2
    if len(arms) < 2:
        baseline = None  # nothing to compare
    planning = {"effects": dict(args.effect), "power": args.power, "alpha": args.alpha}
    if args.plan:
        if baseline is None:
            print("rlhf-report: error: --plan needs two arms and a baseline (--baseline ARM)", file=sys.stderr)
            return 2
        plan = seed_plan(run_stability(runs, traces, rules, args.final_window, args.kl_budgets), baseline,
                         **planning)
        print(f"Runs needed against {baseline} for power {args.power:g} at alpha {args.alpha:g} (two-sided), "
              f"from {len(runs)} pilot runs:\n")
        print(markdown_table(display_plan(plan)))
        return 0
    out_dir = args.output or (default_output(args.paths[0]) if args.paths else Path("report"))
    report = write_report(runs, traces, out_dir, rules, args.final_window, args.kl_budgets,
                          args.samples_per_step, sources=sources, baseline=baseline, planning=planning)
    print(f"rlhf-report: {len(runs)} runs; wrote {report} (and report.md, summary.csv, runs.csv, figures/) "
          f"in {out_dir}")
    return 0

