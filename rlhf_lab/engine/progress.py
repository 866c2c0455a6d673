"""Progress of the loops a user waits on: the toy stages' training and sampling, the PPO iterations.

On a terminal of its own (stderr a TTY) a loop shows a tqdm bar. Anywhere else a bar would do harm: in a log
file or a pipe (a redirected demo, a SLURM job) every refresh is a carriage-return frame, and the workers of a
parallel launcher share one terminal, where their bars would overwrite each other. There the loop logs a plain
line instead, every `LOG_EVERY_S` seconds and once when it ends, named so that the interleaved lines of runs
in parallel still say whose they are. Either way it costs one `update` per step or batch, never per token.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import ExitStack

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

log = logging.getLogger(__name__)

LOG_EVERY_S = 20.0  # seconds between two progress lines where there is no bar (steps under a minute: no silent minute)
_shared_terminal = False  # see share_terminal


def share_terminal(shared: bool) -> None:
    """Say whether other processes write to this process's terminal (a parallel launcher's workers): then
    progress is logged in lines even on a TTY."""
    global _shared_terminal
    _shared_terminal = shared


class Progress:
    """A loop of `total` steps named `desc`, at `initial` already: call `update` after each step (or batch),
    `close` at the end (or use it as a context manager). Shows nothing when `enabled` is false."""

    def __init__(self, desc: str, total: int, unit: str = "it", initial: int = 0, enabled: bool = True):
        self.desc, self.total, self.unit, self.enabled = desc, total, unit, enabled
        self.n = self.initial = initial
        self.postfix: dict[str, float] = {}
        self.started = self.logged = time.monotonic()
        self.logged_n: int | None = None  # the count in the last line logged
        self._stack = ExitStack()
        self._bar = None
        if enabled and sys.stderr.isatty() and not _shared_terminal:
            self._stack.enter_context(logging_redirect_tqdm())  # log records print above the bar, not through it
            self._bar = self._stack.enter_context(tqdm(total=total, initial=initial, desc=desc, unit=unit,
                                                       dynamic_ncols=True))

    def update(self, n: int = 1, **postfix: float) -> None:
        """`n` more steps done; `postfix`: numbers shown beside the count (the last loss, reward, ...)."""
        self.n += n
        self.postfix = postfix
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.3g}" for k, v in postfix.items()}, refresh=False)
            self._bar.update(n)
        elif self.enabled and time.monotonic() - self.logged >= LOG_EVERY_S:
            self._log()

    def close(self) -> None:
        if self.enabled and self._bar is None and self.logged_n != self.n:
            self._log()  # where the loop ended (done, or stopped early) and how long it took
        self._stack.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _log(self) -> None:
        self.logged, self.logged_n = time.monotonic(), self.n
        elapsed = self.logged - self.started
        parts = [f"{self.desc}: {self.n}/{self.total} {self.unit} ({100 * self.n / max(self.total, 1):.0f}%)",
                 f"{tqdm.format_interval(elapsed)} elapsed"]
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        if rate > 0:
            parts.append(f"{rate:.3g} {self.unit}/s" if rate < 100 else f"{rate:.0f} {self.unit}/s")  # not 1.11e+03
            if self.n < self.total:
                parts.append(f"eta {tqdm.format_interval((self.total - self.n) / rate)}")
        log.info("%s", ", ".join(parts + [f"{k} {v:.3g}" for k, v in self.postfix.items()]))
