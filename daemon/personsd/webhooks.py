"""Signed webhooks when an import ends (SPEC 10), delivered at least once.

The transactional outbox: :func:`enqueue` writes a ``deliveries`` row in the
transaction that sets the import's final status, so a committed end always
has its delivery and a rolled-back one never does. :class:`Sender` (a thread
of the daemon) claims due rows, POSTs them, and records the outcome; a
claim pushes ``next_attempt_at`` past the request's deadline, so a sender
that dies mid-request (kill -9) leaves the row due again: at least once,
and receivers de-duplicate on ``X-Personsd-Delivery``.

A delivery is retried with capped exponential backoff for ``GIVE_UP_AFTER``,
then marked failed. One delivery per tenant is in flight at a time and up to
``SENDERS`` tenants at once, so a receiver that hangs (cut at
``notify.timeout_seconds``) delays only its own tenant's deliveries.

Over 400 lines on purpose: enqueue, claim, sign, send and record are one
delivery protocol, and its at-least-once argument reads in one place.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.client
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from sqlalchemy import Connection, Engine, delete, func, insert, select, update

from personsd import metrics
from personsd.config import Config
from personsd.logging import Event, get_logger
from personsd.retry import RetryPolicy
from personsd.store import imports as store_imports
from personsd.store.db import write_tx
from personsd.store.models import DeliveryRow, TenantRow
from personsd.summary import summary_of

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
# Delivered and given-up rows are deleted this long after they finished,
# checked every PRUNE_EVERY by the sender.
KEEP_FINISHED = timedelta(days=30)
PRUNE_EVERY = 3600.0
# A receiver's answer is read up to this much, then dropped.
_MAX_RESPONSE = 64 * 1024
USER_AGENT = "personsd-webhook/1"


@dataclass(frozen=True, kw_only=True, slots=True)
class Delivery:
    id: int
    delivery_id: str
    tenant_id: int
    tenant: str
    import_id: int
    event: str
    url: str
    body: str
    attempts: int
    created_at: datetime


def _now() -> datetime:
    return datetime.now(UTC)


def enqueue(conn: Connection, cfg: Config, import_id: int) -> str | None:
    """Record the webhook of an import that just ended; its delivery id, None when off.

    Call inside the transaction that sets the final status: the body is the
    summary as that transaction will commit it.
    """
    record = store_imports.get(conn, import_id)
    tenant = conn.execute(
        select(TenantRow.name, TenantRow.notify_url).where(TenantRow.id == record.tenant_id)
    ).one()
    url = tenant.notify_url or cfg.notify.url
    if not url:
        return None
    summary = summary_of(record, tenant.name)
    delivery_id = str(uuid.uuid4())
    moment = _now()
    conn.execute(
        insert(DeliveryRow).values(
            delivery_id=delivery_id,
            tenant_id=record.tenant_id,
            import_id=import_id,
            event=f"import.{record.status}",
            url=url,
            body=summary.to_json() + "\n",
            status="pending",
            attempts=0,
            created_at=moment,
            next_attempt_at=moment,
        )
    )
    return delivery_id


def redact(url: str) -> str:
    """``url`` fit for a log: no user name or password, query values hidden."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    query = urlencode([(k, "REDACTED") for k, _ in parse_qsl(parts.query, keep_blank_values=True)])
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """``X-Personsd-Signature``: HMAC-SHA256 of ``TIMESTAMP.BODY``."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def headers_for(delivery: Delivery, secret: bytes | None, now: float) -> dict[str, str]:
    timestamp = str(int(now))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Personsd-Event": delivery.event,
        "X-Personsd-Delivery": delivery.delivery_id,
        "X-Personsd-Timestamp": timestamp,
    }
    if secret is not None:
        headers["X-Personsd-Signature"] = signature(secret, timestamp, delivery.body.encode())
    return headers


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


def read_secret(path: Path | None) -> bytes | None:
    """The HMAC key (the file's bytes, stripped); None when no file is configured."""
    return None if path is None else path.read_bytes().strip()


_DELIVERY_COLUMNS = (
    DeliveryRow.id,
    DeliveryRow.delivery_id,
    DeliveryRow.tenant_id,
    DeliveryRow.import_id,
    DeliveryRow.event,
    DeliveryRow.url,
    DeliveryRow.body,
    DeliveryRow.attempts,
    DeliveryRow.created_at,
)


def due(conn: Connection, now: datetime) -> bool:
    """Whether any delivery is due (a read, no lock)."""
    found = conn.execute(
        select(DeliveryRow.id)
        .where(DeliveryRow.status == "pending", DeliveryRow.next_attempt_at <= now)
        .limit(1)
    ).first()
    return found is not None


def claim(
    conn: Connection, *, now: datetime, lease: timedelta, busy: set[int], limit: int
) -> list[Delivery]:
    """Due deliveries, the oldest of each tenant not in ``busy``, at most ``limit``."""
    tenants = conn.execute(
        select(DeliveryRow.tenant_id)
        .where(DeliveryRow.status == "pending", DeliveryRow.next_attempt_at <= now)
        .group_by(DeliveryRow.tenant_id)
        .order_by(func.min(DeliveryRow.next_attempt_at))
    ).scalars()
    chosen: list[Delivery] = []
    for tenant_id in tenants:
        if len(chosen) >= limit:
            break
        if tenant_id in busy:
            continue
        stmt = (
            select(*_DELIVERY_COLUMNS, TenantRow.name.label("tenant_name"))
            .join(TenantRow, TenantRow.id == DeliveryRow.tenant_id)
            .where(
                DeliveryRow.tenant_id == tenant_id,
                DeliveryRow.status == "pending",
                DeliveryRow.next_attempt_at <= now,
            )
            .order_by(DeliveryRow.next_attempt_at, DeliveryRow.id)
            .limit(1)
        )
        if conn.dialect.name == "postgresql":
            # Another instance's sender may hold it; take the next tenant.
            stmt = stmt.with_for_update(of=DeliveryRow, skip_locked=True)
        found = conn.execute(stmt).one_or_none()
        if found is None:
            continue
        row = found
        name = found.tenant_name
        conn.execute(
            update(DeliveryRow).where(DeliveryRow.id == row.id).values(next_attempt_at=now + lease)
        )
        chosen.append(
            Delivery(
                id=row.id,
                delivery_id=row.delivery_id,
                tenant_id=row.tenant_id,
                tenant=name,
                import_id=row.import_id,
                event=row.event,
                url=row.url,
                body=row.body,
                attempts=row.attempts,
                created_at=_aware(row.created_at),
            )
        )
    return chosen


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def prune(conn: Connection, now: datetime, keep: timedelta = KEEP_FINISHED) -> int:
    """Delete deliveries finished (delivered or given up) before ``now - keep``."""
    return conn.execute(
        delete(DeliveryRow).where(
            DeliveryRow.status != "pending", DeliveryRow.finished_at < now - keep
        )
    ).rowcount


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
        self._work: queue.Queue[Delivery | None] = queue.Queue()
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

    def _claim(self, *, lease: timedelta, busy: set[int], limit: int) -> list[Delivery]:
        now = self.clock()
        # A plain read first: on SQLite a write transaction takes the database
        # lock, which the importer's chunks would queue behind every second.
        with self.engine.connect() as conn:
            if not due(conn, now):
                return []
        with write_tx(self.engine) as conn:
            return claim(conn, now=now, lease=lease, busy=busy, limit=limit)

    def _prune(self) -> None:
        try:
            with write_tx(self.engine) as conn:
                removed = prune(conn, self.clock())
        except Exception as exc:  # noqa: BLE001 -- the next round tries again
            log.warning(Event.NOTIFY_PRUNE_FAILED, error=repr(exc)[:300])
            return
        if removed:
            log.info(Event.NOTIFY_PRUNED, removed=removed, keep_days=KEEP_FINISHED.days)

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

    def deliver(self, delivery: Delivery) -> bool:
        """One attempt, recorded; True when the receiver took it."""
        started = time.monotonic()
        attempt = delivery.attempts + 1
        fields = {
            "tenant": delivery.tenant,
            "import_id": delivery.import_id,
            "delivery_id": delivery.delivery_id,
            "notify_event": delivery.event,
            "url": redact(delivery.url),
            "attempt": attempt,
        }
        error: str | None
        try:
            secret = read_secret(self.cfg.notify.secret_file)
            code = post(
                delivery.url,
                delivery.body.encode(),
                headers_for(delivery, secret, time.time()),
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

    def _record(self, delivery: Delivery, **values: object) -> None:
        with write_tx(self.engine) as conn:
            conn.execute(update(DeliveryRow).where(DeliveryRow.id == delivery.id).values(**values))
