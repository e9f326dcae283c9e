"""SPEC 12 leases in process: fenced imports, the heartbeat, instance names, claimed folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine
from structlog.testing import capture_logs

from personsd import config, importer, instance
from personsd.errors import LeaseLost
from personsd.intake import Intake
from personsd.logging import Event
from personsd.store import db
from personsd.store import imports as store_imports
from personsd.store import persons as store_persons
from personsd.store import queue as store_queue
from personsd.store import tenants as store_tenants
from personsd.store.queue import Claim
from personsd.workers import Workers

GOOD = "external_person_id\nalice\nbob\n"


def site_config(
    tmp_path: Path, db_url: str, name: str = "node-a", lease: float = 30
) -> config.Config:
    return config.parse(
        {
            "paths": {"root": str(tmp_path / "var")},
            "database": {"url": db_url},
            "import": {"carrier_lookup": "none", "workers": 1},
            "cluster": {"instance": name, "lease_seconds": lease},
        },
        base=tmp_path,
        env={},
    )


@pytest.fixture
def cfg(tmp_path: Path, db_url: str) -> config.Config:
    return site_config(tmp_path, db_url)


@pytest.fixture
def engine(engine: Engine, cfg: config.Config) -> Engine:
    """conftest's engine (the database ``cfg`` names) with tenant acme and its outbox."""
    with db.write_tx(engine) as conn:
        store_tenants.add_tenant(conn, "acme")
    cfg.outbox("acme").mkdir(parents=True)
    return engine


def queued(engine: Engine, cfg: config.Config, name: str = "a.persons") -> int:
    path = cfg.work_dir / "claimed" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(GOOD)
    return importer.create(engine, tenant="acme", path=path, source="sftp")


def claim(engine: Engine, holder: str, lease: float = 30) -> Claim:
    with db.write_tx(engine) as conn:
        found = store_queue.claim_next(
            conn, instance=holder, tenants_busy=set(), lease_seconds=lease
        )
    assert found is not None
    return found


def get(engine: Engine, import_id: int) -> store_imports.ImportRecord:
    with engine.connect() as conn:
        return store_imports.get(conn, import_id)


def test_an_import_taken_over_cannot_be_written_by_its_former_holder(
    engine: Engine, cfg: config.Config
) -> None:
    """Fencing: a stale lease's run raises LeaseLost and writes nothing; the new one completes."""
    import_id = queued(engine, cfg)
    old = claim(engine, "node-a")
    with db.write_tx(engine) as conn:
        store_imports.release(conn, old.lease)
    new = claim(engine, "node-b")
    assert old.lease.generation + 1 == new.lease.generation
    with pytest.raises(LeaseLost):
        importer.run(engine, cfg, import_id, lease=old.lease, validate_in="inline")
    record = get(engine, import_id)
    assert ("running", "node-b", 0) == (record.status, record.lease_holder, record.rows_total)
    tenant = store_tenants_id(engine)
    with engine.connect() as conn:
        assert 0 == store_persons.count(conn, tenant)
    assert not list(cfg.outbox("acme").iterdir())
    outcome = importer.run(engine, cfg, import_id, lease=new.lease, validate_in="inline")
    assert ("completed", 2) == (outcome.record.status, outcome.summary.rows.created)
    errors, _ = importer.work_paths(cfg, import_id, new.lease.generation)
    assert errors.exists()


def test_publication_is_fenced_too(engine: Engine, cfg: config.Config) -> None:
    """A finished import's reports are not published under a lease that is no longer current."""
    import_id = queued(engine, cfg)
    held = claim(engine, "node-a")
    importer.run(engine, cfg, import_id, lease=held.lease, validate_in="inline")
    stale = store_imports.Lease(
        import_id=import_id, holder="node-a", generation=held.lease.generation - 1, seconds=30
    )
    with pytest.raises(LeaseLost):
        importer.publish(engine, cfg, import_id, lease=stale)


def test_a_released_lease_is_no_longer_renewed(engine: Engine, cfg: config.Config) -> None:
    """A clean stop hands the lease back for good: it leaves the heartbeat's list and the row
    has no expiry, so the next claim takes it at once and counts no abrupt end."""
    import_id = queued(engine, cfg)
    held = claim(engine, "node-a")
    workers = Workers(engine=engine, cfg=cfg, stop=threading.Event())
    workers._leases[import_id] = held.lease
    workers._release(held.lease)
    assert {} == workers._leases
    assert None is get(engine, import_id).lease_expires
    again = claim(engine, "node-b")
    assert (import_id, 0) == (again.record.id, again.record.abrupt_ends)


def store_tenants_id(engine: Engine) -> int:
    with engine.connect() as conn:
        found = store_tenants.get_tenant(conn, "acme")
    assert found is not None
    return found.id


