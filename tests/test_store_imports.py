"""store.imports: records, checkpoints, duplicates and claiming, on both databases."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, Engine

from personsd.errors import LeaseLost, UnknownImport
from personsd.store import db, imports, tenants
from personsd.store import queue as store_queue
from personsd.store.imports import Checkpoint, ImportRecord

T0 = datetime(2026, 11, 23, 2, 15, tzinfo=UTC)


@pytest.fixture
def tenant_ids(engine: Engine) -> tuple[int, int]:
    with db.write_tx(engine) as conn:
        return tenants.add_tenant(conn, "acme"), tenants.add_tenant(conn, "beta")


@pytest.fixture
def acme(tenant_ids: tuple[int, int]) -> int:
    return tenant_ids[0]


def queue(conn: Connection, tenant_id: int, name: str, minute: int, sha256: str = "a" * 64) -> int:
    return imports.create(
        conn,
        tenant_id=tenant_id,
        file_name=name,
        sha256=sha256,
        bytes=212,
        source="watcher",
        work_path=f"/state/work/{name}",
        received_at=T0 + timedelta(minutes=minute),
    )


def test_create_and_get(engine: Engine, tenant_ids: tuple[int, int]) -> None:
    """A new import reads back queued, with zero counters and an empty checkpoint."""
    with db.write_tx(engine) as conn:
        import_id = queue(conn, tenant_ids[0], "x.persons", 0)
        record = imports.get(conn, import_id)
    expected = ImportRecord(
        id=import_id, tenant_id=tenant_ids[0], file_name="x.persons", sha256="a" * 64,
        bytes=212, status="queued", source="watcher", work_path="/state/work/x.persons",
        attempts=0, received_at=T0, started_at=None, finished_at=None, duplicate_of=None,
        last_error=None, claimed_by=None, claimed_at=None,
        next_offset=None, next_line=None, next_row=0, rows_total=0, rows_succeeded=0,
        rows_failed=0, rows_created=0, rows_updated=0, error_counts={}, errors_bytes=0,
        retry_bytes=0, retry_rows=0, file_error_class=None, file_error_message=None,
        reports_published=False, not_before=None, waits=0,
    )  # fmt: skip
    assert expected == record
    assert Checkpoint() == record.checkpoint


def test_checkpoint_round_trip(engine: Engine, tenant_ids: tuple[int, int]) -> None:
    """A saved checkpoint reads back equal and renews the lease it is written under."""
    checkpoint = Checkpoint(
        next_offset=10_000_000_000, next_line=5003, next_row=5000, rows_total=5000,
        rows_succeeded=4990, rows_failed=10, rows_created=4000, rows_updated=990,
        error_counts={"MobilePhoneErrors::InvalidMDNFormat": 7, "PG::UniqueViolation": 3},
        errors_bytes=4096, retry_bytes=12, retry_rows=1,
    )  # fmt: skip
    with db.write_tx(engine) as conn:
        import_id = queue(conn, tenant_ids[0], "x.persons", 0)
        imports.save_checkpoint(conn, import_id, checkpoint)
    with engine.connect() as conn:
        record = imports.get(conn, import_id)
    assert checkpoint == record.checkpoint
    held = claim_lease(engine, "i1", lease=1.0)
    assert held is not None
    with db.write_tx(engine) as conn:
        imports.save_checkpoint(conn, import_id, checkpoint, replace(held.lease, seconds=60.0))
    with engine.connect() as conn:
        record = imports.get(conn, import_id)
    assert record.lease_expires is not None and record.lease_expires.tzinfo is UTC
    assert record.lease_expires > datetime.now(UTC) + timedelta(seconds=30)


def test_checkpoint_refuses_negative_counts() -> None:
    """Checkpoint counters are non-negative integers."""
    with pytest.raises(ValueError, match="rows_failed"):
        Checkpoint(rows_failed=-1)
    with pytest.raises(ValueError, match="error_counts"):
        Checkpoint(error_counts={"x": -1})


def test_set_status_and_list(engine: Engine, tenant_ids: tuple[int, int]) -> None:
    """set_status changes status and named columns; list_imports filters by tenant."""
    acme, beta = tenant_ids
    with db.write_tx(engine) as conn:
        first = queue(conn, acme, "a.persons", 0)
        second = queue(conn, beta, "b.persons", 1)
        imports.set_status(conn, first, "running")
        imports.set_status(
            conn, first, "rejected", finished_at=T0, file_error_class="C",
            file_error_message="M", reports_published=True, error_counts={"C": 1},
        )  # fmt: skip
        with pytest.raises(ValueError, match="tenant_id"):
            imports.set_status(conn, first, "queued", tenant_id=beta)
        with pytest.raises(ValueError, match="unknown import status"):
            imports.set_status(conn, first, "done")
    with engine.connect() as conn:
        record = imports.get(conn, first)
        every = [r.id for r in imports.list_imports(conn)]
        of_beta = [r.id for r in imports.list_imports(conn, beta)]
        with pytest.raises(UnknownImport, match="import 999 does not exist"):
            imports.get(conn, 999)
    assert ("rejected", T0, "C", "M", True, {"C": 1}) == (
        record.status, record.finished_at, record.file_error_class,
        record.file_error_message, record.reports_published, record.error_counts,
    )  # fmt: skip
    assert ([first, second], [second]) == (every, of_beta)


def test_find_duplicate(engine: Engine, tenant_ids: tuple[int, int]) -> None:
    """The latest earlier import of the same tenant with the same sha256 is the duplicate."""
    acme, beta = tenant_ids
    with db.write_tx(engine) as conn:
        one = queue(conn, acme, "1.persons", 0, "x" * 64)
        queue(conn, acme, "2.persons", 1, "y" * 64)
        three = queue(conn, acme, "3.persons", 2, "x" * 64)
        other = queue(conn, beta, "4.persons", 3, "x" * 64)
        four = queue(conn, acme, "5.persons", 4, "x" * 64)
        found = (
            imports.find_duplicate(conn, acme, "x" * 64, four),
            imports.find_duplicate(conn, acme, "x" * 64, three),
            imports.find_duplicate(conn, acme, "x" * 64, one),
            imports.find_duplicate(conn, beta, "x" * 64, other),
        )
    assert (three, one, None, None) == found


def claim_lease(
    engine: Engine,
    instance: str,
    busy: set[int] | None = None,
    *,
    lease: float = 30.0,
    single: bool = False,
) -> store_queue.Claim | None:
    with db.write_tx(engine) as conn:
        return store_queue.claim_next(
            conn,
            instance=instance,
            tenants_busy=busy or set(),
            lease_seconds=lease,
            single_daemon=single,
        )


def claim(engine: Engine, instance: str, **options: Any) -> ImportRecord | None:
    """claim_lease's import record, if it claimed one."""
    found = claim_lease(engine, instance, **options)
    return None if found is None else found.record


