"""The limit: the rows personsd writes, with no validation, as fast as the database takes them.

Runs as a child of ``run.py`` against personsd's own ``persons`` table (same
columns, the same unique indexes and foreign key), created beforehand by the
parent with the tenant and its custom fields. PostgreSQL: one ``COPY ... FROM
STDIN``. SQLite: one ``executemany`` INSERT in one transaction, with the
pragmas a personsd connection has (the parent reads them from one and hands
them in: WAL, ``synchronous``, cache).

Every row is the row personsd itself would store for the file's row
(``tests/test_bench_rows.py`` checks it): a person_key from personsd's own
key generator (time-ordered UUIDv7, which append to the person_key index),
the MDN in E.164, each custom value in its stored form, the attributes as
personsd encodes them (keyed by the field's id), and timestamps. person_id
comes from the table's own sequence, in file order, as personsd's ids do.

    python bench/limit.py --url URL --tenant-id N FILE [--rows N] [--pragma NAME=VALUE]...

Prints ``{"rows": N, "seconds": S}``. S times the database's work only: the rows
are parsed and encoded beforehand (not timed), so this is the ceiling, not a rival.
"""

from __future__ import annotations

import csv
import itertools
import json
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from loading import arguments, sqlite_connect, sqlite_insert
from personsd.errors import RowError
from personsd.fieldtypes import CustomField, StoredValue
from personsd.phones import normalize_mdn
from personsd.store import db
from personsd.store import fields as store_fields
from personsd.store.keys import PersonKeys  # personsd's own generator, not a copy
from personsd.store.models import sqlite_timestamp
from personsd.store.persons import _encode as encode_attributes  # the stored JSON text

COLUMNS = (
    "tenant_id",
    "person_key",
    "external_person_id",
    "mdn",
    "vibes_device_id",
    "attributes",
    "created_at",
    "updated_at",
)
IDENTIFIERS = ("external_person_id", "mdn", "vibes_device_id")
MULTI_SELECT_DELIMITER = "|"  # the bench files have no header section


def tenant_fields(url: str, tenant_id: int) -> dict[str, CustomField]:
    """The tenant's custom fields by name, as personsd reads them."""
    engine = db.connect(url)
    try:
        with engine.connect() as conn:
            return {f.name: f for f in store_fields.list_fields(conn, tenant_id)}
    finally:
        engine.dispose()


def records(
    path: Path, tenant_id: int, fields: dict[str, CustomField], limit: int | None, stamp: object
) -> Iterator[tuple[object, ...]]:
    """The persons table's row for each file row, as personsd would create it.

    Only what the bench files hold is handled (a field-name row, commas, new
    persons, valid values); anything else stops the limit rather than loading
    rows personsd would not write.
    """
    new_key = PersonKeys()
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        if {"person_id", "person_key"} & set(header):
            raise ValueError("the limit creates persons: no person_id or person_key column")
        custom = [(i, fields[name]) for i, name in enumerate(header) if name in fields]
        identifiers = [(i, name) for i, name in enumerate(header) if name in IDENTIFIERS]
        for values in itertools.islice(reader, limit):
            values = [v.strip(" \t") for v in values]
            ids = {name: values[i] or None for i, name in identifiers}
            attributes: dict[str, StoredValue] = {}
            for i, field in custom:
                if values[i]:  # blank: nothing stored for a new person
                    stored = field.parse(values[i], multi_delimiter=MULTI_SELECT_DELIMITER)
                    if isinstance(stored, RowError):
                        raise ValueError(f"{field.name}: {stored}")
                    attributes[str(field.id)] = stored
            mdn = ids.get("mdn")
            yield (
                tenant_id,
                new_key(),
                ids.get("external_person_id"),
                normalize_mdn(mdn) if mdn else None,
                ids.get("vibes_device_id"),
                encode_attributes(attributes),
                stamp,
                stamp,
            )


def _copy_text(value: object) -> str:
    if value is None:
        return "\\N"
    text = str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def load_postgresql(url: str, path: Path, tenant_id: int, limit: int | None) -> tuple[int, float]:
    """COPY of rows encoded beforehand: only the database's ingest is timed."""
    import psycopg

    fields = tenant_fields(url, tenant_id)
    stamp = datetime.now(UTC).isoformat()
    count = 0
    staged = path.with_name(f".{path.name}.{tenant_id}.copy")
    with staged.open("w", encoding="utf-8") as out:
        for record in records(path, tenant_id, fields, limit, stamp):
            out.write("\t".join(_copy_text(v) for v in record) + "\n")
            count += 1
    conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        with psycopg.connect(conninfo) as conn, conn.cursor() as cur, staged.open("rb") as src:
            start = time.perf_counter()
            with cur.copy(f"COPY persons ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                while block := src.read(1 << 20):
                    copy.write(block)
            conn.commit()
            seconds = time.perf_counter() - start
    finally:
        staged.unlink(missing_ok=True)
    return count, seconds


def load_sqlite(
    url: str, path: Path, tenant_id: int, limit: int | None, pragmas: list[str]
) -> tuple[int, float]:
    """executemany of rows built beforehand (in batches): only the inserts are timed."""
    fields = tenant_fields(url, tenant_id)
    stamp = sqlite_timestamp(datetime.now(UTC))
    conn = sqlite_connect(url, pragmas)
    sql = f"INSERT INTO persons ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    try:
        return sqlite_insert(conn, sql, records(path, tenant_id, fields, limit, stamp))
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__.splitlines()[0], tenant_id=True, pragmas=True)
    args = parser.parse_args(argv)
    if args.url.startswith("sqlite"):
        count, seconds = load_sqlite(args.url, args.file, args.tenant_id, args.rows, args.pragma)
    else:
        count, seconds = load_postgresql(args.url, args.file, args.tenant_id, args.rows)
    print(json.dumps({"rows": count, "seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
