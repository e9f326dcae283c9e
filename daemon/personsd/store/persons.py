"""Persons: the hot path of an import.

A chunk costs a bounded number of statements whatever its size: ``load``
issues at most one query per identifier column, ``allocate_ids`` one, and
``write`` at most three bulk statements (executemany on SQLite, array
``unnest`` on PostgreSQL). The bulk paths are raw SQL on purpose: they skip
per-row ORM/Core processing, which would dominate at tens of thousands of
rows per second. PostgreSQL arrays are sent in binary (``%(name)b``): psycopg
dumps text-format arrays with a regex per element, six times slower.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, text

from personsd.errors import InternalError
from personsd.fieldtypes import StoredValue
from personsd.rules import Person
from personsd.store.models import sqlite_timestamp

LOOKUP_COLUMNS = ("person_id", "person_key", "external_person_id", "mdn", "vibes_device_id")
# Identifiers a person may change; person_id and person_key are ours and fixed.
MUTABLE_IDENTIFIERS = ("external_person_id", "mdn", "vibes_device_id")
_MAX_PERSON_ID = 2**63 - 1
# SQLITE_MAX_VARIABLE_NUMBER is 32766 since SQLite 3.32; one is the tenant id.
_SQLITE_MAX_IN = 32_000
# A namespace for the per-tenant advisory lock, so it cannot clash with
# another application's locks on a shared PostgreSQL.
_LOCK_NAMESPACE = 0x7E25
_COLUMNS = "person_id, person_key, external_person_id, mdn, vibes_device_id, attributes"
_PG_UNNEST = (
    "unnest(%(ids)b::bigint[], %(keys)b::text[], %(ext)b::text[], %(mdn)b::text[],"
    " %(dev)b::text[], %(attrs)b::text[])"
    " AS v(person_id, person_key, external_person_id, mdn, vibes_device_id, attributes)"
)


def _encode(attributes: dict[str, StoredValue]) -> str:
    # The same text as json.dumps(ensure_ascii=False, separators=(",", ":"),
    # sort_keys=True), which wrote it before (tests/test_store_persons.py), at
    # a tenth of the cost: one is encoded per person written.
    return orjson.dumps(attributes, option=orjson.OPT_SORT_KEYS).decode()


def _decode(text: str) -> dict[str, StoredValue]:
    raw: dict[str, str | list[str]] = orjson.loads(text)
    if "[" not in text:  # no multi-select value: nothing to turn into a tuple
        return raw  # type: ignore[return-value]
    return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}


def _person(row: Sequence[Any]) -> Person:
    return Person(
        person_id=row[0],
        person_key=row[1],
        external_person_id=row[2],
        mdn=row[3],
        vibes_device_id=row[4],
        attributes=_decode(row[5]),
    )


def _wanted(lookups: Iterable[tuple[str, object]]) -> dict[str, list[Any]]:
    by_column: dict[str, set[Any]] = {}
    for column, value in lookups:
        values = by_column.get(column)
        if values is None:
            if column not in LOOKUP_COLUMNS:
                raise ValueError(f"not a person identifier column: {column!r}")
            values = by_column[column] = set()
        values.add(value)
    # Types checked once per distinct value, in bulk: a chunk names thousands.
    wanted: dict[str, list[Any]] = {}
    for column, values in by_column.items():
        values.discard(None)
        if column == "person_id":
            wrong = [v for v in values if not isinstance(v, int) or isinstance(v, bool)]
            if wrong:
                raise TypeError(f"person_id lookup needs an int, got {wrong[0]!r}")
            # An id out of range cannot exist; binding it would fail instead.
            values = {v for v in values if 0 < v <= _MAX_PERSON_ID}
        else:
            wrong = [v for v in values if not isinstance(v, str)]
            if wrong:
                raise TypeError(f"{column} lookup needs a str, got {wrong[0]!r}")
        if values:
            wanted[column] = sorted(values)
    return wanted


def load(conn: Connection, tenant_id: int, lookups: Iterable[tuple[str, object]]) -> list[Person]:
    """The tenant's persons matching any (column, value) lookup, by person_id."""
    found: dict[int, Person] = {}
    postgres = conn.dialect.name == "postgresql"
    wanted = _wanted(lookups)
    for column in LOOKUP_COLUMNS:
        if column not in wanted:
            continue
        # Identifiers are unique per tenant: a value some loaded person holds
        # is held by nobody else, so it needs no query (a file naming persons
        # by external id and mdn costs one query's rows, not two).
        held = {getattr(p, column) for p in found.values()}
        values = [v for v in wanted[column] if v not in held]
        if not values:
            continue
        if postgres:
            array = "bigint[]" if column == "person_id" else "text[]"
            # One index probe per value, whatever the statistics say: with
            # `= ANY(array)` or a plain join the planner scans the whole table
            # (hash join) once it believes the chunk's values are many, which
            # makes every chunk of a large import read every person. LIMIT 1
            # (the index is unique) keeps the subquery from being flattened.
            rows: Iterable[Sequence[Any]] = conn.exec_driver_sql(
                f"SELECT p.* FROM unnest(%(v)b::{array}) AS v(val) CROSS JOIN LATERAL"
                f" (SELECT {_COLUMNS} FROM persons"
                f" WHERE tenant_id = %(t)s AND {column} = v.val LIMIT 1) AS p",
                {"t": tenant_id, "v": values},
            ).all()
            for row in rows:
                if row[0] not in found:  # decode each person once
                    found[row[0]] = _person(row)
            continue
        for start in range(0, len(values), _SQLITE_MAX_IN):
            batch = values[start : start + _SQLITE_MAX_IN]
            marks = ",".join("?" * len(batch))
            rows = conn.exec_driver_sql(
                f"SELECT {_COLUMNS} FROM persons WHERE tenant_id = ? AND {column} IN ({marks})",
                (tenant_id, *batch),
            ).all()
            for row in rows:
                if row[0] not in found:
                    found[row[0]] = _person(row)
    return [found[k] for k in sorted(found)]


