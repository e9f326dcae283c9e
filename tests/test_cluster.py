"""SPEC 5 and 12: several real daemons on one root and one PostgreSQL database.

Each daemon has its own ``cluster.instance`` and config; all share the tenant
tree and the database (on one host, as instances on several hosts sharing a
network filesystem would). Files are dropped into the inboxes, every daemon
sees them, and the checks are on what the database and the logs say.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster_helpers import cluster, drop, runs_per_import, wait_all_finished
from daemon_helpers import Daemon, free_port
from personsd.store import db
from personsd.store import persons as store_persons
from personsd.store import tenants as store_tenants

pytestmark = pytest.mark.slow

ROWS = 20
ROUND_GAP = 1.0


def small_file(tenant: str, index: int) -> str:
    """New persons of their own, and one update of the tenant's shared person to ``v<index>``."""
    lines = ["external_person_id,mdn,first_name,sport_interests"]
    lines.append(f"shared-{tenant},,v{index},golf")
    for row in range(ROWS - 1):
        lines.append(f"{tenant}-{index}-{row},,n{row},hockey")
    return "\n".join(lines) + "\n"


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("instances", "files", "tenant_count"),
    [(2, 50, 5), (3, 30, 6)],
    ids=["issue9-two-daemons-50-files", "issue12-three-daemons-30-files"],
)
def test_daemons_sharing_a_root_import_each_file_once_in_tenant_order(
    pg_url: str, tmp_path: Path, instances: int, files: int, tenant_count: int
) -> None:
    """SPEC 12: each file imported once, one tenant's files in order, work spread out."""
    tenants = tuple(f"t{n}" for n in range(tenant_count))
    daemons = cluster(tmp_path, pg_url, instances, tenants)
    root = tmp_path / "shared-root"
    engine = db.connect(pg_url)
    try:
        for daemon in daemons:
            daemon.start()
        # In rounds, a file per tenant, a second apart: each tenant's files
        # become complete in name order whichever daemon's watcher sees them.
        for index in range(files):
            tenant = tenants[index % tenant_count]
            if index and index % tenant_count == 0:
                time.sleep(ROUND_GAP)
            drop(root, tenant, f"f{index:03d}.persons", small_file(tenant, index))
        found = wait_all_finished(engine, files, timeout=150)
    finally:
        codes = [daemon.stop() for daemon in daemons]
    assert [0] * instances == codes

    records = [r for rs in found.values() for r in rs]
    # Exactly once: one record per file, completed, started once (no takeover here).
    assert files == len(records)
    assert files == len({(r.tenant_id, r.file_name) for r in records})
    assert {"completed"} == {r.status for r in records}
    assert {r.id: 1 for r in records} == dict(runs_per_import(daemons))
    assert {0} == {r.attempts for r in records}  # no claim spends one (SPEC 5)
    # Spread: more than one instance ran imports; each import names its runner.
    holders = {r.lease_holder for r in records}
    assert holders <= {d.instance for d in daemons}
    assert len(holders) >= 2, holders

    with engine.connect() as conn:
        for tenant, queue in found.items():
            assert sorted(r.file_name for r in queue) == [r.file_name for r in queue]
            # One at a time, in queue order: each started after the previous finished.
            for before, after in itertools.pairwise(queue):
                assert before.finished_at is not None and after.started_at is not None
                assert before.finished_at <= after.started_at, (tenant, before.id, after.id)
            # The summaries count what each file did in that order.
            counts = [(r.rows_total, r.rows_created, r.rows_updated) for r in queue]
            assert [(ROWS, ROWS, 0)] + [(ROWS, ROWS - 1, 1)] * (len(queue) - 1) == counts
            found_tenant = store_tenants.get_tenant(conn, tenant)
            assert found_tenant is not None
            tenant_id = found_tenant.id
            assert 1 + len(queue) * (ROWS - 1) == store_persons.count(conn, tenant_id)
            shared = store_persons.find(conn, tenant_id, "external_person_id", f"shared-{tenant}")
            assert shared is not None
            last = int(queue[-1].file_name[1:4])
            assert f"v{last}" in shared.attributes.values()
    engine.dispose()
    for tenant in tenants:
        outbox = root / "tenants" / tenant / "outbox"
        assert len(found[tenant]) == len(list(outbox.glob("*.summary.json")))


@pytest.mark.timeout(60)
def test_a_second_daemon_on_a_sqlite_root_refuses_to_start(tmp_path: Path) -> None:
    """SPEC 5: with SQLite a second daemon exits 1 naming the running one (pid, instance)."""
    first = Daemon(
        home=tmp_path,
        db_url=f"sqlite:///{tmp_path / 'persons.db'}",
        port=free_port(),
        extra={"sftp": {"enabled": False}},
    )
    first.start()
    try:
        assert first.proc is not None
        second = subprocess.run(
            [sys.executable, "-m", "personsd", "--config", str(first.config), "run"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert 1 == second.returncode
        assert f"pid {first.proc.pid}" in second.stderr
        assert f"instance {first.instance!r}" in second.stderr
        assert None is first.proc.poll()
    finally:
        exit_code = first.stop()
    assert 0 == exit_code
    # The lock goes with its process: the next daemon starts.
    first.start()
    assert 0 == first.stop()


@pytest.mark.timeout(60)
def test_a_second_root_on_the_same_sqlite_database_is_refused_too(tmp_path: Path) -> None:
    """SPEC 5: the lock sits next to the SQLite database as well as in the root."""
    url = f"sqlite:///{tmp_path / 'persons.db'}"
    first = Daemon(
        home=tmp_path / "a", db_url=url, port=free_port(), extra={"sftp": {"enabled": False}}
    )
    other = Daemon(
        home=tmp_path / "b", db_url=url, port=free_port(), extra={"sftp": {"enabled": False}}
    )
    first.home.mkdir()
    other.home.mkdir()
    first.start()
    try:
        other.write_config()
        second = other.cli("run", check=False)
        assert 1 == second.returncode
        assert "persons.db.daemon.lock" in second.stderr
    finally:
        exit_code = first.stop()
    assert 0 == exit_code
