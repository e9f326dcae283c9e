"""Partners' usual SFTP clients, with their default settings, against the real daemon (SPEC 6).

lftp (temp file ``.in.NAME``, then rename), rclone (sets the modification
time after the upload), OpenSSH ``sftp`` with ``put -p`` (times and mode) and
a WinSCP-like paramiko session (``NAME.filepart``, rename, then setstat of
times and permissions; WinSCP itself cannot run here). Each upload must
succeed with exit 0 and no error output, and be imported exactly once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon_helpers import Daemon, sftp_session, sftp_site

pytestmark = pytest.mark.slow

TENANTS = ("lftp", "rclone", "openssh", "winscp")
CONTENT = "external_person_id,first_name\ne1,Ann\ne2,Bob\n"
SSH_OPTIONS = (
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "IdentitiesOnly=yes",
    "-F",
    "/dev/null",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Path, Path]]:
    home = tmp_path_factory.mktemp("clients")
    url = f"sqlite:///{home / 'persons.db'}"
    with sftp_site(home, url, TENANTS, imports={"rescan_seconds": 0.5}) as made:
        yield made


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package {name}); .ci/run installs it")
    return path


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SSH_AUTH_SOCK": "", "HOME": str(cwd), **(env or {})},
        check=False,
    )


def imported_once(daemon: Daemon, tenant: str, name: str) -> None:
    """The file was imported, completed, and exactly once (also after a quiet spell)."""
    assert "completed" == daemon.summary(tenant, name)["status"]
    time.sleep(1.5)  # > settle_seconds + 2 rescans: a second import would have shown
    assert 1 == len(list(daemon.outbox(tenant).glob(f"{name}.*.summary.json")))


def test_lftp_with_a_temp_file_uploads(site: tuple[Daemon, Path, Path]) -> None:
    """lftp, xfer:use-temp-file yes: .in.NAME is written, renamed, and NAME imported once."""
    daemon, key, work = site
    (work / "lftp.persons").write_text(CONTENT)
    connect = " ".join(("ssh", "-a", "-x", *SSH_OPTIONS, "-i", str(key)))
    script = (
        f"set sftp:connect-program '{connect}'; set xfer:use-temp-file yes; "
        f"open -u lftp, -p {daemon.port} sftp://127.0.0.1; "
        "put lftp.persons -o /inbox/lftp.persons; bye"
    )
    result = run(tool("lftp"), "-c", script, cwd=work)
    assert (0, "") == (result.returncode, result.stderr)
    imported_once(daemon, "lftp", "lftp.persons")
    assert daemon.has_event(
        "sftp.rename", tenant="lftp", file="lftp.persons", renamed_from=".in.lftp.persons"
    )


def test_rclone_copy_uploads_and_sets_the_time(site: tuple[Daemon, Path, Path]) -> None:
    """rclone copy (default settings: it sets the modification time after the upload)."""
    daemon, key, work = site
    source = work / "rclone-src"
    source.mkdir()
    (source / "rclone.persons").write_text(CONTENT)
    config = work / "rclone.conf"
    config.write_text(
        f"[partner]\ntype = sftp\nhost = 127.0.0.1\nport = {daemon.port}\n"
        f"user = rclone\nkey_file = {key}\n"
    )
    result = run(
        tool("rclone"), "--config", str(config), "copy", str(source), "partner:/inbox", cwd=work
    )
    assert (0, "") == (result.returncode, result.stderr)
    imported_once(daemon, "rclone", "rclone.persons")


def test_openssh_put_preserving_times_and_mode(site: tuple[Daemon, Path, Path]) -> None:
    """OpenSSH sftp `put -p` sets times and mode (fsetstat) on the upload: acknowledged."""
    daemon, key, work = site
    (work / "openssh.persons").write_text(CONTENT)
    (work / "batch.sftp").write_text("put -p openssh.persons /inbox/openssh.persons\n")
    result = run(
        tool("sftp"),
        "-b",
        "batch.sftp",
        "-i",
        str(key),
        "-P",
        str(daemon.port),
        *SSH_OPTIONS,
        "-o",
        "BatchMode=yes",
        "openssh@127.0.0.1",
        cwd=work,
    )
    assert (0, "") == (result.returncode, result.stderr)
    imported_once(daemon, "openssh", "openssh.persons")


def test_winscp_style_filepart_rename_then_setstat(site: tuple[Daemon, Path, Path]) -> None:
    """WinSCP's default: NAME.filepart, rename to NAME, then set times and permissions."""
    daemon, key, _ = site
    with sftp_session(daemon.port, "winscp", key) as sftp:
        with sftp.open("/inbox/winscp.persons.filepart", "wb") as fh:
            fh.write(CONTENT.encode())
        sftp.rename("/inbox/winscp.persons.filepart", "/inbox/winscp.persons")
        # By now the daemon may have claimed the file: still acknowledged.
        sftp.utime("/inbox/winscp.persons", (1_700_000_000, 1_700_000_000))
        sftp.chmod("/inbox/winscp.persons", 0o644)
    imported_once(daemon, "winscp", "winscp.persons")
