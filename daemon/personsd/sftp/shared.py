"""Bans shared by every instance through the database (SPEC 12), with a local fallback.

:class:`SharedLoginBans` keeps failed logins and bans in the ``sftp_bans``
table (:mod:`personsd.store.bans`), so a failure on one instance counts on
all, and an address banned on one is refused by all. Per connection it costs
one primary-key read (``refresh``); only failures write.

The database must never make logins fail. When it cannot be reached (or
answers with an error), this instance counts failures in memory
(:class:`LocalLoginBans`) and keeps the bans it already knew, logs
``sftp.bans_local`` once, and tries the database again after
``SHARED_RETRY_SECONDS`` with a single connection while the others go on
locally; ``sftp.bans_shared`` says it is back.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from sqlalchemy import Engine

from personsd.logging import Event, get_logger
from personsd.sftp.bans import LocalLoginBans
from personsd.sftp.limits import SftpLimits
from personsd.store import bans as store_bans
from personsd.store import db

SHARED_RETRY_SECONDS = 10.0  # after a database error, the shared table rests this long
SWEEP_SECONDS = 300.0  # forget expired addresses at most this often (per instance)
CACHE_ADDRESSES = 4096  # addresses whose last read is kept, the latest ones
# Its own small pool: logins never wait for the importers' connections, nor they for logins.
# No ping before each use: the read is the only round trip of a connection; a connection
# the server dropped fails once, and the pool is renewed after SHARED_RETRY_SECONDS.
POOL = {"pool_size": 2, "max_overflow": 6, "pool_timeout": 5, "pool_pre_ping": False}

T = TypeVar("T")

log = get_logger()


def _utcnow() -> datetime:
    return datetime.now(UTC)


class SharedLoginBans:
    """Failed logins and bans in the database, the last state read per address in memory."""

    def __init__(
        self,
        engine: Engine,
        limits: SftpLimits,
        *,
        now: Callable[[], datetime] = _utcnow,
        clock: Callable[[], float] = time.monotonic,
        retry_seconds: float = SHARED_RETRY_SECONDS,
    ) -> None:
        self._engine = engine
        self._limits = limits
        self._now = now
        self._clock = clock
        self._retry_seconds = retry_seconds
        self._window = timedelta(seconds=limits.failed_window_seconds)
        self._ban = timedelta(seconds=limits.ban_seconds)
        self.local = LocalLoginBans(limits, clock)
        self._lock = threading.Lock()
        self._known: collections.OrderedDict[str, store_bans.BanState] = collections.OrderedDict()
        self._down = False
        self._retry_at = 0.0
        self._probing = False
        self._swept_at = float("-inf")

    @classmethod
    def from_url(cls, url: str, limits: SftpLimits) -> SharedLoginBans:
        """With an engine of its own on ``url``."""
        return cls(db.connect(url, **POOL), limits)

    def close(self) -> None:
        self._engine.dispose()

    # -- the database, or nothing ---------------------------------------------------

    def _shared(self, operation: Callable[[], T]) -> T | None:
        """``operation``'s result; None while the database is failing (then local counting)."""
        with self._lock:
            if self._down and (self._probing or self._clock() < self._retry_at):
                return None
            probe = self._down
            self._probing = probe
        try:
            result = operation()
        except Exception as exc:  # noqa: BLE001 -- the database must never make logins fail
            with self._lock:
                self._probing = False
                self._retry_at = self._clock() + self._retry_seconds
                was_down, self._down = self._down, True
            if not was_down:
                log.warning(
                    Event.SFTP_BANS_LOCAL,
                    error=repr(exc)[:300],
                    retry_in=self._retry_seconds,
                )
            return None
        with self._lock:
            self._probing = False
            was_down, self._down = self._down, False
        if was_down:
            log.info(Event.SFTP_BANS_SHARED)
        return result

    def _remember(self, state: store_bans.BanState) -> None:
        with self._lock:
            self._known[state.address] = state
            self._known.move_to_end(state.address)
            while len(self._known) > CACHE_ADDRESSES:
                self._known.popitem(last=False)
        if state.banned_until is not None:
            seconds = (state.banned_until - self._now()).total_seconds()
            if seconds > 0:
                self.local.ban(state.address, seconds)  # kept if the database goes away

    # -- LoginBans ------------------------------------------------------------------

    def refresh(self, ip: str) -> bool:
        """Read ``ip``'s row (one indexed read); whether it is banned now."""

        def read() -> store_bans.BanState | None:
            with self._engine.connect() as conn:
                return store_bans.read(conn, ip)

        state = self._shared(read)
        if state is not None:
            self._remember(state)
        return self.banned(ip)

    def banned(self, ip: str) -> bool:
        with self._lock:
            state = self._known.get(ip)
        return (state is not None and state.banned(self._now())) or self.local.banned(ip)

    def failures(self, ip: str) -> int:
        with self._lock:
            state = self._known.get(ip)
        shared = 0 if state is None else state.failures_within(self._now(), self._window)
        return max(shared, self.local.failures(ip))

    def record_failure(self, ip: str) -> bool:
        now = self._now()

        def record() -> tuple[store_bans.BanState, bool]:
            with db.write_tx(self._engine) as conn:
                found = store_bans.record_failure(
                    conn,
                    ip,
                    now=now,
                    window=self._window,
                    max_failures=self._limits.max_failed_logins,
                    ban=self._ban,
                )
                if self._clock() - self._swept_at >= SWEEP_SECONDS:
                    self._swept_at = self._clock()
                    store_bans.sweep(conn, now=now, window=max(self._window, self._ban))
                return found

        result = self._shared(record)
        if result is None:
            return self.local.record_failure(ip)
        state, started = result
        self._remember(state)
        return started

    def banned_count(self) -> int:
        def count() -> int:
            with self._engine.connect() as conn:
                return store_bans.banned_count(conn, self._now())

        found = self._shared(count)
        return self.local.banned_count() if found is None else found
