"""Where the config tree, the sweeps and the artefact cache live."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    # A wheel carries the folder inside the package (rlhf_lab/_<name>); a source tree or an editable install
    # has it at the repository's top level, beside the package.
    for candidate in (_PACKAGE / f"_{name}", _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"cannot find the {name}/ folder of rlhf-lab next to {_PACKAGE}")


def conf_dir() -> Path:
    """The Hydra config tree (conf/)."""
    return _find("conf")


def sweeps_dir() -> Path:
    """The ready-made sweep definitions (sweeps/)."""
    return _find("sweeps")


def cache_dir(configured: str | None = None) -> Path:
    """Artefact cache: the config value, else $RLHF_LAB_CACHE, else ~/.cache/rlhf-lab."""
    path = configured or os.environ.get("RLHF_LAB_CACHE") or Path.home() / ".cache" / "rlhf-lab"
    return Path(path).expanduser().resolve()
