"""The caps of the embedded SFTP server (SPEC 6) and the log of hitting them.

Every cap is a field of :class:`SftpLimits`: the four ``[limits]`` keys of
SPEC 8 come from the configuration (:meth:`SftpLimits.from_config`), the
others are the documented constants below (docs/security.md lists them all).
Hitting one logs ``sftp.limit`` with ``limit`` (the field's name) and
``tenant`` or ``ip``, through :class:`LimitLog`, which repeats an event for
the same cap and client at most every ``LIMIT_LOG_SECONDS`` so that a hostile
client cannot flood the log.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, fields
from typing import Any

from personsd.config import LimitsConfig
from personsd.logging import Event, get_logger

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
LIMIT_LOG_SECONDS = 10.0
STALE_UPLOAD_SECONDS = 3600.0

log = get_logger()


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
        log.warning(event, **fields, **extra)
