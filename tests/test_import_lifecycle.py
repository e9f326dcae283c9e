"""SPEC 5 import life cycle: one state table, waits that spend nothing, attempts spent by bugs."""

from __future__ import annotations

import errno
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, event, text
from structlog.testing import capture_logs

from engine_helpers import migrate_with_tenant
from fault_helpers import fill, tmpfs
from personsd import admin, config, importer
from personsd.logging import Event
from personsd.retry import RetryPolicy
from personsd.store import db
from personsd.store import imports as store_imports
from personsd.store import tenants as store_tenants
from personsd.store.faults import Kind, classify
from personsd.store.imports import (
    TRANSITIONS,
    IllegalTransition,
    ImportRecord,
    ImportStatus,
    transition,
)
from personsd.workers import Workers, instance_name
from polling import wait_for

ROWS = "external_person_id\n" + "".join(f"p{n}\n" for n in range(40))
FAST = RetryPolicy(base=0.05, cap=0.4)

statuses = st.sampled_from(list(ImportStatus))


def test_every_allowed_transition_is_taken() -> None:
    """Each (from, to) of TRANSITIONS is accepted and returns the new status."""
    assert sorted(TRANSITIONS) == sorted(
        (before, transition(before, after)) for before, after in TRANSITIONS
    )


@given(before=statuses, after=statuses)
def test_every_other_transition_is_refused(before: ImportStatus, after: ImportStatus) -> None:
    """A change outside TRANSITIONS raises; staying in a status is no change."""
    if before == after or (before, after) in TRANSITIONS:
        assert after == transition(before, after)
    else:
        with pytest.raises(IllegalTransition):
            transition(before, after)


def test_a_finished_import_never_goes_back_to_the_queue(db_url: str, tmp_path: Path) -> None:
    """completed -> queued (observation 7's symptom) is refused and changes nothing."""
    engine = db.connect(db_url)
    db.upgrade(engine)
    with db.write_tx(engine) as conn:
        tenant = store_tenants.add_tenant(conn, "acme")
        import_id = store_imports.create(
            conn, tenant_id=tenant, file_name="a.persons", sha256="0" * 64, bytes=1,
            source="watcher", work_path=str(tmp_path / "a"), received_at=datetime.now(UTC),
        )  # fmt: skip
        store_imports.set_status(conn, import_id, "running")
        store_imports.set_status(conn, import_id, "completed")
    with (
        pytest.raises(IllegalTransition, match="completed cannot become queued"),
        db.write_tx(engine) as conn,
    ):
        store_imports.set_status(conn, import_id, "queued")
    with engine.connect() as conn:
        assert "completed" == store_imports.get(conn, import_id).status
    engine.dispose()


# -- the workers, in-process on a real database -------------------------------


def _site(root: Path, db_url: str, max_attempts: int = 3) -> config.Config:
    cfg = config.parse(
        {
            "paths": {"root": str(root)},
            "database": {"url": db_url},
            "import": {"max_attempts": max_attempts, "carrier_lookup": "none", "workers": 1},
            # One name across the Workers a test builds: a restarted instance.
            "cluster": {"instance": "node-a"},
        },
        base=root,
        env={},
    )
    migrate_with_tenant(cfg, "acme")
    return cfg


def _queue(engine: Engine, cfg: config.Config, name: str = "a.persons") -> int:
    claimed = cfg.work_dir / "claimed" / "acme" / name
    claimed.parent.mkdir(parents=True, exist_ok=True)
    claimed.write_text(ROWS)
    return importer.create(engine, tenant="acme", path=claimed, source="sftp", file_name=name)


def _get(engine: Engine, import_id: int) -> ImportRecord:
    with engine.connect() as conn:
        return store_imports.get(conn, import_id)


