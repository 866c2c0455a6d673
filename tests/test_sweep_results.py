"""benchmarks/sweep_results.py: a results page's files from a toy sweep (issue 26's factorial and
reward-model-quality sweeps): the arms table, collapse and factorial tables, the RM-quality slopes, the pace."""

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
from analysis_fixtures import write_sweep

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "sweep_results.py"


def results(sweep: Path, out: Path) -> dict:
    spec = importlib.util.spec_from_file_location("sweep_results", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(sweep), "-o", str(out), "--command", "the command"]) == 0
    return json.loads((out / "meta.json").read_text())


def edit_runs(sweep: Path, change) -> None:
    for i, run_json in enumerate(sorted(sweep.glob("*/run.json"), key=lambda p: int(p.parent.name))):
        meta = json.loads(run_json.read_text())
        run_json.write_text(json.dumps({**meta, **change(i, meta)}))


def test_a_factorial_sweep_gives_its_tables_slopes_and_pace(tmp_path):
    # kl on prevents the collapse, norm does nothing: 2 x 2 arms x 3 seeds, and one more run still running
    sweep = write_sweep(tmp_path / "sweep", {"kl=off,norm=off": 60, "kl=on,norm=off": None,
                                             "kl=off,norm=on": 60, "kl=on,norm=on": None}, seeds=(0, 1, 2, 3),
                        n_steps=120)
    # the runs start 10 min apart, each 1 h long (the 12th: 110 min + 60 min after the first start), each with
    # its own reward model of agreement 0.60 + 0.01 i with gold; 2 of them ran at another commit
    edit_runs(sweep, lambda i, meta: {
        "started_at": (pd.Timestamp("2026-11-22T02:00:00") + pd.Timedelta(minutes=10 * i)).isoformat(),
        "finished_at": (pd.Timestamp("2026-11-22T03:00:00") + pd.Timedelta(minutes=10 * i)).isoformat(),
        "git_sha": "2222222bbbb" if i in (0, 1) else "1111111aaaa",
        "reward_model": {"gold_accuracy": 0.6 + 0.01 * i, "train_pairs": 100},
        **({"status": "running", "finished_at": None} if i % 4 == 3 else {})})  # each arm's seed 3: unfinished
    out = tmp_path / "out"
    meta = results(sweep, out)
    assert meta["runs"] == 12 and meta["command"] == "the command"
    assert meta["commit"] == "2222222 (2 runs); 1111111 (10 runs)"
    # first start 02:00 (run 0), last finish 03:00 + 140 min (run 14, the last completed): 3.33 h
    assert "3.33 h" in meta["note"] and f"({12 / (200 / 60):.1f} runs an hour)" in meta["note"]
    assert "Not completed, so not in the tables: 4 runs." in meta["note"]
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 12 and (runs["wall_s"] == 3600).all()
    arms = (out / "arms.md").read_text()
    assert "| kl=off,norm=off | 3 | 0.610 |" in arms  # agreement: mean of runs 0, 1, 2
    assert "3/3 [0.29, 1.00]" in arms and "0/3 [0.00, 0.71]" in arms
    factorial = pd.read_csv(out / "factorial.csv").set_index(["outcome", "term"])
    kl = factorial.loc[("collapsed", "kl=on")]
    assert kl["estimate"] == pytest.approx(-1.0) and kl["significant"]  # the known effect (a least-squares fit)
    assert not factorial.loc[("collapsed", "norm=on"), "significant"]  # the null one
    shown = (out / "factorial.md").read_text()
    assert "| kl=on |" in shown and "aliased" not in shown  # a full factorial: nothing aliased
    plan = pd.read_csv(out / "factorial_plan.csv").set_index(["outcome", "term"])
    assert plan.loc[("collapsed", "kl=on"), "replicates_now"] == 3  # 12 runs of 4 arms
    assert plan.loc[("collapsed", "kl=on"), "replicates_needed"] == 1  # an exact effect: one replicate shows it
    assert "| kl=on |" in (out / "factorial_plan.md").read_text()
    assert "3/3" in (out / "collapse.md").read_text()
    slopes = pd.read_csv(out / "rm_quality.csv")
    assert set(slopes["n_runs"]) == {3} and slopes["group"].nunique() == 4
    assert {"survival.png", "interactions.png", "traces.png", "rm_quality.png"} <= {p.name for p in out.iterdir()}
