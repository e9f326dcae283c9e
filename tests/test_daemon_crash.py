"""SPEC 5 crash safety of ``personsd run``: kill -9 and SIGTERM in the middle of a big import.

One 100,000-row file is imported by the daemon while it is killed (kill -9)
right after the claim, at about 15 % and 70 % of the rows and as the last
chunk commits, and stopped once with SIGTERM at about 40 %. The outcome is
compared with one uninterrupted ``personsd import`` of the same file into a
home and SQLite database of its own, started with the module and running
alongside the first test: sharing no database, neither run can see or take
over the other's import, and SPEC 2 makes the result independent of the
database kind.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from cluster_helpers import seed_tenants
from daemon_helpers import Daemon, free_port
from engine_helpers import var_config
from personsd.intake import Intake
from personsd.store import db
from personsd.store import imports as store_imports
from personsd.store import tenants as store_tenants
from personsd.store.db import write_tx
from personsd.store.imports import ImportRecord
from personsd.store.tenants import KeySpec
from personsd.watcher import ReadyFile
from polling import wait_for

pytestmark = pytest.mark.slow

ROWS = 100_000
CHUNK_ROWS = 2500
TENANT = "acme"
FILE = "big.persons"
SPORTS = ("football", "hockey|golf", "", "soccer|basketball|football")
# Volatile by nature: which import, which tenant, when, and the names built from the id.
VOLATILE = ("import_id", "tenant", "received_at", "started_at", "finished_at", "reports")
SIGTERM_LIMIT = 10.0  # SPEC 5


# -- the file and how results are compared -----------------------------------------------


def persons_rows(rows: int) -> Iterator[str]:
    """The data lines: creates, updates of earlier persons, and failing rows.

    Every 50th row repeats the external id (and MDN) of row i-37: an update.
    Every 89th row takes the MDN of row i-1: MobilePhoneAlreadyAssigned.
    Every 97th row has a malformed MDN: InvalidMDNFormat. Where these meet,
    an update brings another MDN: MdnChangeNotAllowed.
    """
    for i in range(1, rows + 1):
        ext, mdn = f"e{i}", f"+1{2000000000 + i}"
        if i % 50 == 0:
            ext, mdn = f"e{i - 37}", f"+1{2000000000 + i - 37}"
        if i % 89 == 0:
            mdn = f"+1{2000000000 + i - 1}"
        if i % 97 == 0:
            mdn = f"12{i}"
        yield f"{ext},{mdn},n{i % 1000},{SPORTS[i % 4]}\n"


def write_persons_file(path: Path, rows: int) -> Path:
    """A deterministic ``.persons`` file of ``rows`` data rows, written aside then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name("." + path.name + ".tmp")
    with temp.open("w", encoding="ascii") as out:
        out.write("external_person_id,mdn,first_name,sport_interests\n")
        out.writelines(persons_rows(rows))
    os.replace(temp, path)
    return path


def normalised_export(text: str) -> list[list[str]]:
    """An export with person_id replaced by its rank and person_key dropped.

    Ids come from a sequence (rolled-back chunks leave gaps on PostgreSQL) and
    keys are random: only their order and the rest of each row are the result.
    """
    rows = list(csv.reader(io.StringIO(text)))
    header, body = rows[0], rows[1:]
    assert ["person_id", "person_key"] == header[:2]
    ids = [int(row[0]) for row in body]
    assert sorted(ids) == ids, "export is not ordered by person_id"
    return [["rank", *header[2:]]] + [[str(rank), *row[2:]] for rank, row in enumerate(body, 1)]


def comparable_summary(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k not in VOLATILE}


def published(outbox: Path, pattern: str) -> list[Path]:
    return sorted(outbox.glob(pattern))


