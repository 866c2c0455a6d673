"""Time loading + reporting a large synthetic sweep (target: <= 20 s on the project's 2-core machine).

Builds (untimed) a Hydra-multirun-like sweep of 200 runs x 1,000 PPO iterations x 40 metrics in a temporary
directory: 10 arms x 20 seeds, half of the arms collapsing. Then times ``load_runs`` and ``write_report``
separately and prints the figures.

    .venv/bin/python benchmarks/bench_report.py [--arms 10] [--seeds 20] [--steps 1000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from analysis import load_runs, write_report  # noqa: E402
from analysis_fixtures import write_sweep  # noqa: E402

TARGET_SECONDS = 20.0
N_METRICS = 40
MODELLED_METRICS = 12  # synthetic_trace's key metrics; the rest are random-walk filler


def main() -> int:
    """Build the sweep, time load and report, print the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--keep", type=Path, help="build the sweep here and keep it (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sweep = args.keep or Path(tmp) / "sweep"
        start = time.perf_counter()
        arms = {f"arm{i:02d}": (300 + 50 * i if i % 2 else None) for i in range(args.arms)}
        write_sweep(sweep, arms, seeds=range(args.seeds), n_steps=args.steps, noise=1.0,
                    n_other=N_METRICS - MODELLED_METRICS, samples_every=50)
        built = time.perf_counter() - start
        start = time.perf_counter()
        runs, traces = load_runs(sweep)
        loaded = time.perf_counter() - start
        start = time.perf_counter()
        report = write_report(runs, traces, sweep / "report", sources=[sweep])
        reported = time.perf_counter() - start
    n_metrics = traces["metric"].nunique()
    total = loaded + reported
    print(f"sweep: {len(runs)} runs x {args.steps} iterations x {n_metrics} metrics "
          f"({len(traces):,} trace rows; built in {built:.1f} s, untimed)")
    print(f"load {loaded:.2f} s + report {reported:.2f} s = {total:.2f} s "
          f"(target <= {TARGET_SECONDS:.0f} s: {'ok' if total <= TARGET_SECONDS else 'MISSED'})")
    if args.keep:
        print(f"report: {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
