"""Preemption signals: SLURM's warning before a time limit or preemption, caught so the run checkpoints first."""

from __future__ import annotations

import signal


class Preemption:
    """Remembers SIGUSR2 (SLURM's warning before preemption or timeout, as submitit asks for it) and SIGTERM
    (when nobody else handles it), so the loop can finish its iteration and checkpoint first.
    `hand_over()` then calls the handler that was there before: submitit's requeues the job and exits."""

    def __init__(self):
        self.signal: signal.Signals | None = None
        self.previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> "Preemption":
        for sig in (signal.SIGUSR2, signal.SIGTERM):
            current = signal.getsignal(sig)
            if sig == signal.SIGUSR2 or current in (signal.SIG_DFL, None):
                self.previous[sig] = signal.signal(sig, self._remember)
        return self

    def _remember(self, signum, frame) -> None:
        self.signal = signal.Signals(signum)

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def hand_over(self) -> None:
        """Pass the signal on: to submitit's handler (requeue and exit) if there was one, else exit. A rank
        that was not signalled itself (another rank was) just exits."""
        if self.signal is None:
            self.__exit__()
            raise SystemExit(0)
        handler = self.previous.get(self.signal)
        self.__exit__()
        if callable(handler):
            handler(self.signal, None)
        raise SystemExit(128 + self.signal)