def find(conn: Connection, tenant_id: int, column: str, value: object) -> Person | None:
    """The tenant's person whose ``column`` equals ``value`` (mdn in E.164), or None."""
    persons = load(conn, tenant_id, [(column, value)])
    return persons[0] if persons else None


def count(conn: Connection, tenant_id: int) -> int:
    """How many persons the tenant has."""
    mark = "%(t)s" if conn.dialect.name == "postgresql" else ":t"
    sql = f"SELECT count(*) FROM persons WHERE tenant_id = {mark}"
    return int(conn.exec_driver_sql(sql, {"t": tenant_id}).scalar_one())


def iter_all(conn: Connection, tenant_id: int, *, batch: int = 1000) -> Iterator[Person]:
    """Every person of the tenant by person_id, fetched ``batch`` at a time (keyset)."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    if conn.dialect.name == "postgresql":
        sql = (
            f"SELECT {_COLUMNS} FROM persons WHERE tenant_id = %(t)s AND person_id > %(after)s"
            " ORDER BY person_id LIMIT %(n)s"
        )
    else:
        sql = (
            f"SELECT {_COLUMNS} FROM persons WHERE tenant_id = :t AND person_id > :after"
            " ORDER BY person_id LIMIT :n"
        )
    after = 0
    while True:
        rows = conn.exec_driver_sql(sql, {"t": tenant_id, "after": after, "n": batch}).all()
        for row in rows:
            yield _person(row)
        if len(rows) < batch:
            return
        after = rows[-1][0]


def allocate_ids(conn: Connection, n: int) -> list[int]:
    """``n`` fresh person ids, in one statement; call it inside the write transaction.

    Ids handed out and not used are simply skipped. On SQLite the counter is
    the AUTOINCREMENT row of ``sqlite_sequence`` (created by the migration);
    inserting explicit ids later keeps it consistent since SQLite only ever
    raises it.
    """
    if n < 0:
        raise ValueError("n must not be negative")
    if n == 0:
        return []
    if conn.dialect.name == "postgresql":
        rows = conn.exec_driver_sql(
            "SELECT nextval('persons_person_id_seq') FROM generate_series(1, %(n)s)", {"n": n}
        )
        return sorted(int(r[0]) for r in rows)
    top = conn.exec_driver_sql(
        "UPDATE sqlite_sequence"
        " SET seq = max(seq, (SELECT coalesce(max(person_id), 0) FROM persons)) + ?"
        " WHERE name = 'persons' RETURNING seq",
        (n,),
    ).scalar()
    if top is None:
        raise InternalError("sqlite_sequence has no row for persons: was the schema migrated?")
    return list(range(int(top) - n + 1, int(top) + 1))


def write(
    conn: Connection,
    tenant_id: int,
    created: Sequence[Person],
    updated: Sequence[tuple[Person, Person]],
) -> None:
    """Insert ``created`` and store the ``(before, after)`` changes of ``updated``.

    Identifiers may move between persons within a chunk (A's external id
    cleared, then given to B). Unique indexes are checked row by row on both
    databases, so the persons giving up a value that another person of the
    chunk takes first get their identifiers set to NULL (phase 1), then new
    persons are inserted (phase 2), then final values are written (phase 3).
    """
    for before, after in updated:
        if before.person_id != after.person_id:
            raise ValueError("an update pair must be the same person")
    changed = [after for before, after in updated if before != after]
    moving = _blocking(created, updated)
    sql = _POSTGRESQL if conn.dialect.name == "postgresql" else _SQLITE
    now = datetime.now(UTC)
    if moving:
        result = conn.exec_driver_sql(sql.clear, sql.clear_params(tenant_id, moving))
        _check_count(len(moving), result.rowcount)
    if created:
        conn.exec_driver_sql(sql.insert, sql.insert_params(tenant_id, created, now))
    if changed:
        result = conn.exec_driver_sql(sql.update, sql.update_params(tenant_id, changed, now))
        _check_count(len(changed), result.rowcount)


def _blocking(created: Sequence[Person], updated: Sequence[tuple[Person, Person]]) -> list[int]:
    """Updated persons whose old identifier value another person of the chunk takes.

    Only they need phase 1; an update that touches no such value would
    otherwise cost every row two writes.
    """
    blocking: set[int] = set()
    for column in MUTABLE_IDENTIFIERS:
        taken = {getattr(p, column) for p in created}
        given_up: dict[str, int] = {}
        for before, after in updated:
            old, new = getattr(before, column), getattr(after, column)
            if old != new:
                taken.add(new)
                if old is not None:
                    given_up[old] = before.person_id
        blocking.update(pid for value, pid in given_up.items() if value in taken)
    return sorted(blocking)


def _check_count(expected: int, actual: int) -> None:
    if expected != actual:
        raise InternalError(
            f"updated {actual} persons instead of {expected}: a person vanished or moved tenant"
        )


@dataclass(frozen=True, slots=True)
class _Phases:
    """One database's statements for the three phases of :func:`write`, and their parameters."""

    clear: str
    insert: str
    update: str
    clear_params: Callable[[int, Sequence[int]], Any]
    insert_params: Callable[[int, Sequence[Person], datetime], Any]
    update_params: Callable[[int, Sequence[Person], datetime], Any]


