"""Signed webhooks when an import ends (SPEC 10), delivered at least once.

The transactional outbox: :func:`enqueue` writes a ``deliveries`` row in the
transaction that sets the import's final status, so a committed end always
has its delivery and a rolled-back one never does. :func:`claim` takes due
rows and pushes their ``next_attempt_at`` past the request's deadline, so a
sender that dies mid-request (kill -9) leaves the row due again: at least
once, and receivers de-duplicate on ``X-Personsd-Delivery``.
:func:`headers_for` signs the body (:func:`signature`, HMAC-SHA256).

The delivery thread that claims, POSTs and records the outcome, with the
retry schedule, is :class:`personsd.notifier.Sender`.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy import Connection, delete, func, insert, select, update

from personsd.config import Config
from personsd.store import imports as store_imports
from personsd.store.models import DeliveryRow, TenantRow
from personsd.summary import summary_of

# Delivered and given-up rows are deleted this long after they finished
# (by the sender, every notifier.PRUNE_EVERY).
KEEP_FINISHED = timedelta(days=30)
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
