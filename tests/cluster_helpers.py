"""Several real daemons on one root and one database (SPEC 12), for the cluster tests."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from daemon_helpers import Daemon, drop_file, free_port
from personsd.fieldtypes import CustomField, FieldType
from personsd.store import db
from personsd.store import fields as store_fields
from personsd.store import imports as store_imports
from personsd.store import tenants as store_tenants
from personsd.store.db import write_tx
from personsd.store.imports import ImportRecord
from personsd.store.tenants import KeySpec
from polling import wait_for

FIELDS = (
    CustomField(name="first_name", type=FieldType.STRING),
    CustomField(
        name="sport_interests",
        type=FieldType.MULTI_SELECT,
        options=("football", "hockey", "soccer", "golf", "basketball"),
    ),
)


def seed_tenants(db_url: str, tenants: tuple[str, ...], keys: tuple[KeySpec, ...] = ()) -> None:
    """Bring ``db_url`` to the schema's head and add ``tenants`` with FIELDS (in process)."""
    engine = db.connect(db_url)
    try:
        db.upgrade(engine)
        with write_tx(engine) as conn:
            for tenant in tenants:
                tenant_id = store_tenants.add_tenant(conn, tenant, keys=keys)
                for field in FIELDS:
                    store_fields.add_field(conn, tenant_id, field)
    finally:
        engine.dispose()


def cluster(
    folder: Path,
    db_url: str,
    count: int,
    tenants: tuple[str, ...],
    extra: dict[str, dict[str, Any]] | None = None,
    keys: tuple[KeySpec, ...] = (),
) -> list[Daemon]:
    """``count`` daemons (configs of their own, each its instance) on one root and database."""
    root = folder / "shared-root"
    seed_tenants(db_url, tenants, keys)
    daemons = []
    for index in range(count):
        settings: dict[str, dict[str, Any]] = {
            "paths": {"root": str(root)},
            "sftp": {"enabled": False},
            "import": {"rescan_seconds": 1, "workers": 2},
            "cluster": {"instance": f"node-{index}"},
        }
        for name, values in (extra or {}).items():
            settings.setdefault(name, {}).update(values)
        home = folder / f"node-{index}"
        home.mkdir(parents=True)
        daemons.append(
            Daemon(
                home=home,
                db_url=db_url,
                port=free_port(),
                extra=settings,
                instance=f"node-{index}",
            )
        )
    for tenant in tenants:
        for box in (inbox(root, tenant), root / "tenants" / tenant / "outbox"):
            box.mkdir(parents=True)
    return daemons


def inbox(root: Path, tenant: str) -> Path:
    return root / "tenants" / tenant / "inbox"


def drop(root: Path, tenant: str, name: str, text: str) -> None:
    """A complete file appears in the inbox at once (written aside, renamed in)."""
    drop_file(inbox(root, tenant), name, text)


def all_imports(engine: Engine) -> dict[str, list[ImportRecord]]:
    """Every import by tenant name, in queue order (received_at, file name, id)."""
    with engine.connect() as conn:
        names = {t.id: t.name for t in store_tenants.list_tenants(conn)}
        found: dict[str, list[ImportRecord]] = {name: [] for name in names.values()}
        for record in store_imports.list_imports(conn):
            found[names[record.tenant_id]].append(record)
    for records in found.values():
        records.sort(key=lambda r: (r.received_at, r.file_name, r.id))
    return found


def wait_all_finished(
    engine: Engine, expected: int, timeout: float
) -> dict[str, list[ImportRecord]]:
    def done() -> dict[str, list[ImportRecord]] | None:
        found = all_imports(engine)
        records = [r for rs in found.values() for r in rs]
        finished = [r for r in records if r.status in ("completed", "rejected", "failed")]
        published = all(r.reports_published for r in finished)
        return found if len(finished) >= expected and published else None

    return dict(wait_for(done, timeout=timeout, interval=0.2, what=f"{expected} imports finished"))


def runs_per_import(daemons: list[Daemon]) -> Counter[int]:
    """How many times each import was started or resumed, over every daemon's log."""
    runs: Counter[int] = Counter()
    for daemon in daemons:
        for event in daemon.events():
            if event.get("event") in ("import.started", "import.resumed"):
                runs[int(event["import_id"])] += 1
    return runs
