"""Two real daemons on one PostgreSQL schema and one root: bans and quotas hold (SPEC 12)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from daemon_helpers import Daemon, free_port, ssh_key
from personsd.logging import Event
from polling import wait_for

pytestmark = pytest.mark.slow

SETTINGS = {"import": {"rescan_seconds": 30}}


@pytest.fixture
def pair(tmp_path: Path, pg_url: str) -> Iterator[tuple[Daemon, Daemon]]:
    """Instances A and B: one schema, one tree, each its own SFTP port and log."""
    root = tmp_path / "shared-root"
    made = []
    for name in ("a", "b"):
        home = tmp_path / name
        home.mkdir()
        extra = {
            "paths": {"root": str(root)},
            "limits": {"inbox_bytes": 1_000_000, "inbox_files": 3},
            **SETTINGS,
        }
        made.append(Daemon(home=home, db_url=pg_url, port=free_port(), extra=extra))
    a, b = made
    a.write_config()
    b.write_config()
    key = ssh_key(tmp_path)
    a.cli("tenants", "add", "acme", "--ssh-key", f"{key}.pub", "--password-stdin", stdin="right\n")
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        for daemon in (a, b):
            if daemon.proc is not None:
                daemon.stop()


def login(port: int, *, password: str | None = None, key: Path | None = None) -> paramiko.Transport:
    transport = paramiko.Transport(("127.0.0.1", port))
    try:
        pkey = paramiko.Ed25519Key(filename=str(key)) if key is not None else None
        transport.connect(username="acme", password=password, pkey=pkey)
    except Exception:
        transport.close()
        raise
    return transport


def test_a_ban_on_one_instance_refuses_logins_on_the_other(pair: tuple[Daemon, Daemon]) -> None:
    """Wrong passwords on A until banned; the right password on B is then refused."""
    a, b = pair
    login(b.port, password="right").close()  # B lets the partner in before
    for _ in range(5):
        with pytest.raises(paramiko.AuthenticationException):
            login(a.port, password="wrong")
    wait_for(lambda: a.has_event(Event.SFTP_BANNED, ip="127.0.0.1"), what="A bans the address")
    with pytest.raises((paramiko.SSHException, OSError, EOFError)):
        login(b.port, password="right")
    wait_for(lambda: b.has_event(Event.SFTP_REFUSED, ip="127.0.0.1", reason="banned"))
    logins = [e for e in b.events() if e.get("event") == Event.SFTP_LOGIN]
    assert 1 == len(logins)  # the one before the ban
    assert [] == [e for e in b.events() if e.get("event") == Event.SFTP_BANNED]


def test_an_upload_in_progress_on_one_instance_counts_on_the_other(
    pair: tuple[Daemon, Daemon], tmp_path: Path
) -> None:
    """inbox_bytes holds across instances: A's open upload leaves B only the rest of the quota."""
    a, b = pair
    key = tmp_path / "id_ed25519"
    holder = login(a.port, key=key)
    try:
        sftp_a = paramiko.SFTPClient.from_transport(holder)
        assert sftp_a is not None
        held = sftp_a.open("/inbox/held.persons", "wb")
        held.write(b"x" * 800_000)
        held.flush()
        with login(b.port, key=key) as transport:
            sftp_b = paramiko.SFTPClient.from_transport(transport)
            assert sftp_b is not None

            def refused() -> bool:
                try:
                    with sftp_b.open("/inbox/more.persons", "wb") as more:
                        more.write(b"y" * 300_000)
                except OSError as exc:
                    return "Inbox quota exceeded (bytes)" in str(exc)
                return False

            assert refused()  # within one scan of A's write: B saw it
    finally:
        holder.close()  # the upload is abandoned: its temp file goes
    wait_for(lambda: not list_temps(a), timeout=10, what="the abandoned temp file removed")
    with login(b.port, key=key) as transport:
        sftp_b = paramiko.SFTPClient.from_transport(transport)
        assert sftp_b is not None
        with sftp_b.open("/inbox/later.x", "wb") as later:
            later.write(b"z" * 300_000)


def list_temps(daemon: Daemon) -> list[Path]:
    inbox = Path(daemon.extra["paths"]["root"]) / "tenants" / "acme" / "inbox"
    return list(inbox.glob(".*.upload"))


def test_a_starting_instance_keeps_the_others_upload_in_progress(
    pair: tuple[Daemon, Daemon], tmp_path: Path
) -> None:
    """B restarting (which sweeps dead uploads) leaves A's upload in progress alone."""
    a, b = pair
    key = tmp_path / "id_ed25519"
    with login(a.port, key=key) as transport:
        sftp_a = paramiko.SFTPClient.from_transport(transport)
        assert sftp_a is not None
        with sftp_a.open("/inbox/slow.x", "wb") as slow:
            slow.write(b"first half ")
            b.stop()
            b.start()
            slow.write(b"second half")
        assert 22 == sftp_a.stat("/inbox/slow.x").st_size
