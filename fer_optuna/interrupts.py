"""Ctrl-C and SIGTERM: the first stops the work in hand at a clean point, a second exits at once.

A stopped worker or fit exits 128 + the signal's number (130, 143), as a shell reports
it, so that a supervisor (Kubernetes, systemd) sees an interrupted process, not a
finished one.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from typing import Callable, Iterator

from .errors import FerOptError


class Interrupted(FerOptError):
    """SIGINT/SIGTERM stopped the work; the message says what was kept and how to go on."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum


@contextmanager
def first_signal_raises(announce: Callable[[str], None] | None = None) -> Iterator[list[int]]:
    """Within the block, the first SIGINT/SIGTERM raises KeyboardInterrupt (after `announce(its name)`),
    a second ends the process at once. Yields the signals received, for the caller's exit status."""
    received: list[int] = []

    def handler(signum, frame):
        if received:
            os._exit(128 + signum)
        received.append(signum)
        if announce is not None:
            announce(signal.Signals(signum).name)
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def first_signal(received: list[int]) -> signal.Signals:
    """The signal that stopped a `first_signal_raises` block (SIGINT for a KeyboardInterrupt raised otherwise)."""
    return signal.Signals(received[0] if received else signal.SIGINT)
