"""Webhooks (SPEC 10): the outbox row, signing, retries, give-up, redaction, fairness."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog
from sqlalchemy import Engine, select, update

from engine_helpers import add_tenant, make_config, new_tenant_name, published, run_import
from personsd import config, importer, notifier, webhooks
from personsd.logging import Event
from personsd.retry import RetryPolicy
from personsd.store import imports as store_imports
from personsd.store import tenants as store_tenants
from personsd.store.db import write_tx
from personsd.store.models import DeliveryRow
from webhook_helpers import receiver

GOOD = "external_person_id,nick\np1,ann\np2,bob\n"


def notify_config(tmp_path: Path, engine: Engine, url: str = "", **notify: object) -> config.Config:
    db_url = engine.url.render_as_string(hide_password=False)
    cfg = make_config(tmp_path / "root", db_url, chunk_rows=100)
    return replace(cfg, notify=config.NotifyConfig(url=url, **notify))  # type: ignore[arg-type]


def deliveries(engine: Engine) -> list[DeliveryRow]:
    with engine.connect() as conn:
        return list(conn.execute(select(DeliveryRow).order_by(DeliveryRow.id)).all())  # type: ignore[arg-type]


def tenant_file(engine: Engine, tmp_path: Path, text: str = GOOD) -> tuple[str, Path]:
    """A fresh tenant and a file ``people.persons`` holding ``text``."""
    name = new_tenant_name()
    add_tenant(engine, name)
    path = tmp_path / "people.persons"
    path.write_text(text)
    return name, path


def queued(engine: Engine, tmp_path: Path) -> int:
    """A fresh tenant's import of GOOD, created but not run: its id."""
    name, path = tenant_file(engine, tmp_path)
    return importer.create(engine, tenant=name, path=path, source="cli")


def imported(
    engine: Engine, cfg: config.Config, tmp_path: Path, text: str = GOOD
) -> tuple[str, importer.Outcome]:
    name, path = tenant_file(engine, tmp_path, text)
    return name, run_import(engine, cfg, name, path)


def test_a_completed_import_records_its_summary_as_a_pending_delivery(
    engine: Engine, tmp_path: Path
) -> None:
    """The delivery row holds the summary.json bytes and the import.completed event."""
    cfg = notify_config(tmp_path, engine, "http://127.0.0.1:9/x")
    tenant, outcome = imported(engine, cfg, tmp_path)
    rows = deliveries(engine)
    assert 1 == len(rows)
    row = rows[0]
    assert ("import.completed", "pending", 0, "http://127.0.0.1:9/x") == (
        row.event,
        row.status,
        row.attempts,
        row.url,
    )
    assert published(cfg, tenant, outcome).summary == json.loads(row.body)


def test_a_rejected_import_records_an_import_rejected_delivery(
    engine: Engine, tmp_path: Path
) -> None:
    """A file-level rejection ends the import: its webhook says import.rejected."""
    cfg = notify_config(tmp_path, engine, "http://127.0.0.1:9/x")
    imported(engine, cfg, tmp_path, text="no_such_column\nx\n")
    assert ["import.rejected"] == [r.event for r in deliveries(engine)]
    assert "rejected" == json.loads(deliveries(engine)[0].body)["status"]


def test_a_failed_import_records_an_import_failed_delivery(engine: Engine, tmp_path: Path) -> None:
    """importer.fail (after the last attempt) writes the import.failed delivery."""
    cfg = notify_config(tmp_path, engine, "http://127.0.0.1:9/x")
    import_id = queued(engine, tmp_path)
    importer.fail(engine, cfg, import_id, "boom")
    assert [("import.failed", "failed")] == [
        (r.event, json.loads(r.body)["status"]) for r in deliveries(engine)
    ]


def test_no_url_anywhere_records_no_delivery(engine: Engine, tmp_path: Path) -> None:
    """Notifications are off without notify.url and without a tenant URL."""
    cfg = notify_config(tmp_path, engine)
    imported(engine, cfg, tmp_path)
    assert [] == deliveries(engine)


