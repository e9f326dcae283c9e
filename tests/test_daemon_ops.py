"""SPEC 10 against the real daemon: metrics after known imports, /readyz through a
database outage, signed webhooks (retries, kill -9, a hanging receiver, per-tenant
URLs) and a real Prometheus scraping it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import paramiko
import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon_helpers import Daemon, drop_file, free_port, sftp_put, ssh_connect, ssh_key
from polling import wait_for
from test_daemon_outage import Cluster, cluster, down_guard  # noqa: F401 -- fixtures
from test_metrics import SPEC_METRICS
from webhook_helpers import receiver

pytestmark = pytest.mark.slow

SECRET = b"webhook-key"
REQUIRE_TOOLS = os.environ.get("PERSONSD_TEST_REQUIRE_TOOLS", "") not in ("", "0")
FIRST = "mdn,first_name\n+12995550005,John\n+12995550006,Mary\nnot-a-number,X\n"
SECOND = "mdn,first_name\n+12995550005,John\n+12995550006,Maria\n"
REJECTED = "no_such_column\nx\n"


def make_daemon(
    tmp_path: Path,
    db_url: str,
    *,
    notify: dict[str, Any] | None = None,
    sftp: bool = False,
) -> Daemon:
    (tmp_path / "secret").write_bytes(SECRET + b"\n")
    extra: dict[str, dict[str, Any]] = {
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
        "notify": {"secret_file": str(tmp_path / "secret"), **(notify or {})},
    }
    if not sftp:
        extra["sftp"] = {"enabled": False}
    home = tmp_path / "home"
    home.mkdir()
    return Daemon(home=home, db_url=db_url, port=free_port(), extra=extra)


def metrics_url(daemon: Daemon, path: str = "/metrics") -> str:
    return f"http://{daemon.extra['metrics']['listen']}{path}"


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, repr(exc)


def start(daemon: Daemon) -> None:
    daemon.start()
    wait_for(lambda: http_get(metrics_url(daemon, "/healthz"))[0] == 200, what="/healthz")


def samples(daemon: Daemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    code, body = http_get(metrics_url(daemon))
    assert 200 == code, body
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def drop(daemon: Daemon, tenant: str, name: str, text: str) -> None:
    inbox = daemon.inbox(tenant)
    drop_file(inbox, name, text, staging=inbox.parent)


def sftp_upload(daemon: Daemon, key: Path, tenant: str, name: str, text: str) -> None:
    local = daemon.home / name
    local.write_text(text)
    sftp_put(daemon.port, tenant, key, local)


def failed_login(daemon: Daemon, key: Path, tenant: str) -> None:
    with pytest.raises(paramiko.AuthenticationException):
        ssh_connect(daemon.port, tenant, key)


def summaries(daemon: Daemon, tenant: str) -> dict[str, dict[str, Any]]:
    return {
        json.loads(p.read_text())["file"]: json.loads(p.read_text())
        for p in daemon.outbox(tenant).glob("*.summary.json")
    }


def wait_summaries(daemon: Daemon, tenant: str, count: int, timeout: float = 60) -> None:
    wait_for(
        lambda: len(summaries(daemon, tenant)) >= count,
        timeout=timeout,
        what=f"{count} summaries of {tenant}",
    )


# -- metrics -------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_every_metric_is_exported_and_right_after_known_imports(
    tmp_path: Path, db_url: str
) -> None:
    """Two imports and a rejected file, one login of each kind: SPEC 10's metrics say so."""
    key, stranger = ssh_key(tmp_path), ssh_key(tmp_path, "stranger")
    with receiver() as hook:
        daemon = make_daemon(tmp_path, db_url, notify={"url": hook.url()}, sftp=True)
        daemon.write_config()
        daemon.add_tenant("acme", key_file=Path(f"{key}.pub"))
        daemon.cli("tenants", "set", "acme", "--expect-every", "24h")
        start(daemon)
        try:
            sftp_upload(daemon, key, "acme", "first.persons", FIRST)
            wait_summaries(daemon, "acme", 1)
            drop(daemon, "acme", "second.persons", SECOND)
            wait_summaries(daemon, "acme", 2)
            drop(daemon, "acme", "third.persons", REJECTED)
            wait_summaries(daemon, "acme", 3)
            failed_login(daemon, stranger, "acme")
            wait_for(lambda: len(hook.got()) >= 3, what="3 webhooks")
            wait_for(
                lambda: samples(daemon)[("personsd_notifications_pending", ())] == 0,
                what="no pending notification",
            )
            got = samples(daemon)
        finally:
            daemon.stop()
    done = summaries(daemon, "acme")
    first, second = done["first.persons"], done["second.persons"]
    assert (2, 0, 1) == (
        first["rows"]["created"],
        first["rows"]["updated"],
        first["rows"]["failed"],
    )
    # Every matched row counts as updated (the engine does not tell unchanged rows).
    assert (0, 2, 2) == (
        second["rows"]["created"],
        second["rows"]["updated"],
        second["rows"]["succeeded"],
    )
    assert "rejected" == done["third.persons"]["status"]

    def value(name: str, **labels: str) -> float | None:
        return got.get((name, tuple(sorted(labels.items()))))

    assert [2, 1, 0] == [
        value("personsd_imports_total", tenant="acme", status=s)
        for s in ("completed", "rejected", "failed")
    ]
    assert [2, 2, 0, 1] == [
        value("personsd_rows_total", tenant="acme", outcome=o)
        for o in ("created", "updated", "unchanged", "failed")
    ]
    errors: dict[str, int] = {}
    for summary in done.values():
        for error_class, count in summary["errors"].items():
            errors[error_class] = errors.get(error_class, 0) + count
    assert errors == {
        labels[0][1]: v for (name, labels), v in got.items() if name == "personsd_row_errors_total"
    }
    assert 3 == value("personsd_import_duration_seconds_count")
    assert 0 == value("personsd_queue_depth", tenant="acme")
    assert 0 == value("personsd_oldest_queued_seconds")
    finished = second["finished_at"].replace("Z", "+00:00")
    assert datetime.fromisoformat(finished).timestamp() == value(
        "personsd_tenant_last_completed_timestamp_seconds", tenant="acme"
    )
    assert 86400 == value("personsd_tenant_expected_interval_seconds", tenant="acme")
    assert 1 == value("personsd_sftp_logins_total", result="success")
    assert 1 <= (value("personsd_sftp_logins_total", result="failed") or 0)
    assert (0, 0) == (
        value("personsd_sftp_banned_addresses"),
        value("personsd_sftp_connections"),
    )
    assert 1 == value("personsd_database_up")
    free = value("personsd_disk_free_bytes")
    assert free is not None and abs(free - shutil.disk_usage(daemon.root).free) < 1 << 30
    assert 0 == value("personsd_notifications_pending")
    assert 3 == value("personsd_notifications_total", result="delivered")
    exposed = {name for name, _ in got}
    spec = {n for n in SPEC_METRICS if n != "personsd_import_duration_seconds"}
    assert set() == spec - exposed
    # The webhooks: signed, one per import, the summary as body.
    bodies = {json.loads(r.body)["file"]: r for r in hook.got()}
    assert set(done) == set(bodies)
    for name, summary in done.items():
        request = bodies[name]
        assert request.signature_ok(SECRET)
        assert summary == json.loads(request.body)
        assert f"import.{summary['status']}" == request.headers["X-Personsd-Event"]


