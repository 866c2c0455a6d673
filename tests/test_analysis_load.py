"""Loaders of analysis: run discovery, tolerant JSONL reading, the runs and traces frames."""

import json
import logging

import numpy as np
import pandas as pd
import pytest
from analysis_fixtures import KL_INIT, KL_REF, old_style, synthetic_trace, write_run

from analysis import find_run_dirs, load_runs, load_samples, load_wandb_runs, read_jsonl, wide_traces


def _run(root, name, **kwargs):
    """A small run directory (20 steps of a stable trace unless ``trace`` is given)."""
    kwargs.setdefault("trace", synthetic_trace(20))
    return write_run(root / name, run_id=kwargs.pop("run_id", name), arm=kwargs.pop("arm", "ppo_max"),
                     seed=kwargs.pop("seed", 0), **kwargs)


def test_finds_runs_at_any_depth_in_natural_order(tmp_path):
    for name in ["sweep/10", "sweep/2", "sweep/nested/deeper/x", "other/1"]:
        _run(tmp_path, name, trace=None)
    (tmp_path / "sweep" / "2" / "checkpoints" / "inner").mkdir(parents=True)
    (tmp_path / "sweep" / "2" / "checkpoints" / "inner" / "run.json").write_text("{}")
    (tmp_path / ".hidden" / "run").mkdir(parents=True)
    (tmp_path / ".hidden" / "run" / "run.json").write_text("{}")

    found = find_run_dirs(tmp_path)

    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "other/1", "sweep/2", "sweep/10", "sweep/nested/deeper/x"]


def test_accepts_lists_run_dirs_and_run_json_without_duplicates(tmp_path):
    a = _run(tmp_path, "sweep/0", trace=None)
    _run(tmp_path, "sweep/1", trace=None)
    found = find_run_dirs([a / "run.json", tmp_path / "sweep", a])
    assert [p.name for p in found] == ["0", "1"]


def test_missing_path_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        find_run_dirs([tmp_path / "nope"])


def test_runs_frame_has_metadata_tricks_and_flattened_config(tmp_path):
    _run(tmp_path, "r", arm="vanilla", seed=7, tricks={"kl_penalty": "off", "reward_norm": "on"},
         config={"seed": 7, "ppo": {"lr": 1e-5, "epochs": 2}, "tags": ["a", "b"]})
    runs, traces = load_runs(tmp_path)

    row = runs.iloc[0]
    assert (row["run_id"], row["arm"], row["seed"], row["status"]) == ("r", "vanilla", 7, "completed")
    assert (row["n_steps"], row["last_step"], row["nonfinite_values"]) == (20, 19, 0)
    assert row["tricks.kl_penalty"] == "off" and row["tricks.reward_norm"] == "on"
    assert row["config.ppo.lr"] == 1e-5 and row["config.ppo.epochs"] == 2
    assert row["config.tags"] == '["a","b"]'
    assert row["overrides"] == "seed=7 preset=vanilla"
    assert row["run_dir"] == str((tmp_path / "r").resolve())


def test_malformed_hydra_files_leave_the_run_without_config(tmp_path, caplog):
    run = _run(tmp_path, "r")
    (run / ".hydra" / "config.yaml").write_text("seed: [1, 2\n")
    with caplog.at_level(logging.WARNING):
        runs, _ = load_runs(tmp_path)
    assert runs.loc[0, "n_steps"] == 20 and not any(c.startswith("config.") for c in runs.columns)
    assert "malformed YAML" in caplog.text


def test_traces_are_long_categorical_and_sorted(tmp_path):
    _run(tmp_path, "a", trace=synthetic_trace(5)[["reward/proxy_mean", "kl/init_k3"]])
    _run(tmp_path, "b", trace=synthetic_trace(3)[["reward/proxy_mean"]])
    runs, traces = load_runs(tmp_path)

    assert list(traces.columns) == ["run_id", "step", "metric", "value"]
    assert isinstance(traces["run_id"].dtype, pd.CategoricalDtype)
    assert isinstance(traces["metric"].dtype, pd.CategoricalDtype)
    assert len(traces) == 5 * 2 + 3
    ordered = traces.sort_values(["run_id", "metric", "step"], kind="stable")
    assert traces.index.equals(ordered.index)
    proxy_a = traces[(traces["run_id"] == "a") & (traces["metric"] == "reward/proxy_mean")]
    np.testing.assert_allclose(proxy_a["value"], synthetic_trace(5)["reward/proxy_mean"], rtol=1e-8)


