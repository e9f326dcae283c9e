"""Metrics and health (SPEC 10): state gauges from the database, counters, /readyz."""

from __future__ import annotations

import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, update

from engine_helpers import add_tenant, make_config, new_tenant_name, run_import
from personsd import importer, metrics, reports, status
from personsd.config import Config
from personsd.sftp import SftpLimits, SftpServer, load_or_create_host_key
from personsd.store import db
from personsd.store import imports as store_imports
from personsd.store import tenants as store_tenants
from personsd.store.db import write_tx
from personsd.store.models import ImportRow

SPEC_METRICS = {
    "personsd_imports_total",
    "personsd_rows_total",
    "personsd_row_errors_total",
    "personsd_import_duration_seconds",
    "personsd_queue_depth",
    "personsd_oldest_queued_seconds",
    "personsd_tenant_last_completed_timestamp_seconds",
    "personsd_tenant_expected_interval_seconds",
    "personsd_sftp_logins_total",
    "personsd_sftp_banned_addresses",
    "personsd_sftp_connections",
    "personsd_database_up",
    "personsd_disk_free_bytes",
    "personsd_notifications_pending",
}


def scrape(
    collector: metrics.StateCollector,
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one collect(), keyed by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in collector.collect()
        for sample in family.samples
    }


def collector_for(
    engine: Engine, root: Path, sftp: SftpServer | None = None
) -> metrics.StateCollector:
    return metrics.StateCollector(engine=engine, root=root, sftp=lambda: sftp)


def queue(engine: Engine, tenant: str, path: Path, received_at: datetime) -> int:
    return importer.create(
        engine, tenant=tenant, path=path, source="watcher", received_at=received_at
    )


def test_state_gauges_come_from_the_database(engine: Engine, tmp_path: Path) -> None:
    """Queue depth, oldest queued, last completed and expected interval, per tenant."""
    cfg = make_config(
        tmp_path / "root", engine.url.render_as_string(hide_password=False), chunk_rows=100
    )
    busy, idle = new_tenant_name(), new_tenant_name()
    busy_id, _ = add_tenant(engine, busy)
    add_tenant(engine, idle)
    with write_tx(engine) as conn:
        store_tenants.set_operations(conn, busy_id, expect_every_seconds=86400)
    path = tmp_path / "a.persons"
    path.write_text("external_person_id\np1\n")
    done = run_import(engine, cfg, busy, path)
    now = datetime.now(UTC)
    queue(engine, busy, path, now - timedelta(minutes=10))
    queue(engine, busy, path, now - timedelta(minutes=1))
    samples = scrape(collector_for(engine, tmp_path))
    assert 2 == samples[("personsd_queue_depth", (("tenant", busy),))]
    assert 0 == samples[("personsd_queue_depth", (("tenant", idle),))]
    assert 600 <= samples[("personsd_oldest_queued_seconds", ())] < 700
    finished = done.record.finished_at
    assert finished is not None
    key = ("personsd_tenant_last_completed_timestamp_seconds", (("tenant", busy),))
    assert finished.timestamp() == samples[key]
    assert ("personsd_tenant_last_completed_timestamp_seconds", (("tenant", idle),)) not in samples
    assert 86400 == samples[("personsd_tenant_expected_interval_seconds", (("tenant", busy),))]
    assert ("personsd_tenant_expected_interval_seconds", (("tenant", idle),)) not in samples
    assert 1 == samples[("personsd_database_up", ())]
    assert 0 == samples[("personsd_notifications_pending", ())]
    assert 0 < samples[("personsd_disk_free_bytes", ())]


def config_and_tenant(engine: Engine, tmp_path: Path) -> tuple[Config, str]:
    """A config on ``engine``'s database (100-row chunks) and a fresh tenant in it."""
    cfg = make_config(
        tmp_path / "root", engine.url.render_as_string(hide_password=False), chunk_rows=100
    )
    name = new_tenant_name()
    add_tenant(engine, name)
    return cfg, name


def test_the_last_completed_import_is_the_newest_completed_not_the_newest_ended(
    engine: Engine, tmp_path: Path
) -> None:
    """A later failed import does not count as the tenant having sent its data."""
    cfg, name = config_and_tenant(engine, tmp_path)
    path = tmp_path / "a.persons"
    path.write_text("external_person_id\np1\n")
    done = run_import(engine, cfg, name, path)
    later = importer.create(engine, tenant=name, path=path, source="cli")
    importer.fail(engine, cfg, later, "boom")
    with write_tx(engine) as conn:
        conn.execute(
            update(ImportRow)
            .where(ImportRow.id == later)
            .values(finished_at=datetime.now(UTC) + timedelta(hours=1))
        )
    samples = scrape(collector_for(engine, tmp_path))
    assert done.record.finished_at is not None
    key = ("personsd_tenant_last_completed_timestamp_seconds", (("tenant", name),))
    assert done.record.finished_at.timestamp() == samples[key]


