"""SPEC 5 crash safety of ``personsd run``: kill -9 and SIGTERM in the middle of a big import.

One 200,000-row file is imported by the daemon while it is killed at several
points (right after the claim, at about 10 %, 60 % and 90 % of the rows, and
as the last chunk commits) and stopped once with SIGTERM; the outcome is
compared with an uninterrupted ``personsd import`` of the same file into a
database of its own, run at the same time. The two runs share no database, so
neither can see or take over the other's import.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine

from conftest import PG_URL, _pg_conninfo
from daemon_helpers import Daemon, free_port, wait_for
from personsd.store import db
from personsd.store import imports as store_imports
from personsd.store import tenants as store_tenants
from personsd.store.imports import ImportRecord

ROWS = 200_000
CHUNK_ROWS = 5000
TENANT = "acme"
FILE = "big.persons"
FIELDS = (
    ("first_name", "string", None),
    ("sport_interests", "multi_select", "football,hockey,soccer,golf,basketball"),
)
SPORTS = ("football", "hockey|golf", "", "soccer|basketball|football")
# Volatile by nature: which import, which tenant, when, and the names built from the id.
VOLATILE = ("import_id", "tenant", "received_at", "started_at", "finished_at", "reports")
SIGTERM_LIMIT = 10.0  # SPEC 5


# -- the file and how results are compared -----------------------------------------------

def persons_rows(rows: int) -> Iterator[str]:
    """The data lines: creates, updates of earlier persons, and three kinds of failing row.

    Every 50th row repeats the external id (and MDN) of row i-37: an update.
    Every 89th row takes the MDN of row i-1: MobilePhoneAlreadyAssigned.
    Every 97th row has a malformed MDN: InvalidMDNFormat.
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


@contextmanager
def sibling_url(db_url: str, folder: Path) -> Iterator[str]:
    """A second, empty database of the same kind as ``db_url`` (SQLite file or PG schema)."""
    if db_url.startswith("sqlite"):
        yield f"sqlite:///{folder / 'reference.db'}"
        return
    schema = "t_" + uuid.uuid4().hex[:16]
    with psycopg.connect(_pg_conninfo(PG_URL), autocommit=True) as conn:
        conn.execute(f'create schema "{schema}"')
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(_pg_conninfo(PG_URL), autocommit=True) as conn:
            conn.execute(f'drop schema "{schema}" cascade')


def site(home: Path, db_url: str, **extra: dict[str, Any]) -> Daemon:
    home.mkdir(parents=True, exist_ok=True)
    config: dict[str, dict[str, Any]] = {
        "sftp": {"enabled": False},
        "import": {"chunk_rows": CHUNK_ROWS},
    }
    for name, values in extra.items():
        config.setdefault(name, {}).update(values)
    daemon = Daemon(home=home, db_url=db_url, port=free_port(), extra=config)
    daemon.write_config()
    daemon.add_tenant(TENANT, fields=FIELDS)
    return daemon


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
        wait_for(lambda: self.rows_done() >= at_least, timeout=timeout, interval=0.01,
                 what=f"{at_least} rows committed")


def kill_at_rows(daemon: Daemon, watch: Watch, at_least: int) -> int:
    """Wait for ``at_least`` committed rows, kill -9, restart; the rows committed at the kill."""
    watch.wait_rows(at_least)
    daemon.kill()
    done = watch.rows_done()
    daemon.start()
    return done