def test_torn_last_line_is_ignored_silently(tmp_path, caplog):
    run = _run(tmp_path, "r", status="running")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 20, "reward/proxy_mean": 0.5, "kl/ref_')
    with caplog.at_level(logging.WARNING):
        runs, traces = load_runs(tmp_path)
    assert runs.loc[0, "n_steps"] == 20 and traces["step"].max() == 19
    assert runs.loc[0, "status"] == "running"
    assert not caplog.records


def test_corrupt_middle_line_is_dropped_with_a_warning(tmp_path, caplog):
    run = _run(tmp_path, "r", trace=None)
    (run / "metrics.jsonl").write_text('{"step": 0, "x": 1}\n{"step": 1, "x": \n[1, 2]\n{"step": 2, "x": 3}\n')
    with caplog.at_level(logging.WARNING):
        runs, traces = load_runs(tmp_path)
    assert list(traces["step"]) == [0, 2]
    messages = [record.message for record in caplog.records]
    assert len(messages) == 2 and all("ignoring a line that is not a JSON object" in m for m in messages)


def test_nan_and_infinity_tokens_are_read_and_counted(tmp_path):
    run = _run(tmp_path, "r", trace=None, status="diverged")
    (run / "metrics.jsonl").write_text(
        '{"step": 0, "ppo/policy_loss": 0.5, "reward/proxy_mean": 1.0}\n'
        '{"step": 1, "ppo/policy_loss": NaN, "reward/proxy_mean": Infinity}\n'
        '{"step": 2, "ppo/policy_loss": -Infinity, "reward/proxy_mean": 2.0}\n')
    runs, traces = load_runs(tmp_path)

    assert runs.loc[0, "nonfinite_values"] == 3
    loss = traces[traces["metric"] == "ppo/policy_loss"]
    assert list(loss["step"]) == [0, 2] and loss["value"].iloc[1] == -np.inf  # NaN has no row
    assert traces[traces["metric"] == "reward/proxy_mean"]["value"].tolist() == [1.0, np.inf, 2.0]


def test_metrics_missing_from_older_runs_and_runs_without_metrics(tmp_path):
    full = synthetic_trace(10)
    _run(tmp_path, "0-new", trace=full)
    _run(tmp_path, "1-old", trace=full.drop(columns=["reward/gold_mean", "kl/ref_k3"]))
    _run(tmp_path, "2-starting", trace=None, status="running")
    runs, traces = load_runs(tmp_path)

    assert list(runs["run_id"]) == ["0-new", "1-old", "2-starting"]
    assert list(runs["n_steps"]) == [10, 10, 0]
    per_run = traces.groupby("run_id", observed=False)["metric"].nunique()
    assert per_run.to_dict() == {"0-new": len(full.columns), "1-old": len(full.columns) - 2, "2-starting": 0}
    wide = wide_traces(traces, ["reward/gold_mean", "kl/ref_k1", "not/logged"])
    assert list(wide.columns) == ["reward/gold_mean", "kl/ref_k1"]
    assert wide.loc["1-old", "reward/gold_mean"].isna().all()


def test_repeated_steps_keep_the_last_row(tmp_path):
    run = _run(tmp_path, "r", trace=None)
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "x": v}) + "\n" for s, v in [(0, 1.0), (1, 2.0), (1, 20.0), (2, 3.0)]))
    _, traces = load_runs(tmp_path)
    assert traces["value"].tolist() == [1.0, 20.0, 3.0]


def test_unreadable_run_json_is_skipped_and_duplicate_ids_renamed(tmp_path, caplog):
    _run(tmp_path, "a", run_id="same")
    _run(tmp_path, "b", run_id="same")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "run.json").write_text('{"run_id": "torn", "sta')
    with caplog.at_level(logging.WARNING):
        runs, traces = load_runs(tmp_path)
    assert list(runs["run_id"]) == ["same", "same~2"]
    assert set(traces["run_id"].unique()) == {"same", "same~2"}
    assert "skipping run" in caplog.text and "duplicate run_id" in caplog.text


def test_no_runs_gives_empty_frames(tmp_path):
    runs, traces = load_runs(tmp_path)
    assert runs.empty and traces.empty
    assert list(traces.columns) == ["run_id", "step", "metric", "value"]