@pytest.mark.timeout(180)
def test_readyz_is_503_while_postgresql_is_down_and_200_after(
    down_guard: Cluster,  # noqa: F811 -- the fixture
    tmp_path: Path,
) -> None:
    """/readyz names the database while it is unreachable; /healthz stays 200."""
    pg = down_guard
    daemon = make_daemon(tmp_path, pg.schema_url())
    start(daemon)
    try:
        # Migrated and serving: the gauges read the schema.
        wait_for(lambda: samples(daemon)[("personsd_database_up", ())] == 1, what="database up")
        assert 200 == http_get(metrics_url(daemon, "/readyz"))[0]
        pg.stop()
        _, body = wait_for(
            lambda: (r := http_get(metrics_url(daemon, "/readyz")))[0] == 503 and r,
            what="/readyz 503",
        )
        assert body.startswith("not ready: database unreachable")
        assert 200 == http_get(metrics_url(daemon, "/healthz"))[0]
        assert 0 == samples(daemon)[("personsd_database_up", ())]
        pg.start()
        wait_for(lambda: http_get(metrics_url(daemon, "/readyz"))[0] == 200, what="ready again")
        assert 1 == samples(daemon)[("personsd_database_up", ())]
    finally:
        daemon.stop()


# -- webhooks ------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_a_webhook_answered_500_is_retried_with_the_same_delivery_id(
    tmp_path: Path, sqlite_url: str
) -> None:
    """Two 500s, then 200: three requests, one delivery id, logged failed then delivered."""
    with receiver(codes=[500, 500]) as hook:
        daemon = make_daemon(tmp_path, sqlite_url, notify={"url": hook.url()})
        daemon.write_config()
        daemon.add_tenant("acme")
        start(daemon)
        try:
            drop(daemon, "acme", "first.persons", FIRST)
            wait_for(lambda: len(hook.got()) >= 3, timeout=60, what="three attempts")
            wait_for(lambda: daemon.has_event("notify.delivered"), what="notify.delivered")
        finally:
            daemon.stop()
    got = hook.got()
    assert 1 == len({r.headers["X-Personsd-Delivery"] for r in got})
    assert all(r.signature_ok(SECRET) for r in got)
    failed = [e for e in daemon.events() if e["event"] == "notify.failed"]
    assert [1, 2] == [e["attempt"] for e in failed]
    # SPEC 10: the first pause is at most 5 s.
    assert got[1].at - got[0].at <= 5.5


