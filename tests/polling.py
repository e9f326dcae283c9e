"""Waiting in tests for what happens in another thread or process: one bounded poll."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class Clock:
    """A settable monotonic clock for the pure parts that take one (no sleeping in tests)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "condition",
) -> Any:
    """Poll until ``predicate()`` is truthy and return it; fail the test with ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
