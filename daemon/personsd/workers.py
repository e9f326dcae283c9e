"""Import workers: claim the next import, run it, archive or quarantine its file.

One import per tenant at a time, oldest first (``store.queue.claim_next``),
up to ``import.workers`` tenants in parallel. What the database says is the
queue, so several daemons on one PostgreSQL share it safely (SPEC 12): each
import is held under a lease that a heartbeat thread renews every third of
``cluster.lease_seconds``; every write of the import is fenced by the
lease's generation, so an instance that lost its lease (frozen, cut off)
stops that import at its next write and leaves it to the new holder.

Failure policy (SPEC 5, ``store.faults`` tells the kinds apart by codes):
- the partner's bad data never reaches here as an exception (rows go to the
  report, a bad file is ``rejected``);
- the environment (database unreachable or locked, disk full) is nobody's
  fault: the import goes back to the queue with a pause (``not_before``) from
  the retry policy, counting a wait, not an attempt (``import.waiting``);
- anything else is our fault: an attempt is spent and the import is retried
  from its checkpoint after a pause, up to ``import.max_attempts`` times, then
  ``failed`` and its file quarantined. A stop or a restart spends nothing.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine

from personsd import importer

# Re-exported: the archive's names and sweep live in `archive`.
from personsd.archive import NAME_MAX as NAME_MAX
from personsd.archive import kept_name, sweep_archive
from personsd.config import Config
from personsd.errors import LeaseLost
from personsd.instance import instance_name
from personsd.logging import Event, get_logger
from personsd.retry import RetryPolicy
from personsd.store import faults
from personsd.store import imports as store_imports
from personsd.store import leases as store_leases
from personsd.store import queue as store_queue
from personsd.store import tenants as store_tenants
from personsd.store.db import write_tx
from personsd.store.imports import ImportRecord
from personsd.store.leases import Lease

log = get_logger("personsd.workers")

# Runs of one import that may end abruptly (kill -9, a crash, a lost instance)
# before it is failed and its file quarantined: a file that kills the process
# is caught, while crashes of the machine around an import (a restart, a
# deploy) do not fail a good file. Not attempts: those are for internal
# failures only (SPEC 5), and a stop or a wait spends none.
MAX_ABRUPT_ENDS = 20

__all__ = ["NAME_MAX", "Workers", "instance_name", "kept_name", "remove_work", "sweep_archive"]


class Workers:
    """``import.workers`` threads sharing one queue (the imports table)."""

    def __init__(
        self,
        *,
        engine: Engine,
        cfg: Config,
        stop: threading.Event,
        on_activity: Callable[[str], object] | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.engine = engine
        self.cfg = cfg
        self.stop = stop
        self.instance = instance_name(cfg)
        self.on_activity = on_activity or (lambda _text: None)
        self.policy = policy or RetryPolicy(base=0.5, cap=30.0)
        self._wake = threading.Event()
        self._busy: set[int] = set()
        self._busy_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        # The leases this instance holds now, by import id (the heartbeat's list).
        self._leases: dict[int, Lease] = {}
        # A renewal and a release never interleave: a renewal that read the
        # lease list before a release would otherwise extend a released lease,
        # keeping another instance waiting a lease and counting an abrupt end.
        self._renew_lock = threading.Lock()
        # With SQLite one daemon serves the database (instance.hold_lock): any
        # running import it does not run now is abandoned, and no heartbeat
        # competes with the chunks for the single write lock.
        self.single_daemon = engine.dialect.name == "sqlite"
        self.last_beat = time.monotonic()

    def start(self) -> None:
        for index in range(self.cfg.imports.workers):
            thread = threading.Thread(target=self._loop, name=f"worker-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if not self.single_daemon:
            beat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
            beat.start()
            self._threads.append(beat)

    def wake(self) -> None:
        self._wake.set()

    def join(self, deadline: float) -> bool:
        """Wait for the workers until ``deadline`` (monotonic); True if all stopped."""
        self._wake.set()
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def busy(self) -> int:
        with self._busy_lock:
            return len(self._busy)

    def _claim(self) -> tuple[ImportRecord, Lease] | None:
        with self._busy_lock:
            with write_tx(self.engine) as conn:
                claim = store_queue.claim_next(
                    conn,
                    instance=self.instance,
                    tenants_busy=set(self._busy),
                    lease_seconds=self.cfg.cluster.lease_seconds,
                    single_daemon=self.single_daemon,
                )
            if claim is None:
                return None
            # Only once committed: a failed COMMIT must not leave the tenant busy.
            self._busy.add(claim.record.tenant_id)
            self._leases[claim.record.id] = claim.lease
        if claim.taken_from is not None and claim.taken_from != self.instance:
            log.warning(
                Event.CLUSTER_TAKEOVER,
                import_id=claim.record.id,
                file=claim.record.file_name,
                tenant_id=claim.record.tenant_id,
                previous=claim.taken_from,
                instance=self.instance,
                generation=claim.lease.generation,
                row=claim.record.next_row,
            )
        return claim.record, claim.lease

    def _heartbeat(self) -> None:
        """Renew this instance's leases every third of ``cluster.lease_seconds``."""
        period = self.cfg.cluster.lease_seconds / 3
        while not self.stop.wait(period):
            with self._renew_lock:
                with self._busy_lock:
                    leases = list(self._leases.values())
                if not leases:
                    continue
                try:
                    with write_tx(self.engine) as conn:
                        lost = store_leases.renew(conn, leases)
                except Exception as exc:  # noqa: BLE001 -- database down: fencing keeps writes safe
                    log.warning(Event.CLUSTER_HEARTBEAT_FAILED, error=repr(exc)[:300])
                    continue
            for lease in lost:
                self._lost(lease, "heartbeat")

    def _lost(self, lease: Lease, noticed_by: str) -> None:
        with self._busy_lock:
            if self._leases.get(lease.import_id) != lease:
                return  # already reported
            del self._leases[lease.import_id]
        log.warning(
            Event.CLUSTER_LEASE_LOST,
            import_id=lease.import_id,
            instance=self.instance,
            generation=lease.generation,
            noticed_by=noticed_by,
        )

    def _loop(self) -> None:
        outages = 0
        while not self.stop.is_set():
            self.last_beat = time.monotonic()
            try:
                claimed = self._claim()
            except Exception as exc:  # noqa: BLE001 -- cannot claim: wait and retry
                outages += 1
                delay = self.policy.delay(outages)
                kind = faults.classify(exc)
                log.warning(
                    Event.DB_UNAVAILABLE,
                    kind=str(kind),
                    reason=faults.reason(exc),
                    error=repr(exc)[:300],
                    retry_in=round(delay, 2),
                )
                self._wake.wait(delay)  # a queued file or a stop ends the wait early
                self._wake.clear()
                continue
            outages = 0
            if claimed is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            record, lease = claimed
            try:
                self._run(record, lease)
            finally:
                with self._busy_lock:
                    self._busy.discard(record.tenant_id)
                    self._leases.pop(record.id, None)
            self._wake.set()  # the tenant may have a next file

    def _run(self, record: ImportRecord, lease: Lease) -> None:
        self.on_activity(f"importing {record.file_name} (#{record.id})")
        if record.abrupt_ends >= MAX_ABRUPT_ENDS:
            # A file whose import keeps ending the process (SPEC 5: a poison
            # file never loops); a clean stop or a wait never counts here.
            reason = f"its import ended abruptly {record.abrupt_ends} times (kill, crash)"
            self._give_up(record, lease, reason, attempts=record.attempts)
            return
        try:
            outcome = importer.run(
                self.engine,
                self.cfg,
                record.id,
                stop=self.stop,
                on_chunk=lambda _rows, _done: self._beat(),
                lease=lease,
            )
        except importer.Interrupted:
            self._release(lease)
            return  # still running: resumed from its checkpoint, here after restart or elsewhere
        except LeaseLost:
            # Another instance runs it now; the chunk rolled back, nothing to undo.
            self._lost(lease, "write")
            return
        except Exception as exc:  # noqa: BLE001 -- classified below
            self._failed(record, exc, lease)
            return
        if outcome.record.source != "cli":
            self._move(record, self.cfg.archive_dir)
        remove_work(self.cfg, record.id)

    def _release(self, lease: Lease) -> None:
        """A clean stop: let another instance take the import over at once.

        Also on SQLite (one daemon): the released lease tells the next claim
        that this run ended cleanly, so it counts no abrupt end.
        """
        with self._renew_lock:
            with self._busy_lock:
                self._leases.pop(lease.import_id, None)  # the heartbeat lets it go
            try:
                with write_tx(self.engine) as conn:
                    store_leases.release(conn, lease)
            except Exception as exc:  # noqa: BLE001 -- it then expires by itself
                log.warning(
                    Event.CLUSTER_RELEASE_FAILED, import_id=lease.import_id, error=repr(exc)[:300]
                )

    def _beat(self) -> None:
        self.last_beat = time.monotonic()

    def _failed(self, record: ImportRecord, exc: BaseException, lease: Lease) -> None:
        """Environment: wait, no attempt spent. Internal: spend one; the last fails it."""
        if faults.classify(exc) is not faults.Kind.INTERNAL:
            # Partner data never gets here as an exception (a bad file is
            # rejected by the importer): anything else is the environment's.
            self._requeue(self._current(record), exc, lease, spend_attempt=False)
            return
        record = self._current(record)
        attempts = record.attempts + 1
        log.error(
            Event.IMPORT_ATTEMPT_FAILED,
            tenant=self._tenant(record),
            import_id=record.id,
            file=record.file_name,
            attempt=attempts,
            max_attempts=self.cfg.imports.max_attempts,
            exc_info=exc,
        )
        if attempts < self.cfg.imports.max_attempts:
            self._requeue(record, exc, lease, spend_attempt=True)
            return
        self._give_up(record, lease, repr(exc), attempts=attempts)

    def _give_up(self, record: ImportRecord, lease: Lease, reason: str, *, attempts: int) -> None:
        """Status failed, reports published, the file quarantined (SPEC 5)."""
        try:
            importer.fail(self.engine, self.cfg, record.id, reason, attempts=attempts, lease=lease)
        except LeaseLost:
            self._lost(lease, "write")
            return
        except Exception as final:  # noqa: BLE001 -- cannot even record it: wait, then again
            log.error(Event.IMPORT_FAIL_UNRECORDED, import_id=record.id, error=repr(final)[:300])
            self._requeue(record, final, lease, spend_attempt=False)
            return
        if record.source != "cli":
            self._move(record, self.cfg.quarantine_dir)

    def _tenant(self, record: ImportRecord) -> str:
        """The tenant's name for the log (SPEC 9); its id while the database is away."""
        try:
            with self.engine.connect() as conn:
                return store_tenants.tenant_name(conn, record.tenant_id) or str(record.tenant_id)
        except Exception:  # noqa: BLE001 -- the log line matters more than the name
            return str(record.tenant_id)

    def _current(self, record: ImportRecord) -> ImportRecord:
        try:
            with self.engine.connect() as conn:
                return store_imports.get(conn, record.id)
        except Exception:  # noqa: BLE001 -- unreadable now: the claim's copy will do
            return record

    def _requeue(
        self, record: ImportRecord, exc: BaseException, lease: Lease, *, spend_attempt: bool
    ) -> None:
        """Back to the queue with a pause from the retry policy (SPEC 5: never without one).

        An environment failure counts a wait, an internal one an attempt; the
        pause grows with that count. While even this cannot be written (the
        database is the trouble), it is retried with backoff, the import still
        running and ours.
        """
        attempts = record.attempts + (1 if spend_attempt else 0)
        waits = record.waits + (0 if spend_attempt else 1)
        pause = self.policy.delay(attempts if spend_attempt else waits)
        if not spend_attempt:
            log.warning(
                Event.IMPORT_WAITING,
                tenant=self._tenant(record),
                import_id=record.id,
                file=record.file_name,
                reason=faults.reason(exc),
                retry_in=round(pause, 2),
                waits=waits,
                error=repr(exc)[:300],
            )
        # Tried once even when stopping, so a bug's attempt is not forgotten.
        for outages in itertools.count(1):
            try:
                with write_tx(self.engine) as conn:
                    # Only while it is ours: never send another instance's import back.
                    store_leases.fence(conn, lease)
                    current = store_imports.get(conn, record.id)
                    if current.status != "running" or current.claimed_by != self.instance:
                        return  # finished meanwhile, or another instance's now
                    store_imports.set_status(
                        conn,
                        record.id,
                        "queued",
                        attempts=attempts,
                        waits=waits,
                        not_before=datetime.now(UTC) + timedelta(seconds=pause),
                        last_error=repr(exc)[:2000],
                        claimed_by=None,
                    )
                self.wake_at(pause)
                return
            except LeaseLost:
                self._lost(lease, "write")
                return
            except Exception as again:  # noqa: BLE001 -- still down
                if self.stop.is_set():
                    return  # still running and ours: resumed after the restart
                delay = self.policy.delay(outages)
                log.warning(
                    Event.DB_UNAVAILABLE,
                    reason=faults.reason(again),
                    error=repr(again)[:300],
                    retry_in=round(delay, 2),
                )
                self.stop.wait(delay)
                continue

    def wake_at(self, delay: float) -> None:
        """Wake a worker when a pause is over (the claim skips the import until then)."""
        timer = threading.Timer(delay, self._wake.set)
        timer.daemon = True
        timer.start()

    def _move(self, record: ImportRecord, where: Path) -> None:
        """Archive or quarantine the claimed file (``<dir>/<tenant>/<id>.<name>``)."""
        source = Path(record.work_path)
        if not source.exists():
            return
        with self.engine.connect() as conn:
            tenant = store_tenants.tenant_name(conn, record.tenant_id) or str(record.tenant_id)
        folder = where / tenant
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / kept_name(record.id, record.file_name)
        os.replace(source, target)
        with contextlib.suppress(OSError):  # an older flat claim's folder, or not empty
            source.parent.rmdir()  # the claim's own directory (intake), now empty
        # The archive's clock starts now, whatever the upload's mtime says.
        os.utime(target)
        with write_tx(self.engine) as conn:
            store_imports.set_status(
                conn, record.id, store_imports.get(conn, record.id).status, work_path=str(target)
            )


def remove_work(cfg: Config, import_id: int) -> None:
    """Drop an import's partial reports once they are published and archived."""
    shutil.rmtree(cfg.work_dir / str(import_id), ignore_errors=True)
