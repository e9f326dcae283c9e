"""``personsd db copy --to URL`` (SPEC 7): every table, with its ids, into an empty database.

Generic over the models' metadata: each table of ``models.metadata`` (so
also those added by later migrations) is copied in foreign-key order, in
batches ordered by primary key, each batch committed on its own. The target
is migrated first. A run that stops half-way (killed, the network gone) is
resumed by running the command again: each table continues after the
highest primary key the target already holds. A ``db_copies`` row in the
target says which source it is being filled from and whether that finished;
a target holding anything else is refused.

Afterwards the id counters (PostgreSQL sequences, SQLite's
``sqlite_sequence``) are set past the source's, never only past the highest
id copied: ids are never reused (``store.models``), not even those of rows
deleted at the top.

The source must not change meanwhile (stop the daemons): the row counts of
both sides are compared at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Connection, Engine, Table, func, insert, select, tuple_, update

from personsd.errors import OperatorError
from personsd.store import db
from personsd.store.models import DbCopyRow, metadata

BATCH_ROWS = 5000
# Our own bookkeeping in the target: never copied.
NOT_COPIED = frozenset({DbCopyRow.__tablename__})
# pg_try_advisory_lock's first key: one copy at a time into one PostgreSQL
# schema (the second key is the target schema's hash: copies into other
# schemas of the same database, e.g. parallel tests, do not exclude each other).
_COPY_LOCK = 0x64625F63  # "db_c"
_LOCK_ARGS = f"{_COPY_LOCK}, hashtext(current_schema())"


@dataclass(frozen=True, kw_only=True, slots=True)
class CopyReport:
    """What a run did: rows per table in the target, rows copied by this run, time spent."""

    tables: tuple[tuple[str, int], ...]
    copied: int
    resumed: bool
    seconds: float

    def __post_init__(self) -> None:
        if self.copied < 0 or self.seconds < 0:
            raise ValueError("copied and seconds must be >= 0")

    @property
    def rows(self) -> int:
        return sum(n for _, n in self.tables)


def display_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _same(source: Engine, target: Engine) -> bool:
    one, other = source.url, target.url
    if one.get_backend_name() == other.get_backend_name() == "sqlite":
        return bool(one.database and other.database) and (
            Path(one.database or "").resolve() == Path(other.database or "").resolve()
        )
    return display_url(source) == display_url(target)


def tables() -> list[Table]:
    """The tables copied, parents before children."""
    return [t for t in metadata.sorted_tables if t.name not in NOT_COPIED]


def _count(conn: Connection, table: Table) -> int:
    return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _after(pk: Sequence[Column[Any]], last: Sequence[Any]) -> Any:
    if len(pk) == 1:
        return pk[0] > last[0]
    return tuple_(*pk) > tuple_(*last)


def _last_key(conn: Connection, table: Table) -> tuple[Any, ...] | None:
    pk = list(table.primary_key.columns)
    row = conn.execute(select(*pk).order_by(*(c.desc() for c in pk)).limit(1)).first()
    return None if row is None else tuple(row)


def _start(source: Engine, target: Engine) -> bool:
    """Check the target is empty (or our unfinished copy) and mark it; whether resuming."""
    origin = display_url(source)
    with db.write_tx(target) as conn:
        marker = conn.execute(
            select(DbCopyRow.id, DbCopyRow.source, DbCopyRow.finished_at)
            .order_by(DbCopyRow.id.desc())
            .limit(1)
        ).first()
        if marker is not None and marker.finished_at is None and marker.source == origin:
            return True
        if marker is not None and marker.finished_at is not None:
            raise OperatorError(
                f"the target database already holds a finished copy of {marker.source}"
            )
        if marker is not None:
            raise OperatorError(
                f"the target database holds an unfinished copy of another database"
                f" ({marker.source}): empty it first"
            )
        filled = [(t.name, n) for t in tables() if (n := _count(conn, t))]
        if filled:
            listed = ", ".join(f"{name}: {n} rows" for name, n in filled)
            raise OperatorError(
                f"the target database is not empty ({listed}); db copy fills an empty one only"
            )
        conn.execute(insert(DbCopyRow).values(source=origin, started_at=datetime.now(UTC)))
        return False


def _write_batch(conn: Connection, table: Table, rows: Sequence[Any], use_copy: bool) -> None:
    if conn.dialect.name != "postgresql" or not use_copy:
        conn.execute(insert(table), [dict(r._mapping) for r in rows])
        return
    # COPY: about twice executemany's speed (docs/operations.md has the figures).
    from psycopg import sql

    columns = [c.name for c in table.columns]
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row(tuple(row))


def _copy_table(
    source: Engine,
    target: Engine,
    table: Table,
    batch_rows: int,
    on_rows: Callable[[str, int], None],
    use_copy: bool,
) -> int:
    pk = list(table.primary_key.columns)
    if not pk:
        raise OperatorError(f"table {table.name} has no primary key: cannot copy it in batches")
    with target.connect() as conn:
        last = _last_key(conn, table)
    if last is not None:
        with source.connect() as conn:  # what the target holds already counts as done
            on_rows(table.name, _count_upto(conn, table, pk, last))
    copied = 0
    while True:
        stmt = select(table).order_by(*pk).limit(batch_rows)
        if last is not None:
            stmt = stmt.where(_after(pk, last))
        with source.connect() as conn:
            rows = conn.execute(stmt).all()
        if not rows:
            return copied
        with db.write_tx(target) as conn:
            _write_batch(conn, table, rows, use_copy)
        last = tuple(getattr(rows[-1], c.name) for c in pk)
        copied += len(rows)
        on_rows(table.name, len(rows))


def _count_upto(conn: Connection, table: Table, pk: list[Column[Any]], last: Sequence[Any]) -> int:
    after = _after(pk, last)
    stmt = select(func.count()).select_from(table).where(~after)
    return int(conn.execute(stmt).scalar_one())


# -- id counters ------------------------------------------------------------------------


def _serial(table: Table) -> Column[Any] | None:
    """The column fed by a counter: a single integer primary key."""
    pk = list(table.primary_key.columns)
    if len(pk) != 1 or pk[0].type.python_type is not int or pk[0].autoincrement is False:
        return None
    return pk[0]


def _pg_sequence(conn: Connection, table: Table, column: Column[Any]) -> str | None:
    found = conn.exec_driver_sql(
        "SELECT pg_get_serial_sequence(%(t)s, %(c)s)", {"t": table.name, "c": column.name}
    ).scalar()
    return None if found is None else str(found)


def _counter(conn: Connection, table: Table, column: Column[Any]) -> int:
    """The highest id the source's counter has handed out for ``table`` (or holds)."""
    top = int(conn.execute(select(func.coalesce(func.max(column), 0))).scalar_one())
    if conn.dialect.name == "sqlite":
        seq = conn.exec_driver_sql(
            "SELECT seq FROM sqlite_sequence WHERE name = ?", (table.name,)
        ).scalar()
        return max(top, int(seq or 0))
    sequence = _pg_sequence(conn, table, column)
    if sequence is None:
        return top
    last, called = conn.exec_driver_sql(f"SELECT last_value, is_called FROM {sequence}").one()
    return max(top, int(last) if called else int(last) - 1)


