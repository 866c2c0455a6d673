"""`rlhf-train`: the Hydra app. Composition and validation happen here, before anything heavy is imported."""

from __future__ import annotations

import logging
import sys
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from rlhf_lab.config.checks import to_config
from rlhf_lab.config.schema import Config, ConfigError, register_schema
from rlhf_lab.config.paths import conf_dir
from rlhf_lab.config import preflight
from rlhf_lab.run import sweep_summary

log = logging.getLogger("rlhf_lab")

register_schema()
EXIT_CODES = {"failed": 1, "diverged": 3, "preempted": 4}  # and 2 for a config error


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def _app(dict_cfg: DictConfig) -> str:
    try:
        cfg = to_config(dict_cfg, HydraConfig.get().overrides.task)
    except (ConfigError, OmegaConfBaseException) as err:
        _config_error(err)
    _preflight(cfg)
    from rlhf_lab.run.train import run  # heavy imports (torch, transformers) only after validation

    status = run(cfg)
    # A single run's exit code says how it ended; inside a sweep the other runs go on.
    if HydraConfig.get().mode == RunMode.RUN and status != "completed":
        sys.exit(EXIT_CODES[status])
    return status


def _preflight(cfg: Config) -> None:
    """`preflight.check`: checkpoint paths, JSONL files, the artefact cache. A failure ends a single run (exit
    code 2); in a sweep it is logged and the job goes on, to fail as a run of its own while the other runs go on
    (a sweep's failure isolation)."""
    try:
        preflight.check(cfg)
    except ConfigError as err:
        if HydraConfig.get().mode == RunMode.RUN:
            _config_error(err)
        log.error("config error: %s", err)


def _config_error(err: Exception) -> NoReturn:
    """Report a config error and exit with code 2."""
    print(f"rlhf-train: config error: {err}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    try:
        preflight.check_sweep(sys.argv[1:])  # before Hydra: an unknown sweep would start a default run
    except ConfigError as err:
        _config_error(err)
    _app()
    sys.exit(sweep_summary.SWEEP_EXIT_CODE)  # 0 for a single run that completed (others exit inside _app)


if __name__ == "__main__":
    main()
