"""End to end: the real daemon, real SFTP clients, real files (SPEC 1.1, 4, 5, 6).

One daemon per database serves the whole module; every test has a tenant of
its own, so the tests share nothing but the process.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon_helpers import (
    SEED_FILE,
    Daemon,
    SftpSite,
    sftp_session,
    sftp_site,
)
from polling import wait_for

pytestmark = pytest.mark.slow

# The seed file plus one row with a malformed MDN: 5 rows, 4 created, 1 failed.
SEED = SEED_FILE + "12345,Bad,Mdn,golf\n"
SEED_ROWS = {"total": 5, "succeeded": 4, "failed": 1, "created": 4, "updated": 0}
SEED_ERRORS = {"MobilePhoneErrors::InvalidMDNFormat": 1}
SEED_ERROR_LINE = {
    "line": "6",
    "row": "5",
    "error_class": "MobilePhoneErrors::InvalidMDNFormat",
    "error_message": "The MDN is incorrectly formatted. It should be an E.164 MDN.",
    "field": "mdn",
    "value": "12345",
    "mdn": "12345",
    "first_name": "Bad",
    "last_name": "Mdn",
    "sport_interests": "golf",
}
TENANTS = ("openssh", "paramiko", "local", "filepart", "hidden", "reject", "dup")
RESCAN = 0.5
QUIET = 1.5  # > settle_seconds + 2 * RESCAN: "never" has had its chances


# -- a daemon per database, for the module --------------------------------------------------


@pytest.fixture(scope="module")
def site(module_db: tuple[Path, str]) -> Iterator[SftpSite]:
    home, url = module_db
    files = {"seed.persons": SEED}
    with sftp_site(home, url, TENANTS, imports={"rescan_seconds": RESCAN}, files=files) as (
        daemon,
        key,
        work,
    ):
        yield SftpSite(daemon=daemon, key=key, work=work)


# -- helpers ---------------------------------------------------------------------------------


def parse_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def summaries(daemon: Daemon, tenant: str, file: str) -> list[dict[str, Any]]:
    return [
        json.loads(p.read_text())
        for p in sorted(daemon.outbox(tenant).glob(f"{file}.*.summary.json"))
    ]


def archived(daemon: Daemon, tenant: str) -> list[str]:
    folder = daemon.root / "state" / "archive" / tenant
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def visible_inbox(daemon: Daemon, tenant: str) -> list[str]:
    return sorted(p.name for p in daemon.inbox(tenant).iterdir())


def assert_seed_summary(summary: dict[str, Any], tenant: str, file: str) -> None:
    assert ("completed", tenant, file) == (summary["status"], summary["tenant"], summary["file"])
    assert SEED_ROWS == summary["rows"]
    assert SEED_ERRORS == summary["errors"]
    assert len(SEED.encode()) == summary["bytes"]
    assert {"errors": f"{file}.{summary['import_id']}.errors.csv", "retry": None} == (
        summary["reports"]
    )


# -- tests -----------------------------------------------------------------------------------


def test_openssh_put_then_get_reports_over_sftp(site: SftpSite) -> None:
    """SPEC 4/6: OpenSSH `sftp` puts a file in /inbox and gets its summary and errors back."""
    daemon, tenant = site.daemon, "openssh"
    site.put(tenant, "put seed.persons /inbox/seed.persons\n")
    import_id = daemon.summary(tenant, "seed.persons")["import_id"]
    base = f"seed.persons.{import_id}"
    site.put(
        tenant,
        f"get /outbox/{base}.summary.json got.summary.json\n"
        f"get /outbox/{base}.errors.csv got.errors.csv\n",
    )
    assert_seed_summary(
        json.loads((site.work / "got.summary.json").read_text()), tenant, "seed.persons"
    )
    assert [SEED_ERROR_LINE] == parse_csv((site.work / "got.errors.csv").read_text())


def test_processed_file_is_archived_and_inbox_left_empty(site: SftpSite) -> None:
    """SPEC 5: after the import the file is in archive/<tenant>/ and no longer in the inbox."""
    daemon, tenant = site.daemon, "openssh"
    site.put(tenant, "put seed.persons /inbox/archived.persons\n")
    import_id = daemon.summary(tenant, "archived.persons")["import_id"]
    name = f"{import_id}.archived.persons"
    wait_for(lambda: name in archived(daemon, tenant), what="the archived file")
    assert SEED == (daemon.root / "state" / "archive" / tenant / name).read_text()
    assert [] == visible_inbox(daemon, tenant)


def test_paramiko_put_listdir_get(site: SftpSite) -> None:
    """SPEC 4/6: a paramiko client puts, finds the reports by listing /outbox, gets them."""
    daemon, tenant = site.daemon, "paramiko"
    with sftp_session(daemon.port, tenant, site.key) as sftp:
        # confirm=False: see test_paramiko_default_put_confirms_the_upload.
        sftp.put(str(site.work / "seed.persons"), "/inbox/para.persons", confirm=False)
        listed: list[str] = wait_for(
            lambda: (
                (names := sftp.listdir("/outbox"))
                and any(n.endswith(".summary.json") for n in names)
                and names
            ),
            what="a summary in /outbox",
        )
        found = next(n for n in listed if n.endswith(".summary.json"))
        with sftp.open(f"/outbox/{found}") as fh:
            summary = json.loads(fh.read())
        base = f"para.persons.{summary['import_id']}"
        assert [f"{base}.errors.csv", f"{base}.summary.json"] == sorted(listed)
        with sftp.open(f"/outbox/{base}.errors.csv") as fh:
            errors = parse_csv(fh.read().decode())
    assert_seed_summary(summary, tenant, "para.persons")
    assert [SEED_ERROR_LINE] == errors


def test_paramiko_default_put_confirms_the_upload(site: SftpSite) -> None:
    """SPEC 6: paramiko's plain `put` (stat after close to confirm the size) succeeds."""
    daemon, tenant = site.daemon, "paramiko"
    with sftp_session(daemon.port, tenant, site.key) as sftp:
        # Several puts, each with the daemon idle: it claims a file within milliseconds of
        # its close, so a server that forgets a claimed upload fails the confirming stat
        # nearly every time.
        sizes = []
        for i in range(5):
            time.sleep(0.2)
            sizes.append(
                sftp.put(str(site.work / "seed.persons"), f"/inbox/confirm{i}.persons").st_size
            )
    assert [len(SEED.encode())] * 5 == sizes
    for i in range(5):
        assert "completed" == daemon.summary(tenant, f"confirm{i}.persons")["status"]


