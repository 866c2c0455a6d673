"""A cache of built artefacts (SFT policy, reward model), keyed by a hash of what built them.

`cached_build` builds into a temporary folder and renames it into place, under a file lock, so concurrent
sweep jobs build each artefact once and nobody ever sees a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Callable

from filelock import FileLock

log = logging.getLogger(__name__)

DONE = "BUILD_DONE"


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_build(root: Path, kind: str, spec: dict, build: Callable[[Path], None]) -> Path:
    """Return `root/<kind>-<hash(spec)>`, calling `build(tmp_dir)` first if it is not there yet."""
    final = root / f"{kind}-{spec_hash(spec)}"
    if (final / DONE).exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / DONE).exists():  # another process built it while we waited
            return final
        tmp = root / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        log.info("building %s artefact in %s", kind, final)
        build(tmp)
        (tmp / "spec.json").write_text(json.dumps(spec, indent=2, sort_keys=True, default=str))
        (tmp / DONE).touch()
        shutil.rmtree(final, ignore_errors=True)  # a stale, unfinished folder of a killed build
        os.replace(tmp, final)
    return final