# -- the test ------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(400)
def test_kill_and_sigterm_mid_import_end_like_an_uninterrupted_run(
    db_url: str, tmp_path: Path
) -> None:
    """SPEC 5: kill -9 at any point or SIGTERM mid-import ends like an uninterrupted run."""
    source = write_persons_file(tmp_path / FILE, ROWS)
    with sibling_url(db_url, tmp_path) as reference_url:
        reference = site(tmp_path / "reference", reference_url)
        daemon = site(tmp_path / "crash", db_url)
        # The uninterrupted run goes on alongside, in its own database.
        uninterrupted = subprocess.Popen(
            [sys.executable, "-m", "personsd", "--config", str(reference.config),
             "import", str(source), "--tenant", TENANT],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        watch = Watch(engine=db.connect(db_url), tenant=TENANT)
        try:
            kills = crash_through_import(daemon, watch, source)
            summary = daemon.summary(TENANT, FILE, timeout=180)
            out, err = uninterrupted.communicate(timeout=180)
            assert 0 == uninterrupted.returncode, err
            assert 0 == daemon.stop()
            crash_export, reference_export = daemon.export(TENANT), reference.export(TENANT)
            imports = watch.imports()
        finally:
            if daemon.proc is not None:
                daemon.kill()
            watch.engine.dispose()

    print(f"kills (committed rows at kill -9): {kills}")
    mid = [rows for point, rows in kills if point.startswith("rows")]
    assert all(0 < rows < ROWS for rows in mid), f"a mid-import kill missed its import: {kills}"

    expected = json_of(out)
    assert "completed" == summary["status"]
    assert comparable_summary(expected) == comparable_summary(summary)
    assert ROWS == summary["rows"]["total"]
    assert 1 == len(imports), "the file was queued more than once"
    assert summary["import_id"] == imports[0].id

    outbox, ref_outbox = daemon.outbox(TENANT), reference.outbox(TENANT)
    assert [f"{FILE}.{imports[0].id}.errors.csv"] == [
        p.name for p in published(outbox, f"{FILE}.*.errors.csv")]
    assert [] == published(outbox, "*.retry.persons")
    assert [] == published(ref_outbox, "*.retry.persons")
    assert [p.name for p in published(outbox, "*.summary.json")] == [
        f"{FILE}.{imports[0].id}.summary.json"]
    ref_errors = (ref_outbox / expected["reports"]["errors"]).read_bytes()
    assert ref_errors == (outbox / summary["reports"]["errors"]).read_bytes()

    assert normalised_export(reference_export) == normalised_export(crash_export)
    assert daemon.has_event("import.resumed", import_id=imports[0].id)
    assert daemon.has_event("daemon.stopping")


def crash_through_import(daemon: Daemon, watch: Watch, source: Path) -> list[tuple[str, int]]:
    """Drive the daemon's import through every kill point; returns (point, rows) per kill."""
    kills: list[tuple[str, int]] = []
    daemon.start()
    inbox_file = daemon.inbox(TENANT) / FILE
    staged = daemon.inbox(TENANT) / f".{FILE}.uploading"
    staged.write_bytes(source.read_bytes())
    os.replace(staged, inbox_file)

    # 1. Right after the claim: the file has left the inbox; its record may not exist yet.
    wait_for(lambda: not inbox_file.exists(), timeout=30, interval=0.001, what="the claim")
    daemon.kill()
    kills.append(("claim" if watch.current() is None else "claim+record", watch.rows_done()))
    daemon.start()

    # 2. Mid-import, at chunk boundaries or inside a chunk, wherever the kill lands.
    kills.append(("rows~10%", kill_at_rows(daemon, watch, ROWS // 10)))

    # 3. SIGTERM: the current chunk finishes or rolls back, exit 0 within 10 s.
    watch.wait_rows(ROWS * 35 // 100)
    code, elapsed = terminate(daemon)
    print(f"SIGTERM at {watch.rows_done()} rows: exit {code} after {elapsed:.2f}s")
    assert 0 == code
    assert elapsed < SIGTERM_LIMIT
    assert "running" == (watch.current() or pytest.fail("no import")).status
    daemon.start()

    kills.append(("rows~60%", kill_at_rows(daemon, watch, ROWS * 6 // 10)))
    kills.append(("rows~90%", kill_at_rows(daemon, watch, ROWS * 9 // 10)))

    # 4. As the last chunk commits: between checkpoint, completion and publication.
    watch.wait_rows(ROWS)
    daemon.kill()
    record = watch.current()
    done = "summary" if published(daemon.outbox(TENANT), "*.summary.json") else "no summary"
    kills.append((f"end ({record.status if record else '?'}, {done})", watch.rows_done()))
    daemon.start()
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


def json_of(text: str) -> dict[str, Any]:
    return dict(json.loads(text))
