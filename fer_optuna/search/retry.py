"""Waiting out a service that is away for now (a database restart, an unreachable artifact store).

One loop for both: the call is tried again with doubling pauses while its error is transient,
up to a deadline counted from the first failure; any other error passes through at once.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def retried(call: Callable[[], T], transient: Callable[[Exception], bool], seconds: float,
            warn: Callable[[Exception], None], gave_up: Callable[[Exception], Exception],
            before_retry: Callable[[], None] = lambda: None, longest_pause: float = 10.0) -> T:
    """call() until it returns. On a transient error: warn once, then pause (0.5 s, doubling up to
    longest_pause) and try again; past `seconds` from the first failure, raise gave_up(error)."""
    deadline, pause = None, 0.5
    while True:
        try:
            return call()
        except Exception as e:
            if not transient(e):
                raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + seconds
                warn(e)
            if now > deadline:
                raise gave_up(e) from None
            before_retry()
            time.sleep(pause)
            pause = min(2 * pause, longest_pause)
