"""Exit paths of the CLI: SIGINT, SIGTERM and SIGHUP unwind like Ctrl-C, and every
program pgdr started is ended before the process exits.

The first signal raises in the main thread (so `finally` blocks stop scratch servers
and remove half-restored folders) and sets process.SHUTTING_DOWN (so runs waiting
in worker threads end their programs too); further signals only set the flag, so a
second Ctrl-C cannot interrupt the clean-up the first one started.
"""

from __future__ import annotations

import signal
from types import FrameType

from pgdr.pg.process import SHUTTING_DOWN


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP: unwind as for Ctrl-C, exit 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


received: list[int] = []  # the first signal, for the exit code (128 + N)


def exit_code() -> int:
    """128 + the signal that interrupted pgdr (130 for Ctrl-C or when none was caught)."""
    return 128 + received[0] if received else 130


def _handler(signum: int, _frame: FrameType | None) -> None:
    if SHUTTING_DOWN.is_set():
        return
    received.append(signum)
    SHUTTING_DOWN.set()
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def install() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _handler)
