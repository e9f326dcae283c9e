"""The resource budget of the embedded SFTP server (SPEC 6): caps, shared counters, quotas.

Every cap is a field of :class:`SftpLimits`: the four ``[limits]`` keys of
SPEC 8 come from the configuration (:meth:`SftpLimits.from_config`), the
others are the documented constants below (docs/security.md lists them all).
Hitting one logs ``sftp.limit`` with ``limit`` (the field's name) and
``tenant`` or ``ip``, through :class:`LimitLog`, which repeats an event for
the same cap and client at most every ``LIMIT_LOG_SECONDS`` so that a hostile
client cannot flood the log.

State shared by all connections lives here: connections and open handles per
tenant (:class:`TenantBudget`), the process's descriptors (:class:`FdBudget`)
the inbox quota (:class:`InboxQuota`: the tenant's boxes on disk, which on a
tree shared by several instances is itself the shared state) and the failed
logins and bans (:class:`LoginBans`; :mod:`personsd.sftpshared` keeps them in
the database for every instance).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import re
import resource
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import structlog

from personsd.config import LimitsConfig
from personsd.logging import Event

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
LIMIT_LOG_SECONDS = 10.0
QUOTA_SCAN_SECONDS = 2.0  # how stale the inbox scan behind the quota may be
# Our own upload temp files: invisible to clients, counted by the quota from memory.
UPLOAD_TEMP = re.compile(r"^\..*\.[0-9a-f]{16}\.upload$")
QUOTA_BOXES = ("inbox", "validate")
STALE_UPLOAD_SECONDS = 3600.0


def _log() -> Any:
    return structlog.get_logger()


@dataclass(frozen=True, kw_only=True, slots=True)
class SftpLimits:
    """Every cap of the embedded server; each one bounds what a client can cost us."""

    # SPEC 8 [limits]
    connections_per_address: int = 10
    connections_per_tenant: int = 10
    inbox_bytes: int = 100 * GiB  # waiting in /inbox + /validate, uploads in progress included
    inbox_files: int = 1000
    # Logins
    max_failed_logins: int = 5  # password guesses verified per address and window, at most
    failed_window_seconds: float = 60.0
    ban_seconds: float = 300.0
    login_grace_seconds: float = 30.0  # from TCP accept to a completed login
    idle_timeout_seconds: float = 600.0
    # The SSH wire
    max_packet_bytes: int = 256 * KiB  # one SSH packet, before and after login
    max_banner_bytes: int = 16 * KiB  # lines a client may send before its version string
    channel_window_bytes: int = 2 * MiB  # receive window advertised and enforced per channel
    channel_packet_bytes: int = 32 * KiB  # largest channel data message accepted
    max_channels_per_connection: int = 4  # session channels (SFTP sessions) open at once
    max_channel_opens_per_connection: int = 1024  # over a connection's life
    # SFTP
    max_request_bytes: int = 1 * MiB  # one SFTP request (OpenSSH writes 256 KiB at most)
    max_handles: int = 64  # open files and directories per SFTP session
    max_handles_per_tenant: int = 256  # across all the tenant's connections
    max_read_bytes: int = 256 * KiB  # served per READ, whatever the client asks
    max_file_bytes: int = 64 * GiB
    max_write_gap_bytes: int = 16 * MiB  # holes in one upload (apparent size - bytes received)
    # An upload temp file untouched this long is a dead upload's (another instance's
    # crash on a shared tree): the quota scan removes it instead of counting it.
    stale_upload_seconds: float = STALE_UPLOAD_SECONDS
    # The process
    fd_reserve: int = 256  # descriptors kept for the daemon itself (at most a quarter)

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"SftpLimits.{item.name} must be a positive number, got {value!r}")
        if self.max_packet_bytes < self.channel_packet_bytes + 1024:
            raise ValueError("SftpLimits.max_packet_bytes must hold one channel data message")

    @classmethod
    def from_config(cls, limits: LimitsConfig, **constants: Any) -> SftpLimits:
        """The configured ``[limits]`` with the documented constants."""
        return cls(
            connections_per_address=limits.connections_per_address,
            connections_per_tenant=limits.connections_per_tenant,
            inbox_bytes=limits.inbox_bytes,
            inbox_files=limits.inbox_files,
            **constants,
        )


class LimitLog:
    """Logs ``sftp.limit``; the same cap for the same client at most every ``interval`` s."""

    def __init__(
        self, interval: float = LIMIT_LOG_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[Hashable, float] = {}
        self._suppressed: collections.Counter[Hashable] = collections.Counter()

    def hit(self, limit: str, **who: Any) -> None:
        self.throttled(
            Event.SFTP_LIMIT, (limit, who.get("tenant"), who.get("ip")), limit=limit, **who
        )

    def throttled(self, event: str, key: Hashable, **fields: Any) -> None:
        """Log ``event`` unless one with the same ``key`` was logged within the interval."""
        key = (event, key)
        with self._lock:
            now = self._clock()
            if now - self._last.get(key, -self._interval) < self._interval:
                self._suppressed[key] += 1
                return
            suppressed = self._suppressed.pop(key, 0)
            # Forget clients not seen for an interval (their uncounted repeats with them).
            self._last = {k: t for k, t in self._last.items() if now - t < self._interval}
            self._suppressed = collections.Counter(
                {k: n for k, n in self._suppressed.items() if k in self._last}
            )
            self._last[key] = now
        extra = {"suppressed": suppressed} if suppressed else {}
        _log().warning(event, **fields, **extra)


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one (best effort); the (soft, hard) in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError) as exc:  # e.g. a seccomp filter forbids setrlimit
            _log().info("sftp.fd_limit_kept", soft=soft, hard=hard, error=str(exc))
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


class InboxQuota(Protocol):
    """Bytes and files waiting in a tenant's /inbox and /validate (SPEC 8 ``[limits]``).

    ``key`` identifies one upload in progress, ``temp`` names its temp file in
    the inbox; its size is the highest offset written (holes count). The
    answers are None (fine) or the cap's name.
    """

    def open_upload(self, tenant: str, key: Hashable, temp: str) -> str | None: ...

    def grow(self, tenant: str, key: Hashable, end: int) -> str | None: ...

    def end_upload(self, tenant: str, key: Hashable) -> None: ...

    def changed(self, tenant: str) -> None: ...


@dataclass
class _Usage:
    scanned_at: float = float("-inf")
    disk_bytes: int = 0  # files in the boxes, our uploads in progress excepted
    disk_files: int = 0
    uploads: dict[Hashable, int] = field(default_factory=dict)  # in progress: apparent size
    upload_bytes: int = 0
    temps: dict[Hashable, str] = field(default_factory=dict)  # their temp files' names


class LocalInboxQuota:
    """The quota of a tenant's boxes on disk: this process's uploads in memory, the rest scanned.

    The scan (at most ``QUOTA_SCAN_SECONDS`` old) counts every file in the
    boxes, the temp files of other processes' uploads in progress included
    (at their apparent size), so on a tree shared by several instances each
    one sees the others' uploads as well as the waiting files: the disk is
    the shared state. Its own uploads count from memory, exact at each write.
    """

    def __init__(
        self,
        *,
        tenants_root: Path,
        inbox_bytes: int,
        inbox_files: int,
        stale_upload_seconds: float = STALE_UPLOAD_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._root = tenants_root
        self._stale = stale_upload_seconds
        self._bytes = inbox_bytes
        self._files = inbox_files
        self._clock = clock
        self._lock = threading.Lock()
        self._usage: dict[str, _Usage] = {}

    def _scan(self, tenant: str, own: frozenset[str]) -> tuple[int, int]:
        total = files = 0
        for box in QUOTA_BOXES:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                for entry in os.scandir(self._root / tenant / box):
                    temp = UPLOAD_TEMP.match(entry.name) is not None
                    if temp and entry.name in own:
                        continue  # counted from memory
                    try:
                        if not entry.is_file(follow_symlinks=False):
                            continue
                        found = entry.stat(follow_symlinks=False)
                        if temp and found.st_mtime < time.time() - self._stale:
                            os.unlink(entry.path)
                            _log().info("sftp.stale_upload_removed", tenant=tenant, file=entry.name)
                            continue
                    except FileNotFoundError:
                        continue  # claimed, finished or removed meanwhile
                    total += found.st_size
                    files += 1
        return total, files

    def _current(self, tenant: str) -> _Usage:
        """The tenant's usage with a scan at most QUOTA_SCAN_SECONDS old (call unlocked)."""
        with self._lock:
            usage = self._usage.setdefault(tenant, _Usage())
            fresh = self._clock() - usage.scanned_at < QUOTA_SCAN_SECONDS
            own = frozenset(usage.temps.values())
        if not fresh:
            started = self._clock()
            disk_bytes, disk_files = self._scan(tenant, own)
            with self._lock:
                usage.scanned_at, usage.disk_bytes, usage.disk_files = (
                    started,
                    disk_bytes,
                    disk_files,
                )
        return usage

    def open_upload(self, tenant: str, key: Hashable, temp: str) -> str | None:
        with self._lock:  # ours before any scan sees it
            self._usage.setdefault(tenant, _Usage()).temps[key] = temp
        usage = self._current(tenant)
        with self._lock:
            if usage.disk_files + len(usage.uploads) + 1 > self._files:
                del usage.temps[key]
                return "inbox_files"
            usage.uploads[key] = 0
            return None

    def grow(self, tenant: str, key: Hashable, end: int) -> str | None:
        usage = self._current(tenant)
        with self._lock:
            old = usage.uploads.get(key, 0)
            if end <= old:
                return None
            if usage.disk_bytes + usage.upload_bytes - old + end > self._bytes:
                return "inbox_bytes"
            usage.uploads[key] = end
            usage.upload_bytes += end - old
            return None

    def end_upload(self, tenant: str, key: Hashable) -> None:
        """The upload became a file (call after the rename) or was abandoned."""
        with self._lock:
            usage = self._usage.get(tenant)
            if usage is None:
                return
            usage.upload_bytes -= usage.uploads.pop(key, 0)
            usage.temps.pop(key, None)
            usage.scanned_at = float("-inf")

    def changed(self, tenant: str) -> None:
        with self._lock:
            usage = self._usage.get(tenant)
            if usage is not None:
                usage.scanned_at = float("-inf")
