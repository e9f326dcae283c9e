"""Raw copy: the file's own columns into a plain table, the database's bare ingest speed.

The second reference line, below the limit: no person rows at all, just the
file as it stands (every column as text) into a table of those columns whose
only indexes are unique ones on ``external_person_id`` and ``mdn``, as a
partner's ids and phone numbers would need. No keys to make, no JSON, no
foreign key, no tenant. PostgreSQL: ``COPY ... FROM STDIN (FORMAT csv)`` of
the file's bytes, the file read inside the timed part (the server parses the
CSV). SQLite: ``executemany`` of rows split beforehand (not timed), in one
transaction, with the pragmas a personsd connection has.

    python bench/raw.py --url URL FILE [--rows N] [--pragma NAME=VALUE]...

Prints ``{"rows": N, "seconds": S}``; the table is created (not timed) in the
database the URL names, which should be empty.
"""

from __future__ import annotations

import csv
import itertools
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from loading import arguments, sqlite_connect, sqlite_insert

TABLE = "raw_persons"
UNIQUE = ("external_person_id", "mdn")


def _header(path: Path) -> list[str]:
    with path.open(encoding="utf-8", newline="") as fh:
        return next(csv.reader(fh))


def _ddl(columns: list[str]) -> list[str]:
    missing = [c for c in UNIQUE if c not in columns]
    if missing:
        raise ValueError(f"the file has no {', '.join(missing)} column")
    body = ", ".join(f'"{c}" text' for c in columns)
    return [
        f"CREATE TABLE {TABLE} ({body})",
        *(f'CREATE UNIQUE INDEX {TABLE}_{c} ON {TABLE} ("{c}")' for c in UNIQUE),
    ]


def _lines(path: Path, limit: int | None) -> Iterator[bytes]:
    """The file's bytes, field-name row first, cut after ``limit`` data rows (one-line rows)."""
    with path.open("rb") as fh:
        yield from itertools.islice(fh, None if limit is None else limit + 1)


def load_postgresql(url: str, path: Path, limit: int | None) -> tuple[int, float]:
    import psycopg

    columns = _header(path)
    conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur:
        for statement in _ddl(columns):
            cur.execute(statement)  # built from the file's header: names only
        conn.commit()
        start = time.perf_counter()
        sql = f"COPY {TABLE} FROM STDIN (FORMAT csv, HEADER true)"
        with cur.copy(sql) as copy:
            batch: list[bytes] = []
            for line in _lines(path, limit):
                batch.append(line)
                if len(batch) >= 10_000:
                    copy.write(b"".join(batch))
                    batch.clear()
            copy.write(b"".join(batch))
        count = cur.rowcount
        conn.commit()
        seconds = time.perf_counter() - start
    return count, seconds


def load_sqlite(url: str, path: Path, limit: int | None, pragmas: list[str]) -> tuple[int, float]:
    columns = _header(path)
    conn = sqlite_connect(url, pragmas)
    sql = f"INSERT INTO {TABLE} VALUES ({', '.join('?' * len(columns))})"
    try:
        for statement in _ddl(columns):
            conn.execute(statement)
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            next(reader)
            return sqlite_insert(conn, sql, itertools.islice(reader, limit))
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__.splitlines()[0], tenant_id=False, pragmas=True)
    args = parser.parse_args(argv)
    if args.url.startswith("sqlite"):
        count, seconds = load_sqlite(args.url, args.file, args.rows, args.pragma)
    else:
        count, seconds = load_postgresql(args.url, args.file, args.rows)
    print(json.dumps({"rows": count, "seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