def _sequence(engine: Engine) -> int:
    """The persons id sequence: ids a rolled-back chunk reserved stay burnt."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            return int(
                conn.execute(text("SELECT last_value FROM persons_person_id_seq")).scalar_one()
            )
        value = conn.execute(text("SELECT seq FROM sqlite_sequence WHERE name = 'persons'"))
        return int(value.scalar() or 0)


@pytest.fixture
def running() -> Iterator[list[Workers]]:
    """Workers started by a test, stopped at its end whatever happens."""
    started: list[Workers] = []
    yield started
    for workers in started:
        workers.stop.set()
        workers.join(time.monotonic() + 10)


def _start(engine: Engine, cfg: config.Config, running: list[Workers]) -> Workers:
    workers = Workers(engine=engine, cfg=cfg, stop=threading.Event(), policy=FAST)
    workers.start()
    running.append(workers)
    return workers


def _stop_after_archive(cfg: config.Config, import_id: int, running: list[Workers]) -> None:
    """Let the worker archive the file, then stop it (before its tmpfs goes away)."""
    archived = cfg.archive_dir / "acme" / f"{import_id}.a.persons"
    wait_for(archived.exists, what="the file archived")
    for workers in running:
        workers.stop.set()
        workers.join(time.monotonic() + 10)


def test_disk_full_waits_with_growing_pauses_and_spends_nothing(
    db_url: str, tmp_path: Path, running: list[Workers]
) -> None:
    """ENOSPC (a real full tmpfs): requeued with a growing pause, no attempt, no id burnt;
    completes once there is room."""
    with tmpfs(tmp_path / "root", "2m") as root:
        cfg = _site(root, db_url)
        engine = db.connect(db_url)
        import_id = _queue(engine, cfg)
        filler = fill(root)
        before = _sequence(engine)
        with capture_logs() as logs:
            _start(engine, cfg, running)
            wait_for(lambda: _get(engine, import_id).waits >= 4, what="four waits")
            waiting = [e for e in logs if e["event"] == Event.IMPORT_WAITING]
            record = _get(engine, import_id)
            assert (0, before) == (record.attempts, _sequence(engine))
            assert record.not_before is not None
            filler.unlink()
            wait_for(lambda: _get(engine, import_id).status == "completed", what="completed")
        _stop_after_archive(cfg, import_id, running)
        engine.dispose()
    assert [("acme", import_id, "a.persons", "errno ENOSPC")] * 3 == [
        (e["tenant"], e["import_id"], e["file"], e["reason"]) for e in waiting[:3]
    ]
    pauses = [e["retry_in"] for e in waiting[:4]]
    assert sorted(pauses) == pauses and pauses[0] < pauses[-1]
    assert "import.attempt_failed" not in {e["event"] for e in logs}


def test_an_internal_failure_spends_one_attempt_and_waits_before_the_next(
    db_url: str, tmp_path: Path, running: list[Workers]
) -> None:
    """A bug (EISDIR) spends exactly one attempt per run, then failed, quarantined, never more."""
    cfg = _site(tmp_path / "var", db_url, max_attempts=3)
    engine = db.connect(db_url)
    import_id = _queue(engine, cfg)
    work = Path(_get(engine, import_id).work_path)
    work.unlink()
    work.mkdir()  # opening it fails with IsADirectoryError every time
    with capture_logs() as logs:
        _start(engine, cfg, running)
        wait_for(lambda: _get(engine, import_id).status == "failed", what="failed")
        time.sleep(0.5)  # a looping worker would log more attempts meanwhile
    record = _get(engine, import_id)
    engine.dispose()
    failures = [e["attempt"] for e in logs if e["event"] == "import.attempt_failed"]
    assert [1, 2, 3] == failures
    assert (3, 0) == (record.attempts, record.waits)
    assert (cfg.quarantine_dir / "acme" / f"{import_id}.a.persons").is_dir()


def test_a_clean_stop_and_restarts_spend_no_attempt(db_url: str, tmp_path: Path) -> None:
    """SIGTERM's Interrupted and three restarts (re-claims) cost nothing; then one bug
    spends one attempt and does not quarantine."""
    cfg = _site(tmp_path / "var", db_url, max_attempts=3)
    cfg = config.parse(
        {
            "paths": {"root": str(cfg.root)},
            "database": {"url": db_url},
            "import": {"max_attempts": 3, "carrier_lookup": "none", "chunk_rows": 10},
            "cluster": {"instance": "node-a"},  # restarts of one instance
        },
        base=tmp_path,
        env={},
    )
    engine = db.connect(db_url)
    import_id = _queue(engine, cfg)
    for _ in range(3):  # three restarts: claimed again by the same instance
        workers = Workers(engine=engine, cfg=cfg, stop=threading.Event(), policy=FAST)
        claimed = workers._claim()
        assert claimed is not None and import_id == claimed[0].id
        workers.stop.set()  # SIGTERM: stopped at the first chunk boundary
        workers._run(*claimed)
    record = _get(engine, import_id)
    assert ("running", 0) == (record.status, record.attempts)
    work = Path(record.work_path)
    work.rename(work.with_suffix(".away"))  # one real internal error (ENOENT) next
    workers = Workers(engine=engine, cfg=cfg, stop=threading.Event(), policy=FAST)
    claimed = workers._claim()
    assert claimed is not None
    workers._run(*claimed)
    record = _get(engine, import_id)
    assert ("queued", 1) == (record.status, record.attempts)
    work.with_suffix(".away").rename(work)
    workers = Workers(engine=engine, cfg=cfg, stop=threading.Event(), policy=FAST)
    claimed = wait_for(workers._claim, timeout=5, what="the pause to end")
    workers._run(*claimed)
    record = _get(engine, import_id)
    engine.dispose()
    assert ("completed", 1, 40) == (record.status, record.attempts, record.rows_created)


def test_a_paused_import_holds_its_tenants_later_files(db_url: str, tmp_path: Path) -> None:
    """While a tenant's import waits (not_before ahead), none of its files is claimed."""
    cfg = _site(tmp_path / "var", db_url)
    engine = db.connect(db_url)
    first = _queue(engine, cfg, "a.persons")
    _queue(engine, cfg, "b.persons")
    # A pause of about a second: FAST's 50 ms could pass before the next claim on a busy machine.
    paused = RetryPolicy(base=1.0, cap=1.0)
    workers = Workers(engine=engine, cfg=cfg, stop=threading.Event(), policy=paused)
    claimed = workers._claim()
    assert claimed is not None and first == claimed[0].id
    record, lease = claimed
    workers._requeue(record, OSError(28, "No space left on device"), lease, spend_attempt=False)
    with workers._busy_lock:
        workers._busy.clear()
    assert None is workers._claim()
    again = wait_for(workers._claim, timeout=10, what="the pause to end")
    engine.dispose()
    assert first == again[0].id


