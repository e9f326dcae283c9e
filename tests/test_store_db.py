"""store.db: engines, transactions and migrations, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect

from personsd.store import db
from personsd.store import imports as store_imports
from personsd.store.models import metadata

TABLES = {
    "alembic_version",
    "tenants",
    "tenant_keys",
    "custom_fields",
    "persons",
    "imports",
    "sftp_bans",
    "db_copies",
    "deliveries",
    "validation_persons",
}


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """Unlike conftest's ``engine``, a database not migrated yet: these tests migrate it."""
    engine = db.connect(db_url)
    yield engine
    engine.dispose()


def test_upgrade_creates_schema_at_head(engine: Engine) -> None:
    """Migrations create every table and record the head revision."""
    assert db.current_revision(engine) is None
    db.upgrade(engine)
    assert TABLES == set(inspect(engine).get_table_names())
    assert db.head_revision() == db.current_revision(engine)


def test_upgrade_is_idempotent(engine: Engine) -> None:
    """Upgrading an up-to-date database changes nothing and does not fail."""
    db.upgrade(engine)
    db.upgrade(engine)
    assert db.HEAD_REVISION == db.current_revision(engine)
    assert TABLES == set(inspect(engine).get_table_names())


def test_head_revision_constant_is_alembics_head() -> None:
    """db.HEAD_REVISION, which spares alembic's import, names the newest migration."""
    assert db.head_revision() == db.HEAD_REVISION


