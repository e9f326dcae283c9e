"""Intake: a complete upload becomes a queued import (SPEC section 5).

Claiming is a rename out of the inbox into
``state/work/claimed/<instance>/<tenant>/<stamp>/<name>`` (same filesystem, so
atomic), *then* an import record, which stores where the file went: any
instance sharing the tree and database may run the import. A directory per
claim keeps the partner's name as it is: the claimed name is never longer
than the uploaded one, so a name the inbox could hold (up to NAME_MAX) can
always be claimed. The order matters for
"nothing is lost": a crash or a database outage between the two leaves a
claimed file without a record, and :meth:`Intake.recover` turns every such
file into an import at the next start or retry. A file is never in the inbox
and in the queue at once, so the partner cannot change it mid-import.

Each offered file has its own schedule (SPEC 5 "Each file's trouble stays
its own"): a file whose claim fails (a rename refused, the record not
written) is retried with capped exponential backoff while every other file
goes on; the one intake thread never sleeps on a file. Nothing slow runs
here: the content's sha256 is the worker's, at the import's start.

Instances sharing one tree (SPEC 12) each heal their own interrupted claims,
and those of instances that are gone: each holds a lock on ``.alive`` in its
folder for its whole life, and a folder whose lock can be taken belongs to a
dead instance (the kernel, or the NFS server, drops a dead process's locks).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine

from personsd import importer
from personsd.config import Config
from personsd.errors import OperatorError
from personsd.instance import instance_name
from personsd.logging import Event, get_logger
from personsd.retry import RetryPolicy
from personsd.store import imports as store_imports
from personsd.watcher import ReadyFile

log = get_logger("personsd.intake")
# Ends the stamp of a file claimed from /validate: ``<stamp>v.<name>``.
_VALIDATE_MARK = "v"


# A file that cannot be claimed is retried after 0.5 s, 1 s, 2 s ... up to
# this (documented in docs/operations.md), on its own: other files go on.
CLAIM_RETRY_CAP = 60.0


@dataclass(kw_only=True, slots=True)
class _Offer:
    """A reported file not yet claimed, with its own retry schedule."""

    ready: ReadyFile
    failures: int = 0
    due: float = 0.0  # monotonic


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
        self.policy = policy or RetryPolicy(base=0.5, cap=CLAIM_RETRY_CAP)
        self._pending: list[_Offer] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seq = 0
        # Held from the rename out of the inbox until the import record exists,
        # so that recover() never takes a file being claimed for an orphan.
        self._claiming = threading.Lock()
        self._alive: object | None = None

    @property
    def claimed_dir(self) -> Path:
        return self.cfg.work_dir / "claimed" / folder_name(instance_name(self.cfg))

    def _hold_alive(self) -> None:
        if self._alive is not None:
            return
        self.claimed_dir.mkdir(parents=True, exist_ok=True)
        fh = (self.claimed_dir / ALIVE).open("a")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            # The same cluster.instance on two live processes: a misconfiguration.
            log.error(Event.INTAKE_INSTANCE_IN_USE, folder=str(self.claimed_dir))
        self._alive = fh

    def offer(self, ready: ReadyFile) -> None:
        """Called by the watcher's thread: just enqueue."""
        with self._cond:
            self._pending.append(_Offer(ready=ready))
            self._cond.notify()

    def start(self) -> None:
        self._hold_alive()
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

    def _next_due(self) -> _Offer | None:
        """The first offer (in completion order) whose time has come; waits up to 1 s."""
        with self._cond:
            now = time.monotonic()
            for offer in self._pending:
                if offer.due <= now:
                    return offer
            wake = min((offer.due for offer in self._pending), default=now + 1.0)
            self._cond.wait(min(1.0, max(0.0, wake - now)))
            return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            offer = self._next_due()
            if offer is None or self._stop.is_set():
                continue
            try:
                self.claim(offer.ready)
            except Exception as exc:  # noqa: BLE001 -- this file only: it waits, others go on
                offer.failures += 1
                delay = self.policy.delay(offer.failures)
                offer.due = time.monotonic() + delay
                log.warning(
                    Event.INTAKE_RETRY,
                    tenant=offer.ready.tenant,
                    file=offer.ready.path.name,
                    failures=offer.failures,
                    error=repr(exc)[:300],
                    retry_in=round(delay, 2),
                )
                continue
            with self._cond:
                self._pending.remove(offer)

    def claim(self, ready: ReadyFile) -> int | None:
        """Move ``ready`` out of the inbox and queue it; None if it is gone or changed."""
        try:
            st = ready.path.stat()
        except FileNotFoundError:
            return None  # claimed already, or removed by the partner
        if (st.st_size, st.st_mtime_ns) != (ready.size, ready.mtime_ns):
            return None  # a newer version: the watcher reports it once it settles
        self._seq += 1
        stamp = f"{int(ready.completed_at * 1e6):017d}{self._seq % 1000:03d}"
        # The claim's directory keeps the mode too: recover() queues it alike after a crash.
        mark = _VALIDATE_MARK if ready.mode == "validate" else ""
        folder = self.claimed_dir / ready.tenant / f"{stamp}{mark}"
        claimed = folder / ready.path.name
        with self._claiming:  # recover() removes empty claim directories
            folder.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(ready.path, claimed)
            except BaseException:
                _remove_empty(folder)
                raise
            return self._enqueue(
                ready.tenant, claimed, claimed.name, ready.completed_at, st.st_size, folder.name
            )

    def _enqueue(
        self, tenant: str, claimed: Path, name: str, completed_at: float, size: int, stamp: str
    ) -> int | None:
        mode = "validate" if stamp.endswith(_VALIDATE_MARK) else "import"
        # Full precision: files completing within one second keep their order.
        received = datetime.fromtimestamp(completed_at, UTC)
        try:
            # Not hashed here: a big file would hold every tenant's intake.
            import_id = importer.create(
                self.engine,
                tenant=tenant,
                path=claimed,
                source="sftp",
                file_name=name,
                received_at=received,
                size=size,
                mode=mode,
            )
        except OperatorError:
            # The tenant was removed after the upload: keep the file aside, say so.
            log.error(Event.INTAKE_UNKNOWN_TENANT, tenant=tenant, file=name, path=str(claimed))
            return None
        log.info(
            Event.IMPORT_QUEUED,
            tenant=tenant,
            import_id=import_id,
            file=name,
            bytes=size,
            mode=mode,
        )
        self.on_queued()
        return import_id

    def recover(self) -> int:
        """Queue every claimed file that has no import record (crash or outage).

        Ours, and those of instances that are gone (their ``.alive`` lock is free).
        """
        self._hold_alive()
        with self._claiming:
            recovered = self._recover(self.claimed_dir)
        for other in sorted((self.cfg.work_dir / "claimed").iterdir()):
            if other == self.claimed_dir or not other.is_dir():
                continue
            with (other / ALIVE).open("a") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # alive: its claims are its own
                recovered += self._recover(other)
        return recovered

    def _recover(self, claimed_dir: Path) -> int:
        # Read under the folder's lock: a claim finishing just before is known.
        with self.engine.connect() as conn:
            known = store_imports.recorded_paths(conn)
        recovered = 0
        for folder in sorted(p for p in claimed_dir.iterdir() if p.is_dir()):
            for claimed, stamp, name in _claimed_files(folder):
                if str(claimed) in known:
                    continue
                completed = int(stamp[:17]) / 1e6 if stamp[:17].isdigit() else time.time()
                try:
                    size = claimed.stat().st_size
                    if (
                        self._enqueue(folder.name, claimed, name, completed, size, stamp)
                        is not None
                    ):
                        recovered += 1
                except FileNotFoundError:
                    continue
                except OSError as exc:  # this file only: the next round tries it again
                    log.warning(
                        Event.INTAKE_RETRY, tenant=folder.name, file=claimed.name, error=repr(exc)
                    )
        return recovered


def _claimed_files(tenant_dir: Path) -> list[tuple[Path, str, str]]:
    """The claimed files of a tenant with their stamps and upload names, oldest first.

    ``<stamp>/<name>`` since a claim got a directory; ``<stamp>.<name>`` as
    earlier versions left them (still recovered after an upgrade).
    """
    found: list[tuple[Path, str, str]] = []
    for entry in sorted(tenant_dir.iterdir()):
        if entry.is_dir():
            files = [f for f in sorted(entry.iterdir()) if f.is_file()]
            found.extend((f, entry.name, f.name) for f in files)
            if not files:
                _remove_empty(entry)  # an archived claim's directory
        elif entry.is_file():
            stamp, _, name = entry.name.partition(".")
            found.append((entry, stamp, name or entry.name))
    return found


def _remove_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty (a file arrived) or already gone
        folder.rmdir()


ALIVE = ".alive"


def folder_name(instance: str) -> str:
    """A file name for an instance name (which may hold ':' or '/'), still unique."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", instance)[:80]
    return f"{safe}-{hashlib.sha256(instance.encode()).hexdigest()[:8]}"
