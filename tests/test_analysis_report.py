"""The report: CLI behaviour, the files it writes and their content; analysis never imports torch."""

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from analysis_fixtures import KL_INIT, KL_REF, old_style, synthetic_trace, write_run, write_sweep

from analysis.cli import main

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"vanilla": 60, "ppo_max": None, "no_kl_penalty": 90}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A multirun-like sweep of 3 arms x 2 seeds, plus a run that has not logged anything yet."""
    root = write_sweep(tmp_path_factory.mktemp("sweep") / "multirun", ARMS, seeds=(0, 1), n_steps=150)
    write_run(root / "6", run_id="starting", arm="ppo_max", seed=2, trace=None, status="running")
    return root


@pytest.fixture(scope="module")
def report(sweep):
    """rlhf-report run on the sweep with the default output directory; (exit code, stdout, output dir)."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main([str(sweep), "--no-progress"])
    return code, stdout.getvalue(), sweep / "report"


def test_writes_every_file_into_the_default_output(report):
    code, stdout, out = report
    assert code == 0
    assert str(out / "report.html") in stdout
    for name in ["report.html", "report.md", "summary.csv", "runs.csv", "collapse.csv", "survival.csv", "plan.csv"]:
        assert (out / name).stat().st_size > 0, name
    for figure in ["traces", "frontier", "stability_heatmap", "survival", "effects"]:  # effects: against ppo_max, the default
        for ext in ["png", "svg"]:
            assert (out / "figures" / f"{figure}.{ext}").stat().st_size > 1000, (figure, ext)


def test_summary_csv_has_one_row_per_arm(report):
    summary = pd.read_csv(report[2] / "summary.csv")
    assert list(summary["arm"]) == list(ARMS)
    assert {"arm", "n_runs", "collapse_frac", "collapse_onset_median", "final_kl_mean",
            "final_gold_mean"} <= set(summary.columns)
    by_arm = summary.set_index("arm")
    assert by_arm["n_runs"].to_dict() == {"vanilla": 2, "ppo_max": 3, "no_kl_penalty": 2}
    assert by_arm.loc["vanilla", "collapse_frac"] == 1 and by_arm.loc["ppo_max", "collapse_frac"] == 0
    assert abs(by_arm.loc["no_kl_penalty", "collapse_onset_median"] - 90) <= 8
    assert by_arm.loc["ppo_max", "final_gold_mean"] > 0 > by_arm.loc["vanilla", "final_gold_mean"]
    assert by_arm.loc["vanilla", "final_kl_mean"] > 10 > by_arm.loc["ppo_max", "final_kl_mean"]


def test_runs_csv_has_one_row_per_run(report):
    runs = pd.read_csv(report[2] / "runs.csv")
    assert len(runs) == 7
    assert {"run_id", "arm", "seed", "status", "collapsed", "collapse_onset", "tricks.kl_penalty",
            "config.ppo.lr", "run_dir"} <= set(runs.columns)
    starting = runs.set_index("run_id").loc["starting"]
    assert (starting["status"], starting["n_steps"], starting["collapsed"]) == ("running", 0, False)
    assert starting["collapse_rule"] == "insufficient"


def test_collapse_probability_and_survival_files(report):
    collapse = pd.read_csv(report[2] / "collapse.csv").set_index("arm")
    # vanilla: 2 of 2 collapsed, exact interval [0.025 ** (1 / 2), 1]; ppo_max: 0 of 2 (its third run has only
    # started: the detector could not decide, so it is left out), [0, 1 - 0.025 ** (1 / 2)]
    assert collapse.loc["vanilla", ["collapsed", "n_runs", "p_collapse"]].tolist() == [2, 2, 1.0]
    assert collapse.loc["vanilla", "p_low"] == pytest.approx(0.025 ** 0.5)
    assert collapse.loc["ppo_max", ["collapsed", "n_runs"]].tolist() == [0, 2]
    assert collapse.loc["ppo_max", "p_high"] == pytest.approx(1 - 0.025 ** 0.5)
    assert collapse.loc["ppo_max", "survival_end"] == 1.0 and collapse.loc["vanilla", "survival_end"] == 0.0
    survival = pd.read_csv(report[2] / "survival.csv")
    assert survival.groupby("arm")["survival"].apply(lambda s: s.is_monotonic_decreasing).all()
    assert "Collapse: probability and time course" in (report[2] / "report.md").read_text()


def test_seed_plan_in_the_report_and_on_the_command_line(sweep, report, capsys):
    plan = pd.read_csv(report[2] / "plan.csv")
    assert set(plan["arm"]) == {"vanilla", "no_kl_penalty"} and (plan["baseline"] == "ppo_max").all()
    assert "Runs needed (seed planner)" in (report[2] / "report.md").read_text()
    assert main([str(sweep), "--no-progress", "--plan", "--effect", "final_gold=0.05", "--power", "0.9"]) == 0
    printed = capsys.readouterr().out
    assert "power 0.9" in printed and "| no_kl_penalty | final gold |" in printed and "+0.05" in printed
    with pytest.raises(SystemExit) as bad:
        main([str(sweep), "--plan", "--effect", "final_reward=0.1"])
    assert bad.value.code == 2 and "unknown metric 'final_reward'" in capsys.readouterr().err


