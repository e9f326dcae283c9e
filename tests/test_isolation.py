"""Each file's trouble stays its own (SPEC 5, issue 9 observations 1, 5 and 11), in process.

Real databases (SQLite and PostgreSQL), real files and renames, a real HTTP
carrier service on 127.0.0.1; the daemon-level counterparts are in
``test_isolation_daemon.py``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from structlog.testing import capture_logs

from engine_helpers import add_tenant, persons_of, run_import, var_config
from http_helpers import CarrierStub, send_json
from personsd import config, digest, importer
from personsd.errors import TransientError
from personsd.fileformat import name_bytes
from personsd.intake import Intake
from personsd.logging import Event
from personsd.phones import CarrierUnavailable, HttpCarrierLookup
from personsd.republish import Republisher
from personsd.retry import RetryPolicy
from personsd.store import db
from personsd.store import imports as store_imports
from personsd.store import queue as store_queue
from personsd.watcher import ReadyFile
from personsd.workers import NAME_MAX, Workers, kept_name
from polling import wait_for

FAST = RetryPolicy(base=0.05, cap=0.2)


@dataclass(frozen=True, kw_only=True, slots=True)
class Site:
    cfg: config.Config
    engine: Engine


@pytest.fixture
def site(tmp_path: Path, db_url: str) -> Iterator[Site]:
    cfg = var_config(tmp_path, db_url)
    engine = db.connect(db_url)
    db.upgrade(engine)
    for tenant in ("slow", "quick"):
        add_tenant(engine, tenant, ())
        cfg.inbox(tenant).mkdir(parents=True)
        cfg.outbox(tenant).mkdir(parents=True)
    try:
        yield Site(cfg=cfg, engine=engine)
    finally:
        engine.dispose()


def upload(cfg: config.Config, tenant: str, name: str, text: str) -> ReadyFile:
    path = cfg.inbox(tenant) / name
    path.write_text(text)
    st = path.stat()
    return ReadyFile(
        tenant=tenant, path=path, completed_at=time.time(), size=st.st_size, mtime_ns=st.st_mtime_ns
    )


def written(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def records(engine: Engine) -> list[store_imports.ImportRecord]:
    with engine.connect() as conn:
        return store_imports.list_imports(conn)


# -- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("unit", ["a", "é", "€", "😀"])
@pytest.mark.parametrize("length", [200, 234, 235, 254, 255])
def test_archive_names_fit_name_max_and_keep_the_suffix(unit: str, length: int) -> None:
    """Issue 9 obs. 1: `<id>.<name>` is cut to 255 bytes at a character boundary, suffix kept."""
    stem = unit * ((length - 8) // len(unit.encode()))
    name = stem + "x" * (length - 8 - name_bytes(stem)) + ".persons"
    assert length == name_bytes(name)

    kept = kept_name(123456789, name)

    assert name_bytes(kept) <= NAME_MAX
    assert kept.encode("utf-8")  # whole characters only
    assert kept.startswith("123456789." + name[:10])
    assert kept.endswith(".persons")
    assert (name_bytes(name) + 10 <= NAME_MAX) == (kept == "123456789." + name)


def test_archive_name_keeps_a_compound_suffix_and_escaped_bytes() -> None:
    """Issue 9 obs. 1: `.persons.gz.pgp` survives the cut; undecodable bytes count one each."""
    name = "\udcff" * 250 + ".persons.gz.pgp"

    kept = kept_name(7, name)

    assert NAME_MAX == name_bytes(kept)
    assert kept.endswith("\udcff.persons.gz.pgp")


# -- claiming -------------------------------------------------------------------------------


def test_an_unclaimable_file_delays_no_other_file(site: Site) -> None:
    """SPEC 5: a file whose claim fails waits on its own backoff; another tenant's file goes on."""
    cfg, engine = site.cfg, site.engine
    intake = Intake(engine=engine, cfg=cfg, on_queued=lambda: None, policy=FAST)
    # A real failure, even for root: a file where the tenant's claims directory belongs.
    obstacle = intake.claimed_dir / "slow"
    obstacle.parent.mkdir(parents=True)
    obstacle.write_text("")
    stuck = upload(cfg, "slow", "stuck.persons", "external_person_id\ns1\n")
    free = upload(cfg, "quick", "free.persons", "external_person_id\nq1\n")

    with capture_logs() as logs:
        intake.start()
        try:
            intake.offer(stuck)
            intake.offer(free)
            wait_for(lambda: records(engine), what="the free file's import")
            queued_first = [r.file_name for r in records(engine)]
            wait_for(
                lambda: sum(e["event"] == Event.INTAKE_RETRY for e in logs) >= 3,
                what="the stuck file's retries",
            )
            still_there = stuck.path.exists()
            obstacle.unlink()
            wait_for(lambda: len(records(engine)) == 2, what="the stuck file's claim")
        finally:
            intake.stop()

    assert ["free.persons"] == queued_first
    assert still_there
    assert ["free.persons", "stuck.persons"] == [r.file_name for r in records(engine)]
    retries = [e for e in logs if e["event"] == Event.INTAKE_RETRY]
    assert {("slow", "stuck.persons")} == {(e["tenant"], e["file"]) for e in retries}
    assert [1, 2, 3] == [e["failures"] for e in retries[:3]]
    assert all(0 < e["retry_in"] <= 0.2 * 1.1 for e in retries)
    assert 0 == intake.pending()