def must_claim(engine: Engine, instance: str, **options: Any) -> store_queue.Claim:
    """claim_lease where the test's arrangement leaves an import to claim."""
    found = claim_lease(engine, instance, **options)
    assert found is not None
    return found


def queued(engine: Engine, tenant_id: int, *names: str) -> list[int]:
    """Queue ``names`` for one tenant, a minute apart in that order; their import ids."""
    with db.write_tx(engine) as conn:
        return [queue(conn, tenant_id, name, minute) for minute, name in enumerate(names)]


def running(engine: Engine, tenant_id: int, instance: str, **options: Any) -> store_queue.Claim:
    """The tenant's one queued import, as ``instance`` claimed it."""
    (import_id,) = queued(engine, tenant_id, "a.persons")
    found = must_claim(engine, instance, **options)
    assert import_id == found.record.id
    return found


def expire(engine: Engine, import_id: int) -> None:
    """Move the lease's expiry into the past, as if its holder stopped renewing it."""
    with db.write_tx(engine) as conn:
        imports.set_status(conn, import_id, "running", lease_expires=T0)


def test_claim_oldest_first_one_per_tenant(engine: Engine, tenant_ids: tuple[int, int]) -> None:
    """Claims take the oldest queued import of a tenant with nothing running, by received_at."""
    acme, beta = tenant_ids
    with db.write_tx(engine) as conn:
        a_late = queue(conn, acme, "a2.persons", 5)
        a_early = queue(conn, acme, "a1.persons", 1)
        b_tie_z = queue(conn, beta, "z.persons", 3)
        b_tie_a = queue(conn, beta, "a.persons", 3)
    got = [claim(engine, "i1"), claim(engine, "i2"), claim(engine, "i2", busy={beta})]
    assert [a_early, b_tie_a, None] == [r.id if r else None for r in got]
    first = got[0]
    assert first is not None
    assert ("running", "i1", 0) == (first.status, first.claimed_by, first.attempts)
    assert ("i1", 1) == (first.lease_holder, first.lease_generation)
    assert first.started_at is not None
    with db.write_tx(engine) as conn:
        imports.set_status(conn, a_early, "completed")
        imports.set_status(conn, b_tie_a, "completed")
    order = [claim(engine, "i2"), claim(engine, "i2", busy={beta})]
    assert [b_tie_z, a_late] == [r.id if r else None for r in order]