def test_the_tenant_url_wins_over_notify_url(engine: Engine, tmp_path: Path) -> None:
    """tenants set --notify-url overrides the default for that tenant only."""
    cfg = notify_config(tmp_path, engine, "http://default.invalid/")
    name = new_tenant_name()
    tenant_id, _ = add_tenant(engine, name)
    with write_tx(engine) as conn:
        store_tenants.set_operations(conn, tenant_id, notify_url="http://own.invalid/hook")
    path = tmp_path / "people.persons"
    path.write_text(GOOD)
    run_import(engine, cfg, name, path)
    assert ["http://own.invalid/hook"] == [r.url for r in deliveries(engine)]


def test_a_rolled_back_end_leaves_no_delivery(engine: Engine, tmp_path: Path) -> None:
    """The outbox row commits with the final status or not at all."""
    cfg = notify_config(tmp_path, engine, "http://127.0.0.1:9/x")
    import_id = queued(engine, tmp_path)
    with pytest.raises(RuntimeError), write_tx(engine) as conn:
        store_imports.set_status(conn, import_id, "failed", finished_at=datetime.now(UTC))
        assert webhooks.enqueue(conn, cfg, import_id) is not None
        raise RuntimeError("the final-status transaction fails")
    assert [] == deliveries(engine)


def sender(engine: Engine, cfg: config.Config, **kw: object) -> notifier.Sender:
    return notifier.Sender(engine=engine, cfg=cfg, stop=threading.Event(), **kw)  # type: ignore[arg-type]


def claim_one(engine: Engine) -> webhooks.Delivery:
    with write_tx(engine) as conn:
        found = webhooks.claim(
            conn, now=datetime.now(UTC), lease=timedelta(seconds=60), busy=set(), limit=1
        )
    assert 1 == len(found)
    return found[0]


def test_a_delivery_carries_the_headers_and_a_valid_signature(
    engine: Engine, tmp_path: Path
) -> None:
    """SPEC 10 headers; the signature is HMAC-SHA256 of TIMESTAMP.BODY with the file's key."""
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(b"s3cret\n")
    with receiver() as hook:
        cfg = notify_config(tmp_path, engine, hook.url(), secret_file=secret_file)
        _, outcome = imported(engine, cfg, tmp_path)
        delivery = claim_one(engine)
        with structlog.testing.capture_logs() as logs:
            assert sender(engine, cfg).deliver(delivery)
    got = hook.got()
    assert 1 == len(got)
    head = got[0].headers
    assert "import.completed" == head["X-Personsd-Event"]
    assert delivery.delivery_id == head["X-Personsd-Delivery"]
    assert abs(time.time() - int(head["X-Personsd-Timestamp"])) < 60
    assert got[0].signature_ok(b"s3cret")
    assert outcome.record.id == json.loads(got[0].body)["import_id"]
    assert ["delivered"] == [r.status for r in deliveries(engine)]
    assert [Event.NOTIFY_DELIVERED] == [e["event"] for e in logs]


def test_without_a_secret_file_there_is_no_signature(engine: Engine, tmp_path: Path) -> None:
    """X-Personsd-Signature is sent only when notify.secret_file is set."""
    with receiver() as hook:
        cfg = notify_config(tmp_path, engine, hook.url())
        imported(engine, cfg, tmp_path)
        assert sender(engine, cfg).deliver(claim_one(engine))
    assert "X-Personsd-Signature" not in hook.got()[0].headers


def test_a_500_is_retried_later_with_the_same_delivery_id(engine: Engine, tmp_path: Path) -> None:
    """A non-2xx answer keeps the row pending, due again after the first backoff."""
    with receiver(codes=[500]) as hook:
        cfg = notify_config(tmp_path, engine, hook.url())
        imported(engine, cfg, tmp_path)
        first = claim_one(engine)
        with structlog.testing.capture_logs() as logs:
            assert not sender(engine, cfg).deliver(first)
        row = deliveries(engine)[0]
        assert ("pending", 1, "HTTP 500") == (row.status, row.attempts, row.last_error)
        due_in = (webhooks._aware(row.next_attempt_at) - datetime.now(UTC)).total_seconds()
        assert 0 < due_in <= 5
        failed = [e for e in logs if e["event"] == Event.NOTIFY_FAILED]
        assert [False] == [e["gave_up"] for e in failed]
        with write_tx(engine) as conn:
            conn.execute(update(DeliveryRow).values(next_attempt_at=datetime.now(UTC)))
        second = claim_one(engine)
        assert sender(engine, cfg).deliver(second)
    ids = [r.headers["X-Personsd-Delivery"] for r in hook.got()]
    assert [first.delivery_id, first.delivery_id] == ids
    assert ("delivered", 2) == (deliveries(engine)[0].status, deliveries(engine)[0].attempts)


