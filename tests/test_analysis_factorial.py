"""Factorial effects (analysis/factorial.py): a synthetic factorial sweep with known main effects and a known
interaction is recovered with the right signs, and the null effects are not declared significant after Holm's
correction; a fractional design of resolution V too; and through rlhf-report on run directories."""

import itertools

import numpy as np
import pandas as pd
import pytest
from analysis_fixtures import synthetic_trace, write_run

from analysis.cli import main
from analysis.factorial import display_factorial, factor_levels, factorial_effects, parse_label
from rlhf_lab.run.design import fraction

LEVELS = {"kl_penalty": ["off", "token"], "reward_norm": ["off", "running"], "value_clip": ["off", "on"]}


def label(run: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in run.items())


def truth(run: dict) -> float:
    """Final gold: +0.3 with the KL penalty, +0.2 more when value clipping is on too; reward_norm does nothing."""
    kl, clip = run["kl_penalty"] == "token", run["value_clip"] == "on"
    return 0.3 * kl + 0.2 * (kl and clip)


def stability_frame(noise: float = 0.03, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for values in itertools.product(*LEVELS.values()):
        run = dict(zip(LEVELS, values))
        for instance, s in itertools.product(range(3), range(2)):
            rows.append({"arm": label(run), "seed": s, "config.task.language_seed": instance,
                         "final_gold": truth(run) + 0.1 * instance + noise * rng.standard_normal(),
                         "final_kl": 5 + rng.standard_normal(),  # no effect at all
                         "collapsed": run["kl_penalty"] == "off", "collapse_rule": "gold"})
    return pd.DataFrame(rows)


def test_labels_parse_into_factors():
    assert parse_label("kl_penalty=off,ppo.lr=1e-5") == {"kl_penalty": "off", "ppo.lr": "1e-5"}
    assert parse_label("ppo_max") is None and parse_label("a=1,a=2") is None
    assert factor_levels(["a=0,b=x", "a=1,b=x", "a=0,b=y"]) == {"a": ["0", "1"], "b": ["x", "y"]}
    assert factor_levels(["vanilla", "ppo_max"]) is None
    assert factor_levels(["a=0,b=x", "a=1,b=x"]) is None  # one factor varies: an arms comparison, not a factorial


def test_known_effects_are_recovered_and_nulls_are_not_declared():
    effects = factorial_effects(stability_frame())
    gold = effects[effects["outcome"] == "final_gold"].set_index("term")
    # main effects average over the other factors: KL +0.3 + 0.2 / 2, value clip +0.2 / 2; the interaction is
    # the difference of differences, +0.2
    expected = {"kl_penalty=token": 0.4, "value_clip=on": 0.1, "kl_penalty=token x value_clip=on": 0.2}
    for term, value in expected.items():
        row = gold.loc[term]
        assert row["significant"] and row["ci95_low"] < value < row["ci95_high"], term
    nulls = ["reward_norm=running", "kl_penalty=token x reward_norm=running", "reward_norm=running x value_clip=on"]
    assert not gold.loc[nulls, "significant"].any()
    assert not effects[effects["outcome"] == "final_kl"]["significant"].any()
    assert (effects["p_holm"] >= effects["p"]).all()  # Holm only ever raises p
    collapse = effects[effects["outcome"] == "collapsed"].set_index("term")
    assert collapse.loc["kl_penalty=token", "estimate"] == pytest.approx(-1.0)  # collapse iff the KL penalty is off
    assert collapse.loc["kl_penalty=token", "significant"]
    shown = display_factorial(effects).set_index("term")
    assert shown.loc["kl_penalty=token", "final gold"].endswith("*")


def test_resolution_v_fraction_recovers_an_interaction():
    factors = {f: ["0", "1"] for f in "abcde"}
    runs, _ = fraction(factors, 5)  # 16 of the 32 combinations
    rng = np.random.default_rng(1)
    rows = [{"arm": label(run), "seed": s, "final_gold": 0.5 * (run["d"] == "1") - 0.4 * (run["b"] == run["e"] == "1")
             + 0.02 * rng.standard_normal()} for run in runs for s in range(2)]
    gold = factorial_effects(pd.DataFrame(rows), levels=factors).set_index("term")
    assert len(gold) == 5 + 10 and gold["aliased_with"].isna().all()  # every main effect and 2-way term estimable
    assert gold.loc["b=1 x e=1", "significant"] and gold.loc["b=1 x e=1", "estimate"] == pytest.approx(-0.4, abs=0.05)
    assert gold.loc["d=1", "estimate"] == pytest.approx(0.5, abs=0.05)
    assert gold.loc["b=1", "estimate"] == pytest.approx(-0.2, abs=0.05)  # -0.4 averaged over e
    significant = set(gold.index[gold["significant"]])
    assert significant == {"d=1", "b=1", "e=1", "b=1 x e=1"}


def test_resolution_iv_names_its_aliases():
    runs, _ = fraction({f: ["0", "1"] for f in "abcd"}, 4)  # AB = CD
    rows = [{"arm": label(run), "seed": s, "final_gold": float(s)} for run in runs for s in range(2)]
    gold = factorial_effects(pd.DataFrame(rows), levels={f: ["0", "1"] for f in "abcd"}).set_index("term")
    assert gold.loc["c=1 x d=1", "aliased_with"] == "a=1 x b=1"


def test_not_a_factorial_gives_an_empty_table():
    frame = pd.DataFrame({"arm": ["vanilla", "ppo_max"], "seed": [0, 0], "final_gold": [0.1, 0.2]})
    assert factorial_effects(frame).empty


def test_rlhf_report_on_a_factorial_sweep(tmp_path):
    frame = stability_frame(noise=0.0)
    for i, row in enumerate(frame.to_dict("records")):
        trace = synthetic_trace(60, None, noise=0.0, seed=i)
        trace["reward/gold_mean"] += row["final_gold"] + 0.01 * ((i * 7) % 5)
        levels = parse_label(row["arm"])
        write_run(tmp_path / "sweep" / str(i), run_id=f"r{i}", arm=row["arm"], seed=row["seed"], trace=trace,
                  tricks=levels, config={"seed": row["seed"], "task": {"language_seed": row["config.task.language_seed"]},
                                         **{k: {"name": v} for k, v in levels.items()}})
    assert main([str(tmp_path / "sweep"), "--no-progress", "-o", str(tmp_path / "out")]) == 0
    effects = pd.read_csv(tmp_path / "out" / "factorial.csv")
    gold = effects[effects["outcome"] == "final_gold"].set_index("term")
    assert gold.loc["kl_penalty=token", "estimate"] == pytest.approx(0.4, abs=0.02)
    assert gold.loc["kl_penalty=token x value_clip=on", "significant"]
    assert not gold.loc["reward_norm=running", "significant"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Factorial effects" in report and (tmp_path / "out" / "figures" / "interactions.png").is_file()
    # the replicates planner: the clear effects of this noise-free design need no more replicates than it has
    plan = pd.read_csv(tmp_path / "out" / "factorial_plan.csv").set_index(["outcome", "term"])
    established = gold[gold["significant"]].index
    assert len(established) and (plan.loc[[("final_gold", t) for t in established], "replicates_needed"]
                                 <= plan["replicates_now"].iloc[0]).all()
    assert "## Replicates needed (factorial)" in report
