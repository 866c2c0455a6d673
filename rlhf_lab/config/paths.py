"""Where the config tree and the artefact cache live."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent  # rlhf_lab/


def conf_dir() -> Path:
    """The Hydra config tree: rlhf_lab/_conf in a wheel (a symlink to ../conf in the source tree, which an
    editable install uses as it is)."""
    for candidate in (_PACKAGE / "_conf", _PACKAGE.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"cannot find the conf/ folder of rlhf-lab next to {_PACKAGE}")


def cache_dir(configured: str | None = None) -> Path:
    """Artefact cache: the config value, else $RLHF_LAB_CACHE, else ~/.cache/rlhf-lab."""
    path = configured or os.environ.get("RLHF_LAB_CACHE") or Path.home() / ".cache" / "rlhf-lab"
    return Path(path).expanduser().resolve()
