"""The one retry loop (fer_optuna/search/retry.py) that the study storage and the artifact store share."""
import pytest

from fer_optuna.search import retry


class Away(Exception):
    pass


def _clock(monkeypatch):
    """A fake clock that sleeping advances: the pauses are recorded, no time passes."""
    now, pauses = [0.0], []
    monkeypatch.setattr(retry.time, "monotonic", lambda: now[0])

    def sleep(seconds):
        pauses.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(retry.time, "sleep", sleep)
    return pauses


def _failing(times, error=Away):
    calls = []

    def call():
        calls.append(1)
        if len(calls) <= times:
            raise error("away")
        return "done"

    return call, calls


def _retried(call, seconds=100.0, **kw):
    warned, reconnects = [], []
    result = retry.retried(call, lambda e: isinstance(e, Away), seconds, warn=warned.append,
                           gave_up=lambda e: RuntimeError(f"gave up after {e}"),
                           before_retry=lambda: reconnects.append(1), **kw)
    return result, warned, reconnects


def test_transient_errors_are_retried_with_doubling_pauses_up_to_the_longest(monkeypatch):
    pauses = _clock(monkeypatch)
    call, calls = _failing(5)
    result, warned, reconnects = _retried(call, longest_pause=3.0)
    assert result == "done" and len(calls) == 6
    assert pauses == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert len(warned) == 1, "one warning per outage, not one per try"
    assert len(reconnects) == 5


def test_other_errors_pass_through_at_once(monkeypatch):
    pauses = _clock(monkeypatch)
    call, calls = _failing(1, error=KeyError)
    with pytest.raises(KeyError):
        _retried(call)
    assert len(calls) == 1 and pauses == []


def test_past_the_deadline_it_gives_up_with_the_callers_error(monkeypatch):
    pauses = _clock(monkeypatch)
    call, calls = _failing(1000)
    with pytest.raises(RuntimeError, match="gave up after away"):
        _retried(call, seconds=20.0)
    assert 20.0 <= sum(pauses) <= 20.0 + 10.0
