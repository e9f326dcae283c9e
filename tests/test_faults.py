"""SPEC 5 failure kinds: decided by SQLSTATE, SQLite result codes and errno, on real errors."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from fault_helpers import closed_port, fill, tmpfs
from personsd import reports
from personsd.errors import FileRejected, InternalError, TransientError
from personsd.store import db
from personsd.store.faults import Kind, classify, reason


def _pg_error(pg_url: str, sql: str) -> DBAPIError:
    engine = db.connect(pg_url)
    try:
        with engine.connect() as conn, pytest.raises(DBAPIError) as caught:
            conn.execute(text(sql))
        return caught.value
    finally:
        engine.dispose()


# PostgreSQL's condition names and their SQLSTATEs, by the kind SPEC 5 gives them.
SQLSTATES = {
    Kind.ENVIRONMENT: {
        "disk_full": "53100",
        "out_of_memory": "53200",
        "too_many_connections": "53300",
        "connection_failure": "08006",
        "admin_shutdown": "57P01",
        "cannot_connect_now": "57P03",
        "serialization_failure": "40001",
        "deadlock_detected": "40P01",
        "lock_not_available": "55P03",
    },
    Kind.INTERNAL: {
        "unique_violation": "23505",
        "undefined_column": "42703",
        "query_canceled": "57014",
        "raise_exception": "P0001",
    },
}


@pytest.mark.parametrize(
    ("sqlstate", "kind"),
    [
        pytest.param(sqlstate, kind, id=f"{sqlstate}-{name}")
        for kind, conditions in SQLSTATES.items()
        for name, sqlstate in conditions.items()
    ],
)
def test_postgresql_errors_are_classified_by_sqlstate(
    pg_url: str, sqlstate: str, kind: Kind
) -> None:
    """A real PostgreSQL error is judged by its SQLSTATE, whatever its message says."""
    error = _pg_error(
        pg_url,
        # The message names a connection on purpose: words must not matter.
        f"DO $$ BEGIN RAISE EXCEPTION 'could not connect: timeout' USING ERRCODE = '{sqlstate}';"
        " END $$",
    )
    assert sqlstate == getattr(error.orig, "sqlstate", None)
    assert kind == classify(error)


def test_a_real_syntax_error_is_internal(pg_url: str) -> None:
    """A bug in our SQL (42601) spends an attempt: it is internal."""
    assert Kind.INTERNAL == classify(_pg_error(pg_url, "SELEC 1"))


def test_a_terminated_backend_is_environment(pg_url: str) -> None:
    """pg_terminate_backend (57P01, or the connection simply gone) waits: environment."""
    engine = db.connect(pg_url)
    killer = db.connect(pg_url)
    try:
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            with killer.connect() as other:
                other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            with pytest.raises(DBAPIError) as caught:
                conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()
        killer.dispose()
    assert Kind.ENVIRONMENT == classify(caught.value)


def test_connection_refused_is_environment() -> None:
    """A PostgreSQL that is not listening (no SQLSTATE at all) is waited for."""
    engine = create_engine(
        f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/test",
        connect_args={"connect_timeout": 2},
    )
    try:
        with pytest.raises(DBAPIError) as caught, engine.connect():
            pass
    finally:
        engine.dispose()
    assert (Kind.ENVIRONMENT, "database unreachable") == (
        classify(caught.value),
        reason(caught.value),
    )


def test_sqlite_database_or_disk_full_is_environment(tmp_path: Path) -> None:
    """SQLITE_FULL (max_page_count reached), raw and wrapped by SQLAlchemy, waits."""
    engine = db.connect(f"sqlite:///{tmp_path / 'full.db'}")
    try:
        with db.write_tx(engine) as conn:
            conn.exec_driver_sql("CREATE TABLE blobs (data BLOB)")
        with pytest.raises(DBAPIError) as caught, db.write_tx(engine) as conn:
            conn.exec_driver_sql("PRAGMA max_page_count = 8")
            conn.exec_driver_sql("INSERT INTO blobs VALUES (zeroblob(1000000))")
    finally:
        engine.dispose()
    orig = caught.value.orig
    assert sqlite3.SQLITE_FULL == getattr(orig, "sqlite_errorcode", None)
    assert (Kind.ENVIRONMENT, Kind.ENVIRONMENT) == (classify(caught.value), classify(orig))
    assert "sqlite SQLITE_FULL" == reason(caught.value)


def test_sqlite_busy_is_environment(tmp_path: Path) -> None:
    """SQLITE_BUSY (another connection holds the write lock) waits."""
    path = tmp_path / "busy.db"
    holder = sqlite3.connect(path, isolation_level=None)
    waiter = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        holder.execute("CREATE TABLE t (x)")
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError) as caught:
            waiter.execute("BEGIN IMMEDIATE")
    finally:
        holder.close()
        waiter.close()
    assert sqlite3.SQLITE_BUSY == caught.value.sqlite_errorcode
    assert Kind.ENVIRONMENT == classify(caught.value)


def test_sqlite_bugs_are_internal(tmp_path: Path) -> None:
    """SQLITE_ERROR (no such table) and a constraint violation spend an attempt."""
    con = sqlite3.connect(tmp_path / "bug.db")
    try:
        con.execute("CREATE TABLE t (x UNIQUE)")
        con.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(sqlite3.OperationalError) as missing:
            con.execute("SELECT * FROM nope")
        with pytest.raises(sqlite3.IntegrityError) as twice:
            con.execute("INSERT INTO t VALUES (1)")
    finally:
        con.close()
    assert (Kind.INTERNAL, Kind.INTERNAL) == (classify(missing.value), classify(twice.value))


def test_enospc_on_a_full_disk_is_environment(tmp_path: Path) -> None:
    """A real ENOSPC (a full tmpfs), raw and as publish's DiskFull, waits."""
    with tmpfs(tmp_path / "small", "256k") as small:
        fill(small)
        with pytest.raises(OSError) as raw, (small / "more").open("wb", buffering=0) as out:
            out.write(b"x" * 65536)
        outbox = small / "outbox"
        with pytest.raises(OSError) as published:
            outbox.mkdir()
            reports.publish(outbox, "report.csv", b"x" * 65536, scratch=small)
    assert errno.ENOSPC == raw.value.errno
    assert (Kind.ENVIRONMENT, "errno ENOSPC") == (classify(raw.value), reason(raw.value))
    assert Kind.ENVIRONMENT == classify(published.value)


