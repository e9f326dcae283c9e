"""The limit: the same rows loaded with no validation at all, as fast as the database takes them.

Runs as a child of ``run.py`` against personsd's own ``persons`` table (same
columns, the same unique indexes and foreign key), created beforehand by the
parent. PostgreSQL: one ``COPY ... FROM STDIN``. SQLite: one ``executemany``
INSERT in one transaction, with the pragmas a personsd connection has (the
parent reads them from one and hands them in: WAL, ``synchronous``, cache).
Every row still gets what a stored person has (a person_key, its attributes
as JSON, timestamps), so the rows are as wide as personsd's.

    python bench/limit.py --url URL --tenant-id N FILE [--rows N] [--pragma NAME=VALUE]...

Prints ``{"rows": N, "seconds": S}`` (S: the load itself, after start-up).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

COLUMNS = ("tenant_id", "person_key", "external_person_id", "mdn", "vibes_device_id",
           "attributes", "created_at", "updated_at")


def records(path: Path, tenant_id: int, limit: int | None,
            stamp: object) -> Iterator[tuple[object, ...]]:
    """The persons table's row for each file row; custom fields keyed 1, 2, 3 as ids."""
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        for ext_id, mdn, name, age, sports in itertools.islice(reader, limit):
            attributes: dict[str, object] = {"1": name, "2": age}
            if sports:
                attributes["3"] = sports.split("|")
            yield (tenant_id, str(uuid.uuid4()), ext_id, mdn, None,
                   json.dumps(attributes, ensure_ascii=False), stamp, stamp)


def load_postgresql(url: str, path: Path, tenant_id: int, limit: int | None) -> int:
    import psycopg

    stamp = datetime.now(UTC)
    count = 0
    conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY persons ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for record in records(path, tenant_id, limit, stamp):
                copy.write_row(record)
                count += 1
        conn.commit()
    return count


def load_sqlite(url: str, path: Path, tenant_id: int, limit: int | None,
                pragmas: list[str]) -> int:
    database = url.removeprefix("sqlite:///")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    conn = sqlite3.connect(database, isolation_level=None)
    try:
        for pragma in pragmas:
            conn.execute(f"PRAGMA {pragma}")
        conn.execute("BEGIN IMMEDIATE")
        before = conn.total_changes
        conn.executemany(
            f"INSERT INTO persons ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
            records(path, tenant_id, limit, stamp),
        )
        count = conn.total_changes - before
        conn.execute("COMMIT")
    finally:
        conn.close()
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--url", required=True)
    parser.add_argument("--tenant-id", type=int, required=True)
    parser.add_argument("--rows", type=int, default=None, help="only the first N rows")
    parser.add_argument("--pragma", action="append", default=[],
                        help="SQLite: a PRAGMA to set first, NAME=VALUE (repeatable)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.url.startswith("sqlite"):
        count = load_sqlite(args.url, args.file, args.tenant_id, args.rows, args.pragma)
    else:
        count = load_postgresql(args.url, args.file, args.tenant_id, args.rows)
    print(json.dumps({"rows": count, "seconds": time.perf_counter() - start}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
