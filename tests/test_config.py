"""The config tree: each option declared once (its enum member, its YAML, its defaults in the schema), every option
of every group composes under every preset; bad input fails early and clearly."""

import copy
import functools
import os
import subprocess
import sys
import time
import warnings
from dataclasses import is_dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
import yaml
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from rlhf_lab.config.checks import to_config
from rlhf_lab.config.schema import TRICK_GROUPS, Config, ConfigError, register_schema
from rlhf_lab.config.paths import conf_dir
from rlhf_lab.run.design import fraction, full_factorial

register_schema()
PRESETS = tuple(sorted(p.stem for p in (conf_dir() / "preset").glob("*.yaml")))
# every group of conf/ whose node has a `name`: the tricks and the compute/task choices
NAMED_GROUPS = tuple(g for g, node in vars(Config()).items() if is_dataclass(node) and hasattr(node, "name"))
ENUMS = {group: type(getattr(Config(), group).name) for group in NAMED_GROUPS}
OPTIONS = {group: sorted(member.value for member in ENUMS[group]) for group in TRICK_GROUPS}


def node(group, option):
    """The group's node with `option` chosen and every other field at its default."""
    return type(getattr(Config(), group))(name=ENUMS[group](option))


# the options that compare the responses to one prompt (ppo.samples_per_prompt >= 2), from their nodes
GROUP_OPTIONS = {(g, o) for g, options in OPTIONS.items() for o in options if node(g, o).needs_groups}
GROUP_PRESETS = {"grpo", "dr_grpo", "lite_ppo"}  # their advantages compare a prompt's group: no policy filter


def composed(*overrides):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


composed_once = functools.lru_cache(maxsize=None)(composed)  # shared by the tests below: never mutate its result


def with_option(preset, group, option, *overrides):
    """What `preset=<preset> <group>=<option> *overrides` composes to, from compositions the option x preset matrix
    shares (a Hydra composition takes ~0.3 s, 450 of them two minutes): the preset's, with the group's node taken
    from the option's own and the preset's own keys in that group merged over it (as dr_grpo's
    `adv_estimator.scale`). Exact because an option's YAML is its name alone (test_option_files_hold_no_defaults);
    test_with_option_composes_like_hydra checks it against Hydra wherever a preset's choice meets the option's."""
    cfg = copy.deepcopy(composed_once(f"preset={preset}", *overrides))
    node = copy.deepcopy(composed_once(f"{group}={option}")[group])
    cfg[group] = OmegaConf.merge(node, preset_yaml(preset).get(group, {}))
    return cfg


def preset_yaml(preset) -> dict:
    return yaml.safe_load((conf_dir() / "preset" / f"{preset}.yaml").read_text() or "{}") or {}


def preset_choices(preset):
    """The groups whose option `preset` chooses (its `override /<group>` entries)."""
    return [next(iter(entry)).removeprefix("override /") for entry in preset_yaml(preset).get("defaults", [])]


@pytest.mark.parametrize("group", NAMED_GROUPS)
def test_every_enum_member_has_its_yaml_and_every_yaml_its_member(group):
    files = sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))
    assert files == sorted(member.value for member in ENUMS[group]), group
    assert len(files) >= 2, group  # a switch has something to switch between


@pytest.mark.parametrize("group", NAMED_GROUPS)
def test_option_files_hold_no_defaults(group):
    """The schema is the one home of defaults: an option's YAML states its name (and comments), nothing else."""
    for path in sorted((conf_dir() / group).glob("*.yaml")):
        assert yaml.safe_load(path.read_text()) == {"name": path.stem}, path


def test_trick_groups_are_the_schema_nodes_with_options():
    assert TRICK_GROUPS and set(TRICK_GROUPS) <= set(NAMED_GROUPS)
    assert {"task", "model", "logger", "distributed", "lora"}.isdisjoint(TRICK_GROUPS)
    assert all((conf_dir() / group).is_dir() for group in TRICK_GROUPS)
    defaults = [next(iter(d)) for d in yaml.safe_load((conf_dir() / "config.yaml").read_text())["defaults"]
                if isinstance(d, dict)]
    assert [g for g in defaults if g in TRICK_GROUPS] == list(TRICK_GROUPS)  # the base config names each, in order


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_override_only_what_they_change(preset):
    base = {k: str(v) for d in yaml.safe_load((conf_dir() / "config.yaml").read_text())["defaults"]
            if isinstance(d, dict) for k, v in d.items()}
    for entry in preset_yaml(preset).get("defaults", []):
        (key, option), = entry.items()
        group = key.removeprefix("override /")
        assert base[group] != str(option), f"preset={preset} restates {group}={option}, the base config's choice"