def test_a_delivery_failing_past_the_give_up_time_is_marked_failed(
    engine: Engine, tmp_path: Path
) -> None:
    """After GIVE_UP_AFTER (over 24 h) of failures: status failed, notify.failed gave_up."""
    with receiver(default=503) as hook:
        cfg = notify_config(tmp_path, engine, hook.url())
        imported(engine, cfg, tmp_path)
        with write_tx(engine) as conn:
            conn.execute(
                update(DeliveryRow).values(
                    created_at=datetime.now(UTC) - notifier.GIVE_UP_AFTER - timedelta(minutes=1)
                )
            )
        with structlog.testing.capture_logs() as logs:
            assert not sender(engine, cfg).deliver(claim_one(engine))
    assert ["failed"] == [r.status for r in deliveries(engine)]
    assert [True] == [e["gave_up"] for e in logs if e["event"] == Event.NOTIFY_FAILED]
    assert [] == [r for r in deliveries(engine) if r.status == "pending"]


def test_a_hanging_receiver_is_cut_at_the_timeout(engine: Engine, tmp_path: Path) -> None:
    """notify.timeout_seconds bounds the whole request; the attempt counts as failed."""
    with receiver() as hook:
        hook.hang_seconds = 5.0
        cfg = notify_config(tmp_path, engine, hook.url(), timeout_seconds=0.5)
        imported(engine, cfg, tmp_path)
        started = time.monotonic()
        assert not sender(engine, cfg).deliver(claim_one(engine))
        took = time.monotonic() - started
    assert took < 3.0
    assert ("pending", 1) == (deliveries(engine)[0].status, deliveries(engine)[0].attempts)


def test_url_credentials_never_reach_the_log(engine: Engine, tmp_path: Path) -> None:
    """User info goes into Basic auth, not the log; query values are redacted."""
    with receiver(codes=[500]) as hook:
        url = f"http://bob:hunter2@127.0.0.1:{hook.port}/hook?token=t0ps3cret&x=1"
        cfg = notify_config(tmp_path, engine, url)
        imported(engine, cfg, tmp_path)
        with structlog.testing.capture_logs() as logs:
            sender(engine, cfg).deliver(claim_one(engine))
    text = json.dumps(logs, default=str)
    assert "hunter2" not in text and "t0ps3cret" not in text and "bob" not in text
    assert f"http://127.0.0.1:{hook.port}/hook?token=REDACTED&x=REDACTED" == logs[-1]["url"]
    assert "Basic Ym9iOmh1bnRlcjI=" == hook.got()[0].headers["Authorization"]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://u:p@example.com:8443/a/b?sig=1", "https://example.com:8443/a/b?sig=REDACTED"),
        ("http://[::1]:80/x", "http://[::1]:80/x"),
        ("https://example.com/hook", "https://example.com/hook"),
    ],
)
def test_redact(url: str, shown: str) -> None:
    """redact() drops user info and query values, keeps scheme, host, port and path."""
    assert shown == webhooks.redact(url)


