"""The testbed tells the paper's story on every machine, at reduced scale: on two testbed instances
(`task.language_seed` 0 and 1: each its own language, SFT policy and calibrated reward model, built from scratch
in CI at half the shipped build data: HALF_BUILD) with one PPO seed and 60 iterations, vanilla PPO
over-optimises the proxy on every instance, its gold reward collapses, PPO-max does neither, and rlhf-report
says so. The full-size story (three instances, 150 iterations, reward models at 82-83 %) is the science results
page; the collapse rate with power (24/24 full-size runs without a KL penalty or ptx loss by 150 iterations) the
factorial's.

Every claim is a relative effect within one instance, or a difference in units of the reward model's calibrated
scale (the SFT policy's responses score mean 0, sd 1 on every instance and machine), never a threshold on one
machine's raw numbers. What holds on every build is asserted per instance: the proxy climbs, KL runs away,
perplexity falls, and the proxy overstates vanilla's gold by more than PPO-max's (the over-optimisation gap).
When vanilla's gold turns down is not, since builds differ across thread counts and machines, so the collapse
is asserted on at least one instance. Two builds of the half-size instances 0, 1, 2 with the builders of 57d27f6
(one thread, as CI and the parallel launcher build them; two threads), 80 iterations, read at 60: vanilla's gold
0.92, 0.95, 0.08 below its peak on the first (0.25 is a collapse) and 1.38, 1.04, 0.46 on the second,
PPO-max's at most 0.05; the gaps 1.71-3.84 against 0.67-1.64; KL 12-62 against 1.4-3.9; perplexity 5-19 against
14-22 (the narrowest margin: 19.2 against 21.8 on instance 1's first build; at 50 iterations it was 21.8 against
21.7, hence 60); rlhf-report read at 60 flagged the vanilla runs of instances 0 and 1 on both builds and no
PPO-max run. A CI-style run at 6683baf (one thread, 70 iterations) reproduced the first build's traces
exactly. benchmarks/science_table.py prints the table."""

import subprocess
import sys

import pandas as pd
import pytest

from analysis import load_runs, wide_traces

