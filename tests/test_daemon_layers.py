"""The daemon takes encrypted, compressed uploads over SFTP (SPEC 6, 11), real gpg and sshd side."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon_helpers import Daemon, free_port, sftp_batch, ssh_key, wait_for
from layer_helpers import Keys, files_holding, gzip_bytes
from personsd import pgp

# Only the plain content holds these (every row succeeds under carrier_lookup none).
PLAIN = b"external_person_id,mdn\n" + b"".join(
    b"plain-%d,+1299555000%d\n" % (i, i) for i in range(5, 9)
)
MARKERS = [b"plain-5,+12995550005", b"plain-8,+12995550008"]


@pytest.fixture
def daemon(tmp_path: Path, db_url: str, pgp_keys: Keys) -> Iterator[Daemon]:
    daemon = Daemon(
        home=tmp_path / "home",
        db_url=db_url,
        port=free_port(),
        extra={"pgp": {"home": str(pgp_keys.personsd_home)}},
    )
    daemon.home.mkdir()
    daemon.write_config()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.mark.slow
def test_a_signed_gz_pgp_upload_over_sftp_is_imported_and_archived_as_uploaded(
    daemon: Daemon, pgp_keys: Keys, tmp_path: Path
) -> None:
    """SPEC 11: `.gz.pgp` put with OpenSSH sftp → imported; archive as uploaded; no plain text."""
    key = ssh_key(tmp_path)
    daemon.add_tenant("acme", key_file=key.with_suffix(".pub"), fields=())
    published = daemon.cli("pgp", "public-key").stdout
    assert pgp_keys.personsd == pgp.key_fingerprint(published), "the key partners encrypt to"
    partner_key = tmp_path / "partner.asc"
    partner_key.write_bytes(pgp_keys.public(pgp_keys.partner_home, pgp_keys.partner))
    daemon.cli("tenants", "set", "acme", "--pgp-verify-key", str(partner_key))
    signed = pgp_keys.encrypt(gzip_bytes(PLAIN), sign_as="partner")
    (tmp_path / "signed").write_bytes(signed)
    (tmp_path / "unsigned").write_bytes(pgp_keys.encrypt(gzip_bytes(PLAIN)))
    daemon.start()
    done = sftp_batch(
        key,
        daemon.port,
        "acme",
        "put signed /inbox/nightly.persons.gz.pgp\nput unsigned /inbox/forged.persons.gz.pgp\n",
        tmp_path,
    )
    assert 0 == done.returncode, done.stderr

    summary = daemon.summary("acme", "nightly.persons.gz.pgp")
    assert ("completed", ["pgp", "gzip"], len(signed)) == (
        summary["status"],
        summary["layers"],
        summary["bytes"],
    )
    assert {"total": 4, "succeeded": 4, "failed": 0, "created": 4, "updated": 0} == summary["rows"]
    forged = daemon.summary("acme", "forged.persons.gz.pgp")
    assert {
        "class": "PersonErrors::InvalidImportFileFormat",
        "message": "File is not signed by the partner's key",
    } == forged["file_error"]

    archive = daemon.root / "state" / "archive" / "acme"
    name = f"{summary['import_id']}.nightly.persons.gz.pgp"
    wait_for(lambda: (archive / name).exists(), what="the archived upload")
    assert signed == (archive / name).read_bytes()
    assert "+12995550005" in daemon.export("acme")
    wait_for(lambda: not files_holding(daemon.root, MARKERS), what="no plain text left")
    assert [] == files_holding(daemon.root, MARKERS)