def test_every_option_file_has_a_comment_line():
    for group, options in OPTIONS.items():
        for option in options:
            first = (conf_dir() / group / f"{option}.yaml").read_text().splitlines()[0]
            assert first.startswith("# ") and len(first) > 20, f"{group}/{option}.yaml"


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("group,option", [(g, o) for g, opts in OPTIONS.items() for o in opts])
def test_every_option_composes_after_every_preset(preset, group, option):
    groups = ["ppo.samples_per_prompt=4"] if (group, option) in GROUP_OPTIONS else []
    overrides = (f"preset={preset}", f"{group}={option}", *groups)
    if (group, option) in GROUP_OPTIONS and group == "policy_filter" and preset in GROUP_PRESETS:
        with pytest.raises(ConfigError, match=f"policy_filter={option} is not allowed with adv_estimator=grpo"):
            to_config(composed(*overrides))  # the error names the keys as Hydra composed them
        return
    cfg = to_config(with_option(preset, group, option, *groups))
    assert cfg.tricks()[group] == option


@pytest.mark.parametrize("preset", PRESETS)
def test_with_option_composes_like_hydra(preset):
    """For every group the preset chooses (its `override /<group>` meets the command line's `<group>=`) or sets keys
    in, and one it leaves to the base config, with an option the preset does not choose: Hydra's composition is
    with_option's."""
    chosen = preset_choices(preset) + [g for g in preset_yaml(preset) if g in TRICK_GROUPS]  # vanilla: none
    groups = list(dict.fromkeys(chosen)) + [next(g for g in TRICK_GROUPS if g not in chosen)]
    for group in groups:
        choice = composed_once(f"preset={preset}")[group].name
        option = next(o for o in OPTIONS[group] if o != getattr(choice, "value", choice))
        extra = ("ppo.samples_per_prompt=4",) if (group, option) in GROUP_OPTIONS else ()
        real = composed(f"preset={preset}", f"{group}={option}", *extra)
        assert OmegaConf.to_container(real) == OmegaConf.to_container(with_option(preset, group, option, *extra)), \
            (preset, group, option)


def test_presets_choose_every_group():
    vanilla, ppo_max = to_config(composed("preset=vanilla")), to_config(composed("preset=ppo_max"))
    assert set(vanilla.tricks()) == set(TRICK_GROUPS)
    assert vanilla.tricks() == {g: {"policy_clip": "ppo", "critic_init": "sft", "adv_estimator": "gae",
                                    "loss_agg": "token_mean", "reference": "sft"}.get(g, "off") for g in TRICK_GROUPS}
    assert ppo_max.tricks() == {
        "reward_ensemble": "off", "policy_filter": "off", "reference": "sft", "reward_scaling": "off", "reward_norm": "running", "reward_clip": "on", "adv_estimator": "gae",
        "adv_norm": "whiten", "adv_clip": "off", "kl_penalty": "token", "entropy_bonus": "off", "policy_clip": "ppo",
        "loss_agg": "token_mean", "overlong": "off", "value_clip": "on", "critic_init": "reward_model",
        "critic_pretrain": "steps", "grad_clip": "global", "ptx_loss": "on"}
    assert to_config(composed()).tricks() == ppo_max.tricks()  # ppo_max is the default


def test_unknown_key_and_bad_type_fail_at_composition():
    with pytest.raises(ConfigCompositionException, match="no_such_key"):
        composed("no_such_key=1")
    with pytest.raises(ConfigCompositionException):
        composed("iterations=abc")
    with pytest.raises(ConfigCompositionException):
        composed("kl_penalty.name=sometimes")


@pytest.mark.parametrize("override,key", [
    ("ppo.temperature=0", "ppo.temperature"), ("ppo.minibatches=3", "ppo.minibatches"),
    ("policy_clip.eps=1.5", "policy_clip.eps"), ("iterations=0", "iterations"),
    ("reward_clip.clip=-1", "reward_clip.clip"), ("grad_clip.max_norm=0", "grad_clip.max_norm"),
    ("lora.rank=0", "lora.rank"), ("lora.target_modules=[]", "lora.target_modules"),
])
def test_out_of_range_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        to_config(composed(override))