def test_claiming_reads_no_content_the_worker_hashes_at_the_start(site: Site) -> None:
    """Issue 9 obs. 5: the claim records the size only; sha256 and duplicate_of come at start."""
    cfg, engine = site.cfg, site.engine
    intake = Intake(engine=engine, cfg=cfg, on_queued=lambda: None)
    text = "external_person_id\nq1\n"
    big = cfg.inbox("slow") / "big.persons"
    with big.open("wb") as fh:
        fh.truncate(1 << 30)  # 1 GiB, sparse: only its hash would read it
    st = big.stat()
    big_id = intake.claim(
        ReadyFile(
            tenant="slow",
            path=big,
            completed_at=time.time(),
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
        )
    )
    first_id = intake.claim(upload(cfg, "quick", "one.persons", text))
    second_id = intake.claim(upload(cfg, "quick", "two.persons", text))
    assert big_id is not None and first_id is not None and second_id is not None

    queued = {r.id: r for r in records(engine)}
    first = importer.run(engine, cfg, first_id)
    second = importer.run(engine, cfg, second_id)

    assert (importer.UNHASHED, 1 << 30) == (queued[big_id].sha256, queued[big_id].bytes)
    assert importer.UNHASHED == queued[second_id].sha256
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert (digest, None) == (first.summary.sha256, first.summary.duplicate_of)
    assert (digest, first_id) == (second.summary.sha256, second.summary.duplicate_of)


def test_a_failed_import_whose_file_is_gone_says_sha256_null(site: Site) -> None:
    """SPEC 5: failing an import that was never hashed still publishes its summary."""
    cfg, engine = site.cfg, site.engine
    intake = Intake(engine=engine, cfg=cfg, on_queued=lambda: None)
    import_id = intake.claim(upload(cfg, "slow", "gone.persons", "external_person_id\ns1\n"))
    assert import_id is not None
    Path(records(engine)[0].work_path).unlink()

    importer.fail(engine, cfg, import_id, "lost")

    summary = json.loads(
        (cfg.outbox("slow") / f"gone.persons.{import_id}.summary.json").read_text()
    )
    assert ("failed", None) == (summary["status"], summary["sha256"])


def test_claims_of_the_older_flat_layout_are_recovered(site: Site) -> None:
    """SPEC 5 (nothing lost): a `<stamp>.<name>` claim left by an earlier version is queued."""
    cfg, engine = site.cfg, site.engine
    intake = Intake(engine=engine, cfg=cfg, on_queued=lambda: None)
    folder = intake.claimed_dir / "slow"
    folder.mkdir(parents=True)
    (folder / "00001764950000000000001.old.persons").write_text("external_person_id\ns1\n")
    (folder / "00001764950000000000002").mkdir()  # an archived claim's empty directory

    assert 1 == intake.recover()
    assert ["old.persons"] == [r.file_name for r in records(engine)]
    assert ["00001764950000000000001.old.persons"] == sorted(p.name for p in folder.iterdir())


# -- publication at start -------------------------------------------------------------------


