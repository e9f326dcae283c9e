"""No per-row round trips (design: store.persons): the SQL statements an import
sends per chunk do not grow with the chunk size, on both databases."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event

from engine_helpers import (
    add_tenant,
    fast_engine,
    make_config,
    new_tenant_name,
    run_import,
)
from personsd.config import Config

ROWS = 1000
SMALL, LARGE = 10, 500
# BEGIN or the tenant lock, one load per identifier column (3), id allocation,
# at most three bulk writes, the checkpoint: anything above is a per-row leak.
MAX_PER_CHUNK = 9


@dataclass
class Counter:
    """Counts statements sent to the database (an executemany counts once).

    Statistics upkeep (``ANALYZE`` and reading ``pg_class``, a few times per
    initial load as the table doubles) is maintenance, not a per-row round
    trip, so it is not counted.
    """

    statements: int = 0

    def __call__(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("ANALYZE") or "FROM pg_class" in statement:
            return
        self.statements += 1


@dataclass(frozen=True, kw_only=True, slots=True)
class Bench:
    engine: Engine
    root: Path
    counter: Counter
    configs: dict[int, Config]


@pytest.fixture
def bench(db_url: str, tmp_path: Path) -> Iterator[Bench]:
    with fast_engine(db_url, tmp_path) as (root, url, engine):
        counter = Counter()
        event.listen(engine, "before_cursor_execute", counter)
        configs = {n: make_config(root, url, chunk_rows=n) for n in (SMALL, LARGE)}
        yield Bench(engine=engine, root=root, counter=counter, configs=configs)


def device(version: int, i: int) -> str:
    """Version 1: d-i. Version 3: the even persons of every pair take a new
    device and their odd partners take the one just given up (a move within a chunk)."""
    if version == 1:
        return f"d-{i}"
    return f"n-{i}" if i % 2 == 0 else f"d-{i - 1}"


def write_file(path: Path, version: int) -> Path:
    """ROWS persons keyed by external id (pairs never straddle a chunk)."""
    lines = ["external_person_id,mdn,vibes_device_id,score,tags"]
    lines += [f"e{i},+1202{i:07d},{device(version, i)},{version}.{i},a|b" for i in range(ROWS)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def per_chunk(bench: Bench, chunk_rows: int, tenant: str, path: Path) -> list[int]:
    """Statements sent for each chunk after the first (the first also pays the set-up)."""
    marks: list[int] = []

    def on_chunk(_rows: int, _bytes: int) -> None:
        marks.append(bench.counter.statements)

    outcome = run_import(bench.engine, bench.configs[chunk_rows], tenant, path, on_chunk=on_chunk)
    assert 0 == outcome.summary.rows.failed
    assert ROWS // chunk_rows == len(marks)
    return [b - a for a, b in itertools.pairwise(marks)]


def test_statements_per_chunk_do_not_grow_with_chunk_size(bench: Bench) -> None:
    """A chunk of 1000 rows costs the same statements as a chunk of 10, whatever it does."""
    scenarios = [("create", 1), ("unchanged update", 1), ("update moving devices", 3)]
    counts: dict[int, dict[str, set[int]]] = {}
    for chunk_rows in (SMALL, LARGE):
        tenant = new_tenant_name()
        add_tenant(bench.engine, tenant)
        counts[chunk_rows] = {
            name: set(
                per_chunk(
                    bench,
                    chunk_rows,
                    tenant,
                    write_file(bench.root / f"{tenant}.{name}.persons", version),
                )
            )
            for name, version in scenarios
        }
    for name, _ in scenarios:
        small, large = counts[SMALL][name], counts[LARGE][name]
        assert 1 == len(small), f"{name}: every chunk of {SMALL} costs the same: {small}"
        assert small == large, f"{name}: chunks of {SMALL} vs {LARGE} rows"
        assert max(small) <= MAX_PER_CHUNK, f"{name}: {small}"