def _set_counter(conn: Connection, table: Table, column: Column[Any], value: int) -> None:
    if conn.dialect.name == "postgresql":
        sequence = _pg_sequence(conn, table, column)
        if sequence is not None:
            conn.exec_driver_sql(
                "SELECT setval(%(s)s::regclass, %(v)s, %(called)s)",
                {"s": sequence, "v": max(value, 1), "called": value >= 1},
            )
        return
    if not table.dialect_options["sqlite"]["autoincrement"]:
        return  # ids are max + 1 there: nothing kept to set
    done = conn.exec_driver_sql(
        "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?", (value, table.name)
    ).rowcount
    if not done:
        conn.exec_driver_sql(
            "INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table.name, value)
        )


def _copy_counters(source: Engine, target: Engine) -> None:
    with source.connect() as src, db.write_tx(target) as dst:
        for table in tables():
            column = _serial(table)
            if column is not None:
                _set_counter(dst, table, column, _counter(src, table, column))


# -- the whole ------------------------------------------------------------------------------


def copy_database(
    source: Engine,
    target: Engine,
    *,
    batch_rows: int = BATCH_ROWS,
    on_total: Callable[[int], None] = lambda total: None,
    on_rows: Callable[[str, int], None] = lambda table, rows: None,
    use_copy: bool = True,
) -> CopyReport:
    """Copy every table of ``source`` (at the newest schema) into ``target``; resumable.

    ``on_total`` is told the source's row count once, ``on_rows`` each batch
    (and, when resuming, what each table already holds). ``use_copy``: COPY
    into a PostgreSQL target (else executemany, as on SQLite; for the bench).
    """
    if batch_rows < 1:
        raise OperatorError(f"batch size must be at least 1, got {batch_rows}")
    if _same(source, target):
        raise OperatorError("the target is the configured database itself")
    started = time.monotonic()
    db.upgrade(target)
    with target.connect() as lock:
        if lock.dialect.name == "postgresql":
            got = lock.exec_driver_sql(f"SELECT pg_try_advisory_lock({_LOCK_ARGS})").scalar()
            lock.commit()
            if not got:
                raise OperatorError("another db copy into the target database is running")
        try:
            resumed = _start(source, target)
            with source.connect() as conn:
                on_total(sum(_count(conn, t) for t in tables()))
            copied = sum(
                _copy_table(source, target, t, batch_rows, on_rows, use_copy) for t in tables()
            )
            _copy_counters(source, target)
            counts = _compare(source, target)
            with db.write_tx(target) as conn:
                conn.execute(
                    update(DbCopyRow)
                    .where(DbCopyRow.finished_at.is_(None))
                    .values(finished_at=datetime.now(UTC))
                )
        finally:
            if lock.dialect.name == "postgresql":
                lock.rollback()
                lock.exec_driver_sql(f"SELECT pg_advisory_unlock({_LOCK_ARGS})")
                lock.commit()
    return CopyReport(
        tables=counts, copied=copied, resumed=resumed, seconds=time.monotonic() - started
    )


def _compare(source: Engine, target: Engine) -> tuple[tuple[str, int], ...]:
    with source.connect() as src, target.connect() as dst:
        pairs = [(t.name, _count(src, t), _count(dst, t)) for t in tables()]
    differ = [f"{name}: {a} there, {b} here" for name, a, b in pairs if a != b]
    if differ:
        raise OperatorError(
            "the source changed during the copy ("
            + "; ".join(differ)
            + "): stop every personsd, empty the target and copy again"
        )
    return tuple((name, n) for name, n, _ in pairs)
