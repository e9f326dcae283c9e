"""The tenant snapshot in a root shared by several instances (SPEC 5, 12)."""

from __future__ import annotations

import threading
from pathlib import Path

from personsd.store import db
from personsd.store import tenants as store_tenants
from personsd.tenantcache import TenantCache


def test_instances_refreshing_one_snapshot_at_once_never_fail(db_url: str, tmp_path: Path) -> None:
    """Two instances write the shared snapshot concurrently: each write lands whole."""
    engine = db.connect(db_url)
    db.upgrade(engine)
    with db.write_tx(engine) as conn:
        store_tenants.add_tenant(conn, "acme", password_hash="scrypt$x")
    state = tmp_path / "state"
    state.mkdir()
    snapshot = state / "tenants.json"
    failures: list[BaseException] = []

    def instance() -> None:
        cache = TenantCache(snapshot=snapshot, engine=engine)
        try:
            for _ in range(100):
                cache.refresh()
        except Exception as exc:  # noqa: BLE001 -- collected and asserted below
            failures.append(exc)

    threads = [threading.Thread(target=instance) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    engine.dispose()
    assert [] == failures
    assert ["acme"] == TenantCache(snapshot=snapshot, engine=engine).names()
    assert ["tenants.json"] == sorted(p.name for p in state.iterdir())


def test_a_tenant_is_prepared_before_the_snapshot_names_it(db_url: str, tmp_path: Path) -> None:
    """refresh(prepare=) runs for each tenant before the snapshot or a login can see it."""
    engine = db.connect(db_url)
    db.upgrade(engine)
    with db.write_tx(engine) as conn:
        store_tenants.add_tenant(conn, "acme", password_hash="scrypt$x")
        store_tenants.add_tenant(conn, "beta", password_hash="scrypt$x")
    snapshot = tmp_path / "tenants.json"
    cache = TenantCache(snapshot=snapshot, engine=engine)
    seen: list[tuple[str, bool, list[str]]] = []

    def prepare(name: str) -> None:
        seen.append((name, snapshot.exists(), cache.names()))

    cache.refresh(prepare=prepare)
    engine.dispose()
    assert [("acme", False, []), ("beta", False, [])] == seen
    assert ["acme", "beta"] == cache.names()
