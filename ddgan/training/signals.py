"""Signals a run obeys: SIGINT and SIGTERM stop it with a checkpoint (exit status 0, a stop someone asked for);
SIGUSR1 stops it with a checkpoint and exit status EXIT_REQUEUE (75), the "start me again" that a cluster's
requeue script looks for."""

from __future__ import annotations

import signal
from pathlib import Path

# The exit status after SIGUSR1's checkpoint: sysexits.h's EX_TEMPFAIL ("try again later"), which no
# crash (1), bad input (2) or signal death (128 + N) produces.
EXIT_REQUEUE = 75


class StopRequest:
    """Turns SIGINT/SIGTERM/SIGUSR1 into flags the loop checks, so a stop always ends with a checkpoint.

    `requeue` is set by SIGUSR1 (a scheduler's warning before a time limit): the run exits with EXIT_REQUEUE.
    """

    def __init__(self):
        self.requested = False
        self.requeue = False
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        # A second Ctrl-C means now. A repeated SIGTERM or SIGUSR1 is the same request: a scheduler signals
        # every process of a job, and torchrun passes what it gets on to its workers as well.
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.requeue = self.requeue or signum == signal.SIGUSR1

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class RequeueRequested(SystemExit):
    """run_training's end after SIGUSR1's checkpoint: uncaught, the process exits with EXIT_REQUEUE."""

    def __init__(self, run_dir: Path):
        super().__init__(EXIT_REQUEUE)
        self.run_dir = run_dir
