"""Import order through the real daemon (SPEC 5): one tenant in order, tenants in parallel."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from daemon_helpers import Daemon, add_tenants, drop_file, free_port, ssh_key
from engine_helpers import export
from personsd.store import db
from personsd.store import tenants as store_tenants
from polling import wait_for

pytestmark = pytest.mark.slow

FIELDS = (("color", "string", None),)


@contextmanager
def running(
    home: Path,
    db_url: str,
    tenants: tuple[str, ...],
    *,
    before_start: dict[str, list[tuple[str, str, float]]] | None = None,
    **imports: Any,
) -> Iterator[Daemon]:
    """A daemon whose tenants have a `color` field; ``before_start``: (name, body, mtime) files."""
    daemon = Daemon(home=home, db_url=db_url, port=free_port(), extra={"import": imports})
    add_tenants(daemon, tenants, ssh_key(home), fields=FIELDS)
    for tenant, files in (before_start or {}).items():
        for name, body, mtime in files:
            path = daemon.inbox(tenant) / name
            path.write_text(body)
            os.utime(path, (mtime, mtime))
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def drop(daemon: Daemon, tenant: str, name: str, body: str) -> None:
    """A local writer's complete file appears in the inbox at once (written aside, moved in)."""
    staging = daemon.home / "staging"
    staging.mkdir(exist_ok=True)
    drop_file(daemon.inbox(tenant), name, body, staging=staging)


def completed_order(daemon: Daemon, tenant: str, count: int) -> list[str]:
    """The files of the tenant's first ``count`` `import.completed` events (logged after the
    summary is published, so waited for)."""

    def found() -> list[str]:
        return [
            e["file"]
            for e in daemon.events()
            if e.get("event") == "import.completed" and e.get("tenant") == tenant
        ]

    wait_for(lambda: len(found()) >= count, what=f"{count} import.completed of {tenant}")
    return found()


def exported_colors(daemon: Daemon, tenant: str) -> dict[str, str]:
    """`personsd persons export` as `external_person_id -> color` (in process: a second
    faster than the CLI, same rows)."""
    engine = db.connect(daemon.db_url)
    try:
        with engine.connect() as conn:
            found = store_tenants.get_tenant(conn, tenant)
            assert found is not None
        header, *rows = export(engine, found.id)
    finally:
        engine.dispose()
    return {row[header.index("external_person_id")]: row[header.index("color")] for row in rows}


def test_files_of_one_tenant_apply_in_drop_order(tmp_path: Path, db_url: str) -> None:
    """SPEC 5: three files of one tenant dropped in a row apply in that order; the last wins."""
    with running(tmp_path, db_url, ("acme",)) as daemon:
        for index in (1, 2, 3):
            drop(daemon, "acme", f"a{index}.persons", f"external_person_id,color\np1,v{index}\n")
            time.sleep(0.05)
        done = [daemon.summary("acme", f"a{index}.persons") for index in (1, 2, 3)]
        assert ["completed"] * 3 == [s["status"] for s in done]
        ids = [s["import_id"] for s in done]
        assert sorted(ids) == ids and len(set(ids)) == 3
        assert ["a1.persons", "a2.persons", "a3.persons"] == completed_order(daemon, "acme", 3)
        assert {"p1": "v3"} == exported_colors(daemon, "acme")


def test_order_is_completion_time_not_name(tmp_path: Path, db_url: str) -> None:
    """SPEC 5: completion order (not the name) decides, even within one second."""
    # A backlog found at start: each file's mtime is when it was complete. All three
    # lie in one wall-clock second, 0.3 s apart, named against their order.
    second = int(time.time()) - 10
    files = [
        ("z.persons", "external_person_id,color\np1,v1\n", second + 0.1),
        ("m.persons", "external_person_id,color\np1,v2\n", second + 0.4),
        ("a.persons", "external_person_id,color\np1,v3\n", second + 0.7),
    ]
    with running(tmp_path, db_url, ("acme",), before_start={"acme": files}) as daemon:
        for name, _, _ in files:
            assert "completed" == daemon.summary("acme", name)["status"]
        assert ["z.persons", "m.persons", "a.persons"] == completed_order(daemon, "acme", 3)
        assert {"p1": "v3"} == exported_colors(daemon, "acme")


def big_file(rows: int) -> str:
    return "external_person_id,color\n" + "".join(f"p{i},c{i % 7}\n" for i in range(rows))


def test_large_file_of_one_tenant_does_not_delay_another(tmp_path: Path, db_url: str) -> None:
    """SPEC 5: with `workers = 2`, a small file of B completes while A's large file runs."""
    # 200k rows take ~35 s here (~5.5k rows/s on SQLite with 500-row chunks): far longer
    # than B needs. The test ends as soon as B is done; SIGTERM interrupts A between chunks.
    with running(tmp_path, db_url, ("big", "small"), workers=2, chunk_rows=500) as daemon:
        drop(daemon, "big", "large.persons", big_file(200_000))
        wait_for(lambda: daemon.has_event("import.started", tenant="big"), what="A started")
        drop(daemon, "small", "tiny.persons", "external_person_id,color\nq1,x\nq2,y\nq3,z\n")
        small = daemon.summary("small", "tiny.persons", timeout=20)
        large_summaries = list(daemon.outbox("big").glob("large.persons.*.summary.json"))
        completed_order(daemon, "small", 1)
        events = daemon.events()
        assert 0 == daemon.stop()
    assert ("completed", 3) == (small["status"], small["rows"]["total"])
    assert [] == large_summaries
    assert ["tiny.persons"] == [e["file"] for e in events if e["event"] == "import.completed"]
    assert any(e["event"] == "import.started" and e.get("file") == "large.persons" for e in events)
