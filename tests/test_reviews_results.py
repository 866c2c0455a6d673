"""benchmarks/reviews_results.py: the real-model tier's results files from a sweep, and --keep-published (an
earlier sweep's runs, whose run directories are gone, stay in the tables beside the new sweep's)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
from analysis_fixtures import write_sweep

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "reviews_results.py"


def results(sweep: Path, out: Path, *args: str) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), str(sweep), "-o", str(out), *args],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def sweep_of_seed(root: Path, seed: int, sha: str) -> Path:
    sweep = write_sweep(root, {"vanilla": None, "ppo_max": None}, seeds=(seed,), n_steps=40)
    for run_json in sweep.glob("*/run.json"):
        meta = json.loads(run_json.read_text())
        run_json.write_text(json.dumps({**meta, "git_sha": sha}))
    return sweep


def test_a_second_seed_joins_the_published_first(tmp_path):
    first = sweep_of_seed(tmp_path / "first", 0, "1111111aaaa")
    second = sweep_of_seed(tmp_path / "second", 1, "2222222bbbb")
    out = tmp_path / "out"
    results(first, out)
    published = pd.read_csv(out / "runs.csv")
    assert sorted(published["run_id"]) == ["ppo_max-s0", "vanilla-s0"]
    shutil.rmtree(first)  # the first sweep's run directories are gone: only its published files remain

    alone = tmp_path / "alone"
    shutil.copytree(out, alone)
    results(second, alone)  # without --keep-published the new sweep replaces the tables
    assert sorted(pd.read_csv(alone / "runs.csv")["run_id"]) == ["ppo_max-s1", "vanilla-s1"]

    results(second, out, "--keep-published")
    merged = pd.read_csv(out / "runs.csv")
    assert sorted(merged["run_id"]) == ["ppo_max-s0", "ppo_max-s1", "vanilla-s0", "vanilla-s1"]
    # the published rows are kept as they were, not recomputed
    kept = merged.set_index("run_id").loc[published["run_id"], published.columns.drop("run_id")]
    pd.testing.assert_frame_equal(kept.reset_index(drop=True), published.drop(columns="run_id"), check_dtype=False)
    table = (out / "table.md").read_text()
    assert "| vanilla | 2 |" in table and "s0: " in table and "s1: " in table
    effects = (out / "effects.md").read_text()
    assert "| vanilla | 2 |" in effects  # vanilla against ppo_max, paired on both seeds
    course = pd.read_csv(out / "course.csv")
    assert set(course["run_id"]) == set(merged["run_id"])
    assert set(pd.read_csv(out / "samples.csv")["run_id"]) == set(merged["run_id"])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["runs"] == 4
    assert "1111111 (ppo_max s0, vanilla s0)" in meta["commit"] and "2222222 (ppo_max s1, vanilla s1)" in meta["commit"]
    assert "the tables add the published runs" in meta["note"]

    results(second, out, "--keep-published")  # again: the same files, nothing doubled
    assert len(pd.read_csv(out / "runs.csv")) == 4 and len(pd.read_csv(out / "course.csv")) == len(course)