def site(
    home: Path,
    db_url: str,
    *,
    tenants: tuple[str, ...] = (TENANT,),
    extra: dict[str, dict[str, Any]] | None = None,
    keys: tuple[KeySpec, ...] = (),
) -> Daemon:
    """A personsd home on ``db_url`` with tenants and their fields (set up in process)."""
    home.mkdir(parents=True, exist_ok=True)
    config: dict[str, dict[str, Any]] = {
        "sftp": {"enabled": False},
        "import": {"chunk_rows": CHUNK_ROWS},
    }
    for name, values in (extra or {}).items():
        config.setdefault(name, {}).update(values)
    daemon = Daemon(home=home, db_url=db_url, port=free_port(), extra=config)
    daemon.write_config()
    seed_tenants(db_url, tenants, keys)
    for tenant in tenants:
        for folder in (daemon.inbox(tenant), daemon.outbox(tenant)):
            folder.mkdir(parents=True)
    return daemon


def start(daemon: Daemon) -> None:
    """Start (or restart) the daemon and wait for *this* process's ``daemon.started``.

    The log is appended across restarts, so ``Daemon.start`` alone would see
    the previous process's event and return at once.
    """
    daemon.start()
    assert daemon.proc is not None
    pid = daemon.proc.pid
    wait_for(
        lambda: daemon.has_event("daemon.started", pid=pid),
        timeout=60,
        what=f"daemon.started of pid {pid}",
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class Result:
    """What an import left: its summary, its errors.csv and the tenant's export."""

    summary: dict[str, Any]
    errors_csv: bytes
    export: list[list[str]]


class Uninterrupted:
    """``personsd import`` of the file in a home and SQLite database of its own.

    It starts with the module and runs alongside the first crash run; every
    test of the module compares against its one result.
    """

    def __init__(self, folder: Path) -> None:
        self.source = write_persons_file(folder / FILE, ROWS)
        self.site = site(folder / "home", f"sqlite:///{folder / 'reference.db'}")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "personsd",
                "--config",
                str(self.site.config),
                "import",
                str(self.source),
                "--tenant",
                TENANT,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._result: Result | None = None

    def result(self) -> Result:
        if self._result is None:
            out, err = self.proc.communicate(timeout=300)
            assert 0 == self.proc.returncode, err
            summary = dict(json.loads(out))
            errors = (self.site.outbox(TENANT) / summary["reports"]["errors"]).read_bytes()
            self._result = Result(
                summary=summary,
                errors_csv=errors,
                export=normalised_export(self.site.export(TENANT)),
            )
        return self._result

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class SharedReference:
    """The uninterrupted result, computed once per test session across xdist workers.

    The first worker to take the lock runs the reference import (alongside its
    own crash run) and leaves the result on disk; the others read it there.
    """

    def __init__(self, shared: Path, folder: Path) -> None:
        shared.mkdir(parents=True, exist_ok=True)
        self.path = shared / "result.json"
        self.lock = (shared / "lock").open("a+")
        self.mine: Uninterrupted | None = None
        # Deterministic, so each worker writes its own copy to feed its daemon.
        self.source = write_persons_file(folder / "source" / FILE, ROWS)
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # another worker is computing it
        if not self.path.exists():
            self.mine = Uninterrupted(folder)
        else:
            fcntl.flock(self.lock, fcntl.LOCK_UN)

    def result(self) -> Result:
        if self.mine is not None:
            result = self.mine.result()
            self.path.write_text(
                json.dumps(
                    {
                        "summary": result.summary,
                        "errors_csv": result.errors_csv.decode(),
                        "export": result.export,
                    }
                )
            )
            fcntl.flock(self.lock, fcntl.LOCK_UN)
            return result
        fcntl.flock(self.lock, fcntl.LOCK_EX)  # waits for the worker computing it
        fcntl.flock(self.lock, fcntl.LOCK_UN)
        data = json.loads(self.path.read_text())
        return Result(
            summary=data["summary"], errors_csv=data["errors_csv"].encode(), export=data["export"]
        )

    def close(self) -> None:
        if self.mine is not None:
            self.mine.close()
        self.lock.close()


@contextmanager
def shared_reference(
    tmp_path_factory: pytest.TempPathFactory, name: str
) -> Iterator[SharedReference]:
    """The session's :class:`SharedReference`, with a folder ``name`` of this worker's."""
    # Under xdist the session's base directory is per worker and its parent is
    # the session's; without xdist the base directory is the session's.
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "crash-ref"
    reference = SharedReference(shared, tmp_path_factory.mktemp(name))
    try:
        yield reference
    finally:
        reference.close()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedReference]:
    with shared_reference(tmp_path_factory, "uninterrupted") as reference:
        yield reference


