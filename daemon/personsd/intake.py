"""Intake: a complete upload becomes a queued import (SPEC section 5).

Claiming is a rename out of the inbox into ``state/work/claimed/<host>/<tenant>/``
(same filesystem, so atomic), *then* an import record. The order matters for
"nothing is lost": a crash or a database outage between the two leaves a
claimed file without a record, and :meth:`Intake.recover` turns every such
file into an import at the next start or retry. A file is never in the inbox
and in the queue at once, so the partner cannot change it mid-import.

While the database is unreachable, offered files stay in memory (and in the
inbox, where the watcher's next start finds them again) and the claim is
retried with capped exponential backoff.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, select

from personsd import importer
from personsd.config import Config
from personsd.errors import OperatorError
from personsd.logging import Event, get_logger
from personsd.retry import RetryPolicy
from personsd.store.models import ImportRow
from personsd.watcher import ReadyFile

log = get_logger("personsd.intake")
# Ends the stamp of a file claimed from /validate: ``<stamp>v.<name>``.
_VALIDATE_MARK = "v"


class Intake:
    """Claims ready files in the order they became complete, one thread."""

    def __init__(
        self,
        *,
        engine: Engine,
        cfg: Config,
        on_queued: Callable[[], None],
        policy: RetryPolicy | None = None,
    ) -> None:
        self.engine = engine
        self.cfg = cfg
        self.on_queued = on_queued
        self.policy = policy or RetryPolicy(base=0.5, cap=30.0)
        self._pending: deque[ReadyFile] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seq = 0
        # Held from the rename out of the inbox until the import record exists,
        # so that recover() never takes a file being claimed for an orphan.
        self._claiming = threading.Lock()

    @property
    def claimed_dir(self) -> Path:
        # Per host: instances sharing one tree (and database) each heal only
        # their own interrupted claims, never one another's in flight.
        return self.cfg.work_dir / "claimed" / socket.gethostname()

    def offer(self, ready: ReadyFile) -> None:
        """Called by the watcher's thread: just enqueue."""
        with self._cond:
            self._pending.append(ready)
            self._cond.notify()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="intake", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            with self._cond:
                while not self._pending and not self._stop.is_set():
                    self._cond.wait(1.0)
                if self._stop.is_set():
                    return
                ready = self._pending[0]
            try:
                self.claim(ready)
            except Exception as exc:  # noqa: BLE001 -- database down, disk full: retry
                failures += 1
                delay = self.policy.delay(failures)
                log.warning(
                    "intake.retry",
                    tenant=ready.tenant,
                    file=ready.path.name,
                    error=repr(exc)[:300],
                    retry_in=round(delay, 2),
                )
                self._stop.wait(delay)
                continue
            failures = 0
            with self._cond:
                self._pending.popleft()

    def claim(self, ready: ReadyFile) -> int | None:
        """Move ``ready`` out of the inbox and queue it; None if it is gone or changed."""
        try:
            st = ready.path.stat()
        except FileNotFoundError:
            return None  # claimed already, or removed by the partner
        if (st.st_size, st.st_mtime_ns) != (ready.size, ready.mtime_ns):
            return None  # a newer version: the watcher reports it once it settles
        folder = self.claimed_dir / ready.tenant
        folder.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        stamp = f"{int(ready.completed_at * 1e6):017d}{self._seq % 1000:03d}"
        # The claimed name keeps the mode too: recover() queues it alike after a crash.
        mark = _VALIDATE_MARK if ready.mode == "validate" else ""
        claimed = folder / f"{stamp}{mark}.{ready.path.name}"
        with self._claiming:
            os.rename(ready.path, claimed)
            return self._enqueue(ready.tenant, claimed, ready.completed_at)

    def _enqueue(self, tenant: str, claimed: Path, completed_at: float) -> int | None:
        stamp, name = claimed.name.split(".", 1)
        mode = "validate" if stamp.endswith(_VALIDATE_MARK) else "import"
        # Full precision: files completing within one second keep their order.
        received = datetime.fromtimestamp(completed_at, UTC)
        try:
            import_id = importer.create(
                self.engine,
                tenant=tenant,
                path=claimed,
                source="sftp",
                file_name=name,
                received_at=received,
                mode=mode,
            )
        except OperatorError:
            # The tenant was removed after the upload: keep the file aside, say so.
            log.error("intake.unknown_tenant", tenant=tenant, file=name, path=str(claimed))
            return None
        log.info(
            Event.IMPORT_QUEUED,
            tenant=tenant,
            import_id=import_id,
            file=name,
            bytes=claimed.stat().st_size,
            mode=mode,
        )
        self.on_queued()
        return import_id

    def recover(self) -> int:
        """Queue every claimed file that has no import record (crash or outage)."""
        if not self.claimed_dir.is_dir():
            return 0
        with self._claiming:
            return self._recover()

    def _recover(self) -> int:
        with self.engine.connect() as conn:
            known = set(conn.execute(select(ImportRow.work_path)).scalars())
        recovered = 0
        for folder in sorted(p for p in self.claimed_dir.iterdir() if p.is_dir()):
            for claimed in sorted(folder.iterdir()):
                if str(claimed) in known or not claimed.is_file():
                    continue
                stamp = claimed.name.split(".", 1)[0]
                completed = int(stamp[:17]) / 1e6 if stamp[:17].isdigit() else time.time()
                if self._enqueue(folder.name, claimed, completed) is not None:
                    recovered += 1
        return recovered
