"""Run `rlhf-train ARGS...` in this process and SIGKILL it at a chosen moment, for the resume tests:

    python tests/kill_at.py after_row N ARGS...       right after metrics row N is written (between iterations)
    python tests/kill_at.py checkpoint_write N ARGS... after the N-th weights file of a checkpoint is written
                                                      and before the rest of that checkpoint is
The kill is the process's own kill -9: nothing is flushed, no handler runs.
"""

import os
import signal
import sys

from rlhf_lab.run import checkpoint, rundir
from rlhf_lab.cli import main

moment, n, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


if moment == "after_row":
    append_metrics = rundir.RunDir.append_metrics

    def append_then_die(self, row):
        append_metrics(self, row)
        if row["step"] == n:
            die()

    rundir.RunDir.append_metrics = append_then_die
elif moment == "checkpoint_write":
    save_file, written = checkpoint.save_file, []

    def save_then_die(tensors, path):
        save_file(tensors, path)
        written.append(path)
        if len(written) == n:
            die()

    checkpoint.save_file = save_then_die
else:
    raise SystemExit(f"unknown moment {moment!r}")

sys.argv = ["rlhf-train", *args]
main()
