"""Validate-only drops through the real daemon (SPEC 4 ``mode``, 6 ``/validate``, 11).

One daemon per database, chunks of 2 rows, carrier lookup ``none``. Each test
seeds its own tenant through /inbox, drops a file into /validate (OpenSSH
``sftp`` or paramiko), then the same file into /inbox: the validation's
errors.csv and counts equal the import's, and ``persons export`` is byte for
byte the same before and after the validation.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon_helpers import SEED_FILE, Daemon, SftpSite, sftp_session, sftp_site
from polling import wait_for

pytestmark = pytest.mark.slow

TENANTS = ("vopenssh", "vparamiko", "vorder")
RESCAN = 0.5
# Identifiers repeated across 2-row chunks, stored persons updated, bad values.
CHECK = (
    "external_person_id,mdn,first_name,sport_interests\n"
    ",+12995550005,Johnny,golf\n"  # a seeded person: updated
    "x1,+12995550101,New,soccer\n"  # created
    "x2,,Two,\n"  # created
    "x3,+12995550101,Three,\n"  # x1's MDN: MobilePhoneAlreadyAssigned
    "x2,+12995550102,Two,hockey\n"  # x2, created above: updated
    ",+12995550102,,golf\n"  # found by the MDN x2 took: updated
    "x4,+12995550005,,\n"  # a seeded person's MDN: MobilePhoneAlreadyAssigned
    "x5,12345,,\n"  # InvalidMDNFormat
    "x1,,,curling\n"  # not an option
)
ROWS = {"total": 9, "succeeded": 5, "failed": 4, "created": 2, "updated": 3}


@pytest.fixture(scope="module")
def site(module_db: tuple[Path, str]) -> Iterator[SftpSite]:
    home, url = module_db
    imports = {"rescan_seconds": RESCAN, "chunk_rows": 2}
    files = {"seed.persons": SEED_FILE, "check.persons": CHECK}
    with sftp_site(home, url, TENANTS, imports=imports, files=files) as (daemon, key, work):
        yield SftpSite(daemon=daemon, key=key, work=work)


def summary_of(daemon: Daemon, tenant: str, file: str, mode: str) -> dict[str, Any]:
    """Wait for the summary of ``file`` with ``mode`` in the tenant's outbox."""

    def find() -> dict[str, Any] | None:
        for path in daemon.outbox(tenant).glob(f"{file}.*.summary.json"):
            summary = json.loads(path.read_text())
            if summary.get("mode") == mode:
                return dict(summary)
        return None

    found: dict[str, Any] = wait_for(find, timeout=60, what=f"{mode} summary of {file}")
    return found


def errors_csv(daemon: Daemon, tenant: str, summary: dict[str, Any]) -> bytes:
    return (daemon.outbox(tenant) / summary["reports"]["errors"]).read_bytes()


def seeded(site: SftpSite, tenant: str) -> str:
    """Import the seed file through /inbox; the export afterwards."""
    site.put(tenant, "put seed.persons /inbox/seed.persons\n")
    assert 4 == summary_of(site.daemon, tenant, "seed.persons", "import")["rows"]["created"]
    return site.daemon.export(tenant)


def check_against_import(
    site: SftpSite, tenant: str, validated: dict[str, Any], before: str
) -> None:
    """The export is as before; the import of the same file reports the same."""
    daemon = site.daemon
    assert before == daemon.export(tenant), "the validation changed persons"
    site.put(tenant, "put check.persons /inbox/check.persons\n")
    imported = summary_of(daemon, tenant, "check.persons", "import")
    assert errors_csv(daemon, tenant, imported) == errors_csv(daemon, tenant, validated)
    assert (ROWS, ROWS) == (imported["rows"], validated["rows"])
    assert imported["errors"] == validated["errors"]
    assert ("completed", "completed") == (imported["status"], validated["status"])
    assert before != daemon.export(tenant), "the import wrote persons"


def test_openssh_sftp_into_validate_predicts_the_import(site: SftpSite) -> None:
    """SPEC 11: OpenSSH `sftp` into /validate: the import's reports, nothing written."""
    tenant = "vopenssh"
    before = seeded(site, tenant)
    site.put(tenant, "put check.persons /validate/check.persons\n")
    validated = summary_of(site.daemon, tenant, "check.persons", "validate")
    assert {
        "PersonErrors::MobilePhoneAlreadyAssigned": 2,
        "MobilePhoneErrors::InvalidMDNFormat": 1,
        "PersonErrors::InvalidSelectCustomFieldValue": 1,
    } == validated["errors"]
    archive = site.daemon.root / "state" / "archive" / tenant
    wait_for(
        lambda: (archive / f"{validated['import_id']}.check.persons").is_file(),
        what="the validated file in the archive",
    )
    assert [] == sorted(
        p.name for p in (site.daemon.root / "tenants" / tenant / "validate").iterdir()
    )
    check_against_import(site, tenant, validated, before)


def test_paramiko_into_validate_predicts_the_import(site: SftpSite) -> None:
    """SPEC 11: paramiko into /validate, reports fetched from /outbox; nothing written."""
    tenant = "vparamiko"
    before = seeded(site, tenant)
    with sftp_session(site.daemon.port, tenant, site.key) as sftp:
        sftp.put(str(site.work / "check.persons"), "/validate/check.persons")
        validated = summary_of(site.daemon, tenant, "check.persons", "validate")
        with sftp.open(f"/outbox/check.persons.{validated['import_id']}.summary.json") as fh:
            assert "validate" == json.loads(fh.read())["mode"]
    check_against_import(site, tenant, validated, before)


def test_validate_and_inbox_files_run_in_drop_order(site: SftpSite) -> None:
    """SPEC 5: one tenant's /validate and /inbox files run one at a time, in drop order.

    The validation dropped before the seed import sees no persons (all created);
    the one dropped after sees the seeded person (an update).
    """
    tenant = "vorder"
    probe = site.work / "probe.persons"
    probe.write_text("mdn,first_name\n+12995550005,Probe\n")
    site.put(
        tenant,
        "put probe.persons /validate/early.persons\n"
        "put seed.persons /inbox/seed.persons\n"
        "put probe.persons /validate/late.persons\n",
    )
    early = summary_of(site.daemon, tenant, "early.persons", "validate")
    late = summary_of(site.daemon, tenant, "late.persons", "validate")
    seed = summary_of(site.daemon, tenant, "seed.persons", "import")
    assert early["import_id"] < seed["import_id"] < late["import_id"]
    assert ((1, 0), (0, 1)) == (
        (early["rows"]["created"], early["rows"]["updated"]),
        (late["rows"]["created"], late["rows"]["updated"]),
    )
