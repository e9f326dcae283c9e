"""Prometheus metrics and health endpoints (SPEC 10).

Counters (imports, rows, row errors, SFTP logins, notifications) count what
this process did since it started; Prometheus' ``increase()`` copes with the
reset at a restart. Gauges that describe state (queue depth, last completed
import, expected interval, pending notifications) are computed at scrape time
from the database (:mod:`personsd.status`), so they are right after a
restart and whichever instance is scraped. A scrape while the database is
down still answers: ``personsd_database_up 0`` and no per-tenant gauges.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, text

from personsd import status
from personsd.logging import Event, get_logger

if TYPE_CHECKING:
    from personsd.config import Config
    from personsd.reports import Summary
    from personsd.sftp import SftpServer

log = get_logger("personsd.metrics")

# /readyz answers 503 when the root's filesystem has less free space than
# this: imports stop making progress (reports and checkpoints cannot be
# written) well before the disk is entirely full.
READY_MIN_FREE_BYTES = 1024**3

# A counter's ``_created`` twin doubles the series for nothing Grafana uses.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry()
IMPORTS = Counter(
    "personsd_imports",
    "Imports that ended, by final status.",
    ["tenant", "status"],
    registry=REGISTRY,
)
ROWS = Counter(
    "personsd_rows",
    "Data rows of ended imports, by outcome (created, updated, unchanged, failed).",
    ["tenant", "outcome"],
    registry=REGISTRY,
)
ROW_ERRORS = Counter(
    "personsd_row_errors",
    "Error lines written to errors.csv, by error class.",
    ["tenant", "error_class"],
    registry=REGISTRY,
)
IMPORT_DURATION = Histogram(
    "personsd_import_duration_seconds",
    "From an import's first start to its end.",
    buckets=(1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400),
    registry=REGISTRY,
)
SFTP_LOGINS = Counter(
    "personsd_sftp_logins",
    "SFTP login attempts, by result (success, failed).",
    ["result"],
    registry=REGISTRY,
)
NOTIFICATIONS = Counter(
    "personsd_notifications",
    "Webhook delivery attempts, by result (delivered, failed, gave_up).",
    ["result"],
    registry=REGISTRY,
)

# Series exist at 0 before their first event: increase() then sees the first one.
for _result in ("delivered", "failed", "gave_up"):
    NOTIFICATIONS.labels(result=_result)
for _result in ("success", "failed"):
    SFTP_LOGINS.labels(result=_result)
ENDED_STATUSES = ("completed", "rejected", "failed")


def import_ended(summary: Summary) -> None:
    """Count an import that reached its final status in this process."""
    tenant = summary.tenant
    IMPORTS.labels(tenant=tenant, status=summary.status).inc()
    rows = summary.rows
    unchanged = max(0, rows.succeeded - rows.created - rows.updated)
    for outcome, count in (
        ("created", rows.created),
        ("updated", rows.updated),
        ("unchanged", unchanged),
        ("failed", rows.failed),
    ):
        ROWS.labels(tenant=tenant, outcome=outcome).inc(count)
    for error_class, count in summary.errors.items():
        ROW_ERRORS.labels(tenant=tenant, error_class=error_class).inc(count)
    if summary.started_at is not None and summary.finished_at is not None:
        IMPORT_DURATION.observe(
            max(0.0, (summary.finished_at - summary.started_at).total_seconds())
        )


def sftp_login(*, success: bool) -> None:
    SFTP_LOGINS.labels(result="success" if success else "failed").inc()


def _sftp_counts(server: SftpServer | None) -> tuple[int, int]:
    """(open connections, banned addresses) of the embedded SFTP server.

    Bans come from the shared table (every instance's), see ``SftpServer.banned_count``.
    """
    if server is None:
        return 0, 0
    with server._lock:
        connections = len(server._live)
    return connections, server.banned_count()


class StateCollector(Collector):
    """The gauges of SPEC 10 computed at scrape time."""

    def __init__(
        self, *, engine: Engine, root: Path, sftp: Callable[[], SftpServer | None]
    ) -> None:
        self.engine = engine
        self.root = root
        self.sftp = sftp

    def describe(self) -> Iterator[Metric]:
        # Names only: registering must not query the database.
        yield from self._families()

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily("personsd_queue_depth", "Queued imports.", labels=["tenant"]),
            GaugeMetricFamily(
                "personsd_oldest_queued_seconds", "Age of the oldest queued import (0: none)."
            ),
            GaugeMetricFamily(
                "personsd_tenant_last_completed_timestamp_seconds",
                "Unix time of the tenant's last completed import.",
                labels=["tenant"],
            ),
            GaugeMetricFamily(
                "personsd_tenant_expected_interval_seconds",
                "How often the tenant is expected to send (tenants set --expect-every).",
                labels=["tenant"],
            ),
            GaugeMetricFamily(
                "personsd_notifications_pending", "Webhook deliveries not yet delivered."
            ),
            GaugeMetricFamily(
                "personsd_oldest_pending_notification_seconds",
                "Age of the oldest undelivered webhook delivery (0: none).",
            ),
            GaugeMetricFamily("personsd_database_up", "1 when the database answers."),
            GaugeMetricFamily(
                "personsd_disk_free_bytes", "Free bytes on the filesystem of paths.root."
            ),
            GaugeMetricFamily("personsd_sftp_connections", "Open SFTP connections."),
            GaugeMetricFamily(
                "personsd_sftp_banned_addresses", "Addresses banned for failed logins."
            ),
        )

    def collect(self) -> Iterator[Metric]:
        (
            depth,
            oldest,
            last,
            expected,
            pending,
            oldest_pending,
            up,
            disk,
            connections,
            banned,
        ) = self._families()
        snap = None
        try:
            with self.engine.connect() as conn:
                snap = status.counts(conn)
        except Exception as exc:  # noqa: BLE001 -- a scrape reports the outage, it does not fail
            log.debug(Event.METRICS_DATABASE_UNAVAILABLE, error=repr(exc)[:200])
        up.add_metric([], 0.0 if snap is None else 1.0)
        if snap is not None:
            now = snap.taken_at
            queued_since = [t.oldest_queued_at for t in snap.tenants if t.oldest_queued_at]
            oldest.add_metric(
                [], max((now - min(queued_since)).total_seconds(), 0.0) if queued_since else 0.0
            )
            for tenant in snap.tenants:
                for ended in ENDED_STATUSES:  # a tenant's first failure must count (see above)
                    IMPORTS.labels(tenant=tenant.name, status=ended)
                depth.add_metric([tenant.name], tenant.queued)
                if tenant.last_completed_at is not None:
                    last.add_metric([tenant.name], tenant.last_completed_at.timestamp())
                if tenant.expect_every_seconds is not None:
                    expected.add_metric([tenant.name], tenant.expect_every_seconds)
            pending.add_metric([], snap.notifications_pending)
            age = snap.oldest_notification_at
            oldest_pending.add_metric([], 0.0 if age is None else (now - age).total_seconds())
        free = status.disk_free(self.root)
        if free is not None:
            disk.add_metric([], free)
        sessions, bans = _sftp_counts(self.sftp())
        connections.add_metric([], sessions)
        banned.add_metric([], bans)
        families = (depth, oldest, last, expected, pending, oldest_pending, up, disk)
        yield from families
        yield connections
        yield banned


def readiness(engine: Engine, root: Path, min_free_bytes: int = READY_MIN_FREE_BYTES) -> str | None:
    """None when ready; else why not (database unreachable, disk nearly full)."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 -- any failure means not ready
        return f"database unreachable: {type(exc).__name__}"
    free = status.disk_free(root)
    if free is None:
        return f"disk: cannot stat {root}"
    if free < min_free_bytes:
        return f"disk nearly full: {free} bytes free, below {min_free_bytes}"
    return None


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, prometheus_client.generate_latest(REGISTRY), _TEXT_FORMAT)
        elif path == "/healthz":
            self._send(200, b"ok\n")
        elif path == "/readyz":
            reason = readiness(self.server.engine, self.server.root, self.server.min_free_bytes)
            if reason is None:
                self._send(200, b"ready\n")
            else:
                self._send(503, f"not ready: {reason}\n".encode())
        else:
            self._send(404, b"not found\n")

    def _send(
        self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return  # scrapes every few seconds would drown the log


_TEXT_FORMAT = prometheus_client.CONTENT_TYPE_LATEST


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        *,
        host: str,
        port: int,
        engine: Engine,
        root: Path,
        min_free_bytes: int = READY_MIN_FREE_BYTES,
    ) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)
        self.engine = engine
        self.root = root
        self.min_free_bytes = min_free_bytes
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


_collector: StateCollector | None = None


def start(
    cfg: Config, engine: Engine, sftp: Callable[[], SftpServer | None]
) -> MetricsServer | None:
    """Serve /metrics, /healthz and /readyz on ``metrics.listen``; None when it is empty."""
    global _collector
    if not cfg.metrics.enabled or cfg.metrics.host is None:
        return None
    if _collector is not None:
        REGISTRY.unregister(_collector)
    _collector = StateCollector(engine=engine, root=cfg.root, sftp=sftp)
    REGISTRY.register(_collector)
    server = MetricsServer(
        host=cfg.metrics.host, port=cfg.metrics.port, engine=engine, root=cfg.root
    )
    server.start()
    log.info(Event.METRICS_LISTENING, host=cfg.metrics.host, port=server.port)
    return server
