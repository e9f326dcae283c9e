"""``personsd db copy`` speed: a SQLite source of N persons copied to a fresh PostgreSQL schema.

    python bench/dbcopy.py [--persons N] [--pg-url URL]

The source is filled by bulk SQL (persons with five custom values each, as
an import leaves them); the copy runs twice, with COPY and with executemany,
each into a schema of its own. Prints one line per way: rows, seconds, rows/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from personsd.store import copy as store_copy
from personsd.store import db, tenants
from personsd.store.models import sqlite_timestamp

PG_URL = os.environ.get(
    "PERSONSD_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def fill(url: str, persons: int) -> None:
    engine = db.connect(url)
    db.upgrade(engine)
    now = sqlite_timestamp(datetime.now(UTC))
    with db.write_tx(engine) as conn:
        tenant = tenants.add_tenant(conn, "bench")
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        batch = 50_000
        for start in range(1, persons + 1, batch):
            rows = [
                (
                    i,
                    tenant,
                    str(uuid.uuid4()),
                    f"e{i}",
                    f"+1229{i:07d}" if i % 3 == 0 else None,
                    None,
                    json.dumps(
                        {"1": f"name {i}", "2": str(i % 97), "3": ["golf", "soccer"]},
                        separators=(",", ":"),
                    ),
                    now,
                    now,
                )
                for i in range(start, min(start + batch, persons + 1))
            ]
            cursor.executemany("INSERT INTO persons VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        raw.commit()
    finally:
        raw.close()
    engine.dispose()


def schema_url(base: str) -> tuple[str, str]:
    schema = "bench_" + uuid.uuid4().hex[:12]
    with psycopg.connect(
        base.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
    ) as c:
        c.execute(f'create schema "{schema}"')
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}", schema


def drop(base: str, schema: str) -> None:
    with psycopg.connect(
        base.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
    ) as c:
        c.execute(f'drop schema "{schema}" cascade')


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--persons", type=int, default=10_000)
    parser.add_argument("--pg-url", default=PG_URL)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'source.db'}"
        fill(url, args.persons)
        source = db.connect(url)
        for use_copy in (True, False):
            target_url, schema = schema_url(args.pg_url)
            target = db.connect(target_url)
            try:
                started = time.monotonic()
                report = store_copy.copy_database(source, target, use_copy=use_copy)
                seconds = time.monotonic() - started
            finally:
                target.dispose()
                drop(args.pg_url, schema)
            way = "COPY" if use_copy else "executemany"
            print(
                f"db copy sqlite->postgresql {args.persons} persons, {way}: "
                f"{report.copied} rows in {seconds:.2f} s, {report.copied / seconds:,.0f} rows/s"
            )
        source.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
