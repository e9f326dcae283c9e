"""/validate beside /inbox: the watcher, the intake and the SFTP server (SPEC 6, 11).

A file dropped in a tenant's /validate is found like an inbox file (inotify,
settle, rescan, the SFTP server's close), queued in the same per-tenant order
with the mode ``validate``, and keeps that mode through a crash between the
claim and the import record.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from structlog.testing import capture_logs

from engine_helpers import add_tenant, make_config, new_tenant_name
from personsd.config import Config
from personsd.intake import Intake
from personsd.store import imports as store_imports
from personsd.watcher import ReadyFile
from polling import wait_for
from test_sftp import Harness, openssh_sftp, running_server, sftp_client
from test_watcher import FAST, Make, inbox, make, root, write  # noqa: F401 -- fixtures

__all__ = ["make", "root"]


def validate_box(root: Path, tenant: str = "acme") -> Path:
    path = root / tenant / "validate"
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- watcher --------------------------------------------------------------------------------


def test_file_in_validate_is_reported_with_mode_validate(root: Path, make: Make) -> None:
    """inotify + settle: a file closed in /validate is reported once, mode validate."""
    box = validate_box(root)
    _, sink = make()
    write(box / "check.persons")
    write(inbox(root) / "real.persons")
    files = sink.wait_for(2)
    assert {("check.persons", "validate"), ("real.persons", "import")} == {
        (f.path.name, f.mode) for f in files
    }


def test_validate_backlog_found_by_scan(root: Path, make: Make) -> None:
    """The start-up scan (and every rescan) covers /validate, not only /inbox."""
    write(validate_box(root) / "waiting.persons")
    _, sink = make(settle=0.1, use_events=False)
    [ready] = sink.wait_for(1)
    assert ("acme", "waiting.persons", "validate") == (ready.tenant, ready.path.name, ready.mode)


def test_validate_of_a_new_tenant_found_by_watch(root: Path, make: Make) -> None:
    """A tenant created while running has its /validate watched too."""
    _, sink = make()
    (root / "newco").mkdir(parents=True)
    time.sleep(0.05)
    write(validate_box(root, "newco") / "n.persons")
    [ready] = sink.wait_for(1, timeout=3.0)
    assert ("newco", "validate") == (ready.tenant, ready.mode)


def test_notify_complete_accepts_validate_and_refuses_outbox(root: Path, make: Make) -> None:
    """The SFTP server's close reports a /validate file at once; an outbox path is refused."""
    box = validate_box(root)
    watcher, sink = make(settle=30.0)
    write(box / "up.persons")
    watcher.notify_complete("acme", box / "up.persons")
    [ready] = sink.wait_for(1, timeout=3.0)
    assert "validate" == ready.mode
    with pytest.raises(ValueError):
        watcher.notify_complete("acme", root / "acme" / "outbox" / "up.persons")


# -- intake ---------------------------------------------------------------------------------


def ready_file(path: Path, tenant: str, completed_at: float) -> ReadyFile:
    st = path.stat()
    return ReadyFile(
        tenant=tenant,
        path=path,
        completed_at=completed_at,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
    )


def tenant_intake(engine: Engine, tmp_path: Path, db_url: str) -> tuple[Config, str, Intake]:
    """A config on ``tmp_path``, a fresh tenant and an Intake over both."""
    cfg = make_config(tmp_path, db_url, chunk_rows=10)
    tenant = new_tenant_name()
    add_tenant(engine, tenant)
    return cfg, tenant, Intake(engine=engine, cfg=cfg, on_queued=lambda: None)


def test_validate_and_inbox_files_queue_in_completion_order(
    engine: Engine, tmp_path: Path, db_url: str
) -> None:
    """SPEC 5: one queue per tenant, in completion order, whichever box a file came from."""
    cfg, tenant, intake = tenant_intake(engine, tmp_path, db_url)
    drops = [("validate", "a.persons"), ("inbox", "b.persons"), ("validate", "c.persons")]
    with capture_logs() as logs:
        for n, (box, name) in enumerate(drops):
            folder = cfg.tenants_dir / tenant / box
            folder.mkdir(parents=True, exist_ok=True)
            write(folder / name)
            assert intake.claim(ready_file(folder / name, tenant, 1000.0 + n)) is not None
    with engine.connect() as conn:
        records = store_imports.list_imports(conn)
    assert [("a.persons", "validate"), ("b.persons", "import"), ("c.persons", "validate")] == [
        (r.file_name, r.mode) for r in sorted(records, key=lambda r: r.received_at)
    ]
    queued = [e for e in logs if e["event"] == "import.queued"]
    assert ["validate", "import", "validate"] == [e["mode"] for e in queued]