def test_a_database_at_head_is_opened_without_alembic(db_url: str) -> None:
    """A CLI start against an up-to-date database does not import alembic."""
    engine = db.connect(db_url)
    try:
        db.upgrade(engine)
    finally:
        engine.dispose()
    script = (
        "import sys; from personsd.store import db; e = db.connect(sys.argv[1]); "
        "db.upgrade(e); print(db.current_revision(e) if 'alembic' in sys.modules "
        "else 'no alembic')"
    )
    checked = subprocess.run(
        [sys.executable, "-c", script, db_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "no alembic" == checked.stdout.strip()


def test_a_database_behind_head_is_upgraded_through_alembic(engine: Engine) -> None:
    """The fast check only skips alembic at head: an empty database still gets every table."""
    assert db._stored_revision(engine) is None
    db.upgrade(engine)
    assert db.HEAD_REVISION == db._stored_revision(engine)
    assert TABLES == set(inspect(engine).get_table_names())


def _migrate_to(engine: Engine, revision: str, *, imports: int = 0) -> None:
    """``engine``'s database at ``revision`` (up or down), then ``imports`` imports of acme
    recorded with the columns of 0001."""
    from alembic import command

    move = command.upgrade if db._stored_revision(engine) is None else command.downgrade
    with db.write_tx(engine) as conn:
        move(db._alembic_config(conn), revision)
        if not imports:
            return
        conn.exec_driver_sql("INSERT INTO tenants (name, created_at) VALUES ('acme', '2026-01-01')")
        for _ in range(imports):
            conn.exec_driver_sql(
                "INSERT INTO imports (tenant_id, file_name, sha256, bytes, status, source,"
                " work_path, attempts, received_at, next_row, rows_total, rows_succeeded,"
                " rows_failed, rows_created, rows_updated, error_counts, errors_bytes,"
                " retry_bytes, retry_rows, reports_published) SELECT id, 'a.persons', 'x', 0,"
                " 'queued', 'cli', '/a', 0, '2026-01-01', 0, 0, 0, 0, 0, 0, '{}', 0, 0, 0, false"
                " FROM tenants"
            )


def test_imports_recorded_before_0002_are_imports(engine: Engine) -> None:
    """Migration 0002 gives every import made before it the mode import."""
    _migrate_to(engine, "0001", imports=1)
    db.upgrade(engine)
    with engine.connect() as conn:
        assert ["import"] == list(conn.exec_driver_sql("SELECT mode FROM imports").scalars())


def test_0009_drops_heartbeat_at_keeping_imports_and_their_ids(engine: Engine) -> None:
    """Migration 0009 drops the unread imports.heartbeat_at; rows stay, no id is given again;
    its downgrade brings the column back, nullable and empty."""
    _migrate_to(engine, "0002", imports=2)
    with db.write_tx(engine) as conn:
        conn.exec_driver_sql("DELETE FROM imports WHERE id = 2")  # the top id stays used
    db.upgrade(engine)
    assert "heartbeat_at" not in {c["name"] for c in inspect(engine).get_columns("imports")}
    with db.write_tx(engine) as conn:
        tenant = conn.exec_driver_sql("SELECT id FROM tenants").scalar_one()
        fresh = store_imports.create(
            conn, tenant_id=tenant, file_name="b.persons", sha256="y", bytes=0, source="cli",
            work_path="/b", received_at=datetime(2026, 12, 7, tzinfo=UTC),
        )  # fmt: skip
    assert 3 == fresh
    _migrate_to(engine, "0002")
    columns = {c["name"]: c for c in inspect(engine).get_columns("imports")}
    assert "0002" == db.current_revision(engine)
    assert columns["heartbeat_at"]["nullable"]
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT id, heartbeat_at FROM imports ORDER BY id").all()
    assert [(1, None), (3, None)] == [tuple(row) for row in rows]


def test_sqlite_tables_keep_autoincrement_through_every_migration(sqlite_url: str) -> None:
    """Ids are never reused on SQLite: no migration rebuilds a table without AUTOINCREMENT."""
    engine = db.connect(sqlite_url)
    try:
        db.upgrade(engine)
        with engine.connect() as conn:
            sql = dict(conn.exec_driver_sql("SELECT name, sql FROM sqlite_master").all())
    finally:
        engine.dispose()
    declared = {
        table.name for table in metadata.sorted_tables if table.kwargs.get("sqlite_autoincrement")
    }
    assert {"imports", "persons", "tenants"} <= declared
    assert set() == {name for name in declared if "AUTOINCREMENT" not in sql[name].upper()}


def test_a_frozen_session_loses_its_transaction_after_the_lease(pg_url: str) -> None:
    """SPEC 12: a daemon's PostgreSQL session idle in a transaction past its lease is ended,
    so a frozen instance's locks (the claim lock) do not hold up the others."""
    import time

    from sqlalchemy.exc import DBAPIError

    engine = db.connect(pg_url, idle_in_transaction_seconds=1)
    other = db.connect(pg_url)
    try:
        with engine.connect() as conn:
            assert "1s" == conn.exec_driver_sql("SHOW idle_in_transaction_session_timeout").scalar()
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(4242)")
            time.sleep(1.5)  # frozen, mid-transaction
            with other.connect() as free:
                assert free.exec_driver_sql("SELECT pg_try_advisory_xact_lock(4242)").scalar()
            with pytest.raises(DBAPIError):
                conn.exec_driver_sql("SELECT 1")
    finally:
        engine.dispose()
        other.dispose()


def test_migration_matches_models(engine: Engine) -> None:
    """The hand-written migration builds exactly the schema the models describe."""
    db.upgrade(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert [] == compare_metadata(context, metadata)


def test_postgresql_tables_land_in_search_path_schema(pg_url: str) -> None:
    """With options=-csearch_path the tables, alembic's included, go to that schema."""
    schema = pg_url.rsplit("%3D", 1)[1]
    engine = db.connect(pg_url)
    try:
        db.upgrade(engine)
        with engine.connect() as conn:
            found = conn.exec_driver_sql(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %(s)s",
                {"s": schema},
            ).scalars()
            assert TABLES == set(found)
    finally:
        engine.dispose()


def test_sqlite_pragmas_and_parent_directory(tmp_path: Path) -> None:
    """SQLite: parent directory created, WAL, foreign keys on, synchronous NORMAL."""
    path = tmp_path / "deep" / "er" / "persons.db"
    engine = db.connect(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            pragmas = tuple(
                conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "foreign_keys", "synchronous", "busy_timeout")
            )
        assert ("wal", 1, 1, db.SQLITE_BUSY_TIMEOUT_MS) == pragmas
        assert path.exists()
    finally:
        engine.dispose()


def test_sqlite_write_tx_holds_write_lock_from_start(sqlite_url: str) -> None:
    """SQLite write transactions begin IMMEDIATE: the write lock is held before any write."""
    engine = db.connect(sqlite_url)
    db.upgrade(engine)
    path = sqlite_url.removeprefix("sqlite:///")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        with db.write_tx(engine) as conn:
            conn.exec_driver_sql("SELECT count(*) FROM tenants").scalar()
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    finally:
        other.close()
        engine.dispose()


def test_sqlite_read_transaction_takes_no_write_lock(sqlite_url: str) -> None:
    """SQLite plain transactions are deferred: a reader never blocks a writer."""
    engine = db.connect(sqlite_url)
    db.upgrade(engine)
    other = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), timeout=0, isolation_level=None)
    try:
        with engine.connect() as conn, conn.begin():
            conn.exec_driver_sql("SELECT count(*) FROM tenants").scalar()
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
    finally:
        other.close()
        engine.dispose()


def test_write_tx_commits_or_rolls_back(engine: Engine) -> None:
    """write_tx commits on normal exit and rolls back when the block raises."""
    db.upgrade(engine)
    insert = "INSERT INTO tenants (name, created_at) VALUES ('{}', CURRENT_TIMESTAMP)"
    with db.write_tx(engine) as conn:
        conn.exec_driver_sql(insert.format("kept"))
    with pytest.raises(RuntimeError), db.write_tx(engine) as conn:
        conn.exec_driver_sql(insert.format("dropped"))
        raise RuntimeError("boom")
    with engine.connect() as conn:
        names = conn.exec_driver_sql("SELECT name FROM tenants").scalars().all()
    assert ["kept"] == names