def test_the_heartbeat_renews_held_leases_and_reports_a_lost_one(
    tmp_path: Path, pg_url: str
) -> None:
    """Every lease_seconds/3 the heartbeat extends held leases; a taken one logs lease_lost."""
    cfg = site_config(tmp_path, pg_url, lease=0.6)
    engine = db.connect(pg_url)
    db.upgrade(engine)
    with db.write_tx(engine) as conn:
        store_tenants.add_tenant(conn, "acme")
    import_id = queued(engine, cfg)
    held = claim(engine, "node-a", lease=0.6)
    first_expiry = get(engine, import_id).lease_expires
    stop = threading.Event()
    workers = Workers(engine=engine, cfg=cfg, stop=stop)
    workers._leases[import_id] = held.lease  # what a worker running it holds
    beat = threading.Thread(target=workers._heartbeat, daemon=True)
    with capture_logs() as logs:
        beat.start()
        try:
            deadline = time.monotonic() + 10
            while get(engine, import_id).lease_expires == first_expiry:
                assert time.monotonic() < deadline, "the lease was never renewed"
                time.sleep(0.05)
            # Another instance takes it over (as after an expiry), between two renewals.
            with workers._renew_lock:
                with db.write_tx(engine) as conn:
                    store_imports.release(conn, held.lease)
                assert claim(engine, "node-b", lease=30) is not None
            while not any(e["event"] == Event.CLUSTER_LEASE_LOST for e in logs):
                assert time.monotonic() < deadline, "lease_lost never logged"
                time.sleep(0.05)
        finally:
            stop.set()
            beat.join(5)
            engine.dispose()
    lost = [e for e in logs if e["event"] == Event.CLUSTER_LEASE_LOST]
    assert [(import_id, "heartbeat")] == [(e["import_id"], e["noticed_by"]) for e in lost]
    assert {} == workers._leases


def test_instance_names_are_configured_or_unique_per_process(tmp_path: Path) -> None:
    """cluster.instance when set; else host:pid:random, stable in a process, new in another."""
    url = f"sqlite:///{tmp_path / 'p.db'}"
    assert "node-a" == instance.instance_name(site_config(tmp_path, url, name="node-a"))
    generated = site_config(tmp_path, url, name="")
    mine = instance.instance_name(generated)
    assert mine == instance.instance_name(generated)
    host, pid, random_part = mine.split(":")
    assert (str(os.getpid()), 8) == (pid, len(random_part))
    code = (
        "from pathlib import Path; from personsd import config, instance;"
        f"print(instance.instance_name(config.parse({{'paths': {{'root': '{tmp_path}'}}}},"
        " base=Path('/'), env={})))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    assert other.startswith(f"{host}:") and other != mine


def test_the_lock_file_names_its_holder_and_a_garbled_one_is_said_so(tmp_path: Path) -> None:
    """The SQLite lock records pid and instance; an unreadable record reads 'owner unknown'."""
    cfg = site_config(tmp_path, f"sqlite:///{tmp_path / 'p.db'}")
    held = instance.hold_lock(cfg, "node-a")
    try:
        paths = instance.lock_paths(cfg)
        assert [cfg.state_dir / "daemon.lock", tmp_path / "p.db.daemon.lock"] == list(paths)
        record = json.loads(paths[0].read_text())
        assert {"pid": os.getpid(), "instance": "node-a"} == record
    finally:
        held.release()
    assert "owner unknown" == instance._owner("not json")
    assert "pid 7, instance 'x'" == instance._owner('{"pid": 7, "instance": "x"}')


def test_a_dead_instances_interrupted_claim_is_recovered_by_another(
    engine: Engine, cfg: config.Config, tmp_path: Path
) -> None:
    """A claimed file without a record is queued by another instance only once its owner is gone."""
    other_cfg = site_config(tmp_path, cfg.database.url, name="node-b")
    owner = Intake(engine=engine, cfg=other_cfg, on_queued=lambda: None)
    owner._hold_alive()
    orphan = owner.claimed_dir / "acme" / "00000001700000000000001.late.persons"
    orphan.parent.mkdir(parents=True)
    orphan.write_text(GOOD)
    rescuer = Intake(engine=engine, cfg=cfg, on_queued=lambda: None)
    assert 0 == rescuer.recover()  # node-b is alive: its claims are its own
    assert owner._alive is not None
    owner._alive.close()  # type: ignore[attr-defined]  # node-b dies
    assert 1 == rescuer.recover()
    with engine.connect() as conn:
        records = store_imports.list_imports(conn)
    assert [(str(orphan), "late.persons")] == [(r.work_path, r.file_name) for r in records]
    assert 0 == rescuer.recover()
