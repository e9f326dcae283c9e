"""The overlay of a validation: what the file would have written so far (SPEC 11).

A validation applies every row with the rules of an import but never writes a
person. Later rows must still see earlier rows of the same file, across
chunks, so each chunk stores the persons it would have created or changed in
``validation_persons`` (keyed by import id), in the same transaction as its
checkpoint. The next chunk loads persons from ``persons`` *and* the overlay:
an overlay row replaces the stored person with the same id, and overlay rows
found by an identifier join the set. The overlay is bounded by the file (at
most one row per person the file touches), lives on disk, not in memory, and
survives a crash together with the checkpoint it belongs to, so a validation
resumes exactly. It is deleted in the transaction that ends the validation.

Persons the file would create get negative ids (-1, -2, …): no id is taken
from the persons sequence, and no row of the file can name them by
``person_id`` (only positive ids are looked up) — as for an import, whose new
ids the partner cannot know either.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from sqlalchemy import Connection, delete, func, select

from personsd.rules import Person
from personsd.store import persons as store_persons
from personsd.store.models import ValidationPersonRow as Row

# Identifier values per IN list: far below SQLite's 32766 bound parameters.
_BATCH = 10_000
_SQL_COLUMNS = "person_id, person_key, external_person_id, mdn, vibes_device_id, attributes"
_COLUMNS = (
    Row.person_id,
    Row.person_key,
    Row.external_person_id,
    Row.mdn,
    Row.vibes_device_id,
    Row.attributes,
)


def load(
    conn: Connection,
    import_id: int,
    lookups: Iterable[tuple[str, object]],
    stored: Sequence[Person],
) -> list[Person]:
    """The persons matching any lookup as the validation sees them, by person_id.

    ``stored`` are the persons ``store.persons.load`` found for ``lookups``. A
    stored person that the file changed is returned as changed (its values
    may no longer match the lookup: harmless, since it is then held by the
    overlay version that took the value, which is returned too).
    """
    pairs = list(lookups)
    found: dict[int, Person] = {}
    wanted: dict[str, set[object]] = {}
    for column, value in pairs:
        # person_id and person_key are fixed: the stored row finds them, and
        # the overlay's version replaces it below.
        if column in store_persons.MUTABLE_IDENTIFIERS and value is not None:
            wanted.setdefault(column, set()).add(value)
    postgres = conn.dialect.name == "postgresql"
    for column, values in wanted.items():
        if postgres:
            _probe(conn, found, import_id, column, "text[]", sorted(values, key=str))
            continue
        for batch in _batches(sorted(values, key=str)):
            _fetch(conn, found, Row.import_id == import_id, getattr(Row, column).in_(batch))
    missing = [p.person_id for p in stored if p.person_id not in found]
    if postgres:
        _probe(conn, found, import_id, "person_id", "bigint[]", missing)
    else:
        for batch in _batches(missing):
            _fetch(conn, found, Row.import_id == import_id, Row.person_id.in_(batch))
    for person in stored:
        found.setdefault(person.person_id, person)
    return [found[k] for k in sorted(found)]


def _batches(values: Sequence[object]) -> Iterator[Sequence[object]]:
    for start in range(0, len(values), _BATCH):
        yield values[start : start + _BATCH]


def _fetch(conn: Connection, found: dict[int, Person], *where: object) -> None:
    for row in conn.execute(select(*_COLUMNS).where(*where)):  # type: ignore[arg-type]
        if row[0] not in found:
            found[row[0]] = store_persons.person_of(row)


def _probe(
    conn: Connection,
    found: dict[int, Person],
    import_id: int,
    column: str,
    array: str,
    values: Sequence[object],
) -> None:
    """PostgreSQL: one index probe per value, as ``store.persons.load`` does and for
    the same reason: the overlay grows from nothing during the run, so the
    planner's idea of its size is always stale, and a plan from it would scan the
    whole overlay on every chunk."""
    if not values:
        return
    rows = conn.exec_driver_sql(
        f"SELECT o.* FROM unnest(%(v)b::{array}) AS v(val) CROSS JOIN LATERAL"
        f" (SELECT {_SQL_COLUMNS} FROM validation_persons"
        f" WHERE import_id = %(i)s AND {column} = v.val LIMIT 1) AS o",
        {"i": import_id, "v": list(values)},
    )
    for row in rows:
        if row[0] not in found:
            found[row[0]] = store_persons.person_of(row)


def new_ids(conn: Connection, import_id: int) -> Iterator[int]:
    """Ids for persons the validation would create: negative, below any it used."""
    low = conn.execute(
        select(func.min(Row.person_id)).where(Row.import_id == import_id)
    ).scalar_one_or_none()
    next_id = min(int(low or 0), 0) - 1
    while True:
        yield next_id
        next_id -= 1


def store(
    conn: Connection,
    import_id: int,
    created: Sequence[Person],
    updated: Sequence[tuple[Person, Person]],
) -> None:
    """Record what a chunk would have written (call it in the chunk's transaction)."""
    persons = [*created, *(after for before, after in updated if before != after)]
    if not persons:
        return
    ids = [p.person_id for p in persons]
    if conn.dialect.name == "postgresql":
        # Bulk statements on arrays sent in binary, as store.persons.write: an
        # executemany of a chunk's rows costs several times more.
        arrays = store_persons.arrays_of(persons)
        conn.exec_driver_sql(
            "DELETE FROM validation_persons WHERE import_id = %(i)s"
            " AND person_id = ANY(%(ids)b::bigint[])",
            {"i": import_id, "ids": ids},
        )
        conn.exec_driver_sql(
            f"INSERT INTO validation_persons (import_id, {_SQL_COLUMNS})"
            f" SELECT %(i)s, v.* FROM {store_persons.PG_UNNEST}",
            {"i": import_id, **arrays},
        )
        return
    for batch in _batches(ids):
        conn.execute(delete(Row).where(Row.import_id == import_id, Row.person_id.in_(batch)))
    conn.exec_driver_sql(
        f"INSERT INTO validation_persons (import_id, {_SQL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (
                import_id,
                p.person_id,
                p.person_key,
                p.external_person_id,
                p.mdn,
                p.vibes_device_id,
                store_persons.encode_attributes(p.attributes),
            )
            for p in persons
        ],
    )


def clear(conn: Connection, import_id: int) -> int:
    """Forget a validation's overlay (when it ends, or starts afresh); rows removed."""
    result = conn.execute(delete(Row).where(Row.import_id == import_id))
    return int(result.rowcount or 0)


def size(conn: Connection, import_id: int) -> int:
    """How many persons the overlay of ``import_id`` holds."""
    count = select(func.count()).select_from(Row).where(Row.import_id == import_id)
    return int(conn.execute(count).scalar_one())
