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
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from omegaconf import OmegaConf

from rlhf_lab.run import sweep_summary as summary


@dataclass
class ArmSweeperConf:
    _target_: str = "hydra_plugins.rlhf_lab_sweeper.arm_sweeper.ArmSweeper"
    max_batch_size: Optional[int] = None  # jobs per launcher batch (None: all at once, one array job on SLURM)
    params: Optional[Dict[str, str]] = None  # cartesian axes, as for the basic sweeper (e.g. seed: 0,1,2)
    arms: Optional[Dict[str, List[str]]] = None  # arm label -> the overrides that define it


ConfigStore.instance().store(group="hydra/sweeper", name="arms", node=ArmSweeperConf, provider="rlhf_lab")


class ArmSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int], params: Optional[Dict[str, str]] = None,
                 arms: Optional[Dict[str, List[str]]] = None) -> None:
        super().__init__(max_batch_size, params)
        self.arms = dict(arms or {})

    def sweep(self, arguments: List[str]) -> list:
        """Launch every batch; unlike the basic sweeper, a failed job does not stop the sweep. Ends with a
        summary of the runs' statuses (from their run.json), which sets rlhf-train's exit code."""
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([f"{k}={v}" for k, v in (self.params or {}).items()] + arguments)
        self.overrides = self.split_arguments(overrides, self.max_batch_size)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
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
        an `arm=` given on the command line is kept."""
        combinations = BasicSweeper.split_arguments(overrides, None)[0]
        keys = {o.get_key_element() for o in overrides}
        if self.arms:
            return list(self.split_overrides_to_chunks(
                [[*arm_overrides, _arm(label), *combination]
                 for label, arm_overrides in self.arms.items() for combination in combinations], max_batch_size))
        if "arm" in keys:
            return list(self.split_overrides_to_chunks(combinations, max_batch_size))
        swept = {o.get_key_element() for o in overrides if o.is_sweep_override()} - {"seed", "+seed"}
        jobs = []
        for combination in combinations:
            label = ",".join(c for c in combination if c.split("=", 1)[0] in swept) or "default"
            jobs.append([_arm(label.replace("/", "_")), *combination])
        return list(self.split_overrides_to_chunks(jobs, max_batch_size))


def _arm(label: str) -> str:
    """The `arm=<label>` override, quoted: a label may hold '=' and ','."""
    return "arm='{}'".format(label.replace("'", ""))