def test_a_tenants_oldest_file_goes_first_even_when_a_later_one_is_older_by_id(
    engine: Engine, acme: int
) -> None:
    """The oldest unfinished file of a tenant blocks its later ones on every instance."""
    first, second = queued(engine, acme, "first.persons", "second.persons")
    assert first == must_claim(engine, "i1").record.id
    expire(engine, first)
    # Expired, not finished: the takeover resumes it; the second file still waits.
    again = must_claim(engine, "i2")
    assert (first, "i1", 2) == (again.record.id, again.taken_from, again.lease.generation)
    assert None is claim(engine, "i3")
    with db.write_tx(engine) as conn:
        imports.set_status(conn, first, "completed")
    assert second == must_claim(engine, "i3").record.id


def test_a_live_lease_is_never_taken_and_an_expired_one_is(engine: Engine, acme: int) -> None:
    """Another instance takes a running import only once its lease has expired (SPEC 12)."""
    import_id, _ = queued(engine, acme, "a.persons", "b.persons")
    assert None is must_claim(engine, "i1", lease=60).taken_from
    assert None is claim(engine, "i1", busy={acme})
    assert None is claim(engine, "i2")
    expire(engine, import_id)
    taken = must_claim(engine, "i2")
    record = taken.record
    assert (import_id, "i2", "i2", 2, 0) == (
        record.id, record.claimed_by, record.lease_holder, record.lease_generation, record.attempts
    )  # fmt: skip
    assert "i1" == taken.taken_from
    assert record.lease_expires is not None and record.lease_expires > datetime.now(UTC)


def test_a_restarted_instance_reclaims_its_own_live_lease(engine: Engine, acme: int) -> None:
    """The same configured instance, restarted, resumes its import without waiting."""
    first = running(engine, acme, "node-a", lease=60)
    again = must_claim(engine, "node-a", lease=60)
    assert (first.record.id, 2) == (again.record.id, again.lease.generation)


def test_sqlite_single_daemon_resumes_abandoned_imports_whatever_the_lease(
    engine: Engine, acme: int
) -> None:
    """With one daemon per database, a running import it does not run now is abandoned."""
    import_id = running(engine, acme, "host:1:aa", lease=3600).record.id
    assert None is claim(engine, "host:2:bb", busy={acme}, single=True)
    again = must_claim(engine, "host:2:bb", single=True).record
    assert (import_id, 0) == (again.id, again.attempts)  # no claim spends one


def test_concurrent_claims_never_share_a_tenant(
    engine: Engine, tenant_ids: tuple[int, int]
) -> None:
    """Two instances claiming at once get different tenants, never two imports of one."""
    acme, beta = tenant_ids
    with db.write_tx(engine) as conn:
        a1 = queue(conn, acme, "a1.persons", 0)
        queue(conn, acme, "a2.persons", 1)
        b1 = queue(conn, beta, "b1.persons", 2)
    results: list[ImportRecord | None] = []
    with db.write_tx(engine) as conn:
        first = store_queue.claim_next(conn, instance="i1", tenants_busy=set(), lease_seconds=30)
        worker = threading.Thread(target=lambda: results.append(claim(engine, "i2")))
        worker.start()
        worker.join(0.3)  # blocked behind this uncommitted claim
        assert worker.is_alive()
    worker.join(10)
    assert first is not None and results[0] is not None
    assert (a1, b1) == (first.record.id, results[0].id)