def test_leftover_publications_are_each_on_their_own(site: Site, tmp_path: Path) -> None:
    """SPEC 5: one import's publication failing holds up neither another's nor itself for ever."""
    cfg, engine = site.cfg, site.engine
    done = {}
    for tenant in ("slow", "quick"):
        path = tmp_path / f"{tenant}.persons"
        path.write_text("external_person_id\nx1\n")
        outcome = run_import(engine, cfg, tenant, path)
        done[tenant] = outcome.record.id
        with db.write_tx(engine) as conn:
            store_imports.set_status(conn, outcome.record.id, "completed", reports_published=False)
        for report in cfg.outbox(tenant).iterdir():
            report.unlink()
    # A symlinked outbox is refused by publication (O_NOFOLLOW): a real, lasting failure.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cfg.outbox("slow").rmdir()
    cfg.outbox("slow").symlink_to(elsewhere)
    republisher = Republisher(engine=engine, cfg=lambda: cfg, policy=FAST)

    with capture_logs() as logs:
        assert 2 == republisher.find()
        assert 1 == republisher.publish_due()
        pending = republisher.pending()
        cfg.outbox("slow").unlink()
        cfg.outbox("slow").mkdir()
        wait_for(lambda: republisher.publish_due() or not republisher.pending(), what="retry")

    assert [done["slow"]] == pending
    assert [] == republisher.pending()
    assert [] == list(elsewhere.iterdir())
    for tenant in ("slow", "quick"):
        name = f"{tenant}.persons.{done[tenant]}.summary.json"
        assert (cfg.outbox(tenant) / name).is_file()
    failures = [e for e in logs if e["event"] == Event.PUBLISH_RETRY]
    assert [(done["slow"], 1)] == [(e["import_id"], e["failures"]) for e in failures]


# -- carrier lookups ------------------------------------------------------------------------


class HeldService(CarrierStub):
    """A real carrier service on 127.0.0.1 that holds each request until released."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = threading.Event()
        self.release = threading.Event()

    def answer_request(self, request: BaseHTTPRequestHandler) -> None:
        self.arrived.set()
        self.release.wait(20)
        send_json(request, {"valid": True})

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        super().__exit__(*exc)


def test_a_slow_carrier_lookup_holds_no_write_lock(site: Site, tmp_path: Path) -> None:
    """Issue 9 obs. 11: while the http service is answering, another tenant's import commits."""
    cfg, engine = site.cfg, site.engine
    slow_file = written(
        tmp_path / "slow.persons", "external_person_id,mdn\np1,+12295550001\np2,+12295550002\n"
    )
    quick_file = written(tmp_path / "quick.persons", "external_person_id\nq1\nq2\n")
    outcomes: dict[str, Any] = {}

    def run(tenant: str, path: Path, carrier: HttpCarrierLookup | None) -> None:
        try:
            outcomes[tenant] = run_import(engine, cfg, tenant, path, carrier=carrier)
        except Exception as exc:  # noqa: BLE001 -- reported by the asserts
            outcomes[tenant] = exc

    with HeldService() as service:
        lookup = HttpCarrierLookup(service.url, timeout=30, retries=0)
        slow = threading.Thread(target=run, args=("slow", slow_file, lookup))
        slow.start()
        assert service.arrived.wait(20)
        quick = threading.Thread(target=run, args=("quick", quick_file, None))
        quick.start()
        quick.join(10)
        quick_done_while_held = not quick.is_alive() and not service.release.is_set()
        service.release.set()
        slow.join(30)
        quick.join(30)

    assert quick_done_while_held
    assert "completed" == outcomes["quick"].summary.status
    assert (2, 0) == (outcomes["slow"].summary.rows.created, outcomes["slow"].summary.rows.failed)
    assert ["+12295550001", "+12295550002"] == sorted(service.asked)


def test_only_mdns_nobody_holds_are_asked_once_each(site: Site, tmp_path: Path) -> None:
    """SPEC 2: the lookup runs for newly assigned MDNs only; asked ahead, once per MDN."""
    cfg, engine = site.cfg, site.engine
    first = written(tmp_path / "first.persons", "external_person_id,mdn\np1,+12295550001\n")
    second = written(
        tmp_path / "second.persons",
        "mdn,external_person_id\n+12295550001,p1\n+12295550002,p2\n+12295550002,p2\n",
    )

    with HeldService() as service:
        service.release.set()
        lookup = HttpCarrierLookup(service.url, timeout=10, retries=0)
        run_import(engine, cfg, "slow", first, carrier=lookup)
        service.asked.clear()
        outcome = run_import(engine, cfg, "slow", second, carrier=lookup)

    assert ["+12295550002"] == service.asked
    assert (1, 2) == (outcome.summary.rows.created, outcome.summary.rows.updated)