def test_local_copy_into_inbox_is_imported(site: SftpSite) -> None:
    """SPEC 5: a file copied on disk (no SFTP) is imported once it has settled."""
    daemon, tenant = site.daemon, "local"
    shutil.copy(site.work / "seed.persons", daemon.inbox(tenant) / "copied.persons")
    summary = daemon.summary(tenant, "copied.persons")
    assert_seed_summary(summary, tenant, "copied.persons")
    errors = daemon.outbox(tenant) / f"copied.persons.{summary['import_id']}.errors.csv"
    assert [SEED_ERROR_LINE] == parse_csv(errors.read_text())


def test_filepart_renamed_to_persons_is_imported_once(site: SftpSite) -> None:
    """SPEC 1.1: `x.filepart` is ignored; renamed to `x.persons` over SFTP it is imported once."""
    daemon, tenant = site.daemon, "filepart"
    site.put(
        tenant, "put seed.persons /inbox/x.filepart\nrename /inbox/x.filepart /inbox/x.persons\n"
    )
    assert_seed_summary(daemon.summary(tenant, "x.persons"), tenant, "x.persons")
    time.sleep(QUIET)
    assert 1 == len(summaries(daemon, tenant, "x.persons"))
    listed = json.loads(daemon.cli("imports", "list", "--tenant", tenant, "--json").stdout)
    assert [("x.persons", "completed")] == [(i["file"], i["status"]) for i in listed]
    assert [] == visible_inbox(daemon, tenant)


def test_hidden_name_on_disk_is_never_imported(site: SftpSite) -> None:
    """SPEC 1.1: a name starting with `.` is an upload in progress: never imported, never moved."""
    daemon, tenant = site.daemon, "hidden"
    hidden = daemon.inbox(tenant) / ".x.persons"
    shutil.copy(site.work / "seed.persons", hidden)
    shutil.copy(site.work / "seed.persons", daemon.inbox(tenant) / "visible.persons")
    daemon.summary(tenant, "visible.persons")
    time.sleep(QUIET)
    assert [".x.persons"] == visible_inbox(daemon, tenant)
    assert SEED == hidden.read_text()
    assert [] == list(daemon.outbox(tenant).glob(".x.persons.*"))
    assert not daemon.has_event("file.detected", tenant=tenant, file=".x.persons")


def test_other_names_are_rejected(site: SftpSite) -> None:
    """SPEC 1.1: `report.csv` in an inbox is rejected: `File name must end with .persons`."""
    daemon, tenant = site.daemon, "reject"
    site.put(tenant, "put seed.persons /inbox/report.csv\n")
    summary = daemon.summary(tenant, "report.csv")
    assert "rejected" == summary["status"]
    assert {
        "class": "PersonErrors::InvalidImportFileFormat",
        "message": "File name must end with .persons",
    } == summary["file_error"]
    assert 0 == summary["rows"]["total"]
    errors = parse_csv(
        (daemon.outbox(tenant) / f"report.csv.{summary['import_id']}.errors.csv").read_text()
    )
    assert [("PersonErrors::InvalidImportFileFormat", "File name must end with .persons", "")] == [
        (e["error_class"], e["error_message"], e["row"]) for e in errors
    ]
    wait_for(
        lambda: f"{summary['import_id']}.report.csv" in archived(daemon, tenant),
        what="the rejected file in the archive",
    )
    assert [] == visible_inbox(daemon, tenant)


def test_duplicate_upload_names_the_earlier_import(site: SftpSite) -> None:
    """SPEC 5: the same content uploaded again is imported again, with `duplicate_of`."""
    daemon, tenant = site.daemon, "dup"
    site.put(tenant, "put seed.persons /inbox/first.persons\n")
    first = daemon.summary(tenant, "first.persons")
    site.put(tenant, "put seed.persons /inbox/second.persons\n")
    second = daemon.summary(tenant, "second.persons")
    assert None is first["duplicate_of"]
    assert first["import_id"] == second["duplicate_of"]
    assert first["sha256"] == second["sha256"]
    assert ("completed", 5, 4) == (
        second["status"],
        second["rows"]["total"],
        second["rows"]["updated"],
    )
