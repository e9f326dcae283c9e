"""The login guard: connections per address, and password guesses booked before they are verified.

Throttling (SPEC 6): each wrong password counts as one failure of the
address; ``max_failed_logins`` failures within ``failed_window_seconds`` ban
the address for ``ban_seconds`` (the failures and bans are kept by a
:class:`~personsd.sftp.bans.LoginBans`). A password is verified only after
the guess was booked (failures plus guesses being verified stay below the
cap), so parallel connections never get more than ``max_failed_logins``
guesses checked per window.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

from personsd.sftp.bans import LocalLoginBans, LoginBans
from personsd.sftp.limits import SftpLimits


class LoginGuard:
    """Per-address connection counts and guesses being verified; failures and bans in ``bans``."""

    def __init__(
        self,
        limits: SftpLimits,
        clock: Callable[[], float] = time.monotonic,
        bans: LoginBans | None = None,
    ) -> None:
        self._limits = limits
        self.bans: LoginBans = bans if bans is not None else LocalLoginBans(limits, clock)
        self._lock = threading.Lock()
        self._active: collections.Counter[str] = collections.Counter()
        self._guessing: collections.Counter[str] = collections.Counter()

    def banned(self, ip: str) -> bool:
        return self.bans.banned(ip)

    def admit(self, ip: str) -> str | None:
        """Take a connection slot for ``ip``; or the reason it is refused (from memory only)."""
        with self._lock:
            if self.bans.banned(ip):
                return "banned"
            if self._active[ip] >= self._limits.connections_per_address:
                return "connections_per_address"
            self._active[ip] += 1
            return None

    def release(self, ip: str) -> None:
        with self._lock:
            self._active[ip] -= 1
            if self._active[ip] <= 0:
                del self._active[ip]

    def begin_guess(self, ip: str) -> str | None:
        """Book one password verification for ``ip``; or why it may not be made."""
        with self._lock:
            if self.bans.banned(ip):
                return "banned"
            if self.bans.failures(ip) + self._guessing[ip] >= self._limits.max_failed_logins:
                return "throttled"  # the guesses in flight could reach the ban already
            self._guessing[ip] += 1
            return None

    def end_guess(self, ip: str, *, failed: bool) -> bool:
        """The booked verification is done; True when its failure starts a ban."""
        # The failure is counted before the booking is given back, so that no
        # other guess slips in between (the store may write: not under our lock).
        banned = self.bans.record_failure(ip) if failed else False
        with self._lock:
            self._guessing[ip] -= 1
            if self._guessing[ip] <= 0:
                del self._guessing[ip]
        return banned

    def record_failure(self, ip: str) -> bool:
        """Count a failed login; True when it starts a ban."""
        return self.bans.record_failure(ip)
