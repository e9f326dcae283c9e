"""Each file's trouble stays its own, on the real daemon (SPEC 5; issue 9 obs. 1 and 5).

Real daemon subprocesses on SQLite and PostgreSQL, the embedded SFTP server
driven by paramiko, files dropped into inboxes by rename as a local writer
would. See ``test_isolation.py`` for the same rules in process.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from daemon_helpers import Daemon, free_port, sftp_session, ssh_key
from personsd.fileformat import cut_name, name_bytes
from personsd.logging import Event
from personsd.store import db
from personsd.store import imports as store_imports
from personsd.store import tenants as store_tenants
from polling import wait_for

pytestmark = pytest.mark.slow

ROWS = "external_person_id\ne1\ne2\n"
FIRST_ID = 150  # import ids of three digits and more: the longest derived names


@pytest.fixture
def site(tmp_path: Path, db_url: str) -> Iterator[tuple[Daemon, Path]]:
    """A daemon home with tenants alpha and beta (key login), import ids from FIRST_ID."""
    daemon = Daemon(home=tmp_path, db_url=db_url, port=free_port())
    key = ssh_key(tmp_path)
    public = key.with_name(key.name + ".pub").read_text().split()
    engine = db.connect(db_url)
    try:
        db.upgrade(engine)
        with db.write_tx(engine) as conn:
            for name in ("alpha", "beta"):
                store_tenants.add_tenant(conn, name, keys=[(public[0], public[1])])
            if conn.dialect.name == "postgresql":
                conn.execute(
                    text(f"SELECT setval(pg_get_serial_sequence('imports', 'id'), {FIRST_ID - 1})")
                )
            else:
                conn.execute(text("DELETE FROM sqlite_sequence WHERE name = 'imports'"))
                conn.execute(
                    text("INSERT INTO sqlite_sequence (name, seq) VALUES ('imports', :seq)"),
                    {"seq": FIRST_ID - 1},
                )
    finally:
        engine.dispose()
    (tmp_path / "staging").mkdir()
    try:
        yield daemon, key
    finally:
        daemon.stop()


def start(daemon: Daemon) -> None:
    """Start and wait until the tenants are loaded (the snapshot is written after that)."""
    snapshot = daemon.root / "state" / "tenants.json"
    snapshot.unlink(missing_ok=True)
    daemon.start()
    wait_for(snapshot.exists, what="the daemon to load its tenants")


def drop(daemon: Daemon, tenant: str, name: str, body: str = ROWS) -> None:
    """A local writer: written aside on the same filesystem, renamed into the inbox."""
    staged = daemon.home / "staging" / "upload"
    staged.write_text(body)
    os.rename(staged, os.path.join(daemon.inbox(tenant), name))


def summary_of(daemon: Daemon, tenant: str, name: str, timeout: float = 30.0) -> dict[str, Any]:
    """The summary.json of ``name`` (reports are named after its first 200 bytes)."""
    return daemon.summary(tenant, cut_name(name), timeout=timeout)


def long_name(length: int, unit: str) -> str:
    """A `.persons` name of exactly ``length`` bytes made of ``unit`` characters."""
    head = f"L{length}-{len(unit.encode())}-"
    fill = length - name_bytes(head) - len(".persons")
    stem = unit * (fill // len(unit.encode()))
    name = head + stem + "x" * (fill - name_bytes(stem)) + ".persons"
    assert length == name_bytes(name)
    return name


LENGTHS = (200, 234, 235, 254, 255)


def test_long_names_never_stall_loop_or_stop_a_restart(site: tuple[Daemon, Path]) -> None:
    """Issue 9 obs. 1: names up to 255 bytes get their reports, nothing loops, restart is clean."""
    daemon, key = site
    start(daemon)
    names = [long_name(length, unit) for length in LENGTHS for unit in ("a", "é", "€")]
    refused = []
    with sftp_session(daemon.port, "alpha", key) as sftp:
        for name in names:
            try:
                with sftp.open(f"/inbox/{name}", "wb") as fh:
                    fh.write(ROWS.encode())
            except OSError:
                refused.append(name)
                drop(daemon, "alpha", name)  # another writer gets it there all the same

    summaries = {name: summary_of(daemon, "alpha", name) for name in names}

    assert [n for n in names if name_bytes(n) > 200] == refused
    for name, summary in summaries.items():
        assert name == summary["file"]
        assert summary["import_id"] >= FIRST_ID
        if name_bytes(name) <= 200:
            assert ("completed", None) == (summary["status"], summary["file_error"])
        else:
            assert "rejected" == summary["status"]
            assert "File name is longer than 200 bytes" == summary["file_error"]["message"]
    archive = daemon.root / "state" / "archive" / "alpha"
    wait_for(lambda: len(list(archive.iterdir())) == len(names), what="every file archived")
    archived = sorted(os.fsencode(p.name) for p in archive.iterdir())
    assert all(len(n) <= 255 for n in archived)
    assert {str(s["import_id"]).encode() for s in summaries.values()} == {
        n.split(b".", 1)[0] for n in archived
    }
    events = daemon.events()
    assert len(names) == sum(e["event"] == Event.IMPORT_STARTED for e in events)
    assert [] == [e for e in events if e["event"] in ("intake.retry", "db.unavailable")]
    assert len(events) < 20 * len(names)  # each file a handful of lines, no loop

    assert 0 == daemon.stop()
    start(daemon)
    drop(daemon, "beta", "after-restart.persons")
    assert "completed" == summary_of(daemon, "beta", "after-restart.persons")["status"]
    assert [] == [e for e in daemon.events() if e["event"] in ("intake.retry", "db.unavailable")]


def test_a_huge_file_does_not_delay_another_tenants_intake(site: tuple[Daemon, Path]) -> None:
    """Issue 9 obs. 5: tenant beta's 2-row file completes while alpha's 4 GiB is being hashed."""
    daemon, _key = site
    start(daemon)
    staged = daemon.home / "staging" / "big"
    with staged.open("wb") as fh:
        fh.truncate(4 << 30)  # sparse: costs no disk, only the time to read (hash) it
    os.rename(staged, daemon.inbox("alpha") / "big.persons")
    wait_for(
        lambda: daemon.has_event(Event.IMPORT_STARTED, file="big.persons"),
        what="the big file's import to start",
    )

    drop(daemon, "beta", "small.persons")
    small = summary_of(daemon, "beta", "small.persons")
    big_done_before = list(daemon.outbox("alpha").glob("big.persons.*.summary.json"))
    big = summary_of(daemon, "alpha", "big.persons", timeout=120)

    assert [] == big_done_before
    assert ("completed", 2) == (small["status"], small["rows"]["total"])
    assert ("rejected", 4 << 30) == (big["status"], big["bytes"])
    assert re.fullmatch(r"[0-9a-f]{64}", big["sha256"])


def test_the_daemon_starts_whatever_state_one_import_is_in(
    site: tuple[Daemon, Path], tmp_path: Path
) -> None:
    """SPEC 5: an import whose publication fails at start keeps no worker from starting."""
    daemon, _key = site
    start(daemon)
    drop(daemon, "alpha", "first.persons")
    import_id = summary_of(daemon, "alpha", "first.persons")["import_id"]
    assert 0 == daemon.stop()
    engine = db.connect(daemon.db_url)
    try:
        with db.write_tx(engine) as conn:
            store_imports.set_status(conn, import_id, "completed", reports_published=False)
    finally:
        engine.dispose()
    outbox = daemon.outbox("alpha")
    for report in outbox.iterdir():
        report.unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    outbox.rmdir()
    outbox.symlink_to(elsewhere)  # publication refuses a symlinked outbox: a lasting failure
    daemon.log_path.unlink()

    start(daemon)
    drop(daemon, "beta", "second.persons")
    second = summary_of(daemon, "beta", "second.persons")
    wait_for(
        lambda: daemon.has_event(Event.PUBLISH_RETRY, import_id=import_id),
        what="the failed publication to be logged",
    )
    outbox.unlink()
    outbox.mkdir()
    republished = summary_of(daemon, "alpha", "first.persons", timeout=60)

    assert "completed" == second["status"]
    assert (import_id, "completed") == (republished["import_id"], republished["status"])
    assert [] == list(elsewhere.iterdir())
    assert [] == [e for e in daemon.events() if e["event"] == "db.unavailable"]
