"""Import workers: claim the next import, run it, archive or quarantine its file.

One import per tenant at a time, oldest first (``store.imports.claim_next``),
up to ``import.workers`` tenants in parallel. What the database says is the
queue, so several daemons on one PostgreSQL share it safely (SPEC 12): each
import is held under a lease that a heartbeat thread renews every third of
``cluster.lease_seconds``; every write of the import is fenced by the
lease's generation, so an instance that lost its lease (frozen, cut off)
stops that import at its next write and leaves it to the new holder.

Failure policy (SPEC 5):
- the partner's bad data never reaches here as an exception (rows go to the
  report, a bad file is ``rejected``);
- the database being unreachable is nobody's fault: the import is put back
  without spending an attempt, and the worker waits with backoff;
- anything else is our fault: the import is retried from its checkpoint up to
  ``import.max_attempts`` times, then ``failed`` and its file quarantined.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from personsd import importer
from personsd.config import Config
from personsd.errors import LeaseLost, TransientError
from personsd.fileformat import cut_name, name_bytes
from personsd.instance import instance_name
from personsd.logging import Event, get_logger
from personsd.retry import RetryPolicy
from personsd.store import imports as store_imports
from personsd.store import tenants as store_tenants
from personsd.store.db import write_tx
from personsd.store.imports import ImportRecord, Lease

log = get_logger("personsd.workers")

__all__ = ["Workers", "instance_name", "remove_work", "sweep_archive"]


def is_db_unreachable(exc: BaseException) -> bool:
    """True for connection-level database errors (worth waiting for, not our bug)."""
    if isinstance(exc, TransientError):
        return True  # e.g. disk full while publishing: wait, as for the database
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, OperationalError):
        text = str(exc).lower()
        return any(
            word in text
            for word in (
                "connection",
                "connect",
                "server closed",
                "terminating",
                "database is locked",
                "could not",
                "timeout",
                "shutting down",
            )
        )
    return False


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
                claim = store_imports.claim_next(
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
            with self._busy_lock:
                leases = list(self._leases.values())
            if not leases:
                continue
            try:
                with write_tx(self.engine) as conn:
                    lost = store_imports.renew(conn, leases)
            except Exception as exc:  # noqa: BLE001 -- database down: fencing keeps writes safe
                log.warning("cluster.heartbeat_failed", error=repr(exc)[:300])
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
            except Exception as exc:  # noqa: BLE001 -- database down: wait and retry
                outages += 1
                delay = self.policy.delay(outages)
                log.warning("db.unavailable", error=repr(exc)[:300], retry_in=round(delay, 2))
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
        """A clean stop: let another instance take the import over at once."""
        if self.single_daemon:
            return
        try:
            with write_tx(self.engine) as conn:
                store_imports.release(conn, lease)
        except Exception as exc:  # noqa: BLE001 -- it then expires by itself
            log.warning("cluster.release_failed", import_id=lease.import_id, error=repr(exc)[:300])

    def _beat(self) -> None:
        self.last_beat = time.monotonic()

    def _failed(self, record: ImportRecord, exc: BaseException, lease: Lease) -> None:
        reason = repr(exc)
        if is_db_unreachable(exc):
            log.warning(
                "import.waiting_for_database",
                import_id=record.id,
                file=record.file_name,
                error=reason[:300],
            )
            self._requeue(record, lease, spend_attempt=False, reason=reason)
            return
        log.exception(
            "import.attempt_failed",
            import_id=record.id,
            file=record.file_name,
            attempt=record.attempts,
            max_attempts=self.cfg.imports.max_attempts,
            exc_info=exc,
        )
        if record.attempts >= self.cfg.imports.max_attempts:
            try:
                importer.fail(self.engine, self.cfg, record.id, reason, lease=lease)
            except LeaseLost:
                self._lost(lease, "write")
                return
            except Exception as final:  # noqa: BLE001 -- cannot even record it: retry later
                log.error("import.fail_unrecorded", import_id=record.id, error=repr(final))
                self._requeue(record, lease, spend_attempt=False, reason=reason)
                return
            if record.source != "cli":
                self._move(record, self.cfg.quarantine_dir)
            return
        self.stop.wait(self.policy.delay(record.attempts))
        self._requeue(record, lease, spend_attempt=True, reason=reason)

    def _requeue(
        self, record: ImportRecord, lease: Lease, *, spend_attempt: bool, reason: str
    ) -> None:
        outages = 0
        while not self.stop.is_set():
            try:
                with write_tx(self.engine) as conn:
                    # Only while it is ours: never send another instance's import back.
                    store_imports.fence(conn, lease)
                    current = store_imports.get(conn, record.id)
                    attempts = current.attempts if spend_attempt else max(0, current.attempts - 1)
                    store_imports.set_status(
                        conn,
                        record.id,
                        "queued",
                        attempts=attempts,
                        last_error=reason[:2000],
                        claimed_by=None,
                    )
                return
            except LeaseLost:
                self._lost(lease, "write")
                return
            except Exception:  # noqa: BLE001 -- still down
                outages += 1
                self.stop.wait(self.policy.delay(outages))

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


def kept_name(import_id: int, file_name: str) -> str:
    """``<id>.<name>`` for the archive and quarantine, cut to fit NAME_MAX (255 bytes).

    The name part is cut by bytes at a character boundary, keeping its
    suffix from ``.persons`` on (or its last extension), so the archived
    file still says what it was.
    """
    prefix = f"{import_id}."
    room = NAME_MAX - len(prefix)
    if name_bytes(file_name) <= room:
        return prefix + file_name
    at = file_name.rfind(".persons")
    if at < 0:
        at = file_name.rfind(".")
    suffix = file_name[at:] if at > 0 and name_bytes(file_name[at:]) <= _KEPT_SUFFIX else ""
    head = cut_name(file_name[: len(file_name) - len(suffix)], room - name_bytes(suffix))
    return prefix + head + suffix


NAME_MAX = 255  # bytes in one file name (Linux filesystems)
_KEPT_SUFFIX = 32  # a suffix longer than this is not kept whole


def sweep_archive(cfg: Config, now: float | None = None) -> int:
    """Delete archived files older than ``archive.keep_days``; returns how many."""
    limit = (now or time.time()) - cfg.archive.keep_days * 86400
    removed = 0
    if not cfg.archive_dir.is_dir():
        return 0
    for folder in cfg.archive_dir.iterdir():
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            try:
                if path.is_file() and path.stat().st_mtime < limit:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
    return removed


def remove_work(cfg: Config, import_id: int) -> None:
    """Drop an import's partial reports once they are published and archived."""
    shutil.rmtree(cfg.work_dir / str(import_id), ignore_errors=True)