def test_html_is_self_contained_with_escaped_samples(report):
    page = (report[2] / "report.html").read_text()
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert len([s for s in sources if s.startswith("data:image/png;base64,")]) == 5  # with survival and forest
    assert all(s.startswith("data:") for s in sources)
    assert "<script" not in page
    assert "&lt;b&gt;nice&lt;/b&gt;" in page and "<b>nice</b>" not in page
    assert "collapse onset at step" in page and "before onset" in page and "after onset" in page
    assert "great great great" in page  # the collapsed arm's degenerate responses
    assert "(last logged)" in page  # the stable arm's samples
    for arm in ARMS:
        assert f"<h3>{arm}</h3>" in page


def test_markdown_links_existing_figures(report):
    markdown = (report[2] / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(links) == 5 and all((report[2] / link).is_file() for link in links)  # survival, effects too
    assert "| arm | runs | completed |" in markdown
    assert "## Collapse rules" in markdown


def test_real_task_without_gold_uses_the_proxy_free_rule(tmp_path):
    for job, (arm, onset) in enumerate([("vanilla", 50), ("ppo_max", None)]):
        trace = synthetic_trace(120, collapse_at=onset, noise=1.0, seed=job).drop(columns="reward/gold_mean")
        write_run(tmp_path / "sweep" / str(job), run_id=arm, arm=arm, seed=0, trace=trace)
    out = tmp_path / "out"
    assert main([str(tmp_path / "sweep"), "-o", str(out), "--kl-threshold", "8"]) == 0
    runs = pd.read_csv(out / "runs.csv").set_index("run_id")
    assert runs.loc["vanilla", "collapse_rule"] == "proxy_free" and runs.loc["vanilla", "collapsed"]
    assert not runs.loc["ppo_max", "collapsed"]
    assert "No samples logged." in (out / "report.html").read_text()


def test_report_says_which_kl_and_flags_runs_measured_from_their_reference(tmp_path):
    """New runs log KL to their initial policy; an old run whose reference was the SFT policy reads its KL to the
    reference as that; an old soup-reference run has only its KL to the soup, and the report says so."""
    runs = [("new-sft", "sft", lambda t: t), ("new-soup", "soup", lambda t: t), ("old-sft", "sft", old_style),
            ("old-soup", "soup", old_style)]
    for job, (run_id, reference, style) in enumerate(runs):
        trace = synthetic_trace(60, noise=1.0, seed=job)
        if reference == "soup":
            trace[list(KL_REF)] = trace[list(KL_INIT)].to_numpy() + 10.0
        write_run(tmp_path / "sweep" / str(job), run_id=run_id, arm=reference, seed=job, trace=style(trace),
                  tricks={"reference": reference})
    out = tmp_path / "out"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([str(tmp_path / "sweep"), "-o", str(out), "--no-progress"]) == 0

    per_run = pd.read_csv(out / "runs.csv").set_index("run_id")["kl_metric"]
    assert per_run.to_dict() == {"new-sft": "kl/init_k3", "new-soup": "kl/init_k3", "old-sft": "kl/init_k3",
                                 "old-soup": "kl/ref_k3"}
    markdown = (out / "report.md").read_text()
    (flag,) = [line for line in markdown.splitlines() if "Not comparable across arms" in line]
    assert "old-soup (reference=soup)" in flag and "new-soup" not in flag and "old-sft" not in flag
    assert "KL = kl/init_k3 (to the initial policy; else k1, else k2)" in markdown
    assert "kl/init_k3 (KL to the initial policy; 3 runs), kl/ref_k3 (KL to the reference; 1 run)" in markdown
    assert flag.strip() in (out / "report.html").read_text()

    (tmp_path / "sweep" / "3" / "run.json").unlink()  # without the old soup run: nothing to flag
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([str(tmp_path / "sweep"), "-o", str(tmp_path / "new"), "--no-progress"]) == 0
    assert "Not comparable" not in (tmp_path / "new" / "report.md").read_text()


def test_no_runs_found_is_an_error(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1
    assert "no run directories" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 1
    assert "no such file or directory" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_bad_rule_values_are_usage_errors(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--window", "0"])
    assert exit_info.value.code == 2


def test_python_m_analysis_runs_the_cli(tmp_path):
    done = subprocess.run([sys.executable, "-m", "analysis", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and "no run directories" in done.stderr


def test_analysis_never_imports_torch(sweep, tmp_path):
    code = f"""
import json, sys
import analysis
light = sorted(m for m in ("matplotlib", "torch", "rlhf_lab") if m in sys.modules)
from analysis.cli import main
code = main([{str(sweep)!r}, "-o", {str(tmp_path / "out")!r}, "--no-progress"])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "rlhf_lab", "transformers"))
print(json.dumps({{"code": code, "light": light, "heavy": heavy}}))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "light": [], "heavy": []}