def test_read_jsonl_and_samples_tolerate_a_torn_line(tmp_path):
    run = _run(tmp_path, "r", samples=[{"step": 0, "prompt": "p", "response": "r", "reward_proxy": 1.0,
                                         "reward_gold": None}])
    with open(run / "samples.jsonl", "a") as f:
        f.write('{"step": 10, "prompt": "half')
    records, nonfinite = read_jsonl(run / "samples.jsonl")
    assert len(records) == 1 and nonfinite == 0
    samples = load_samples(run)
    assert list(samples.columns) == ["step", "prompt", "response", "reward_proxy", "reward_gold"]
    assert samples["step"].tolist() == [0] and np.isnan(samples.loc[0, "reward_gold"])
    assert load_samples(tmp_path).empty  # no samples.jsonl


def _kl(traces, run_id):
    """The KL metrics of one run as a wide frame (index: step)."""
    kl = traces[(traces["run_id"] == run_id) & traces["metric"].str.startswith("kl/")]
    wide = kl.pivot(index="step", columns="metric", values="value")
    wide.columns = wide.columns.astype("object")
    return wide


@pytest.mark.parametrize("tricks", [{"kl_penalty": "token", "reference": "sft"}, {"kl_penalty": "token"}],
                         ids=["reference=sft", "no reference trick"])
def test_old_runs_measured_from_their_initial_policy_read_kl_to_it(tmp_path, tricks):
    """A run from before kl/init_* whose reference is its initial policy: its KL to the reference is the KL to
    its initial policy."""
    trace = old_style(synthetic_trace(20, noise=1.0)).drop(columns="kl/ref_k2")
    _run(tmp_path, "old", trace=trace, tricks=tricks)
    kl = _kl(load_runs(tmp_path)[1], "old")
    assert set(kl.columns) == {"kl/ref_k1", "kl/ref_k3", "kl/init_k1", "kl/init_k3"}  # only what it logged
    for ref, init in [("kl/ref_k1", "kl/init_k1"), ("kl/ref_k3", "kl/init_k3")]:
        np.testing.assert_allclose(kl[init], trace[ref], rtol=1e-8)


@pytest.mark.parametrize("reference", ["soup", "dpo"])
def test_old_runs_with_another_reference_keep_only_kl_to_it(tmp_path, reference):
    _run(tmp_path, "old", trace=old_style(synthetic_trace(20)), tricks={"reference": reference})
    runs, traces = load_runs(tmp_path)
    assert set(_kl(traces, "old").columns) == set(KL_REF)
    assert runs.loc[0, "tricks.reference"] == reference


def test_kl_to_the_initial_policy_is_read_as_logged(tmp_path):
    """A new run whose reference is not its initial policy: kl/init_* and kl/ref_* differ, both kept as logged."""
    trace = synthetic_trace(20, noise=1.0)
    trace[list(KL_REF)] = trace[list(KL_INIT)].to_numpy() + 5.0
    _run(tmp_path, "soup", trace=trace, tricks={"reference": "soup"})
    _run(tmp_path, "sft", trace=trace, tricks={"reference": "sft"})
    traces = load_runs(tmp_path)[1]
    for run_id in ("soup", "sft"):
        kl = _kl(traces, run_id)
        assert set(kl.columns) == set(KL_INIT + KL_REF)
        for name in KL_INIT + KL_REF:
            np.testing.assert_allclose(kl[name], trace[name], rtol=1e-8)


class _FakeApiRun:
    """The part of a wandb.Api run that analysis.wandb_runs reads."""

    def __init__(self, run_id, trace, reference):
        self.id, self.group, self.url, self.state, self.created_at = run_id, "g", run_id, "finished", None
        self.config = {"arm": "ppo_max", "seed": 0, "trick/reference": reference}
        self.summary = {"status": "completed"}
        self.rows = [{"step": int(step), **row} for step, row in trace.to_dict("index").items()]

    def scan_history(self):
        return iter(self.rows)


def test_wandb_runs_get_the_same_reader_for_old_runs():
    trace = old_style(synthetic_trace(12, noise=1.0))

    class FakeApi:
        def runs(self, path, filters=None, order=None):
            return [_FakeApiRun("sft", trace, "sft"), _FakeApiRun("soup", trace, "soup")]

    runs, traces = load_wandb_runs("ent/proj", api=FakeApi())
    assert list(runs["tricks.reference"]) == ["sft", "soup"]
    sft, soup = _kl(traces, "sft"), _kl(traces, "soup")
    np.testing.assert_allclose(sft["kl/init_k3"], trace["kl/ref_k3"], rtol=1e-8)
    assert set(soup.columns) == set(KL_REF)