def test_a_carrier_service_outage_is_an_environment_fault(site: Site, tmp_path: Path) -> None:
    """SPEC 5: the lookup service down raises TransientError before the chunk; nothing applied."""
    cfg, engine = site.cfg, site.engine
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/lookup"
        lookup = HttpCarrierLookup(url, timeout=1, retries=0, breaker_failures=2)
        path = written(
            tmp_path / "down.persons",
            "external_person_id,mdn\n" + "".join(f"p{i},+1229555000{i}\n" for i in range(5)),
        )
        import_id = importer.create(engine, tenant="slow", path=path, source="cli")

        with pytest.raises(TransientError) as raised:
            importer.run(engine, cfg, import_id, carrier=lookup)

    assert isinstance(raised.value, CarrierUnavailable)
    with engine.connect() as conn:
        record = store_imports.get(conn, import_id)
    assert (None, 0) == (record.next_offset, record.rows_total)
    assert [] == persons_of(engine, record.tenant_id)
    assert [] == list(cfg.outbox("slow").iterdir())


def _write_end(fifo: Path) -> int:
    """The write end of ``fifo``, once a reader has opened it (blocking writes)."""

    def opened() -> int | None:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: nobody reads it yet
                raise
            return None
        os.set_blocking(fd, True)
        return fd

    return int(wait_for(opened, what=f"a reader of {fifo.name}"))


def test_hashing_a_long_file_keeps_the_import_owned_postgresql(pg_url: str, tmp_path: Path) -> None:
    """SPEC 5, 12: an import being hashed is alive: the heartbeat renews its lease while the
    file is read (four leases long), no other instance takes it over; then it is rejected."""
    cfg = config.parse(
        {
            "paths": {"root": str(tmp_path / "var")},
            "database": {"url": pg_url},
            "import": {"carrier_lookup": "none", "workers": 1},
            "cluster": {"instance": "node-a", "lease_seconds": 0.6},
        },
        base=tmp_path,
        env={},
    )
    engine = db.connect(pg_url)
    db.upgrade(engine)
    add_tenant(engine, "slow", ())
    cfg.outbox("slow").mkdir(parents=True)
    fifo = cfg.work_dir / "claimed" / "slow" / "zeros.persons"
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)  # read as fast as the test writes: a hash as long as it likes
    blocks = 12
    import_id = importer.create(
        engine, tenant="slow", path=fifo, source="sftp", size=blocks * digest.READ_BUFFER
    )
    # (holder, lease expiry, what another instance's claim got) while hashing
    seen: list[tuple[str | None, datetime, store_queue.Claim | None]] = []

    def look() -> None:
        with db.write_tx(engine) as conn:
            taken = store_queue.claim_next(
                conn, instance="node-b", tenants_busy=set(), lease_seconds=30
            )
            record = store_imports.get(conn, import_id)
        assert record.lease_expires is not None
        seen.append((record.lease_holder, record.lease_expires, taken))

    workers = Workers(engine=engine, cfg=cfg, stop=threading.Event())
    try:
        workers.start()
        feed = _write_end(fifo)  # the worker hashes it
        try:
            for _ in range(blocks):  # the hash: 2.4 s, four leases
                os.write(feed, b"\0" * digest.READ_BUFFER)
                time.sleep(0.2)
                look()
            # The same bytes in a plain file for the reads after the hash (a FIFO
            # cannot seek); the hash goes on reading the FIFO it opened.
            plain = fifo.with_name("plain")
            with plain.open("wb") as fh:
                fh.truncate(blocks * digest.READ_BUFFER)  # NUL bytes: rejected once hashed
            os.replace(plain, fifo)
        finally:
            os.close(feed)
        expiries = [expires for _holder, expires, _taken in seen]
        assert [("node-a", None)] * blocks == [(holder, taken) for holder, _, taken in seen]
        assert sorted(expiries) == expiries
        assert expiries[-1] - expiries[0] > timedelta(seconds=1)
        wait_for(lambda: records(engine)[0].status == "rejected", what="rejected")
    finally:
        workers.stop.set()
        workers.join(time.monotonic() + 10)
        engine.dispose()