def test_kl_goes_where_its_option_says_with_its_estimator():
    token = to_config(composed("kl_penalty=token", "kl_penalty.loss_coef=0.1")).kl_penalty
    assert token.in_reward and not token.in_loss and token.per_token.value == "k1"
    both = to_config(composed("kl_penalty=token", "kl_penalty.also_in_loss=true")).kl_penalty
    assert both.in_reward and both.in_loss and both.per_token.value == "k3"
    loss = to_config(composed("kl_penalty=loss", "kl_penalty.estimator=k2")).kl_penalty
    assert loss.in_loss and not loss.in_reward and loss.per_token.value == "k2"
    with pytest.raises(ConfigError, match="estimator=k1"):
        to_config(composed("kl_penalty=token", "kl_penalty.also_in_loss=true", "kl_penalty.estimator=k1"))
    with pytest.raises(ConfigError, match="loss_coef > 0"):
        to_config(composed("kl_penalty=loss", "kl_penalty.loss_coef=0"))


def test_contradictions_are_errors():
    with pytest.raises(ConfigError, match="dual_c"):
        to_config(composed("policy_clip=dual", "policy_clip.dual_c=1.1"))
    with pytest.raises(ConfigError, match="model=hf"):
        to_config(composed("task=jsonl", "task.prompts_file=p.jsonl"))


def test_suspicious_combinations_warn():
    with pytest.warns(UserWarning, match="rescaled twice"):
        to_config(composed("reward_scaling=running_std", "reward_norm=running"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        to_config(composed("preset=ppo_max"))
        to_config(composed("preset=vanilla"))


def test_hf_model_needs_its_paths():
    with pytest.raises(Exception, match="model.policy"):
        to_config(composed("task=jsonl", "task.prompts_file=p.jsonl", "model=hf"))


@pytest.mark.parametrize("override,key", [("no_such_key=1", "no_such_key"), ("iterations=abc", "iterations"),
                                          ("ppo.temperature=-1", "ppo.temperature")])
def test_cli_rejects_bad_config_fast(override, key, tmp_path):
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "rlhf_lab.cli", override, f"hydra.run.dir={tmp_path}"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert key in out.stderr + out.stdout
    assert time.perf_counter() - started < 10
    assert not (tmp_path / "run.json").exists()


def test_help_lists_groups_and_options():
    out = subprocess.run([sys.executable, "-m", "rlhf_lab.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for group, options in OPTIONS.items():
        assert f"{group}: {', '.join(options)}" in out.stdout


@pytest.mark.slow
def test_a_plain_wheel_install_finds_its_config_tree(tmp_path):
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(root)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("rlhf_lab-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path / "site"),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    where = subprocess.run([sys.executable, "-c", "from rlhf_lab.config.paths import conf_dir; print(conf_dir())"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(tmp_path / "site")) and Path(where, "sweep", "smoke.yaml").is_file()
    out = subprocess.run([sys.executable, "-m", "rlhf_lab.cli", "--cfg", "job", "preset=vanilla", "sweep=smoke"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "iterations: 6" in out.stdout, out.stderr


def sweep_arms(path: Path) -> dict[str, list[str]]:
    """A sweep file's arms: its named arms, or one per run of its factorial design."""
    sweeper = yaml.safe_load(path.read_text()).get("hydra", {}).get("sweeper", {})
    if sweeper.get("factors"):
        factors, resolution = sweeper["factors"], sweeper.get("resolution")
        runs = full_factorial(factors) if resolution is None else fraction(factors, resolution)[0]
        return {",".join(f"{k}={v}" for k, v in run.items()): [f"{k}={v}" for k, v in run.items()] for run in runs}
    return sweeper.get("arms") or {}


SWEEP_ARMS = [(sweep.stem, arm, overrides) for sweep in sorted((conf_dir() / "sweep").glob("*.yaml"))
              for arm, overrides in sweep_arms(sweep).items()]


@pytest.mark.parametrize("sweep,arm,overrides", SWEEP_ARMS, ids=[f"{s}-{a}" for s, a, _ in SWEEP_ARMS])
def test_every_sweep_arm_composes(sweep, arm, overrides):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = to_config(composed(f"sweep={sweep}", *overrides))
    chosen = dict(o.split("=", 1) for o in overrides if o.split("=", 1)[0] in TRICK_GROUPS)
    assert chosen.items() <= cfg.tricks().items()  # a validated Config with the arm's choices