@pytest.mark.timeout(240)
def test_a_webhook_is_delivered_after_the_receiver_was_down_and_the_daemon_killed(
    tmp_path: Path, pg_url: str
) -> None:
    """The pending delivery survives kill -9 and reaches the receiver once it is up."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    daemon = make_daemon(tmp_path, pg_url, notify={"url": url})
    daemon.write_config()
    daemon.add_tenant("acme")
    start(daemon)
    drop(daemon, "acme", "first.persons", FIRST)
    wait_for(lambda: daemon.has_event("notify.failed"), what="a failed delivery")
    refused = next(e for e in daemon.events() if e["event"] == "notify.failed")
    daemon.kill()
    # The receiver comes back on the port the delivery names.
    with receiver(port=port) as hook:
        try:
            start(daemon)
            wait_for(lambda: hook.got(), timeout=60, what="the delivery after restart")
            wait_for(lambda: daemon.has_event("notify.delivered"), what="notify.delivered")
        finally:
            daemon.stop()
    assert [refused["delivery_id"]] == [r.headers["X-Personsd-Delivery"] for r in hook.got()]
    assert hook.got()[0].signature_ok(SECRET)


@pytest.mark.timeout(240)
def test_a_hanging_receiver_slows_neither_imports_nor_other_tenants(
    tmp_path: Path, sqlite_url: str
) -> None:
    """acme's receiver hangs (cut at the timeout); imports go on and zed's own URL gets its call."""
    with receiver() as hanging, receiver() as own:
        hanging.hang_seconds = 30.0
        daemon = make_daemon(
            tmp_path, sqlite_url, notify={"url": hanging.url(), "timeout_seconds": 20}
        )
        daemon.write_config()
        daemon.add_tenant("acme")
        daemon.add_tenant("zed")
        daemon.cli("tenants", "set", "zed", "--notify-url", own.url("/zed"))
        start(daemon)
        try:
            drop(daemon, "acme", "a0.persons", FIRST)
            wait_for(lambda: daemon.has_event("file.detected"), what="the first file")
            # The first delivery is now hanging for 20 s; five more files meanwhile.
            started = time.monotonic()
            for index in range(1, 6):
                drop(daemon, "acme", f"a{index}.persons", FIRST.replace("John", f"J{index}"))
            wait_summaries(daemon, "acme", 6, timeout=60)
            took = time.monotonic() - started
            drop(daemon, "zed", "z.persons", FIRST)
            wait_for(lambda: own.got(), timeout=15, what="zed's webhook")
            zed_at = time.monotonic() - started
            assert not daemon.has_event("notify.delivered", tenant="acme")
        finally:
            daemon.stop()
    assert took < 15.0
    assert zed_at < 20.0  # before acme's hanging request is even cut
    assert ["/zed"] == [r.path for r in own.got()]
    assert "zed" == json.loads(own.got()[0].body)["tenant"]


# -- a real Prometheus ---------------------------------------------------------------------


def _prometheus() -> str:
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    if found is None:
        if REQUIRE_TOOLS:
            pytest.fail("prometheus is missing (PERSONSD_TEST_REQUIRE_TOOLS is set)")
        pytest.skip("prometheus is not installed (Debian package prometheus)")
    return found


@pytest.fixture
def prometheus_home(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    home = tmp_path / "prometheus"
    home.mkdir()
    yield home, free_port()


@pytest.mark.timeout(180)
def test_a_real_prometheus_scrapes_an_imports_metric(
    tmp_path: Path, sqlite_url: str, prometheus_home: tuple[Path, int]
) -> None:
    """prometheus scrapes the daemon; its HTTP API returns the completed import count."""
    binary = _prometheus()
    daemon = make_daemon(tmp_path, sqlite_url)
    daemon.write_config()
    daemon.add_tenant("acme")
    start(daemon)
    home, port = prometheus_home
    target = daemon.extra["metrics"]["listen"]
    (home / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: personsd\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    log = (home / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={home / 'prometheus.yml'}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    query = urllib.parse.urlencode(
        {"query": 'personsd_imports_total{tenant="acme",status="completed"}'}
    )
    api = f"http://127.0.0.1:{port}/api/v1/query?{query}"

    def completed() -> float | None:
        code, body = http_get(api)
        if code != 200:
            return None
        result = json.loads(body)["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    try:
        drop(daemon, "acme", "first.persons", FIRST)
        wait_summaries(daemon, "acme", 1)
        assert 1.0 == wait_for(lambda: completed() == 1.0 and 1.0, timeout=60, what="the query")
        _, body = http_get(f"http://127.0.0.1:{port}/api/v1/targets")
        health = [t["health"] for t in json.loads(body)["data"]["activeTargets"]]
        assert ["up"] == health
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        daemon.stop()
