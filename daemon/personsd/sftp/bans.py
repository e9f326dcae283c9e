"""Failed logins and bans per client address (SPEC 6 throttling), in one process.

:class:`LoginBans` is what the login guard needs; :class:`LocalLoginBans`
keeps them in memory; :mod:`personsd.sftp.shared` keeps them in the database
for every instance (and falls back on a :class:`LocalLoginBans`).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Protocol

from personsd.sftp.limits import SftpLimits


class LoginBans(Protocol):
    """Failed logins and bans per client address (SPEC 6 throttling).

    ``banned`` and ``failures`` answer from memory (they are asked under the
    guard's lock); ``refresh`` may read shared state, once per connection;
    ``record_failure`` may write it and says whether that failure started a ban.
    """

    def refresh(self, ip: str) -> bool: ...

    def banned(self, ip: str) -> bool: ...

    def failures(self, ip: str) -> int: ...

    def record_failure(self, ip: str) -> bool: ...

    def banned_count(self) -> int: ...

    def close(self) -> None: ...


class LocalLoginBans:
    """The bans of one process: failures in a sliding window per address, bans until a time."""

    def __init__(self, limits: SftpLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, collections.deque[float]] = {}
        self._banned_until: dict[str, float] = {}

    def refresh(self, ip: str) -> bool:
        return self.banned(ip)

    def banned(self, ip: str) -> bool:
        with self._lock:
            until = self._banned_until.get(ip)
            if until is not None and until <= self._clock():
                del self._banned_until[ip]
                return False
            return until is not None

    def failures(self, ip: str) -> int:
        """Failures of ``ip`` within the window (forgetting older ones)."""
        with self._lock:
            return self._recent(ip)

    def _recent(self, ip: str) -> int:
        window = self._failures.get(ip)
        if window is None:
            return 0
        while window and window[0] <= self._clock() - self._limits.failed_window_seconds:
            window.popleft()
        if not window:
            del self._failures[ip]
        return len(window)

    def record_failure(self, ip: str) -> bool:
        with self._lock:
            self._recent(ip)
            window = self._failures.setdefault(ip, collections.deque())
            window.append(self._clock())
            if len(window) < self._limits.max_failed_logins:
                return False
            del self._failures[ip]
            self._banned_until[ip] = self._clock() + self._limits.ban_seconds
            return True

    def ban(self, ip: str, seconds: float) -> None:
        """Ban ``ip`` for ``seconds`` (a ban learnt elsewhere, kept for when that is gone)."""
        with self._lock:
            until = self._clock() + seconds
            self._banned_until[ip] = max(until, self._banned_until.get(ip, until))

    def banned_count(self) -> int:
        with self._lock:
            now = self._clock()
            self._banned_until = {ip: t for ip, t in self._banned_until.items() if t > now}
            return len(self._banned_until)

    def close(self) -> None:
        pass
