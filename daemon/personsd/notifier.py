"""The webhook notifier (SPEC 10): a thread that claims due deliveries, POSTs them, records.

:class:`Sender` runs in the daemon: one dispatch thread claims due rows of
the transactional outbox (:mod:`personsd.webhooks`, which signs them too)
and hands them to ``SENDERS`` request threads. One delivery per tenant is
in flight at a time and up to ``SENDERS`` tenants at once, so a receiver
that hangs (cut at ``notify.timeout_seconds``) delays only its own tenant's
deliveries. A claim's lease outlasts the request (``_LEASE_MARGIN``), so a
sender that dies mid-request leaves the row due again: at least once.

A failed attempt is retried with capped exponential backoff
(:func:`next_attempt`) for ``GIVE_UP_AFTER``, then marked failed.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import queue
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote, urlsplit

from sqlalchemy import Engine, update

from personsd import metrics, webhooks
from personsd.config import Config
from personsd.logging import Event, get_logger
from personsd.retry import RetryPolicy
from personsd.store.db import write_tx
from personsd.store.models import DeliveryRow

# notify.* events keep the logger name they always had: log filters may name it.
log = get_logger("personsd.webhooks")

# SPEC 10: first pause at most 5 s, at most 10 min between attempts (the
# cap plus its 10 % jitter stays under 600 s), for at least 24 hours.
POLICY = RetryPolicy(base=2.0, factor=2.0, cap=540.0, jitter=0.1)
GIVE_UP_AFTER = timedelta(hours=24, minutes=5)
# Tenants whose deliveries are in flight at once (one delivery per tenant).
SENDERS = 4
# How often due deliveries are looked for when nothing wakes the sender.
POLL_SECONDS = 1.0
# Added to notify.timeout_seconds for a claimed row's lease.
_LEASE_MARGIN = timedelta(seconds=30)
# How often finished rows older than webhooks.KEEP_FINISHED are deleted.
PRUNE_EVERY = 3600.0
# A receiver's answer is read up to this much, then dropped.
_MAX_RESPONSE = 64 * 1024


def _now() -> datetime:
    return datetime.now(UTC)


class DeliveryError(Exception):
    """The receiver did not take the delivery (non-2xx, timeout, refused)."""


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    """POST ``body``; the status code. The whole exchange is cut at ``timeout`` seconds."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DeliveryError("not an http(s) URL")
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    headers = dict(headers)
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    # The socket timeout bounds each read; this bounds the whole exchange,
    # against a receiver that answers a byte at a time.
    deadline = threading.Timer(timeout, _cut, args=(conn,))
    deadline.start()
    try:
        conn.request("POST", target, body=body, headers=headers)
        response = conn.getresponse()
        response.read(_MAX_RESPONSE)
        return int(response.status)
    except (OSError, http.client.HTTPException) as exc:
        raise DeliveryError(type(exc).__name__ + (f": {exc}" if str(exc) else "")) from None
    finally:
        deadline.cancel()
        conn.close()


def _cut(conn: http.client.HTTPConnection) -> None:
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def next_attempt(
    created_at: datetime, attempts: int, now: datetime, policy: RetryPolicy = POLICY
) -> datetime | None:
    """When to try again after ``attempts`` failures; None: give up (pure)."""
    if now - created_at >= GIVE_UP_AFTER:
        return None
    return now + timedelta(seconds=policy.delay(attempts))


