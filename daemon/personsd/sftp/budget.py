"""Counters shared by every connection of the SFTP server: per tenant, and the process's fds.

Connections and open handles per tenant (:class:`TenantBudget`) and the
process's descriptors (:class:`FdBudget`). The other shared state has modules
of its own: the inbox quota (:mod:`personsd.sftp.quota`) and the failed
logins and bans (:mod:`personsd.sftp.bans`, :mod:`personsd.sftp.shared`).
"""

from __future__ import annotations

import collections
import errno
import os
import resource
import threading
from collections.abc import Callable

from personsd.logging import Event, get_logger
from personsd.sftp.limits import SftpLimits

log = get_logger()


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one (best effort); the (soft, hard) in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError) as exc:  # e.g. a seccomp filter forbids setrlimit
            log.info(Event.SFTP_FD_LIMIT_KEPT, soft=soft, hard=hard, error=str(exc))
    return soft, hard


class FdBudget:
    """Refuses new connections and handles while the process is near its descriptor limit."""

    def __init__(
        self,
        reserve: int,
        soft_limit: Callable[[], int] = lambda: resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        count: Callable[[], int] = lambda: len(os.listdir("/proc/self/fd")),
    ) -> None:
        self._reserve = reserve
        self._soft_limit = soft_limit
        self._count = count

    def headroom(self) -> int:
        """Descriptors the daemon keeps for itself: ``reserve``, at most a quarter of the limit."""
        return min(self._reserve, self._soft_limit() // 4)

    def available(self) -> bool:
        limit = self._soft_limit()
        if limit == resource.RLIM_INFINITY:
            return True
        try:
            used = self._count()
        except OSError as exc:
            # No descriptor left even to look: full. No /proc to look at: nothing to go by.
            return exc.errno not in (errno.EMFILE, errno.ENFILE)
        return used < limit - self.headroom()


class TenantBudget:
    """Connections and open handles per tenant, across all its connections."""

    def __init__(self, limits: SftpLimits) -> None:
        self._limits = limits
        self._lock = threading.Lock()
        self._connections: collections.Counter[str] = collections.Counter()
        self._handles: collections.Counter[str] = collections.Counter()

    def _take(self, counter: collections.Counter[str], tenant: str, cap: int) -> bool:
        with self._lock:
            if counter[tenant] >= cap:
                return False
            counter[tenant] += 1
            return True

    def _give(self, counter: collections.Counter[str], tenant: str) -> None:
        with self._lock:
            counter[tenant] -= 1
            if counter[tenant] <= 0:
                del counter[tenant]

    def take_connection(self, tenant: str) -> bool:
        return self._take(self._connections, tenant, self._limits.connections_per_tenant)

    def release_connection(self, tenant: str) -> None:
        self._give(self._connections, tenant)

    def take_handle(self, tenant: str) -> bool:
        return self._take(self._handles, tenant, self._limits.max_handles_per_tenant)

    def release_handle(self, tenant: str) -> None:
        self._give(self._handles, tenant)

    def handles(self, tenant: str) -> int:
        with self._lock:
            return self._handles[tenant]