def test_a_stale_generations_checkpoint_fails_and_rolls_the_chunk_back(
    engine: Engine, acme: int
) -> None:
    """Fencing: once taken over, the old holder's checkpoint write raises LeaseLost, undone."""
    old = running(engine, acme, "i1", lease=60)
    import_id = old.record.id
    ours = Checkpoint(next_offset=100, next_line=5, next_row=3, rows_total=3)
    with db.write_tx(engine) as conn:
        imports.save_checkpoint(conn, import_id, ours, old.lease)
    expire(engine, import_id)
    new = must_claim(engine, "i2", lease=60)
    assert old.lease.generation + 1 == new.lease.generation
    stale = Checkpoint(next_offset=200, next_line=9, next_row=7, rows_total=7)
    with pytest.raises(LeaseLost), db.write_tx(engine) as conn:
        tenants.add_tenant(conn, "written-in-the-chunk")
        imports.save_checkpoint(conn, import_id, stale, old.lease)
    with engine.connect() as conn:
        assert ours == imports.get(conn, import_id).checkpoint
        assert None is tenants.get_tenant(conn, "written-in-the-chunk")
    with db.write_tx(engine) as conn:
        imports.save_checkpoint(conn, import_id, stale, new.lease)
        assert stale == imports.get(conn, import_id).checkpoint


def test_fence_and_renew_report_a_lost_lease(engine: Engine, tenant_ids: tuple[int, int]) -> None:
    """The heartbeat's renew returns lost leases; fence raises; a release lets others claim."""
    acme, beta = tenant_ids
    with db.write_tx(engine) as conn:
        a = queue(conn, acme, "a.persons", 0)
        queue(conn, beta, "b.persons", 1)
    held_a = must_claim(engine, "i1", lease=60)
    held_b = must_claim(engine, "i1", busy={acme}, lease=60)
    expire(engine, a)
    assert a == must_claim(engine, "i2", lease=60).record.id
    with db.write_tx(engine) as conn:
        assert [held_a.lease] == imports.renew(conn, [held_a.lease, held_b.lease])
    with pytest.raises(LeaseLost), db.write_tx(engine) as conn:
        imports.fence(conn, held_a.lease)
    with db.write_tx(engine) as conn:
        imports.release(conn, held_b.lease)
    released = must_claim(engine, "i3", lease=60)
    assert (held_b.record.id, "i1") == (released.record.id, released.taken_from)


def test_lease_is_validated_when_built() -> None:
    """A lease without holder, or with a non-positive duration, is refused."""
    with pytest.raises(ValueError):
        imports.Lease(import_id=1, holder="", generation=1, seconds=30)
    with pytest.raises(ValueError):
        imports.Lease(import_id=1, holder="i1", generation=1, seconds=0)


# PostgreSQL only: SQLite runs no heartbeat (one daemon, one writer).
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_renew_skips_a_row_its_own_chunk_holds_instead_of_waiting(
    engine: Engine, acme: int
) -> None:
    """The heartbeat never waits behind a chunk's transaction (PostgreSQL row locks)."""
    held = running(engine, acme, "i1", lease=60)
    with db.write_tx(engine) as chunk:
        imports.fence(chunk, held.lease)  # the chunk's transaction locks the row
        started = time.monotonic()
        with db.write_tx(engine) as beat:
            assert [] == imports.renew(beat, [held.lease])
        assert time.monotonic() - started < 5


def test_an_abrupt_end_is_counted_and_a_clean_stop_is_not(engine: Engine, acme: int) -> None:
    """SPEC 5: a run that ends abruptly counts one abrupt end (no attempt); a released one none."""
    first = running(engine, acme, "host:1:aa", single=True)
    assert 0 == first.record.abrupt_ends
    # kill -9: the lease is left as it was; the next daemon finds it running.
    crashed = must_claim(engine, "host:2:bb", single=True)
    assert (first.record.id, 1, 0) == (
        crashed.record.id, crashed.record.abrupt_ends, crashed.record.attempts
    )  # fmt: skip
    # SIGTERM: the lease is released; the next claim counts nothing more.
    with db.write_tx(engine) as conn:
        imports.release(conn, crashed.lease)
    clean = must_claim(engine, "host:3:cc", single=True).record
    assert (1, 0) == (clean.abrupt_ends, clean.attempts)