class Sender:
    """The daemon's delivery thread plus ``SENDERS`` request threads."""

    def __init__(
        self,
        *,
        engine: Engine,
        cfg: Config,
        stop: threading.Event,
        policy: RetryPolicy = POLICY,
        senders: int = SENDERS,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.engine = engine
        self.cfg = cfg
        self.stop = stop
        self.policy = policy
        self.senders = senders
        self.clock = clock
        self._wake = threading.Event()
        self._busy: set[int] = set()
        self._lock = threading.Lock()
        self._work: queue.Queue[webhooks.Delivery | None] = queue.Queue()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        threads = [threading.Thread(target=self._dispatch, name="notify", daemon=True)]
        threads += [
            threading.Thread(target=self._serve, name=f"notify-{i}", daemon=True)
            for i in range(self.senders)
        ]
        for thread in threads:
            thread.start()
        self._threads = threads

    def wake(self) -> None:
        self._wake.set()

    def join(self, deadline: float) -> None:
        """Stop taking work; requests in flight end at their timeout or are redone later."""
        self._wake.set()
        for _ in range(self.senders):
            self._work.put(None)
        for thread in self._threads[:1]:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _dispatch(self) -> None:
        outages = 0
        pruned_at = 0.0
        while not self.stop.is_set():
            if time.monotonic() - pruned_at >= PRUNE_EVERY:
                pruned_at = time.monotonic()
                self._prune()
            with self._lock:
                busy = set(self._busy)
            free = self.senders - len(busy)
            if free > 0:
                lease = timedelta(seconds=self.cfg.notify.timeout_seconds) + _LEASE_MARGIN
                try:
                    claimed = self._claim(lease=lease, busy=busy, limit=free)
                except Exception as exc:  # noqa: BLE001 -- database down: wait and retry
                    outages += 1
                    delay = self.policy.delay(outages)
                    log.warning(
                        Event.DB_UNAVAILABLE, error=repr(exc)[:300], retry_in=round(delay, 2)
                    )
                    self.stop.wait(delay)
                    continue
                outages = 0
                for delivery in claimed:
                    with self._lock:
                        self._busy.add(delivery.tenant_id)
                    self._work.put(delivery)
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()

    def _claim(self, *, lease: timedelta, busy: set[int], limit: int) -> list[webhooks.Delivery]:
        now = self.clock()
        # A plain read first: on SQLite a write transaction takes the database
        # lock, which the importer's chunks would queue behind every second.
        with self.engine.connect() as conn:
            if not webhooks.due(conn, now):
                return []
        with write_tx(self.engine) as conn:
            return webhooks.claim(conn, now=now, lease=lease, busy=busy, limit=limit)

    def _prune(self) -> None:
        try:
            with write_tx(self.engine) as conn:
                removed = webhooks.prune(conn, self.clock())
        except Exception as exc:  # noqa: BLE001 -- the next round tries again
            log.warning(Event.NOTIFY_PRUNE_FAILED, error=repr(exc)[:300])
            return
        if removed:
            log.info(Event.NOTIFY_PRUNED, removed=removed, keep_days=webhooks.KEEP_FINISHED.days)

    def _serve(self) -> None:
        while True:
            delivery = self._work.get()
            if delivery is None or self.stop.is_set():
                return
            try:
                self.deliver(delivery)
            except Exception as exc:  # noqa: BLE001 -- the lease makes it due again
                log.error(
                    Event.NOTIFY_UNRECORDED, delivery_id=delivery.delivery_id, error=repr(exc)
                )
            finally:
                with self._lock:
                    self._busy.discard(delivery.tenant_id)
                self._wake.set()

    def deliver(self, delivery: webhooks.Delivery) -> bool:
        """One attempt, recorded; True when the receiver took it."""
        started = time.monotonic()
        attempt = delivery.attempts + 1
        fields = {
            "tenant": delivery.tenant,
            "import_id": delivery.import_id,
            "delivery_id": delivery.delivery_id,
            "notify_event": delivery.event,
            "url": webhooks.redact(delivery.url),
            "attempt": attempt,
        }
        error: str | None
        try:
            secret = webhooks.read_secret(self.cfg.notify.secret_file)
            code = post(
                delivery.url,
                delivery.body.encode(),
                webhooks.headers_for(delivery, secret, time.time()),
                self.cfg.notify.timeout_seconds,
            )
            error = None if 200 <= code < 300 else f"HTTP {code}"
        except OSError as exc:  # the secret file
            error = f"secret file unreadable: {type(exc).__name__}"
        except DeliveryError as exc:
            error = str(exc)
        elapsed_ms = round(1000 * (time.monotonic() - started))
        now = self.clock()
        if error is None:
            self._record(delivery, status="delivered", attempts=attempt, finished_at=now)
            metrics.NOTIFICATIONS.labels(result="delivered").inc()
            log.info(Event.NOTIFY_DELIVERED, ms=elapsed_ms, **fields)
            return True
        retry_at = next_attempt(delivery.created_at, attempt, now, self.policy)
        if retry_at is None:
            self._record(
                delivery, status="failed", attempts=attempt, finished_at=now, last_error=error
            )
            metrics.NOTIFICATIONS.labels(result="gave_up").inc()
            log.error(Event.NOTIFY_FAILED, error=error, gave_up=True, ms=elapsed_ms, **fields)
            return False
        self._record(
            delivery, status="pending", attempts=attempt, next_attempt_at=retry_at, last_error=error
        )
        metrics.NOTIFICATIONS.labels(result="failed").inc()
        log.warning(
            Event.NOTIFY_FAILED,
            error=error,
            gave_up=False,
            retry_in=round((retry_at - now).total_seconds(), 1),
            ms=elapsed_ms,
            **fields,
        )
        return False

    def _record(self, delivery: webhooks.Delivery, **values: object) -> None:
        with write_tx(self.engine) as conn:
            conn.execute(update(DeliveryRow).where(DeliveryRow.id == delivery.id).values(**values))