def _sqlite_inserted(tenant_id: int, persons: Sequence[Person], now: datetime) -> list[Any]:
    stamp = sqlite_timestamp(now)
    return [
        (
            tenant_id,
            p.person_id,
            p.person_key,
            p.external_person_id,
            p.mdn,
            p.vibes_device_id,
            _encode(p.attributes),
            stamp,
            stamp,
        )
        for p in persons
    ]


def _sqlite_updated(tenant_id: int, persons: Sequence[Person], now: datetime) -> list[Any]:
    stamp = sqlite_timestamp(now)
    return [
        (
            p.external_person_id,
            p.mdn,
            p.vibes_device_id,
            _encode(p.attributes),
            stamp,
            p.person_id,
            tenant_id,
        )
        for p in persons
    ]


def _arrays(persons: Sequence[Person]) -> dict[str, list[Any]]:
    return {
        "ids": [p.person_id for p in persons],
        "keys": [p.person_key for p in persons],
        "ext": [p.external_person_id for p in persons],
        "mdn": [p.mdn for p in persons],
        "dev": [p.vibes_device_id for p in persons],
        "attrs": [_encode(p.attributes) for p in persons],
    }


def _postgresql_rows(tenant_id: int, persons: Sequence[Person], now: datetime) -> dict[str, Any]:
    return {"t": tenant_id, "now": now, **_arrays(persons)}


_SQLITE = _Phases(
    clear="UPDATE persons SET external_person_id = NULL, mdn = NULL, vibes_device_id = NULL"
    " WHERE person_id = ? AND tenant_id = ?",
    insert=f"INSERT INTO persons (tenant_id, {_COLUMNS}, created_at, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    update="UPDATE persons SET external_person_id = ?, mdn = ?, vibes_device_id = ?,"
    " attributes = ?, updated_at = ? WHERE person_id = ? AND tenant_id = ?",
    clear_params=lambda tenant_id, moving: [(pid, tenant_id) for pid in moving],
    insert_params=_sqlite_inserted,
    update_params=_sqlite_updated,
)
_POSTGRESQL = _Phases(
    clear="UPDATE persons SET external_person_id = NULL, mdn = NULL, vibes_device_id = NULL"
    " WHERE tenant_id = %(t)s AND person_id = ANY(%(ids)b::bigint[])",
    insert=f"INSERT INTO persons (tenant_id, {_COLUMNS}, created_at, updated_at)"
    f" SELECT %(t)s, v.*, %(now)s, %(now)s FROM {_PG_UNNEST}",
    update="UPDATE persons AS p SET external_person_id = v.external_person_id, mdn = v.mdn,"
    " vibes_device_id = v.vibes_device_id, attributes = v.attributes,"
    f" updated_at = %(now)s FROM {_PG_UNNEST}"
    " WHERE p.person_id = v.person_id AND p.tenant_id = %(t)s"
    # Redundant for the result; without it the planner hash-joins
    # against a scan of all the tenant's persons.
    " AND p.person_id = ANY(%(ids)b::bigint[])",
    clear_params=lambda tenant_id, moving: {"t": tenant_id, "ids": list(moving)},
    insert_params=_postgresql_rows,
    update_params=_postgresql_rows,
)


def lock_tenant(conn: Connection, tenant_id: int) -> None:
    """Serialise writers of one tenant's persons across processes and hosts.

    SQLite needs nothing: the write transaction holds the database lock.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(
            text("select pg_advisory_xact_lock(:ns, :tenant)"),
            {"ns": _LOCK_NAMESPACE, "tenant": tenant_id},
        )


# For the overlay of a validation (store.overlay), which stores persons alike.
encode_attributes = _encode
person_of = _person
arrays_of = _arrays
PG_UNNEST = _PG_UNNEST
