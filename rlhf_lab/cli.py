"""`rlhf-train`: the Hydra app. Composition and validation happen here, before anything heavy is imported."""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from rlhf_lab.config import ConfigError, register_schema, to_config
from rlhf_lab.paths import conf_dir

log = logging.getLogger("rlhf_lab")

register_schema()


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def _app(dict_cfg: DictConfig) -> None:
    try:
        cfg = to_config(dict_cfg, HydraConfig.get().overrides.task)
    except (ConfigError, OmegaConfBaseException) as err:
        print(f"rlhf-train: config error: {err}", file=sys.stderr)
        sys.exit(2)
    from rlhf_lab.train import run  # heavy imports (torch, transformers) only after validation

    status = run(cfg)
    if status not in ("completed",):
        sys.exit(1 if status == "failed" else 3)


def main() -> None:
    _app()


if __name__ == "__main__":
    main()