def test_the_backoff_starts_within_5_s_caps_within_10_min_and_gives_up_after_24_h() -> None:
    """SPEC 10's schedule, for the policy the sender uses (jitter included)."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    pauses = []
    now, attempts = start, 0
    while (nxt := notifier.next_attempt(start, attempts + 1, now)) is not None:
        attempts += 1
        pauses.append((nxt - now).total_seconds())
        now = nxt
        assert attempts < 10_000
    assert pauses[0] <= 5.0
    assert max(pauses) <= 600.0
    assert (now - start) >= timedelta(hours=24)


def test_claims_take_one_delivery_per_tenant_and_skip_busy_tenants(
    engine: Engine, tmp_path: Path
) -> None:
    """Fairness: a tenant with a backlog gets one slot; tenants in flight are skipped."""
    cfg = notify_config(tmp_path, engine, "http://127.0.0.1:9/")
    first, _ = imported(engine, cfg, tmp_path)
    path = tmp_path / "again.persons"
    path.write_text(GOOD + "p3,cy\n")
    run_import(engine, cfg, first, path)
    imported(engine, cfg, tmp_path)
    now = datetime.now(UTC)
    lease = timedelta(seconds=60)
    with write_tx(engine) as conn:
        claimed = webhooks.claim(conn, now=now, lease=lease, busy=set(), limit=10)
    assert 2 == len(claimed)
    assert 2 == len({d.tenant_id for d in claimed})
    with write_tx(engine) as conn:
        again = webhooks.claim(conn, now=now, lease=lease, busy=set(), limit=10)
    # The first tenant's second delivery is free; the leased ones are not.
    assert [first] == [d.tenant for d in again]
    with write_tx(engine) as conn:
        skipped = webhooks.claim(
            conn, now=now + 2 * lease, lease=lease, busy={again[0].tenant_id}, limit=10
        )
    assert again[0].tenant_id not in {d.tenant_id for d in skipped}


def test_the_sender_thread_delivers_each_pending_row(engine: Engine, tmp_path: Path) -> None:
    """The running Sender picks due rows up by itself and stops when asked."""
    with receiver() as hook:
        cfg = notify_config(tmp_path, engine, hook.url())
        imported(engine, cfg, tmp_path)
        imported(engine, cfg, tmp_path)
        running = sender(engine, cfg, policy=RetryPolicy(base=0.1, cap=0.2))
        running.start()
        try:
            deadline = time.monotonic() + 20
            while len(hook.got()) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            running.stop.set()
            running.join(time.monotonic() + 5)
    assert 2 == len({r.headers["X-Personsd-Delivery"] for r in hook.got()})


def test_the_receiver_example_in_the_docs_accepts_a_signed_delivery_and_refuses_a_forged_one(
    tmp_path: Path,
) -> None:
    """docs/operations.md's Python receiver verifies what the sender signs."""
    import re
    import subprocess
    import sys

    from daemon_helpers import free_port
    from polling import wait_for

    doc = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    code = re.search(r"```python\n(.*?HTTPServer.*?)```", doc, re.S)
    assert code is not None
    port = free_port()
    source = (
        code.group(1)
        .replace('open("/etc/personsd/webhook.key", "rb").read().strip()', "b'k3y'")
        .replace("8080", str(port))
    )
    proc = subprocess.Popen([sys.executable, "-u", "-c", source], stdout=subprocess.PIPE, text=True)
    try:
        body = b'{"status": "completed"}\n'
        delivery = webhooks.Delivery(
            id=1,
            delivery_id="d-1",
            tenant_id=1,
            tenant="acme",
            import_id=1,
            event="import.completed",
            url=f"http://127.0.0.1:{port}/",
            body=body.decode(),
            attempts=0,
            created_at=datetime.now(UTC),
        )

        def send(secret: bytes) -> int | None:
            try:
                headers = webhooks.headers_for(delivery, secret, time.time())
                return notifier.post(delivery.url, body, headers, 5.0)
            except notifier.DeliveryError:
                return None

        assert 204 == wait_for(lambda: send(b"k3y"), what="the example receiver")
        assert 401 == send(b"wrong")
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert "d-1 completed" in out


def test_finished_deliveries_are_pruned_after_30_days_pending_ones_never(
    engine: Engine, tmp_path: Path
) -> None:
    """KEEP_FINISHED bounds the table; a pending delivery stays however old."""
    cfg = notify_config(tmp_path, engine, "http://127.0.0.1:9/")
    for _ in range(3):
        imported(engine, cfg, tmp_path)
    ids = [r.id for r in deliveries(engine)]
    now = datetime.now(UTC)
    old = now - webhooks.KEEP_FINISHED - timedelta(hours=1)
    with write_tx(engine) as conn:
        conn.execute(
            update(DeliveryRow)
            .where(DeliveryRow.id == ids[0])
            .values(status="delivered", finished_at=old)
        )
        conn.execute(
            update(DeliveryRow)
            .where(DeliveryRow.id == ids[1])
            .values(status="delivered", finished_at=now - timedelta(days=1))
        )
        conn.execute(update(DeliveryRow).where(DeliveryRow.id == ids[2]).values(created_at=old))
    with write_tx(engine) as conn:
        assert 1 == webhooks.prune(conn, now)
    assert ids[1:] == [r.id for r in deliveries(engine)]