def test_a_claimed_validate_file_is_recovered_as_a_validation(
    engine: Engine, tmp_path: Path, db_url: str
) -> None:
    """A crash between the claim and the record: recover() queues the file as a validation."""
    _, tenant, intake = tenant_intake(engine, tmp_path, db_url)
    folder = intake.claimed_dir / tenant
    folder.mkdir(parents=True)
    write(folder / "17000000000000000001v.check.persons")
    write(folder / "17000000000000000002.real.persons")
    assert 2 == intake.recover()
    with engine.connect() as conn:
        records = store_imports.list_imports(conn)
    assert [("check.persons", "validate"), ("real.persons", "import")] == [
        (r.file_name, r.mode) for r in records
    ]


# -- the embedded SFTP server ---------------------------------------------------------------


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    with running_server(tmp_path) as harness:
        yield harness


def test_paramiko_put_into_validate(h: Harness, tmp_path: Path) -> None:
    """An upload to /validate lands in the tenant's validate box and is handed over from there."""
    local = tmp_path / "local.persons"
    local.write_bytes(b"external_person_id\ne1\n")
    box = h.root / "tenants" / "acme" / "validate"
    with sftp_client(h.port, "acme", h.keys["acme"].pkey) as sftp:
        sftp.put(str(local), "/validate/check.persons.filepart")
        sftp.rename("/validate/check.persons.filepart", "/validate/check.persons")
        assert ["check.persons"] == sftp.listdir("/validate")
        assert [] == sftp.listdir("/inbox")
        with pytest.raises(PermissionError):
            sftp.open("/validate/check.persons", "rb")  # write-only, like the inbox
    assert ["check.persons"] == sorted(os.listdir(box))
    assert [("acme", box / "check.persons")] == h.uploads


def test_no_rename_between_inbox_and_validate(h: Harness, tmp_path: Path) -> None:
    """A file's box is its mode: a rename across boxes is refused, the file stays."""
    local = tmp_path / "local.persons"
    local.write_bytes(b"external_person_id\ne1\n")
    with sftp_client(h.port, "acme", h.keys["acme"].pkey) as sftp:
        sftp.put(str(local), "/validate/.in.check.persons")
        with pytest.raises(PermissionError):
            sftp.rename("/validate/.in.check.persons", "/inbox/check.persons")
        with pytest.raises(PermissionError):
            sftp.posix_rename("/validate/.in.check.persons", "/inbox/check.persons")
        sftp.remove("/validate/.in.check.persons")
        assert [] == sftp.listdir("/validate")


def test_openssh_sftp_put_into_validate(h: Harness, tmp_path: Path) -> None:
    """OpenSSH sftp: put into /validate works with the client's defaults."""
    (tmp_path / "up.persons").write_bytes(b"mdn\n2295551234\n")
    box = h.root / "tenants" / "acme" / "validate"
    result = openssh_sftp(
        h.port,
        "acme",
        h.keys["acme"].path,
        "put up.persons /validate/\nls -1 /validate\n",
        tmp_path,
    )
    assert 0 == result.returncode, result.stderr
    assert "/validate/up.persons" in result.stdout
    wait_for(lambda: h.uploads)
    assert [("acme", box / "up.persons")] == h.uploads


def test_stale_upload_temp_files_in_validate_are_swept(h: Harness) -> None:
    """Temp files of uploads cut short are removed from /validate as from /inbox."""
    from personsd.sftp.filesystem import sweep_stale_uploads

    box = h.root / "tenants" / "acme" / "validate"
    box.mkdir()
    (box / ".x.persons.0123456789abcdef.upload").write_bytes(b"partial")
    assert 1 == sweep_stale_uploads(h.root / "tenants")
    assert [] == os.listdir(box)


def test_inbox_files_quota_counts_validate_and_inbox_together(tmp_path: Path) -> None:
    """SPEC 8 [limits]: files waiting in /inbox and /validate share one inbox_files quota."""
    from personsd.sftp import SftpLimits

    with (
        running_server(tmp_path, limits=SftpLimits(inbox_files=2)) as h,
        capture_logs() as logs,
        sftp_client(h.port, "acme", h.keys["acme"].pkey) as sftp,
    ):
        for path in ("/inbox/.in.a.persons", "/validate/.in.b.persons"):
            with sftp.open(path, "wb") as fh:
                fh.write(b"x")
        with pytest.raises(OSError, match="quota"):
            sftp.open("/validate/.in.c.persons", "wb")
        sftp.remove("/inbox/.in.a.persons")
        sftp.open("/validate/.in.c.persons", "wb").close()
    assert ["inbox_files"] == [e["limit"] for e in logs if e["event"] == "sftp.limit"]
