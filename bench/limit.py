"""The limit: the same rows loaded with no validation at all, as fast as the database takes them.

Runs as a child of ``run.py`` against personsd's own ``persons`` table (same
columns, the same unique indexes and foreign key), created beforehand by the
parent. PostgreSQL: one ``COPY ... FROM STDIN``. SQLite: one ``executemany``
INSERT in one transaction, with the pragmas a personsd connection has (the
parent reads them from one and hands them in: WAL, ``synchronous``, cache).
Every row still gets what a stored person has (a person_key, its attributes
as JSON, timestamps), so the rows are as wide as personsd's.

    python bench/limit.py --url URL --tenant-id N FILE [--rows N] [--pragma NAME=VALUE]...

Prints ``{"rows": N, "seconds": S}``. S times the database's work only: the rows
are parsed and encoded beforehand (not timed), so this is the ceiling, not a rival.
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


def _copy_text(value: object) -> str:
    if value is None:
        return "\\N"
    text = str(value)
    return (text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


def load_postgresql(url: str, path: Path, tenant_id: int, limit: int | None) -> tuple[int, float]:
    """COPY of rows encoded beforehand: only the database's ingest is timed."""
    import psycopg

    stamp = datetime.now(UTC).isoformat()
    count = 0
    staged = path.with_name(f".{path.name}.{tenant_id}.copy")
    with staged.open("w", encoding="utf-8") as out:
        for record in records(path, tenant_id, limit, stamp):
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


def load_sqlite(url: str, path: Path, tenant_id: int, limit: int | None,
                pragmas: list[str]) -> tuple[int, float]:
    """executemany of rows built beforehand (in batches): only the inserts are timed."""
    database = url.removeprefix("sqlite:///")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    conn = sqlite3.connect(database, isolation_level=None)
    seconds = 0.0
    sql = (f"INSERT INTO persons ({', '.join(COLUMNS)})"
           f" VALUES ({', '.join('?' * len(COLUMNS))})")
    try:
        for pragma in pragmas:
            conn.execute(f"PRAGMA {pragma}")
        conn.execute("BEGIN IMMEDIATE")
        before = conn.total_changes
        rows = records(path, tenant_id, limit, stamp)
        while batch := list(itertools.islice(rows, 50_000)):
            start = time.perf_counter()
            conn.executemany(sql, batch)
            seconds += time.perf_counter() - start
        start = time.perf_counter()
        count = conn.total_changes - before
        conn.execute("COMMIT")
        seconds += time.perf_counter() - start
    finally:
        conn.close()
    return count, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--url", required=True)
    parser.add_argument("--tenant-id", type=int, required=True)
    parser.add_argument("--rows", type=int, default=None, help="only the first N rows")
    parser.add_argument("--pragma", action="append", default=[],
                        help="SQLite: a PRAGMA to set first, NAME=VALUE (repeatable)")
    args = parser.parse_args(argv)
    if args.url.startswith("sqlite"):
        count, seconds = load_sqlite(args.url, args.file, args.tenant_id, args.rows, args.pragma)
    else:
        count, seconds = load_postgresql(args.url, args.file, args.tenant_id, args.rows)
    print(json.dumps({"rows": count, "seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
