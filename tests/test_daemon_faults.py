"""SPEC 5 through the real daemon: disk full and SQLite full wait near idle and spend no
attempt; kill -9 ten times spends none and the import ends as an uninterrupted one."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon_helpers import Daemon, drop_file, free_port
from fault_helpers import fill, tmpfs
from personsd.store import db
from polling import wait_for

pytestmark = pytest.mark.slow

TENANT = "acme"
FIELDS = (("first_name", "string", None),)
_TICK = os.sysconf("SC_CLK_TCK")


def rows_file(count: int, prefix: str = "e") -> str:
    return "external_person_id,first_name\n" + "".join(
        f"{prefix}{n},Name{n}\n" for n in range(count)
    )


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def warm_up(daemon: Daemon) -> None:
    """One small import to its end: the daemon's start-up is over, its workers run."""
    wait_for(lambda: daemon.inbox(TENANT).is_dir(), what="the inbox")
    drop_file(daemon.inbox(TENANT), "warm.persons", rows_file(1, prefix="warm"))
    daemon.summary(TENANT, "warm.persons")


def pg_sequence(url: str) -> int:
    """The persons id sequence: ids a rolled-back chunk reserved stay burnt."""
    engine = db.connect(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.exec_driver_sql("SELECT last_value FROM persons_person_id_seq").scalar_one()
            )
    finally:
        engine.dispose()


def without_keys(export: str) -> list[list[str]]:
    """An export without person_key (random per run); ids, values and order stay."""
    return [line.split(",")[:1] + line.split(",")[2:] for line in export.splitlines()]


def imports_of(daemon: Daemon) -> list[dict[str, Any]]:
    return list(json.loads(daemon.cli("imports", "list", "--json").stdout))


def outbox_files(daemon: Daemon) -> list[str]:
    return sorted(p.name for p in daemon.outbox(TENANT).iterdir())


def events(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e.get("event") == name]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    made: list[Daemon] = []

    def make(db_url: str, **extra_import: Any) -> Daemon:
        d = Daemon(
            home=tmp_path / "home",
            db_url=db_url,
            port=free_port(),
            extra={"sftp": {"enabled": False}, "import": extra_import},
        )
        d.home.mkdir(exist_ok=True)
        d.write_config()
        made.append(d)
        return d

    yield make  # type: ignore[misc]
    for d in made:
        if d.proc is not None:
            d.kill()


def test_disk_full_waits_near_idle_then_completes(daemon: Any, pg_url: str, tmp_path: Path) -> None:
    """ENOSPC in the daemon's root (a real tmpfs) on PostgreSQL: a handful of growing
    pauses, < 2 CPU-seconds in 20 s, no attempt, no id burnt, nothing partial in the outbox."""
    with tmpfs(tmp_path / "home" / "var", "16m"):
        d: Daemon = daemon(pg_url)
        d.add_tenant(TENANT, fields=FIELDS)
        d.start()
        assert d.proc is not None
        warm_up(d)
        temp = d.inbox(TENANT) / ".big.persons"
        temp.write_text(rows_file(2000))
        filler = fill(d.root)
        temp.rename(d.inbox(TENANT) / "big.persons")
        wait_for(lambda: events(d, "import.waiting"), what="import.waiting")
        ids_before = pg_sequence(pg_url)
        start_cpu, start = cpu_seconds(d.proc.pid), time.monotonic()
        time.sleep(20)
        spent, elapsed = cpu_seconds(d.proc.pid) - start_cpu, time.monotonic() - start
        ids_after = pg_sequence(pg_url)
        waits = events(d, "import.waiting")
        during = imports_of(d)
        partial = outbox_files(d)
        filler.unlink()
        summary = d.summary(TENANT, "big.persons", timeout=60)
        after = imports_of(d)
        assert 0 == d.stop()
    print(f"disk full: {spent:.2f} CPU-s in {elapsed:.1f} s, {len(waits)} waits")
    assert spent < 2.0
    assert 3 <= len(waits) <= 12
    assert {"errno ENOSPC"} == {e["reason"] for e in waits}
    pauses = [e["retry_in"] for e in waits]
    assert sorted(pauses[:5]) == pauses[:5]
    assert ["warm.persons.1.errors.csv", "warm.persons.1.summary.json"] == partial
    assert ids_before == ids_after
    assert [("queued", 0)] == [(i["status"], i["attempts"]) for i in during[1:]]
    assert ("completed", 2000) == (summary["status"], summary["rows"]["created"])
    assert [("completed", 0)] == [(i["status"], i["attempts"]) for i in after[1:]]
    assert [] == events(d, "import.attempt_failed")


