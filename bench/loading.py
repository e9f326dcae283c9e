"""What the measured loaders (``raw.py``, ``limit.py``, ``alternative.py``) share.

Their command line and the timed SQLite ``executemany``. Apart from
``common.py`` on purpose: these scripts are the measured children, and
``common``'s subprocess plumbing would add a few MB to their peak RSS.
"""

from __future__ import annotations

import argparse
import itertools
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

_BATCH = 50_000


def arguments(description: str, *, tenant_id: bool, pragmas: bool) -> argparse.ArgumentParser:
    """A loader's options: the file, ``--url``, ``--rows``, and ``--tenant-id``/``--pragma``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("file", type=Path)
    parser.add_argument("--url", required=True)
    if tenant_id:
        parser.add_argument("--tenant-id", type=int, required=True)
    parser.add_argument("--rows", type=int, default=None, help="only the first N rows")
    if pragmas:
        parser.add_argument(
            "--pragma",
            action="append",
            default=[],
            help="SQLite: a PRAGMA to set first, NAME=VALUE (repeatable)",
        )
    return parser


def sqlite_connect(url: str, pragmas: Sequence[str]) -> sqlite3.Connection:
    """An autocommit connection to ``url``'s file with ``pragmas`` (``NAME=VALUE``) set."""
    conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        for pragma in pragmas:
            conn.execute(f"PRAGMA {pragma}")
    except BaseException:
        conn.close()
        raise
    return conn


def sqlite_insert(
    conn: sqlite3.Connection, sql: str, rows: Iterator[Sequence[object]]
) -> tuple[int, float]:
    """``executemany`` of ``rows`` in batches, in one transaction: (rows, seconds).

    Only the inserts and the commit are timed, not the making of each batch.
    """
    seconds = 0.0
    conn.execute("BEGIN IMMEDIATE")
    before = conn.total_changes
    while batch := list(itertools.islice(rows, _BATCH)):
        start = time.perf_counter()
        conn.executemany(sql, batch)
        seconds += time.perf_counter() - start
    start = time.perf_counter()
    count = conn.total_changes - before
    conn.execute("COMMIT")
    seconds += time.perf_counter() - start
    return count, seconds