# -- watching the import from outside ------------------------------------------------------


@dataclass
class Watch:
    """Reads the daemon's imports table directly (what ``imports list`` shows)."""

    engine: Engine
    tenant: str

    def imports(self) -> list[ImportRecord]:
        with self.engine.connect() as conn:
            found = store_tenants.get_tenant(conn, self.tenant)
            assert found is not None
            return store_imports.list_imports(conn, found.id)

    def current(self) -> ImportRecord | None:
        found = self.imports()
        return found[-1] if found else None

    def rows_done(self) -> int:
        record = self.current()
        return 0 if record is None else record.rows_total

    def wait_rows(self, at_least: int, timeout: float = 120.0) -> None:
        wait_for(
            lambda: self.rows_done() >= at_least,
            timeout=timeout,
            interval=0.01,
            what=f"{at_least} rows committed",
        )


def kill_at_rows(daemon: Daemon, watch: Watch, at_least: int, *, into_chunk: float) -> int:
    """kill -9 once ``at_least`` rows are committed, then restart; the rows committed then.

    ``into_chunk`` is how far into the next chunk to kill, as a fraction of
    the time the chunk before took: 0 right after a commit, 0.5 about halfway
    through the next chunk (reading, validating or inside its transaction).
    """
    watch.wait_rows(at_least - CHUNK_ROWS)
    before = time.monotonic()
    watch.wait_rows(at_least)
    time.sleep((time.monotonic() - before) * into_chunk)
    daemon.kill()
    done = watch.rows_done()
    start(daemon)
    return done


# -- the test ------------------------------------------------------------------------------


@pytest.mark.timeout(400)
def test_kill_and_sigterm_mid_import_end_like_an_uninterrupted_run(
    db_url: str, tmp_path: Path, uninterrupted: SharedReference
) -> None:
    """SPEC 5: kill -9 at any point or SIGTERM mid-import ends like an uninterrupted run."""
    daemon = site(tmp_path, db_url)
    watch = Watch(engine=db.connect(db_url), tenant=TENANT)
    try:
        kills = crash_through_import(daemon, watch, uninterrupted.source)
        summary = daemon.summary(TENANT, FILE, timeout=180)
        assert 0 == daemon.stop()
        export = normalised_export(daemon.export(TENANT))
        imports = watch.imports()
    finally:
        if daemon.proc is not None:
            daemon.kill()
        watch.engine.dispose()
    expected = uninterrupted.result()

    print(f"kill -9 points (committed rows at the kill): {kills}")
    mid = [rows for point, rows in kills if point.startswith("rows")]
    assert all(0 < rows < ROWS for rows in mid), f"a mid-import kill missed its import: {kills}"

    assert "completed" == summary["status"]
    assert ROWS == summary["rows"]["total"]
    assert comparable_summary(expected.summary) == comparable_summary(summary)
    assert [summary["import_id"]] == [record.id for record in imports], "queued more than once"

    outbox = daemon.outbox(TENANT)
    assert [f"{FILE}.{summary['import_id']}.{kind}" for kind in ("errors.csv", "summary.json")] == [
        p.name for p in sorted(outbox.iterdir())
    ], "missing, repeated or partial report"
    assert expected.errors_csv == (outbox / summary["reports"]["errors"]).read_bytes()
    assert expected.export == export
    assert daemon.has_event("import.resumed", import_id=summary["import_id"])
    assert daemon.has_event("daemon.stopping")