def test_a_failed_claim_commit_leaves_the_tenant_free_postgresql(
    pg_url: str, tmp_path: Path
) -> None:
    """Observation 8: a COMMIT that fails (a deferred trigger raising) marks nothing busy."""
    cfg = _site(tmp_path / "var", pg_url)
    engine = db.connect(pg_url)
    import_id = _queue(engine, cfg)
    with db.write_tx(engine) as conn:
        conn.exec_driver_sql(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION USING ERRCODE = '53100'; END $$"
        )
        conn.exec_driver_sql(
            "CREATE CONSTRAINT TRIGGER refuse AFTER UPDATE ON imports "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    workers = Workers(engine=engine, cfg=cfg, stop=threading.Event(), policy=FAST)
    with pytest.raises(Exception, match="DiskFull"):
        workers._claim()
    assert 0 == workers.busy()
    with db.write_tx(engine) as conn:
        conn.exec_driver_sql("DROP TRIGGER refuse ON imports")
    claimed = workers._claim()
    engine.dispose()
    assert claimed is not None and import_id == claimed[0].id


def test_a_failed_claim_commit_leaves_the_tenant_free_sqlite(tmp_path: Path) -> None:
    """Observation 8 on SQLite: the claim's COMMIT hits a full disk; nothing marked busy."""
    with tmpfs(tmp_path / "dbdisk", "1m") as disk:
        url = f"sqlite:///{disk / 'persons.db'}"
        cfg = _site(tmp_path / "var", url)
        engine = db.connect(url)
        import_id = _queue(engine, cfg)
        # An open connection keeps the -shm and -wal files (the last one to
        # close deletes them); an empty WAL makes the COMMIT the first write.
        keeper = sqlite3.connect(disk / "persons.db")
        keeper.execute("SELECT count(*) FROM imports").fetchall()
        keeper.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        workers = Workers(engine=engine, cfg=cfg, stop=threading.Event(), policy=FAST)
        filler = fill(disk)
        with pytest.raises(Exception) as caught:
            workers._claim()
        assert (Kind.ENVIRONMENT, 0) == (classify(caught.value), workers.busy())
        filler.unlink()
        claimed = workers._claim()
        engine.dispose()
        keeper.close()
    assert claimed is not None and import_id == claimed[0].id


def test_disk_full_while_publishing_leaves_the_import_running_and_redoes_no_chunk(
    db_url: str, tmp_path: Path, running: list[Workers]
) -> None:
    """ENOSPC after the last chunk (publishing): not finished, nothing in the outbox; the
    retry publishes without redoing a chunk (no id reserved again)."""
    with tmpfs(tmp_path / "root", "2m") as root:
        cfg = _site(root, db_url)
        engine = db.connect(db_url)
        import_id = _queue(engine, cfg)
        filled: list[Path] = []

        def full_after_last_chunk(rows: int, _bytes: int) -> None:
            if rows == 40:
                filled.append(fill(root))

        with pytest.raises(OSError) as caught:
            importer.run(engine, cfg, import_id, on_chunk=full_after_last_chunk)
        record = _get(engine, import_id)
        ids = _sequence(engine)
        assert (Kind.ENVIRONMENT, "running", 40) == (
            classify(caught.value),
            record.status,
            record.rows_created,
        )
        assert [] == list(cfg.outbox("acme").iterdir())
        filled[0].unlink()
        with db.write_tx(engine) as conn:  # as a restart finds it: running and ours
            store_imports.set_status(conn, import_id, "running", claimed_by=instance_name(cfg))
        with capture_logs() as logs:
            _start(engine, cfg, running)
            wait_for(lambda: _get(engine, import_id).status == "completed", what="completed")
        _stop_after_archive(cfg, import_id, running)
        record = _get(engine, import_id)
        assert (ids, 40, 0) == (_sequence(engine), record.rows_created, record.attempts)
        assert [] == [e for e in logs if e["event"] == "import.progress"]
        engine.dispose()


def test_a_file_that_keeps_ending_the_process_is_failed_not_run_again(
    db_url: str, tmp_path: Path
) -> None:
    """SPEC 5: a poison file never loops: after MAX_ABRUPT_ENDS abrupt ends it is failed and
    quarantined without being run again; stops and waits never count."""
    from personsd.workers import MAX_ABRUPT_ENDS

    cfg = _site(tmp_path / "var", db_url)
    engine = db.connect(db_url)
    import_id = _queue(engine, cfg)
    with db.write_tx(engine) as conn:
        store_imports.set_status(conn, import_id, "queued", abrupt_ends=MAX_ABRUPT_ENDS - 1)
    workers = Workers(engine=engine, cfg=cfg, stop=threading.Event(), policy=FAST)
    claimed = workers._claim()
    assert claimed is not None
    # The process dies here (kill -9): nothing is released. The next process claims it.
    restarted = Workers(engine=engine, cfg=cfg, stop=threading.Event(), policy=FAST)
    again = restarted._claim()
    assert again is not None and MAX_ABRUPT_ENDS == again[0].abrupt_ends
    with capture_logs() as logs:
        restarted._run(*again)
    record = _get(engine, import_id)
    engine.dispose()
    assert ("failed", 0) == (record.status, record.attempts)
    assert "ended abruptly" in (record.last_error or "")
    assert [] == [e for e in logs if e["event"] == "import.started"]
    assert (cfg.quarantine_dir / "acme").is_dir()


# -- personsd import: the same accounting in the foreground ----------------------


def _impatient(url: str) -> Engine:
    """An engine that gives up on a lock another connection holds after 0.1 s."""
    engine = db.connect(url)

    def give_up_soon(dbapi_connection: Any, _record: object) -> None:
        cursor = dbapi_connection.cursor()
        if engine.dialect.name == "sqlite":
            cursor.execute("PRAGMA busy_timeout=100")
        else:
            cursor.execute("SET lock_timeout = 100")
            dbapi_connection.commit()  # a SET rolled back would be undone
        cursor.close()

    event.listen(engine, "connect", give_up_soon)
    return engine


def _hold_lock(url: str, until: Callable[[], bool]) -> threading.Thread:
    """Another connection holds the write lock (SQLite) or the imports table (PostgreSQL)
    until ``until()``; returns once it is held."""
    held = threading.Event()

    def hold() -> None:
        engine = db.connect(url)
        try:
            with db.write_tx(engine) as conn:
                if conn.dialect.name == "postgresql":
                    conn.exec_driver_sql("LOCK TABLE imports IN ACCESS EXCLUSIVE MODE")
                held.set()
                wait_for(until, what="the import to wait")
        finally:
            engine.dispose()

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert held.wait(10)
    return holder


def _cli_import(engine: Engine, tmp_path: Path) -> int:
    source = tmp_path / "a.persons"
    source.write_text(ROWS)
    return importer.create(engine, tenant="acme", path=source, source="cli", claimed_by="cli:t")


def test_personsd_import_waits_out_a_locked_database_spending_no_attempt(
    db_url: str, tmp_path: Path
) -> None:
    """SPEC 5 for `personsd import`: a database locked by another connection (a real lock)
    is an environment fault: waited out, no attempt spent, even with max_attempts 1."""
    cfg = _site(tmp_path / "var", db_url, max_attempts=1)
    engine = _impatient(db_url)
    import_id = _cli_import(engine, tmp_path)
    with capture_logs() as logs:

        def waited_twice() -> bool:
            return 2 <= sum(e["event"] == Event.IMPORT_WAITING for e in logs)

        holder = _hold_lock(db_url, waited_twice)
        outcome = admin.run_with_attempts(
            engine, cfg, import_id, tenant="acme", file_name="a.persons",
            policy=RetryPolicy(base=0.2, cap=0.4),
        )  # fmt: skip
        holder.join(10)
    engine.dispose()
    reason = "sqlite SQLITE_BUSY" if db_url.startswith("sqlite") else "sqlstate 55P03"
    waiting = [e for e in logs if e["event"] == Event.IMPORT_WAITING]
    assert [("acme", import_id, "a.persons", reason)] * 2 == [
        (e["tenant"], e["import_id"], e["file"], e["reason"]) for e in waiting[:2]
    ]
    assert ("completed", 40) == (outcome.summary.status, outcome.summary.rows.created)
    assert [] == [e for e in logs if e["event"] == Event.IMPORT_ATTEMPT_FAILED]


def _foreground(
    cfg: config.Config, monkeypatch: pytest.MonkeyPatch, run: Callable[..., importer.Outcome]
) -> tuple[importer.Outcome, list[int], list[int]]:
    """`personsd import`'s loop over a fresh import whose runs are ``run``: its outcome, the
    waits its import.waiting lines count and the attempts its import.attempt_failed ones do."""
    engine = db.connect(cfg.database.url)
    import_id = _cli_import(engine, cfg.root)
    monkeypatch.setattr(importer, "run", run)
    with capture_logs() as logs:
        outcome = admin.run_with_attempts(
            engine, cfg, import_id, tenant="acme", file_name="a.persons",
            policy=RetryPolicy(base=0.01, cap=0.02),
        )  # fmt: skip
    engine.dispose()
    return (
        outcome,
        [e["waits"] for e in logs if e["event"] == Event.IMPORT_WAITING],
        [e["attempt"] for e in logs if e["event"] == Event.IMPORT_ATTEMPT_FAILED],
    )


def test_personsd_import_spends_attempts_on_an_environment_fault_past_its_waits(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A foreground import never loops: a fault that outlasts MAX_WAITS waits in a row spends
    an attempt each run, then the import is failed."""

    def disk_full(*_args: object, **_kwargs: object) -> importer.Outcome:
        raise OSError(errno.ENOSPC, "No space left on device")

    cfg = _site(tmp_path / "var", db_url, max_attempts=2)
    outcome, waits, attempts = _foreground(cfg, monkeypatch, disk_full)
    assert list(range(1, admin.MAX_WAITS + 1)) == waits
    assert [1, 2] == attempts
    assert "failed" == outcome.summary.status


def test_personsd_import_counts_its_waits_in_a_row(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk committed between two faults starts the count of waits again: only a fault
    that outlasts MAX_WAITS waits without progress spends an attempt."""
    runs = iter(range(2 * admin.MAX_WAITS + 1))
    real = importer.run

    def full_at_first(
        engine: Engine, cfg: config.Config, import_id: int, **kw: Any
    ) -> importer.Outcome:
        run = next(runs)
        if run == 2 * admin.MAX_WAITS:
            return real(engine, cfg, import_id, **kw)
        if run == admin.MAX_WAITS:
            kw["on_chunk"](1, 1)  # a chunk committed, then the disk is full again
        raise OSError(errno.ENOSPC, "No space left on device")

    cfg = _site(tmp_path / "var", db_url, max_attempts=1)
    outcome, waits, attempts = _foreground(cfg, monkeypatch, full_at_first)
    assert list(range(1, admin.MAX_WAITS + 1)) * 2 == waits
    assert [] == attempts
    assert "completed" == outcome.summary.status
