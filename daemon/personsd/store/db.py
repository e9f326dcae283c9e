"""Engines, transactions and schema migrations.

SQLite runs in WAL mode, so readers never wait for the writer. Transactions
opened through ``write_tx`` start with ``BEGIN IMMEDIATE``: the write lock is
taken at the start, so two writers queue on ``busy_timeout`` instead of one
failing with "database is locked" when it upgrades from reading to writing.
Every other transaction is a plain deferred ``BEGIN``: anything that writes
must go through ``write_tx``.

Several daemon instances may share one PostgreSQL database: migrations run
under an advisory lock, import claims lock rows (``store.imports``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
# The newest migration's revision (tests/test_store_db.py checks it against
# alembic's head). A database already there is known without importing
# alembic, a fifth of every CLI command's start-up.
HEAD_REVISION = "0009"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Arbitrary constant shared by every instance: serialises concurrent upgrades.
_MIGRATION_LOCK = 0x70657273_6F6E7364 & 0x7FFF_FFFF_FFFF_FFFF
_WRITE_OPTION = "personsd_write"


def connect(url: str, *, idle_in_transaction_seconds: float | None = None, **pool: Any) -> Engine:
    """An engine for ``url`` (``sqlite:///…`` or ``postgresql+psycopg://…``).

    ``pool``: ``create_engine`` pool options (``pool_size``, ``pool_timeout``…).
    ``idle_in_transaction_seconds`` (PostgreSQL; the daemon passes its lease):
    a session that sits that long in a transaction without a word (its
    process frozen: SIGSTOP, a paused VM) is ended by the server, so the
    locks it holds (the claim lock, an import's row) do not stop the other
    instances for longer than a lease.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **pool
        )
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    # An unreachable server must fail fast: the caller retries with backoff.
    connect_args: dict[str, object] = (
        {} if "connect_timeout" in parsed.query else {"connect_timeout": 10}
    )
    # No server-side prepared statements: a generic plan made while the persons
    # table was small (the first chunks of an initial load) would be kept for
    # the whole import, scanning the tenant instead of probing its indexes.
    connect_args["prepare_threshold"] = None
    engine = create_engine(parsed, connect_args=connect_args, **{"pool_pre_ping": True, **pool})
    if idle_in_transaction_seconds is not None:
        idle_ms = max(1000, int(idle_in_transaction_seconds * 1000))

        def _bound_idle(dbapi_connection: Any, _record: object) -> None:
            with dbapi_connection.cursor() as cursor:
                cursor.execute(f"SET idle_in_transaction_session_timeout = {idle_ms}")
            dbapi_connection.commit()

        event.listen(engine, "connect", _bound_idle)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: object) -> None:
    # pysqlite's own transaction handling would BEGIN (deferred) by itself and
    # COMMIT before DDL; we take over and emit BEGIN in _sqlite_on_begin.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        # 32 MiB of page cache instead of 2: the unique indexes of a large table
        # are hit in random order, and beyond the cache every probe is a read.
        cursor.execute("PRAGMA cache_size=-32768")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get(_WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


@contextmanager
def write_tx(engine: Engine) -> Iterator[Connection]:
    """A write transaction: committed on normal exit, rolled back on an exception."""
    with engine.connect() as conn:
        conn.execution_options(**{_WRITE_OPTION: True})
        with conn.begin():
            yield conn


def _alembic_config(conn: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    # Config values go through ConfigParser interpolation.
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    if conn is not None:
        config.attributes["connection"] = conn
    return config


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest revision; does nothing when it is there."""
    if _stored_revision(engine) == HEAD_REVISION:
        return
    from alembic import command

    with write_tx(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        command.upgrade(_alembic_config(conn), "head")


def _stored_revision(engine: Engine) -> str | None:
    """alembic's version row, read directly; None when there is none (or no table)."""
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
    except DBAPIError:
        return None  # no table yet (or anything odd): let alembic decide
    return str(rows[0][0]) if len(rows) == 1 else None


def current_revision(engine: Engine) -> str | None:
    """The schema revision of the database, None when it has none."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    """The newest revision the code knows."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def dialect_insert(
    conn: Connection, model: type[DeclarativeBase]
) -> postgresql.Insert | sqlite.Insert:
    """An INSERT for ``model`` that knows ON CONFLICT on both databases."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(model)
    return sqlite.insert(model)