def test_a_scrape_while_the_database_is_down_says_so(tmp_path: Path) -> None:
    """database_up is 0 and per-tenant gauges are absent; the scrape itself succeeds."""
    engine = db.connect("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    samples = scrape(collector_for(engine, tmp_path))
    assert 0 == samples[("personsd_database_up", ())]
    assert not any(name == "personsd_queue_depth" for name, _ in samples)
    assert 0 < samples[("personsd_disk_free_bytes", ())]


def test_sftp_gauges_read_the_servers_connections_and_bans(tmp_path: Path) -> None:
    """personsd_sftp_banned_addresses counts addresses banned now, not expired bans."""
    server = SftpServer(
        host="127.0.0.1",
        port=0,
        host_key=load_or_create_host_key(tmp_path / "host_key"),
        tenants_root=tmp_path,
        lookup=lambda _name: None,
        on_upload=lambda _t, _p: None,
        limits=SftpLimits(max_failed_logins=1, ban_seconds=60),
    )
    assert (0, 0) == metrics._sftp_counts(server)
    server.guard.record_failure("192.0.2.1")
    server.guard.record_failure("192.0.2.2")
    assert (0, 2) == metrics._sftp_counts(server)
    engine = db.connect(f"sqlite:///{tmp_path / 'x.db'}")
    db.upgrade(engine)
    samples = scrape(collector_for(engine, tmp_path, server))
    assert 2 == samples[("personsd_sftp_banned_addresses", ())]
    assert 0 == samples[("personsd_sftp_connections", ())]


def _summary(tenant: str, **rows: int) -> reports.Summary:
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    return reports.Summary(
        import_id=1,
        tenant=tenant,
        file="x.persons",
        sha256="0" * 64,
        bytes=1,
        status="completed",
        received_at=moment,
        started_at=moment,
        finished_at=moment + timedelta(seconds=42),
        rows=reports.RowCounts(**rows),
        errors={"MobilePhoneErrors::InvalidMDNFormat": 2},
    )


def test_an_ended_import_counts_rows_by_outcome_errors_by_class_and_its_duration() -> None:
    """unchanged = succeeded - created - updated; the histogram gets finished - started."""
    tenant = new_tenant_name()
    before = metrics.REGISTRY.get_sample_value("personsd_import_duration_seconds_count") or 0.0
    metrics.import_ended(_summary(tenant, total=10, succeeded=8, failed=2, created=3, updated=4))

    def value(name: str, **labels: str) -> float | None:
        return metrics.REGISTRY.get_sample_value(name, {"tenant": tenant, **labels})

    assert 1 == value("personsd_imports_total", status="completed")
    assert [3, 4, 1, 2] == [
        value("personsd_rows_total", outcome=o)
        for o in ("created", "updated", "unchanged", "failed")
    ]
    assert 2 == value(
        "personsd_row_errors_total", error_class="MobilePhoneErrors::InvalidMDNFormat"
    )
    assert before + 1 == metrics.REGISTRY.get_sample_value("personsd_import_duration_seconds_count")


def test_readiness_reports_an_unreachable_database_and_a_nearly_full_disk(
    engine: Engine, tmp_path: Path
) -> None:
    """None when ready; otherwise the reason, database first."""
    assert metrics.readiness(engine, tmp_path) is None
    full = metrics.readiness(engine, tmp_path, min_free_bytes=1 << 62)
    assert full is not None and full.startswith("disk nearly full")
    down = db.connect("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    reason = metrics.readiness(down, tmp_path)
    assert reason is not None and reason.startswith("database unreachable")


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_the_http_endpoint_serves_metrics_healthz_and_readyz(
    engine: Engine, tmp_path: Path
) -> None:
    """/metrics in the Prometheus text format with every SPEC 10 name; /readyz 503 with why."""
    collector = collector_for(engine, tmp_path)
    metrics.REGISTRY.register(collector)
    server = metrics.MetricsServer(host="127.0.0.1", port=0, engine=engine, root=tmp_path)
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        metrics.sftp_login(success=True)
        code, kind, body = get(base + "/metrics")
        assert (200, "text/plain") == (code, kind.split(";")[0])
        names = {f.name for f in text_string_to_metric_families(body)}
        # The parser drops _total from counter family names.
        exposed = {n + "_total" if n + "_total" in SPEC_METRICS else n for n in names}
        assert set() == SPEC_METRICS - exposed
        assert (200, "ok\n") == get(base + "/healthz")[::2]
        assert (200, "ready\n") == get(base + "/readyz")[::2]
        server.min_free_bytes = 1 << 62
        code, _, body = get(base + "/readyz")
        assert 503 == code
        assert body.startswith("not ready: disk nearly full")
        assert 404 == get(base + "/nothing")[0]
    finally:
        server.stop()
        metrics.REGISTRY.unregister(collector)


def test_a_scrape_creates_each_tenants_import_counters_at_zero(
    engine: Engine, tmp_path: Path
) -> None:
    """A tenant's first failed import must be an increase (from 0), not a new series."""
    name = new_tenant_name()
    add_tenant(engine, name)
    scrape(collector_for(engine, tmp_path))
    assert [0.0, 0.0, 0.0] == [
        metrics.REGISTRY.get_sample_value("personsd_imports_total", {"tenant": name, "status": s})
        for s in ("completed", "rejected", "failed")
    ]


def test_the_status_snapshot_shows_running_progress_and_recent_failures(
    engine: Engine, tmp_path: Path
) -> None:
    """personsd status: a running import's rows and % of bytes; failed imports listed."""
    cfg, name = config_and_tenant(engine, tmp_path)
    path = tmp_path / "a.persons"
    path.write_text("external_person_id\n" + "".join(f"p{i}\n" for i in range(100)))
    running = importer.create(engine, tenant=name, path=path, source="cli")
    size = path.stat().st_size
    with write_tx(engine) as conn:
        store_imports.set_status(conn, running, "running", next_offset=size // 4, next_row=25)
    failed = importer.create(engine, tenant=name, path=path, source="cli")
    importer.fail(engine, cfg, failed, "boom")
    with engine.connect() as conn:
        snap = status.snapshot(conn)
    mine = next(t for t in snap.tenants if t.name == name)
    assert [(running, 25)] == [(r.import_id, r.rows) for r in mine.running]
    assert 24 <= mine.running[0].percent <= 26
    assert (failed, "failed") == (mine.last_finished.import_id, mine.last_finished.status)  # type: ignore[union-attr]
    assert failed in [f.import_id for f in snap.recent_failures]
    assert 1 == mine.failed
