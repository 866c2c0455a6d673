"""The `arms` sweeper (a Hydra plugin, hence this package): Hydra's basic sweeper plus named ablation arms.

An arm is a label and the overrides that define it; the sweeper runs every arm with every combination of
`params` (the cartesian axes, e.g. seed) and passes `arm=<label>` to each job, so the label lands in
run.json and in the run directory's name. It is rlhf-train's sweeper (conf/config.yaml); without `arms` it is
the basic sweeper. A sweep file (sweeps/<name>.yaml) names its arms:

    hydra:
      sweeper:
        arms:
          ppo_max: [preset=ppo_max]
          no_kl_penalty: [preset=ppo_max, kl_penalty=off]
        params:
          seed: 0,1,2

Or it declares factors (a trick group or any config key, each with its levels) and gets their factorial
design, each combination an arm labelled `key=level,key=level`, crossed with `params` (seeds and testbed
instances: the blocks), with the sweep's own overrides (e.g. `preset=ppo_max`) under every run:

    hydra:
      sweeper:
        factors:
          kl_penalty: ["off", token]
          reward_norm: ["off", running]
        resolution: null   # null: the full factorial; 4 or 5: the smallest two-level fraction of that resolution
        params:
          seed: 0,1
          task.language_seed: 0,1,2

rlhf_lab/run/design.py builds the designs; design.json in the sweep directory records the factors, the design's
runs and its defining relation; analysis/factorial.py reads the levels back from the arm labels.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from omegaconf import OmegaConf

from rlhf_lab.run import sweep_summary as summary
from rlhf_lab.run.design import DesignError, fraction, full_factorial

DESIGN_FILE = "design.json"  # in the sweep directory: the factors, the design's runs and its defining relation
BLOCKS = {"seed", "+seed", "task.language_seed"}  # swept keys that are blocks (replicates), not part of an arm


@dataclass
class ArmSweeperConf:
    _target_: str = "hydra_plugins.rlhf_lab_sweeper.arm_sweeper.ArmSweeper"
    max_batch_size: Optional[int] = None  # jobs per launcher batch (None: all at once, one array job on SLURM)
    params: Optional[Dict[str, str]] = None  # cartesian axes, as for the basic sweeper (e.g. seed: 0,1,2)
    arms: Optional[Dict[str, List[str]]] = None  # arm label -> the overrides that define it
    factors: Dict[str, List[Any]] = field(default_factory=dict)  # key -> its levels: a factorial design of arms (not with arms)
    resolution: Optional[int] = None  # with factors: null = full factorial; R = the smallest 2-level fraction of resolution >= R


ConfigStore.instance().store(group="hydra/sweeper", name="arms", node=ArmSweeperConf, provider="rlhf_lab")


class ArmSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int], params: Optional[Dict[str, str]] = None,
                 arms: Optional[Dict[str, List[str]]] = None, factors: Optional[Dict[str, List[str]]] = None,
                 resolution: Optional[int] = None) -> None:
        super().__init__(max_batch_size, params)
        self.arms = dict(arms or {})
        self.factors = {key: [str(level) for level in levels] for key, levels in (factors or {}).items()}
        self.resolution = resolution
        if self.factors and self.arms:
            raise DesignError("a sweep declares either hydra.sweeper.arms or hydra.sweeper.factors, not both")
        if resolution is not None and not self.factors:
            raise DesignError("hydra.sweeper.resolution needs hydra.sweeper.factors")
        self.design, self.relation = [], []
        if self.factors:
            if resolution is None:
                self.design = full_factorial(self.factors)
            else:
                self.design, self.relation = fraction(self.factors, resolution)
            self.arms = {",".join(f"{key}={level}" for key, level in run.items()):
                         [f"{key}={level}" for key, level in run.items()] for run in self.design}

    def sweep(self, arguments: List[str]) -> list:
        """Launch every batch; unlike the basic sweeper, a failed job does not stop the sweep. Ends with a
        summary of the runs' statuses (from their run.json), which sets rlhf-train's exit code."""
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([f"{k}={v}" for k, v in (self.params or {}).items()] + arguments)
        self.overrides = self.split_arguments(overrides, self.max_batch_size)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        if self.factors:
            (sweep_dir / DESIGN_FILE).write_text(json.dumps(
                {"factors": self.factors, "resolution": self.resolution, "defining_relation": self.relation,
                 "runs": self.design}, indent=1))
        returns, crashed, first_job = [], [], 0
        while not self.is_done():
            batch = self.get_job_batch()
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=first_job)
            crashed += [r for r in results if r.status == JobStatus.FAILED]
            first_job += len(batch)
            returns.append(results)
        summary.SWEEP_EXIT_CODE = summary.summarise(sweep_dir, crashed)
        return returns

    def split_arguments(self, overrides, max_batch_size):  # type: ignore[override]
        """Every arm x every combination of the axes; each job's overrides are the arm's, then `arm=<label>`,
        then the combination (command-line overrides included). Without named arms, each combination of the
        swept keys other than the seed is an arm, labelled by those overrides (`preset=vanilla,kl_penalty=off`);
        an `arm=` given on the command line is kept. Factors are arms too: one per run of the design."""
        combinations = BasicSweeper.split_arguments(overrides, None)[0]
        keys = {o.get_key_element() for o in overrides}
        if self.arms:
            return list(self.split_overrides_to_chunks(
                [[*arm_overrides, _arm(label), *combination]
                 for label, arm_overrides in self.arms.items() for combination in combinations], max_batch_size))
        if "arm" in keys:
            return list(self.split_overrides_to_chunks(combinations, max_batch_size))
        swept = {o.get_key_element() for o in overrides if o.is_sweep_override()} - BLOCKS
        jobs = []
        for combination in combinations:
            label = ",".join(c for c in combination if c.split("=", 1)[0] in swept) or "default"
            jobs.append([_arm(label.replace("/", "_")), *combination])
        return list(self.split_overrides_to_chunks(jobs, max_batch_size))


def _arm(label: str) -> str:
    """The `arm=<label>` override, quoted: a label may hold '=' and ','."""
    return "arm='{}'".format(label.replace("'", ""))
