"""Reports a previous run finished but did not publish (SPEC 5: start whatever state).

A crash between recording an import as finished and publishing its reports
leaves it ``completed``/``rejected``/``failed`` with ``reports_published``
false. At start every such import is published on its own: one that cannot
be published (an outbox that refuses, a disk full, a bug) is logged and
tried again on its own backoff from the daemon's main loop, and never keeps
the workers from starting nor another import from being published.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sqlalchemy import Engine

from personsd import importer
from personsd.config import Config
from personsd.logging import Event, get_logger
from personsd.retry import RetryPolicy
from personsd.store import imports as store_imports

log = get_logger("personsd.republish")

# Retries of one import's publication: 1 s, 2 s, 4 s ... up to this.
PUBLISH_RETRY_CAP = 300.0
_FINISHED = ("completed", "rejected", "failed")


class Republisher:
    """Publishes leftover reports one import at a time, each on its own schedule."""

    def __init__(
        self,
        *,
        engine: Engine,
        cfg: Callable[[], Config],
        policy: RetryPolicy | None = None,
    ) -> None:
        self.engine = engine
        self.cfg = cfg
        self.policy = policy or RetryPolicy(base=1.0, cap=PUBLISH_RETRY_CAP)
        self._due: dict[int, tuple[int, float]] = {}  # import id -> (failures, monotonic due)
        self._lock = threading.Lock()

    def find(self) -> int:
        """Note every finished import whose reports are not published; how many.

        Raises when the database cannot be read (the caller waits for it).
        """
        with self.engine.connect() as conn:
            records = store_imports.list_imports(conn)
        found = [r.id for r in records if r.status in _FINISHED and not r.reports_published]
        with self._lock:
            for import_id in found:
                self._due.setdefault(import_id, (0, 0.0))
        return len(found)

    def pending(self) -> list[int]:
        with self._lock:
            return sorted(self._due)

    def publish_due(self) -> int:
        """Publish each import whose time has come; failures wait their turn. How many done."""
        now = time.monotonic()
        with self._lock:
            due = sorted(i for i, (_failures, at) in self._due.items() if at <= now)
        done = 0
        for import_id in due:
            try:
                importer.publish(self.engine, self.cfg(), import_id)
            except Exception as exc:  # noqa: BLE001 -- this import only: it waits, others go on
                with self._lock:
                    failures = self._due[import_id][0] + 1
                    delay = self.policy.delay(failures)
                    self._due[import_id] = (failures, time.monotonic() + delay)
                log.warning(
                    Event.PUBLISH_RETRY,
                    import_id=import_id,
                    failures=failures,
                    error=repr(exc)[:300],
                    retry_in=round(delay, 2),
                )
                continue
            with self._lock:
                del self._due[import_id]
            done += 1
        return done