def test_sqlite_database_full_waits_and_spends_no_attempt(daemon: Any, tmp_path: Path) -> None:
    """SQLite's "database or disk is full" (its file on a full tmpfs) is the environment's:
    the import waits near idle, no attempt spent, and completes once there is room."""
    rows = 100_000  # long enough to be caught mid-import
    with tmpfs(tmp_path / "dbdisk", "64m") as disk:
        d: Daemon = daemon(f"sqlite:///{disk / 'persons.db'}", chunk_rows=100)
        d.add_tenant(TENANT, fields=FIELDS)
        d.start()
        assert d.proc is not None
        warm_up(d)
        drop_file(d.inbox(TENANT), "big.persons", rows_file(rows))
        wait_for(lambda: _next_row(disk / "persons.db", 2) > 0, what="the import under way")
        filler = fill(disk)
        wait_for(lambda: events(d, "import.waiting"), timeout=30, what="import.waiting")
        start_cpu = cpu_seconds(d.proc.pid)
        time.sleep(8)
        spent = cpu_seconds(d.proc.pid) - start_cpu
        filler.unlink()
        summary = d.summary(TENANT, "big.persons", timeout=90)
        after = imports_of(d)
        assert 0 == d.stop()
    waits = events(d, "import.waiting")
    print(f"sqlite full: {spent:.2f} CPU-s in 8 s, {len(waits)} waits")
    assert spent < 1.5
    assert ("completed", rows) == (summary["status"], summary["rows"]["created"])
    assert [("completed", 0)] * 2 == [(i["status"], i["attempts"]) for i in after]
    assert [] == events(d, "import.attempt_failed")
    assert waits and all(e["reason"].startswith("sqlite SQLITE_") for e in waits)


def _next_row(db_path: Path, import_id: int = 1) -> int:
    with sqlite3.connect(db_path, timeout=5) as con:
        row = con.execute("SELECT next_row FROM imports WHERE id = ?", (import_id,)).fetchone()
    return int(row[0]) if row else 0


def test_ten_kills_spend_no_attempt_and_change_nothing(daemon: Any, tmp_path: Path) -> None:
    """kill -9 ten times mid-import: attempts stay 0, the import completes, and the persons
    and reports equal those of one uninterrupted `personsd import` of the same file."""
    rows = 30_000
    text = rows_file(rows)
    db_path = tmp_path / "persons.db"
    d: Daemon = daemon(f"sqlite:///{db_path}", chunk_rows=250)
    d.add_tenant(TENANT, fields=FIELDS)
    d.start()
    wait_for(lambda: d.inbox(TENANT).is_dir(), what="the inbox")
    drop_file(d.inbox(TENANT), "big.persons", text)
    kills = 0
    for _ in range(10):
        seen = _next_row(db_path)
        wait_for(lambda s=seen: _next_row(db_path) > s, timeout=30, what="a new checkpoint")
        if _next_row(db_path) >= rows:
            break
        d.kill()
        kills += 1
        d.start()
    summary = d.summary(TENANT, "big.persons", timeout=120)
    after = imports_of(d)
    export = d.export(TENANT)
    assert 0 == d.stop()

    reference = Daemon(
        home=tmp_path / "ref", db_url=f"sqlite:///{tmp_path / 'ref.db'}", port=free_port()
    )
    reference.home.mkdir()
    reference.extra = {"sftp": {"enabled": False}}
    reference.write_config()
    reference.add_tenant(TENANT, fields=FIELDS)
    source = tmp_path / "big.persons"
    source.write_text(text)
    reference.cli("import", "--tenant", TENANT, str(source))
    expected = json.loads(
        next(reference.outbox(TENANT).glob("big.persons.*.summary.json")).read_text()
    )

    assert 10 == kills
    assert [("completed", 0)] == [(i["status"], i["attempts"]) for i in after]
    assert (expected["rows"], expected["errors"]) == (summary["rows"], summary["errors"])
    assert without_keys(reference.export(TENANT)) == without_keys(export)