pytestmark = pytest.mark.slow
INSTANCES = (0, 1)
ITERATIONS = 60
# the testbed at half its build data (the shipped sizes: docs/toy-testbed.md): the stages cost half as much, the
# proxy is weaker (agreement with gold 72-76 % against 82-83 %) and vanilla exploits it sooner
HALF_BUILD = ("task.sft.examples=4000", "task.rm.pairs=2000", "task.rm.eval_pairs=500",
              "task.rm.calibration_samples=512")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("science")
    out = subprocess.run([sys.executable, "-m", "rlhf_lab.cli", "-m", "sweep=presets", "seed=0",
                          "hydra/launcher=parallel",  # two runs at once, one thread each
                          f"task.language_seed={','.join(map(str, INSTANCES))}", f"iterations={ITERATIONS}", *HALF_BUILD,
                          "run.progress=false", f"hydra.sweep.dir={sweep_dir}"],
                         capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    return sweep_dir


@pytest.fixture(scope="module")
def finals(sweep) -> pd.DataFrame:
    """One row per (instance, arm): initial (mean of the first 5 iterations) and final (mean of the last 10; the
    median for perplexity) metrics, peak gold, the reward model's agreement with gold."""
    runs, traces = load_runs([sweep])
    wide = wide_traces(traces).reset_index().sort_values(["run_id", "step"])
    rows = []
    for run_id, frame in wide.groupby("run_id"):
        run = runs.set_index("run_id").loc[run_id]
        rows.append({"instance": run["config.task.language_seed"], "arm": run["arm"],
                     "rm gold agreement": run["reward_model.gold_accuracy"],
                     **{f"final {m}": frame[m].tail(10).mean() for m in METRICS if m != "ppl/policy"},
                     # a batch's perplexity is heavy-tailed (one unlikely sampled token: 20 -> 140), so its median
                     "final ppl/policy": frame["ppl/policy"].tail(10).median(),
                     **{f"initial {m}": frame[m].head(5).mean() for m in METRICS},
                     "peak gold": frame["reward/gold_mean"].rolling(5, center=True).mean().max()})
    table = pd.DataFrame(rows).set_index(["instance", "arm"]).sort_index()
    assert sorted(table.index.get_level_values(0).unique()) == list(INSTANCES)
    return table


METRICS = ("reward/proxy_mean", "reward/gold_mean", "kl/ref_k1", "ppl/policy")


def test_every_instance_has_a_reward_model_that_learned(finals):
    """The proxy must be a reward model, not a constant: agreement with gold on its 500 held-out pairs well above
    chance (0.5; a build whose training stalled at loss ln 2 scored 0.54, working half-size ones 0.72-0.76)."""
    assert (finals["rm gold agreement"] > 0.6).all(), finals["rm gold agreement"]


@pytest.mark.parametrize("instance", INSTANCES)
def test_vanilla_over_optimises_and_ppo_max_does_not(finals, instance):
    vanilla, ppo_max = finals.loc[(instance, "vanilla")], finals.loc[(instance, "ppo_max")]
    # the reward model's calibrated scale: the SFT policy scores mean 0, sd 1 (a fresh rollout: noise ~0.1)
    assert abs(vanilla["initial reward/proxy_mean"]) < 0.5 and abs(ppo_max["initial reward/proxy_mean"]) < 0.5
    # vanilla exploits the proxy: it climbs by more than one SFT-score sd ...
    assert vanilla["final reward/proxy_mean"] - vanilla["initial reward/proxy_mean"] > 1.0
    # ... the proxy overstates its gold by more than it overstates ppo_max's ...
    gap = {arm: row["final reward/proxy_mean"] - row["final reward/gold_mean"]
           for arm, row in (("vanilla", vanilla), ("ppo_max", ppo_max))}
    assert gap["vanilla"] > gap["ppo_max"], gap
    # ... its KL to the reference ends at least twice ppo_max's, and its perplexity below ppo_max's
    assert vanilla["final kl/ref_k1"] > 2 * ppo_max["final kl/ref_k1"]
    assert vanilla["final ppl/policy"] < ppo_max["final ppl/policy"]
    # PPO-max's gold never falls far from its own peak
    assert ppo_max["final reward/gold_mean"] > ppo_max["peak gold"] - 0.25


def test_vanilla_gold_collapses_somewhere_and_ppo_max_mostly_ends_better(finals):
    vanilla, ppo_max = finals.xs("vanilla", level="arm"), finals.xs("ppo_max", level="arm")
    collapsed = vanilla["final reward/gold_mean"] < vanilla["peak gold"] - 0.25
    better = ppo_max["final reward/gold_mean"] > vanilla["final reward/gold_mean"]
    assert collapsed.any(), vanilla[["peak gold", "final reward/gold_mean"]]
    assert better.sum() > len(INSTANCES) / 2, (ppo_max["final reward/gold_mean"], vanilla["final reward/gold_mean"])


def test_report_flags_vanilla_and_not_ppo_max(sweep, tmp_path):
    out = subprocess.run([sys.executable, "-m", "analysis", str(sweep), "-o", str(tmp_path), "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    summary = pd.read_csv(tmp_path / "summary.csv").set_index("arm")
    assert summary.loc["vanilla", "n_runs"] == summary.loc["ppo_max", "n_runs"] == len(INSTANCES)
    assert summary.loc["vanilla", "collapse_frac"] > 0  # a vanilla run (the detector's own rule)
    assert summary.loc["ppo_max", "collapse_frac"] == 0.0  # no ppo_max run
    assert summary.loc["vanilla", "final_kl_mean"] > 2 * summary.loc["ppo_max", "final_kl_mean"]
