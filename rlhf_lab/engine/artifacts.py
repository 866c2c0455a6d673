"""A cache of built artefacts (SFT policy, reward model), keyed by what built them.

The key of an artefact is a hash of its spec (the config values its builder reads) and of the source code of
the builder: the module that defines it and every `rlhf_lab` module it imports, transitively
(`code_fingerprint`). Any change to that code builds a new artefact; there is no version number to forget.

`cached_build` builds into a temporary folder and renames it into place, under a file lock, so concurrent
sweep jobs build each artefact once and nobody ever sees a half-written one.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Callable

from filelock import AcquireReturnProxy, FileLock, Timeout

log = logging.getLogger(__name__)

DONE = "BUILD_DONE"
PACKAGE = "rlhf_lab"
_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # rlhf_lab/


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _source_file(module: str) -> Path | None:
    """The .py file of an `rlhf_lab` module (a package's __init__.py), or None if `module` is not one."""
    path = _PACKAGE_DIR.joinpath(*module.split(".")[1:])
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _project_imports(module: str, source: str) -> set[str]:
    """Names of the `rlhf_lab` modules that `module`'s source imports (absolute or relative imports)."""
    found = set()
    package = module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            # `from rlhf_lab import ppo` imports a module; `from rlhf_lab.x import f` imports from one
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name.split(".")[0] == PACKAGE and _source_file(name))
    parents = module.split(".")  # importing a.b.c runs a/__init__.py and a/b/__init__.py first
    found.update(".".join(parents[:i]) for i in range(1, len(parents)))
    return found


@lru_cache(maxsize=None)
def code_fingerprint(module: str) -> str:
    """sha256 over the sources of `module` and of every `rlhf_lab` module it imports, transitively."""
    seen: dict[str, str] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen[name] = _source_file(name).read_text()
        todo.extend(_project_imports(name, seen[name]) - set(seen))
    digest = hashlib.sha256()
    for name in sorted(seen):
        digest.update(f"{name}\n{seen[name]}\n".encode())
    return digest.hexdigest()[:16]


def _lock(final: Path) -> AcquireReturnProxy:
    """The build lock of `final`, acquired; saying so when another process holds it (it is building `final`), or
    a sweep job would wait minutes in silence. Use it as a context manager: leaving releases it."""
    lock = FileLock(str(final) + ".lock")
    try:
        return lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process to finish building %s", final)
        return lock.acquire()


def cached_build(root: Path, kind: str, spec: dict, build: Callable[[Path], None]) -> Path:
    """Return `root/<kind>-<hash(spec)>`, calling `build(tmp_dir)` first if it is not there yet."""
    final = root / f"{kind}-{spec_hash(spec)}"
    if (final / DONE).exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _lock(final):
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
