"""Resume is exact (SPEC 5): an import stopped or crashed after any chunk, then run
again, leaves the same persons and byte-identical reports as an uninterrupted run.

Both runs of a comparison share one database, on two tenants; exports are
compared with person ids replaced by their rank (every person is new here).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import pytest
from sqlalchemy import Engine, event
from structlog.testing import capture_logs

from engine_helpers import (
    Published,
    Tenant,
    export,
    fast_engine,
    fresh_tenant,
    make_config,
    normalise_export,
    published,
    run_import,
)
from layer_helpers import VARIANTS, Keys, with_pgp_home, wrap
from personsd import importer
from personsd.config import Config
from personsd.store import imports as store_imports

CHUNK_ROWS = 10
ROWS = 300
CHUNKS = ROWS // CHUNK_ROWS


def make_file(path: Path) -> bytes:
    """Creates, updates and failing rows of many kinds, from small pools (fixed seed)."""
    rnd = random.Random(20261123)
    # column: (how often it holds a value, good values, bad values)
    pools = {
        "external_person_id": (0.8, [f"e{i}" for i in range(60)], ["[null]"]),
        "mdn": (0.3, [f"+1202555{i:04d}" for i in range(60)], ["12345", "[null]"]),
        "vibes_device_id": (0.4, [f"d{i}" for i in range(40)], ["[null]"]),
        "nick": (0.5, ["abc", "hello", "€5"], ["toolong", "naïve"]),
        "score": (0.5, ["7", "007.50", "-0.0"], ["1e5"]),
        "tier": (0.5, ["gold", "silver"], ["Gold"]),
        "tags": (0.5, ["a|b", "b|a|b", "c"], ["a||b"]),
    }
    lines = [",".join(pools)]
    for _ in range(ROWS):
        cells = []
        for share, good, bad in pools.values():
            if rnd.random() >= share:
                cells.append("")
            else:
                cells.append(rnd.choice(bad if rnd.random() < 0.04 else good))
        lines.append(",".join(cells))
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(data)
    return data


@dataclass(frozen=True, kw_only=True, slots=True)
class Run:
    """An import's outcome: the tenant's persons (normalised) and its published reports."""

    persons: list[list[str]]
    reports: Published

    @classmethod
    def of(cls, engine: Engine, cfg: Config, tenant: Tenant, outcome: importer.Outcome) -> Run:
        """The finished import ``outcome`` as it left ``tenant``'s persons and outbox."""
        return cls(
            persons=normalise_export(export(engine, tenant.id)),
            reports=published(cfg, tenant.name, outcome),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Bench:
    engine: Engine
    cfg: Config
    path: Path
    baseline: Run


@pytest.fixture
def bench(db_url: str, tmp_path: Path) -> Iterator[Bench]:
    with fast_engine(db_url, tmp_path) as (root, url, engine):
        cfg = make_config(root, url, chunk_rows=CHUNK_ROWS)
        path = root / "nightly.persons"
        make_file(path)
        tenant = fresh_tenant(engine)
        baseline = Run.of(engine, cfg, tenant, run_import(engine, cfg, tenant.name, path))
        yield Bench(engine=engine, cfg=cfg, path=path, baseline=baseline)


class Crash(Exception):
    """Stands for the process dying at a chosen point of an import."""


def interrupted_run(
    bench: Bench,
    stop_after: int,
    *,
    how: Literal["stop", "crash", "rollback"] = "stop",
    between: Callable[[int], None] | None = None,
) -> tuple[Run, list[str]]:
    """Import the file on a fresh tenant, interrupted after chunk ``stop_after``, then resume.

    ``how`` is "stop" (the stop event, as on SIGTERM), "crash" (an exception
    out of the chunk callback, once the chunk committed) or "rollback" (the
    next chunk fails on saving its checkpoint: its report lines are on disk,
    its transaction rolls back). ``between(import_id)`` runs between the two
    runs. Returns the result and the events the resuming run logged.
    """
    tenant = fresh_tenant(bench.engine)
    import_id = importer.create(bench.engine, tenant=tenant.name, path=bench.path, source="cli")
    stop = threading.Event()
    done: list[int] = []

    def on_chunk(rows: int, _bytes: int) -> None:
        done.append(rows)
        if len(done) == stop_after and how != "rollback":
            if how == "crash":
                raise Crash(f"after chunk {stop_after}")
            stop.set()

    saves: list[str] = []

    def fail_checkpoint(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if statement.startswith("UPDATE imports") and "next_offset" in statement:
            saves.append(statement)
            if len(saves) == stop_after + 1:
                raise Crash(f"saving the checkpoint of chunk {stop_after + 1}")

    if stop_after == 0 and how == "stop":
        stop.set()
    if how == "rollback":
        event.listen(bench.engine, "before_cursor_execute", fail_checkpoint)
    try:
        with pytest.raises(importer.Interrupted if how == "stop" else Crash):
            importer.run(bench.engine, bench.cfg, import_id, stop=stop, on_chunk=on_chunk)
    finally:
        if how == "rollback":
            event.remove(bench.engine, "before_cursor_execute", fail_checkpoint)
    assert stop_after == len(done), "no chunk runs once the stop is asked for"
    with bench.engine.connect() as conn:
        record = store_imports.get(conn, import_id)
    assert "running" == record.status
    assert min(stop_after * CHUNK_ROWS, ROWS) == record.rows_total
    assert [] == sorted(bench.cfg.outbox(tenant.name).glob("*")), "nothing published before the end"
    if how == "rollback":
        errors_path, _ = importer.work_paths(bench.cfg, import_id)
        assert errors_path.stat().st_size > record.errors_bytes, "lines past the checkpoint"
    if between is not None:
        between(import_id)

    with capture_logs() as logs:
        outcome = importer.run(bench.engine, bench.cfg, import_id)
    events = [str(entry["event"]) for entry in logs]
    return Run.of(bench.engine, bench.cfg, tenant, outcome), events


def assert_same(expected: Run, actual: Run, k: int) -> None:
    assert expected.persons == actual.persons, f"after chunk {k}"
    assert expected.reports.errors == actual.reports.errors, f"after chunk {k}"
    assert expected.reports.retry == actual.reports.retry, f"after chunk {k}"
    assert expected.reports.stable_summary() == actual.reports.stable_summary(), f"after chunk {k}"


def test_baseline_exercises_every_outcome(bench: Bench) -> None:
    """The file under test creates, updates and fails rows, over many chunks."""
    summary = bench.baseline.reports.summary
    assert ROWS == summary["rows"]["total"]
    assert summary["rows"]["created"] > 50
    assert summary["rows"]["updated"] > 50
    assert summary["rows"]["failed"] > 50
    assert len(summary["errors"]) >= 5, summary["errors"]


def test_stop_after_chunk_k_then_resume(bench: Bench) -> None:
    """SPEC 5: stopped after chunk k, the resumed import equals an uninterrupted one."""
    for k in (0, 1, 2, CHUNKS // 2, CHUNKS - 1):
        run, events = interrupted_run(bench, k)
        assert_same(bench.baseline, run, k)
        if k > 0:
            assert "import.resumed" in events, f"after chunk {k}"
            assert "import.started" not in events, f"after chunk {k}"
        assert "import.completed" in events, f"after chunk {k}"


def test_crash_after_chunk_k_then_resume(bench: Bench) -> None:
    """SPEC 5: a crash right after chunk k committed (even the last) loses and repeats nothing."""
    for k in (1, CHUNKS // 2, CHUNKS):
        run, events = interrupted_run(bench, k, how="crash")
        assert_same(bench.baseline, run, k)
        assert "import.resumed" in events, f"after chunk {k}"


def test_crash_inside_a_chunk_then_resume(bench: Bench) -> None:
    """SPEC 5: report lines written after the last checkpoint (a crash before the
    commit) are dropped on resume, never repeated, nor left half-written."""
    baseline_lines = bench.baseline.reports.errors.split(b"\r\n")
    for k in (1, CHUNKS // 2):
        # The error lines of the next chunk exactly as its rolled-back attempt
        # appended them, then the start of one more line cut by the crash.
        next_chunk = [
            line
            for line in baseline_lines[1:]
            if line and k * CHUNK_ROWS < int(line.split(b",")[1]) <= (k + 1) * CHUNK_ROWS
        ]
        assert next_chunk, f"chunk {k + 1} has errors to repeat"

        def crash_leftovers(import_id: int, lines: list[bytes] = next_chunk) -> None:
            errors_path, retry_path = importer.work_paths(bench.cfg, import_id)
            with errors_path.open("ab") as fh:
                fh.write(b"\r\n".join(lines) + b"\r\n" + b'999,999,"PG::Unique')
            with retry_path.open("ab") as fh:
                fh.write(b"e1,+12025550000,d1,half a ro")

        run, events = interrupted_run(bench, k, between=crash_leftovers)
        assert_same(bench.baseline, run, k)
        assert "import.resumed" in events, f"after chunk {k}"


def test_failure_inside_a_chunk_then_resume(bench: Bench) -> None:
    """SPEC 5: a chunk that fails before its commit (report lines already written)
    is redone whole on resume: no line missing, none repeated."""
    for k in (0, 1, CHUNKS // 2, CHUNKS - 1):
        run, events = interrupted_run(bench, k, how="rollback")
        assert_same(bench.baseline, run, k)
        assert "import.completed" in events, f"after chunk {k}"


LAYERED = (".gz", ".zip", ".pgp", ".gz.pgp")


def layered_bench(bench: Bench, keys: Keys, suffix: str) -> Bench:
    """The same file under ``suffix`` (SPEC 11), with personsd's GnuPG home configured."""
    path = bench.path.with_name(f"nightly.persons{suffix}")
    path.write_bytes(wrap(bench.path.read_bytes(), suffix, keys))
    return replace(bench, path=path, cfg=with_pgp_home(bench.cfg, keys))


def assert_same_content(expected: Run, actual: Run, k: int) -> None:
    """As :func:`assert_same`, the summary's file, size, hash and layers aside."""
    assert expected.persons == actual.persons, f"after chunk {k}"
    assert expected.reports.errors == actual.reports.errors, f"after chunk {k}"
    assert expected.reports.retry == actual.reports.retry, f"after chunk {k}"
    aside = ("file", "sha256", "bytes", "layers")
    want = {k: v for k, v in expected.reports.stable_summary().items() if k not in aside}
    got = {k: v for k, v in actual.reports.stable_summary().items() if k not in aside}
    assert want == got, f"after chunk {k}"


@pytest.mark.parametrize("suffix", LAYERED)
def test_stop_or_crash_then_resume_through_each_layer(
    bench: Bench, pgp_keys: Keys, suffix: str
) -> None:
    """SPEC 11: through gzip, zip and PGP, resume from the plain offset is exact."""
    layered = layered_bench(bench, pgp_keys, suffix)
    for k in (1, 2, CHUNKS // 2, CHUNKS - 1):
        run, events = interrupted_run(layered, k)
        assert_same_content(bench.baseline, run, k)
        assert expected_layers(suffix) == run.reports.summary["layers"]
        assert "import.resumed" in events, f"after chunk {k}"
    run, _ = interrupted_run(layered, CHUNKS // 3, how="crash")
    assert_same_content(bench.baseline, run, CHUNKS // 3)


def expected_layers(suffix: str) -> list[str]:
    return VARIANTS[suffix]


@pytest.mark.parametrize("suffix", [".zip", ".gz.pgp"])
def test_a_layered_file_validated_in_a_second_process(
    bench: Bench, pgp_keys: Keys, suffix: str
) -> None:
    """SPEC 11: the validator process reads the plain stream through the same layers."""
    layered = layered_bench(bench, pgp_keys, suffix)
    tenant = fresh_tenant(bench.engine)
    import_id = importer.create(bench.engine, tenant=tenant.name, path=layered.path, source="cli")
    outcome = importer.run(bench.engine, layered.cfg, import_id, validate_in="process")
    run = Run.of(bench.engine, layered.cfg, tenant, outcome)
    assert_same_content(bench.baseline, run, 0)