@pytest.mark.parametrize("code", [errno.EDQUOT, errno.EMFILE, errno.ENFILE, errno.EIO])
def test_resource_errnos_are_environment(code: int) -> None:
    """Quota, descriptor exhaustion and I/O errors are the environment's."""
    assert Kind.ENVIRONMENT == classify(OSError(code, "x"))


def test_too_many_open_files_for_real_is_environment() -> None:
    """A real EMFILE (RLIMIT_NOFILE lowered in a child process) waits."""
    import subprocess
    import sys

    code = (
        "import resource, errno\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))\n"
        "from personsd.store.faults import classify\n"
        "fds = []\n"
        "try:\n"
        "    for _ in range(64): fds.append(open('/dev/null'))\n"
        "except OSError as exc:\n"
        "    print(exc.errno == errno.EMFILE, classify(exc))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "True environment" == done.stdout.strip(), done.stderr


def test_other_errors_are_internal_and_partner_data_is_partner() -> None:
    """EACCES, EISDIR, a ValueError, an InternalError: bugs; a rejected file: the partner's."""
    assert [Kind.INTERNAL] * 4 + [Kind.PARTNER] == [
        classify(OSError(errno.EACCES, "denied")),
        classify(IsADirectoryError(errno.EISDIR, "is a directory")),
        classify(ValueError("x")),
        classify(InternalError("x")),
        classify(FileRejected.format("bad header")),
    ]


def test_the_cause_and_context_chains_are_walked() -> None:
    """An ENOSPC behind another exception, raised from or during it, is still found."""

    def raised_from() -> None:
        try:
            raise OSError(errno.ENOSPC, "full")
        except OSError as exc:
            raise InternalError("while writing the report") from exc

    def raised_during() -> None:
        try:
            raise TransientError("lock timeout")
        except TransientError:
            raise KeyError("cleanup failed") from None

    with pytest.raises(InternalError) as first:
        raised_from()
    with pytest.raises(KeyError) as second:
        raised_during()
    # ``from None`` suppresses display only; the context is still the real cause.
    assert (Kind.ENVIRONMENT, Kind.ENVIRONMENT) == (
        classify(first.value),
        classify(second.value),
    )


def test_a_cyclic_chain_ends() -> None:
    """An exception whose context points back to itself is classified, not looped on."""
    one, two = ValueError("one"), ValueError("two")
    one.__context__, two.__context__ = two, one
    assert Kind.INTERNAL == classify(one)


def test_a_stop_is_a_signal_and_an_unknown_import_ours() -> None:
    """Interrupted (SIGTERM between chunks) is no failure of any kind; an import id the
    database lacks is internal inside the daemon, not an operator's mistake."""
    from personsd.errors import Interrupted, OperatorError, PersonsdError, UnknownImport
    from personsd.importer import Interrupted as FromImporter

    assert FromImporter is Interrupted
    assert issubclass(Interrupted, PersonsdError)
    assert not issubclass(Interrupted, InternalError)
    assert issubclass(UnknownImport, InternalError)
    assert not issubclass(UnknownImport, OperatorError)