def crash_through_import(daemon: Daemon, watch: Watch, source: Path) -> list[tuple[str, int]]:
    """Drive the daemon's import through every kill point; returns (point, rows) per kill."""
    kills: list[tuple[str, int]] = []
    start(daemon)
    inbox_file = daemon.inbox(TENANT) / FILE
    staged = daemon.inbox(TENANT) / f".{FILE}.uploading"
    shutil.copyfile(source, staged)
    os.replace(staged, inbox_file)

    # Right after the claim: the file has left the inbox; its record may not exist yet.
    wait_for(lambda: not inbox_file.exists(), timeout=30, interval=0.001, what="the claim")
    daemon.kill()
    kills.append(("claim" if watch.current() is None else "claim+record", watch.rows_done()))
    start(daemon)

    # Mid-import: wherever the kill lands, inside a chunk or between two.
    kills.append(
        ("rows 15%, at a commit", kill_at_rows(daemon, watch, ROWS * 15 // 100, into_chunk=0.0))
    )

    # SIGTERM: the current chunk finishes or rolls back; exit 0 within 10 s.
    watch.wait_rows(ROWS * 40 // 100)
    code, elapsed = terminate(daemon)
    print(f"SIGTERM at {watch.rows_done()} rows: exit {code} after {elapsed:.2f}s")
    assert 0 == code
    assert elapsed < SIGTERM_LIMIT
    assert "running" == (watch.current() or pytest.fail("no import")).status
    start(daemon)

    kills.append(
        ("rows 70%, inside a chunk", kill_at_rows(daemon, watch, ROWS * 70 // 100, into_chunk=0.6))
    )

    # As the last chunk commits: between checkpoint, completion and publication.
    watch.wait_rows(ROWS)
    daemon.kill()
    record = watch.current()
    done = "summary" if published(daemon.outbox(TENANT), "*.summary.json") else "no summary"
    kills.append((f"end ({record.status if record else '?'}, {done})", watch.rows_done()))
    start(daemon)
    return kills


def terminate(daemon: Daemon) -> tuple[int, float]:
    """One SIGTERM (a second one means "exit now"); the exit code and seconds it took."""
    assert daemon.proc is not None
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    code = daemon.proc.wait(timeout=30)
    elapsed = time.monotonic() - started
    daemon.proc = None
    return code, elapsed


def test_a_file_being_claimed_is_not_recovered_a_second_time(tmp_path: Path) -> None:
    """SPEC 5 (none applied twice): recovery running during a claim does not queue it again.

    ``Intake.claim`` renames the upload into ``claimed/``, hashes it and then
    records the import; the daemon's periodic ``Intake.recover`` queues every
    claimed file without a record. Here the claim's insert waits for the
    database's write lock (held by the test) while recovery runs: recovery
    sees a claimed file with no record and queues it too. Hashing a large
    upload takes long enough for the same to happen without any lock.
    """
    url = f"sqlite:///{tmp_path / 'persons.db'}"
    cfg = var_config(tmp_path, url)
    engine = db.connect(url)
    db.upgrade(engine)
    with write_tx(engine) as conn:
        store_tenants.add_tenant(conn, TENANT)
    upload = cfg.inbox(TENANT) / "night.persons"
    upload.parent.mkdir(parents=True)
    upload.write_text("external_person_id\ne1\n")
    stat = upload.stat()
    ready = ReadyFile(
        tenant=TENANT,
        path=upload,
        completed_at=time.time(),
        size=stat.st_size,
        mtime_ns=stat.st_mtime_ns,
    )
    intake = Intake(engine=engine, cfg=cfg, on_queued=lambda: None)

    lock = sqlite3.connect(tmp_path / "persons.db", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    claim = threading.Thread(target=intake.claim, args=(ready,))
    claim.start()
    wait_for(lambda: not upload.exists(), what="the rename out of the inbox")
    recovery = threading.Thread(target=intake.recover)
    recovery.start()
    time.sleep(1.0)  # recovery has listed the records and waits for the lock too
    lock.execute("ROLLBACK")
    lock.close()
    claim.join(30)
    recovery.join(30)
    with engine.connect() as conn:
        queued = [record.file_name for record in store_imports.list_imports(conn)]
    engine.dispose()
    assert ["night.persons"] == queued
