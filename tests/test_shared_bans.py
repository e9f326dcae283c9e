"""Failed logins and bans shared by every instance through the database (SPEC 6, 12)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paramiko
import pytest
from sqlalchemy import Engine
from structlog.testing import capture_logs

from personsd.logging import Event
from personsd.passwords import hash_password
from personsd.sftp import SftpLimits
from personsd.sftp.guard import LoginGuard
from personsd.sftp.shared import SharedLoginBans
from personsd.store import bans as store_bans
from personsd.store import db
from polling import wait_for
from test_sftp import Harness, connect, events, running_server

LIMITS = SftpLimits(max_failed_logins=3, failed_window_seconds=60, ban_seconds=300)


class WallClock:
    """A settable UTC clock for the shared table, and its monotonic twin."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
        self.mono = 1000.0

    def wall(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.mono += seconds


def instance(engine: Engine, clock: WallClock, limits: SftpLimits = LIMITS) -> SharedLoginBans:
    """One instance's view of the shared bans (each instance has its own object)."""
    return SharedLoginBans(engine, limits, now=clock.wall, clock=clock.monotonic)


def test_failures_on_one_instance_count_on_another(engine: Engine) -> None:
    """Failures recorded by A and B add up; the one reaching the cap bans on both."""
    clock = WallClock()
    a, b = instance(engine, clock), instance(engine, clock)
    assert [False, False] == [a.record_failure("10.0.0.1") for _ in range(2)]
    b.refresh("10.0.0.1")
    assert 2 == b.failures("10.0.0.1")
    assert True is b.record_failure("10.0.0.1")
    assert (True, True) == (a.refresh("10.0.0.1"), b.refresh("10.0.0.1"))
    assert False is a.refresh("10.0.0.2")
    assert (1, 1) == (a.banned_count(), b.banned_count())


def test_shared_ban_expires_and_failures_outside_the_window_do_not_add_up(engine: Engine) -> None:
    """A ban ends after ban_seconds; failures a window apart start the count again."""
    clock = WallClock()
    a = instance(engine, clock)
    for _ in range(5):
        assert False is a.record_failure("h")
        clock.advance(61)
    for _ in range(3):
        a.record_failure("h")
    assert True is a.refresh("h")
    clock.advance(301)
    assert False is a.refresh("h")
    assert 0 == a.banned_count()


def test_guesses_are_throttled_by_failures_of_other_instances(engine: Engine) -> None:
    """begin_guess on B sees A's failures (read once per connection): no fresh guesses."""
    clock = WallClock()
    a = instance(engine, clock)
    guard_b = LoginGuard(LIMITS, bans=instance(engine, clock))
    for _ in range(2):
        a.record_failure("h")
    assert False is guard_b.bans.refresh("h")
    assert None is guard_b.begin_guess("h")
    assert "throttled" == guard_b.begin_guess("h")
    assert True is guard_b.end_guess("h", failed=True)
    assert "banned" == guard_b.admit("h")


def test_sweep_forgets_addresses_whose_window_and_ban_passed(engine: Engine) -> None:
    """Rows of addresses neither counting nor banned are deleted; the others stay."""
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    window, ban = timedelta(seconds=60), timedelta(seconds=300)
    with db.write_tx(engine) as conn:
        store_bans.record_failure(conn, "old", now=now, window=window, max_failures=1, ban=ban)
        store_bans.record_failure(conn, "new", now=now, window=window, max_failures=5, ban=ban)
    later = now + timedelta(seconds=301)
    with db.write_tx(engine) as conn:
        store_bans.record_failure(conn, "new", now=later, window=window, max_failures=5, ban=ban)
        assert 1 == store_bans.sweep(conn, now=later, window=ban)
        assert (None, 1) == (
            store_bans.read(conn, "old"),
            store_bans.read(conn, "new").failures,  # type: ignore[union-attr]
        )


def test_unreachable_table_falls_back_to_local_counting_then_comes_back(tmp_path: Path) -> None:
    """No table to read: logins go on, failures count in memory; once it exists, shared again."""
    clock = WallClock()
    engine = db.connect(f"sqlite:///{tmp_path / 'not-migrated.db'}")
    try:
        bans = SharedLoginBans(
            engine, LIMITS, now=clock.wall, clock=clock.monotonic, retry_seconds=10
        )
        with capture_logs() as logs:
            assert False is bans.refresh("h")
            assert [False, False, True] == [bans.record_failure("h") for _ in range(3)]
            assert True is bans.refresh("h")
            assert 1 == bans.banned_count()
        assert 1 == len(events(logs, Event.SFTP_BANS_LOCAL))
        db.upgrade(engine)
        with capture_logs() as logs:
            bans.record_failure("other")  # within retry_seconds: still local
            assert 1 == bans.local.failures("other")
            clock.advance(11)
            bans.record_failure("other")
        assert 1 == len(events(logs, Event.SFTP_BANS_SHARED))
        with engine.connect() as conn:
            assert 1 == store_bans.read(conn, "other").failures  # type: ignore[union-attr]
    finally:
        engine.dispose()


def test_a_ban_made_on_one_server_refuses_logins_on_another(tmp_path: Path, engine: Engine) -> None:
    """Three wrong passwords on server A; the right password on server B is then refused."""
    passwords = {"acme": hash_password("right")}
    limits = SftpLimits(max_failed_logins=3, failed_window_seconds=60, ban_seconds=60)

    def server(name: str) -> AbstractContextManager[Harness]:
        """One instance: a server of its own, sharing the database's bans."""
        (tmp_path / name).mkdir()
        bans = SharedLoginBans(engine, limits)
        return running_server(tmp_path / name, limits=limits, passwords=passwords, bans=bans)

    with server("a") as a, server("b") as b, capture_logs() as logs:
        transport = connect(b.port, "acme", password="right")  # B is fine before the ban
        transport.close()
        for _ in range(3):
            with pytest.raises(paramiko.AuthenticationException):
                connect(a.port, "acme", password="wrong")
        wait_for(lambda: events(logs, Event.SFTP_BANNED))
        with pytest.raises((paramiko.SSHException, OSError, EOFError)):
            connect(b.port, "acme", password="right")
        wait_for(lambda: events(logs, Event.SFTP_REFUSED))
        assert 1 == b.server.banned_count()
    assert [("127.0.0.1", "banned")] == [
        (e["ip"], e["reason"]) for e in events(logs, Event.SFTP_REFUSED)
    ]
    assert 1 == len(events(logs, Event.SFTP_LOGIN))
