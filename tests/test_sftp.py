"""The embedded SFTP server over the real protocol: paramiko and OpenSSH clients (SPEC 6, 9)."""

from __future__ import annotations

import base64
import os
import socket
import stat
import struct
import threading
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paramiko.sftp import CMD_CLOSE, CMD_DATA, CMD_READ, CMD_WRITE, int64
from structlog.testing import capture_logs

from daemon_helpers import openssh_sftp
from personsd.passwords import hash_password
from personsd.sftp import SftpLimits, SftpServer, TenantAuth, load_or_create_host_key
from personsd.sftp.bans import LoginBans
from polling import wait_for


@dataclass(frozen=True, kw_only=True, slots=True)
class Key:
    path: Path  # OpenSSH private key file (for the sftp binary)
    pkey: paramiko.Ed25519Key

    @property
    def entry(self) -> tuple[str, str]:
        return ("ssh-ed25519", base64.b64encode(self.pkey.asbytes()).decode("ascii"))


def make_key(path: Path, passphrase: bytes | None = None) -> Key:
    """A fresh ed25519 key written as an OpenSSH private key file (+ .pub)."""
    private = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, encryption
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    path.with_name(path.name + ".pub").write_bytes(public + b"\n")
    pkey = paramiko.Ed25519Key(filename=str(path), password=passphrase)
    return Key(path=path, pkey=pkey)


@dataclass(kw_only=True)
class Harness:
    root: Path
    server: SftpServer
    keys: dict[str, Key]
    tenants: dict[str, TenantAuth]
    uploads: list[tuple[str, Path]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.port

    def inbox(self, tenant: str) -> Path:
        return self.root / "tenants" / tenant / "inbox"

    def outbox(self, tenant: str) -> Path:
        return self.root / "tenants" / tenant / "outbox"


@contextmanager
def running_server(
    tmp: Path,
    *,
    limits: SftpLimits | None = None,
    passwords: dict[str, str] | None = None,
    bans: LoginBans | None = None,
) -> Iterator[Harness]:
    """Tenants ``acme`` and ``beta`` (ed25519 keys) served on 127.0.0.1, a free port."""
    keys = {name: make_key(tmp / f"{name}_key") for name in ("acme", "beta")}
    passwords = passwords or {}
    tenants = {
        name: TenantAuth(name=name, public_keys=(key.entry,), password_hash=passwords.get(name))
        for name, key in keys.items()
    }
    root = tmp / "root"
    for name in tenants:
        (root / "tenants" / name / "inbox").mkdir(parents=True, exist_ok=True)
        (root / "tenants" / name / "outbox").mkdir(parents=True, exist_ok=True)
    uploads: list[tuple[str, Path]] = []
    lock = threading.Lock()

    def on_upload(tenant: str, path: Path) -> None:
        with lock:
            uploads.append((tenant, path))

    server = SftpServer(
        host="127.0.0.1",
        port=0,
        host_key=load_or_create_host_key(root / "host_key"),
        tenants_root=root / "tenants",
        lookup=tenants.get,
        on_upload=on_upload,
        limits=limits,
        bans=bans,
    )
    server.start()
    try:
        yield Harness(root=root, server=server, keys=keys, tenants=tenants, uploads=uploads)
    finally:
        server.stop()


def connect(
    port: int, user: str, *, key: paramiko.PKey | None = None, password: str | None = None
) -> paramiko.Transport:
    """A paramiko client transport, logged in (raises on refusal)."""
    transport = paramiko.Transport(("127.0.0.1", port))
    try:
        transport.connect(username=user, pkey=key, password=password)
    except Exception:
        transport.close()
        raise
    return transport


@contextmanager
def sftp_client(port: int, user: str, key: paramiko.PKey) -> Iterator[paramiko.SFTPClient]:
    transport = connect(port, user, key=key)
    try:
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        yield client
        client.close()
    finally:
        transport.close()


def events(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    with running_server(tmp_path) as harness:
        yield harness


def visible(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


# -- uploads and downloads ------------------------------------------------------------------


def test_paramiko_put_lands_under_final_name(h: Harness, tmp_path: Path) -> None:
    """An upload appears under its own name on close, with no temp left, and on_upload once."""
    local = tmp_path / "local.persons"
    local.write_bytes(b"external_person_id\ne1\n")
    with capture_logs() as logs, sftp_client(h.port, "acme", h.keys["acme"].pkey) as sftp:
        sftp.put(str(local), "/inbox/customers.persons")
        wait_for(lambda: events(logs, "sftp.upload"))
    assert ["customers.persons"] == visible(h.inbox("acme"))
    assert local.read_bytes() == (h.inbox("acme") / "customers.persons").read_bytes()
    assert [("acme", h.inbox("acme") / "customers.persons")] == h.uploads
    upload = events(logs, "sftp.upload")
    assert [("acme", "customers.persons", 22)] == [
        (e["tenant"], e["file"], e["bytes"]) for e in upload
    ]
    assert 1 == len(events(logs, "sftp.login"))


def test_openssh_client_put_get_and_ls(h: Harness, tmp_path: Path) -> None:
    """OpenSSH sftp: put into /inbox, get from /outbox, ls / shows only the three boxes."""
    (tmp_path / "up.persons").write_bytes(b"mdn\n2295551234\n")
    (h.outbox("acme") / "up.persons.1.summary.json").write_text('{"status": "completed"}')
    batch = (
        "ls -1 /\nput up.persons /inbox/up.persons\n"
        "get /outbox/up.persons.1.summary.json got.json\nls -1 /inbox\n"
    )
    with capture_logs() as logs:
        result = openssh_sftp(h.port, "acme", h.keys["acme"].path, batch, tmp_path)
        wait_for(lambda: events(logs, "sftp.upload"))
    assert 0 == result.returncode, result.stderr
    listed = [
        line.strip()
        for line in result.stdout.splitlines()
        if line.strip() and not line.startswith("sftp>")
    ]
    assert ["/inbox", "/outbox", "/validate", "/inbox/up.persons"] == listed
    assert ["up.persons"] == visible(h.inbox("acme"))
    assert '{"status": "completed"}' == (tmp_path / "got.json").read_text()
    assert [("acme", h.inbox("acme") / "up.persons")] == h.uploads
    # OpenSSH probes the key, then signs: one login, with its fingerprint.
    logins = events(logs, "sftp.login")
    assert [("acme", "publickey", "127.0.0.1")] == [
        (e["tenant"], e["method"], e["ip"]) for e in logins
    ]
    assert str(logins[0]["fingerprint"]).startswith("SHA256:")


def test_outbox_download_remove_and_no_upload(h: Harness) -> None:
    """The outbox can be listed, downloaded and emptied, but not written to."""
    (h.outbox("acme") / "report.csv").write_bytes(b"line,row\n")
    (h.outbox("acme") / ".report.csv.tmp").write_bytes(b"partial")
    with sftp_client(h.port, "acme", h.keys["acme"].pkey) as sftp:
        assert ["report.csv"] == sftp.listdir("/outbox")
        with sftp.open("/outbox/report.csv", "rb") as fh:
            assert b"line,row\n" == fh.read()
        with pytest.raises(PermissionError):
            sftp.open("/outbox/new.persons", "wb")
        with pytest.raises(FileNotFoundError):
            sftp.open("/outbox/.report.csv.tmp", "rb")
        with pytest.raises(FileNotFoundError):
            sftp.remove("/outbox/.report.csv.tmp")
        sftp.remove("/outbox/report.csv")
    assert [".report.csv.tmp"] == visible(h.outbox("acme"))


def test_inbox_is_write_only_and_removable(h: Harness) -> None:
    """Inbox files, dot-names too, are listed and removable, not readable; our temps are hidden."""
    ours = ".w.persons.0123456789abcdef.upload"
    for name in ("waiting.persons", ".in-progress", ours):
        (h.inbox("acme") / name).write_bytes(b"x")
    with sftp_client(h.port, "acme", h.keys["acme"].pkey) as sftp:
        assert [".in-progress", "waiting.persons"] == sorted(sftp.listdir("/inbox"))
        with pytest.raises(PermissionError):
            sftp.open("/inbox/waiting.persons", "rb")
        with pytest.raises(FileNotFoundError):
            sftp.stat(f"/inbox/{ours}")
        with pytest.raises(FileNotFoundError):
            sftp.remove(f"/inbox/{ours}")
        with pytest.raises(PermissionError):
            sftp.open(f"/inbox/{ours}", "wb")
        sftp.remove("/inbox/waiting.persons")
        sftp.remove("/inbox/.in-progress")
    assert [ours] == visible(h.inbox("acme"))


def test_root_lists_exactly_inbox_validate_and_outbox(h: Harness) -> None:
    """The virtual root holds inbox, validate and outbox and nothing else; cd .. stays at /."""
    (h.root / "tenants" / "acme" / "stray.txt").write_text("not for the client")
    with sftp_client(h.port, "acme", h.keys["acme"].pkey) as sftp:
        assert ["inbox", "outbox", "validate"] == sorted(sftp.listdir("/"))
        assert ["inbox", "outbox", "validate"] == sorted(sftp.listdir("../.."))
        assert "/" == sftp.normalize("/inbox/../..")
        assert stat.S_ISDIR(sftp.stat("/inbox").st_mode or 0)


def test_filepart_upload_then_rename(h: Harness, tmp_path: Path) -> None:
    """x.filepart is finished as is (no on_upload); renaming it to x.persons calls on_upload."""
    with sftp_client(h.port, "acme", h.keys["acme"].pkey) as sftp:
        with sftp.open("/inbox/x.persons.filepart", "wb") as fh:
            fh.write(b"mdn\n2295551234\n")
        assert ["x.persons.filepart"] == visible(h.inbox("acme"))
        assert [] == h.uploads
        sftp.rename("/inbox/x.persons.filepart", "/inbox/x.persons")
    assert ["x.persons"] == visible(h.inbox("acme"))
    assert [("acme", h.inbox("acme") / "x.persons")] == h.uploads


def test_upload_replaces_an_unclaimed_file(h: Harness) -> None:
    """Uploading onto a name still in the inbox replaces it atomically."""
    with sftp_client(h.port, "acme", h.keys["acme"].pkey) as sftp:
        for content in (b"first\n", b"second\n"):
            with sftp.open("/inbox/a.persons", "wb") as fh:
                fh.write(content)
    assert ["a.persons"] == visible(h.inbox("acme"))
    assert b"second\n" == (h.inbox("acme") / "a.persons").read_bytes()
    assert 2 == len(h.uploads)


def test_abandoned_upload_leaves_no_file(h: Harness) -> None:
    """A connection dropped before CLOSE leaves nothing in the inbox and calls no one."""
    transport = connect(h.port, "acme", key=h.keys["acme"].pkey)
    sftp = paramiko.SFTPClient.from_transport(transport)
    assert sftp is not None
    fh = sftp.open("/inbox/half.persons", "wb")
    fh.write(b"mdn\n" * 1000)
    fh.flush()
    assert 1 == len(os.listdir(h.inbox("acme")))  # the hidden temp file
    transport.close()
    wait_for(lambda: not os.listdir(h.inbox("acme")))
    assert [] == h.uploads


def test_stale_temp_files_are_swept_at_start(tmp_path: Path) -> None:
    """Temp files of uploads cut short by a crash are removed when the server starts."""
    inbox = tmp_path / "root" / "tenants" / "acme" / "inbox"
    inbox.mkdir(parents=True)
    (inbox / ".a.persons.0123456789abcdef.upload").write_bytes(b"half")
    (inbox / ".other").write_bytes(b"not ours")
    with running_server(tmp_path):
        assert [".other"] == visible(inbox)


def test_rename_rules(h: Harness) -> None:
    """Renames stay in /inbox, never replace a file, never touch hidden names."""
    inbox = h.inbox("acme")
    for name in ("a.persons", "b.persons"):
        (inbox / name).write_bytes(name.encode())
    (inbox / ".h.0123456789abcdef.upload").write_bytes(b"h")
    (h.outbox("acme") / "r.csv").write_bytes(b"r")
    with sftp_client(h.port, "acme", h.keys["acme"].pkey) as sftp:
        with pytest.raises(OSError, match="Failure"):
            sftp.rename("/inbox/a.persons", "/inbox/b.persons")
        with pytest.raises(PermissionError):
            sftp.rename("/inbox/a.persons", "/outbox/a.persons")
        with pytest.raises(PermissionError):
            sftp.rename("/outbox/r.csv", "/inbox/r.persons")
        with pytest.raises(PermissionError):
            sftp.rename("/inbox/a.persons", "/inbox/.a.0123456789abcdef.upload")
        with pytest.raises(PermissionError):
            sftp.rename("/inbox/a.persons", "/inbox/" + "x" * 201)
        with pytest.raises(FileNotFoundError):
            sftp.rename("/inbox/.h.0123456789abcdef.upload", "/inbox/c.persons")
        with pytest.raises(PermissionError):
            sftp.posix_rename("/inbox/a.persons", "/outbox/a.persons")
    assert [".h.0123456789abcdef.upload", "a.persons", "b.persons"] == visible(inbox)
    assert b"b.persons" == (inbox / "b.persons").read_bytes()
    assert [] == h.uploads


# -- confinement ----------------------------------------------------------------------------


def test_nothing_outside_the_boxes_resolves(h: Harness) -> None:
    """.., absolute paths, /etc/passwd, planted symlinks and other tenants are unreachable."""
    (h.outbox("beta") / "secret.csv").write_bytes(b"beta's")
    (h.inbox("acme") / "evil.persons").symlink_to("/etc/passwd")
    (h.outbox("acme") / "evil.csv").symlink_to(h.outbox("beta") / "secret.csv")
    (h.outbox("acme") / "dir").symlink_to(h.outbox("beta"))
    paths = [
        "/etc/passwd",
        "../../../../etc/passwd",
        "/inbox/../../beta/outbox/secret.csv",
        "/outbox/../../beta/outbox/secret.csv",
        str(h.outbox("beta") / "secret.csv"),
        "/outbox/evil.csv",
        "/outbox/dir/secret.csv",
        "/inbox/evil.persons",
        "beta/outbox/secret.csv",
        "/outbox/sub/../../../etc/passwd",
        "/outbox/\x00x",
    ]
    with sftp_client(h.port, "acme", h.keys["acme"].pkey) as sftp:
        assert [] == sftp.listdir("/inbox")
        assert [] == sftp.listdir("/outbox")
        for path in paths:
            with pytest.raises(OSError):
                sftp.open(path, "rb")
            with pytest.raises(OSError):
                sftp.stat(path)
            with pytest.raises(OSError):
                sftp.remove(path)
        for directory in ("/etc", "/outbox/dir", str(h.root), "/inbox/x"):
            with pytest.raises(OSError):
                sftp.listdir(directory)
        with pytest.raises(OSError):
            sftp.open("/inbox/../../beta/inbox/x.persons", "wb")
        with pytest.raises(OSError):
            sftp.open("/tmp/x.persons", "wb")
    assert [] == visible(h.inbox("beta"))
    assert (h.outbox("beta") / "secret.csv").exists()
    assert (h.inbox("acme") / "evil.persons").is_symlink()


def test_refused_operations(h: Harness) -> None:
    """symlink, readlink, size and owner changes, mkdir, rmdir are refused; the session lives."""
    (h.inbox("acme") / "a.persons").write_bytes(b"a")
    with sftp_client(h.port, "acme", h.keys["acme"].pkey) as sftp:
        with pytest.raises(OSError, match="unsupported"):
            sftp.symlink("/etc/passwd", "/inbox/link.persons")
        with pytest.raises(OSError, match="unsupported"):
            sftp.readlink("/inbox/a.persons")
        with pytest.raises(OSError, match="unsupported"):
            sftp.truncate("/inbox/a.persons", 0)
        with pytest.raises(OSError, match="unsupported"):
            sftp.chown("/inbox/a.persons", 0, 0)
        with pytest.raises(PermissionError):
            sftp.chmod("/inbox", 0o777)
        with pytest.raises(FileNotFoundError):
            sftp.chmod("/inbox/missing.persons", 0o777)
        with pytest.raises(PermissionError):
            sftp.mkdir("/inbox/sub")
        with pytest.raises(PermissionError):
            sftp.rmdir("/outbox")
        with sftp.open("/inbox/b.persons", "wb") as fh, pytest.raises(OSError):
            fh.truncate(5)
        assert ["a.persons", "b.persons"] == sorted(sftp.listdir("/inbox"))
    assert [] == [p for p in h.inbox("acme").iterdir() if p.is_symlink()]
    assert b"a" == (h.inbox("acme") / "a.persons").read_bytes()


def test_times_and_permissions_are_acknowledged_and_change_nothing(h: Harness) -> None:
    """SPEC 6: setstat/fsetstat of times or mode on one's own files answer OK, change nothing."""
    (h.outbox("acme") / "r.csv").write_bytes(b"r")
    with sftp_client(h.port, "acme", h.keys["acme"].pkey) as sftp:
        with sftp.open("/inbox/b.persons", "wb") as fh:
            fh.write(b"b")
            fh.chmod(0o600)
            fh.utime((1, 1))
            fh.truncate(1)  # lftp sets the size the file has, with the times
        before = {
            p.name: (p.stat().st_mode, p.stat().st_mtime)
            for p in (h.inbox("acme") / "b.persons", h.outbox("acme") / "r.csv")
        }
        for path in ("/inbox/b.persons", "/outbox/r.csv"):
            sftp.chmod(path, 0o777)
            sftp.utime(path, (1, 1))
        after = {
            p.name: (p.stat().st_mode, p.stat().st_mtime)
            for p in (h.inbox("acme") / "b.persons", h.outbox("acme") / "r.csv")
        }
        assert before == after
        (h.inbox("acme") / "b.persons").unlink()  # claimed by the daemon meanwhile
        sftp.utime("/inbox/b.persons", (1, 1))  # rclone and WinSCP set times after the upload


def test_only_the_sftp_subsystem_is_served(h: Harness) -> None:
    """No shell, exec, other subsystems or port forwarding."""
    transport = connect(h.port, "acme", key=h.keys["acme"].pkey)
    try:
        for attempt in ("exec", "shell", "netconf"):
            channel = transport.open_session()
            with pytest.raises(paramiko.SSHException):
                if attempt == "exec":
                    channel.exec_command("cat /etc/passwd")
                elif attempt == "shell":
                    channel.invoke_shell()
                else:
                    channel.invoke_subsystem(attempt)
            channel.close()
        with pytest.raises(paramiko.ChannelException):
            transport.open_channel("direct-tcpip", ("127.0.0.1", 22), ("127.0.0.1", 5000))
        with pytest.raises(paramiko.SSHException):
            transport.request_port_forward("127.0.0.1", 0)
    finally:
        transport.close()


# -- authentication -------------------------------------------------------------------------


def test_wrong_key_wrong_user_and_password_without_hash_fail(h: Harness) -> None:
    """Wrong key, unknown user, password for a key-only tenant: refused and logged."""
    with capture_logs() as logs:
        with pytest.raises(paramiko.AuthenticationException):
            connect(h.port, "acme", key=h.keys["beta"].pkey)
        with pytest.raises(paramiko.AuthenticationException):
            connect(h.port, "nobody", key=h.keys["acme"].pkey)
        with pytest.raises(paramiko.AuthenticationException):
            connect(h.port, "acme", password="hunter2-secret")
        wait_for(lambda: 3 <= len(events(logs, "sftp.login_failed")))
    failed = [(e["user"], e["method"], e["reason"]) for e in events(logs, "sftp.login_failed")]
    assert [
        ("acme", "publickey", "unknown_key"),
        ("nobody", "publickey", "unknown_user"),
        ("acme", "password", "no_password"),
    ] == failed
    assert {"127.0.0.1"} == {e["ip"] for e in events(logs, "sftp.login_failed")}
    assert [] == events(logs, "sftp.login")
    assert "hunter2-secret" not in repr(logs)


def test_unknown_key_probe_fails(h: Harness) -> None:
    """A key the server does not know is refused through auth_publickey and logged."""
    stranger = make_key(h.root / "stranger").pkey
    transport = paramiko.Transport(("127.0.0.1", h.port))
    try:
        transport.start_client()
        with capture_logs() as logs:
            with pytest.raises(paramiko.AuthenticationException):
                transport.auth_publickey("acme", stranger)
            assert not transport.is_authenticated()
        assert ["unknown_key"] == [e["reason"] for e in events(logs, "sftp.login_failed")]
    finally:
        transport.close()


def test_known_key_probe_alone_does_not_log_in(h: Harness, tmp_path: Path) -> None:
    """OpenSSH with an encrypted key probes, is told the key would do, cannot sign: no login."""
    locked = make_key(tmp_path / "locked", passphrase=b"correct horse")
    h.tenants["acme"] = TenantAuth(name="acme", public_keys=(locked.entry,))
    with capture_logs() as logs:
        result = openssh_sftp(h.port, "acme", locked.path, "ls /\n", tmp_path, "-v")
    assert 0 != result.returncode
    assert "Server accepts key" in result.stderr  # the probe got PK_OK
    assert [] == events(logs, "sftp.login")
    assert [] == h.uploads


class _Forger(paramiko.Ed25519Key):  # type: ignore[misc]
    """Presents one key's public blob but signs with another private key."""

    def __init__(self, filename: str, claimed: bytes) -> None:
        super().__init__(filename=filename)
        self._claimed = claimed

    def asbytes(self) -> bytes:
        return self._claimed


def test_bad_signature_for_a_known_key_fails(h: Harness) -> None:
    """Claiming acme's public key without its private key: refused, logged as bad_signature."""
    forger = _Forger(str(h.keys["beta"].path), h.keys["acme"].pkey.asbytes())
    with capture_logs() as logs:
        with pytest.raises(paramiko.AuthenticationException):
            connect(h.port, "acme", key=forger)
        wait_for(lambda: events(logs, "sftp.login_failed"))
    assert ["bad_signature"] == [e["reason"] for e in events(logs, "sftp.login_failed")]
    assert [] == events(logs, "sftp.login")


def test_password_login(tmp_path: Path) -> None:
    """A tenant with a password hash logs in with it; a wrong one is refused and not logged."""
    with running_server(tmp_path, passwords={"acme": hash_password("s3cret pass")}) as h:
        with capture_logs() as logs:
            transport = connect(h.port, "acme", password="s3cret pass")
            try:
                sftp = paramiko.SFTPClient.from_transport(transport)
                assert sftp is not None
                assert ["inbox", "outbox", "validate"] == sorted(sftp.listdir("/"))
            finally:
                transport.close()
            with pytest.raises(paramiko.AuthenticationException):
                connect(h.port, "acme", password="wrong guess")
            wait_for(lambda: events(logs, "sftp.login_failed"))
        assert [("acme", "password")] == [
            (e["tenant"], e["method"]) for e in events(logs, "sftp.login")
        ]
        assert ["wrong_password"] == [e["reason"] for e in events(logs, "sftp.login_failed")]
        assert "wrong guess" not in repr(logs) and "s3cret" not in repr(logs)


def test_repeated_failures_ban_the_address(tmp_path: Path) -> None:
    """Failed logins past the limit ban the address: even a good key is then refused."""
    limits = SftpLimits(max_failed_logins=3, failed_window_seconds=60, ban_seconds=60)
    with (
        running_server(tmp_path, limits=limits, passwords={"acme": hash_password("right")}) as h,
        capture_logs() as logs,
    ):
        for _ in range(3):
            with pytest.raises(paramiko.AuthenticationException):
                connect(h.port, "acme", password="wrong")
        wait_for(lambda: events(logs, "sftp.banned"))
        with pytest.raises((paramiko.SSHException, OSError, EOFError)):
            connect(h.port, "acme", key=h.keys["acme"].pkey)
        wait_for(lambda: events(logs, "sftp.refused"))
        assert [] == events(logs, "sftp.login")
        assert [("127.0.0.1", "banned")] == [
            (e["ip"], e["reason"]) for e in events(logs, "sftp.refused")
        ]


def test_key_failures_count_once_per_connection(tmp_path: Path) -> None:
    """Connections that end without a login each count once toward the ban."""
    limits = SftpLimits(max_failed_logins=2, ban_seconds=60)
    with running_server(tmp_path, limits=limits) as h, capture_logs() as logs:
        with pytest.raises(paramiko.AuthenticationException):
            connect(h.port, "acme", key=h.keys["beta"].pkey)
        with sftp_client(h.port, "acme", h.keys["acme"].pkey) as sftp:
            sftp.listdir("/")
        with pytest.raises(paramiko.AuthenticationException):
            connect(h.port, "nobody", key=h.keys["acme"].pkey)
        wait_for(lambda: events(logs, "sftp.banned"))


def test_connections_per_address_are_capped(tmp_path: Path) -> None:
    """More than connections_per_address at once from one address are refused."""
    with running_server(tmp_path, limits=SftpLimits(connections_per_address=2)) as h:
        open_ones = [connect(h.port, "acme", key=h.keys["acme"].pkey) for _ in range(2)]
        try:
            with capture_logs() as logs:
                with pytest.raises((paramiko.SSHException, OSError, EOFError)):
                    connect(h.port, "acme", key=h.keys["acme"].pkey)
                wait_for(lambda: events(logs, "sftp.limit"))
            assert [("connections_per_address", "127.0.0.1")] == [
                (e["limit"], e["ip"]) for e in events(logs, "sftp.limit")
            ]
        finally:
            for transport in open_ones:
                transport.close()


def test_banner_hides_the_library_and_weak_ciphers_are_refused(h: Harness) -> None:
    """The version string is SSH-2.0-personsd and a CBC-only client cannot negotiate."""
    with socket.create_connection(("127.0.0.1", h.port), timeout=5) as sock:
        assert b"SSH-2.0-personsd\r\n" == sock.recv(64)
    strong = [c for c in paramiko.Transport._preferred_ciphers if "cbc" not in c]
    transport = paramiko.Transport(("127.0.0.1", h.port), disabled_algorithms={"ciphers": strong})
    try:
        with pytest.raises(paramiko.SSHException):
            transport.connect(username="acme", pkey=h.keys["acme"].pkey)
    finally:
        transport.close()


def test_idle_connections_are_closed(tmp_path: Path) -> None:
    """A logged-in connection with no requests is closed after idle_timeout_seconds."""
    with running_server(tmp_path, limits=SftpLimits(idle_timeout_seconds=0.3)) as h:
        with capture_logs() as logs:
            transport = connect(h.port, "acme", key=h.keys["acme"].pkey)
            try:
                wait_for(lambda: not transport.is_active(), timeout=5)
            finally:
                transport.close()
        assert 1 == len(events(logs, "sftp.idle_timeout"))


# -- resource caps --------------------------------------------------------------------------


def _vm_peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmPeak:"):
            return int(line.split()[1])
    raise AssertionError("no VmPeak")


def test_huge_read_is_served_only_up_to_the_cap(h: Harness) -> None:
    """A READ of 4 GiB returns at most max_read_bytes and allocates nothing near it."""
    (h.outbox("acme") / "big.csv").write_bytes(os.urandom(1024 * 1024))
    with sftp_client(h.port, "acme", h.keys["acme"].pkey) as sftp:
        fh = sftp.open("/outbox/big.csv", "rb")
        before = _vm_peak_kib()
        t, msg = sftp._request(CMD_READ, fh.handle, int64(0), 0xFFFFFFFF)
        after = _vm_peak_kib()
        assert CMD_DATA == t
        assert SftpLimits().max_read_bytes == len(msg.get_binary())
        assert after - before < 512 * 1024  # KiB: far below the 4 GiB asked for
        fh.close()


def test_handle_cap_gives_a_clean_error(h: Harness) -> None:
    """Opening handle after handle stops at max_handles with an error; the session lives on."""
    (h.outbox("acme") / "r.csv").write_bytes(b"r")
    with sftp_client(h.port, "acme", h.keys["acme"].pkey) as sftp:
        handles = []
        with pytest.raises(OSError, match="Too many open handles"):
            for _ in range(2000):
                handles.append(sftp.open("/outbox/r.csv", "rb"))
        assert SftpLimits().max_handles == len(handles)
        with pytest.raises(OSError, match="Too many open handles"):
            sftp.listdir("/outbox")
        handles.pop().close()
        assert ["r.csv"] == sftp.listdir("/outbox")


def test_an_oversized_sftp_request_ends_the_session(h: Harness) -> None:
    """An SFTP request declared over max_request_bytes ends the session before it is read."""
    transport = connect(h.port, "acme", key=h.keys["acme"].pkey)
    try:
        with capture_logs() as logs:
            channel = transport.open_session()
            channel.invoke_subsystem("sftp")
            channel.sendall(struct.pack(">IBI", 5, 1, 3))  # INIT, version 3
            assert 2 == channel.recv(64)[4]  # VERSION
            channel.sendall(struct.pack(">I", SftpLimits().max_request_bytes + 1))
            wait_for(lambda: channel.closed or channel.eof_received)
            wait_for(lambda: events(logs, "sftp.limit"))
        assert [("request_bytes", "acme")] == [
            (e["limit"], e["tenant"]) for e in events(logs, "sftp.limit")
        ]
    finally:
        transport.close()


def test_sparse_and_oversized_writes_are_refused(tmp_path: Path) -> None:
    """Writes leaving over max_write_gap_bytes of holes, or past max_file_bytes, fail the upload."""
    limits = SftpLimits(max_file_bytes=1024 * 1024, max_write_gap_bytes=64 * 1024)
    with (
        running_server(tmp_path, limits=limits) as h,
        capture_logs() as logs,
        sftp_client(h.port, "acme", h.keys["acme"].pkey) as sftp,
    ):
        for offset in (80 * 1024, 1024 * 1024 - 2, 1 << 40):
            fh = sftp.open("/inbox/s.persons", "wb")
            fh.write(b"head\n")
            fh.flush()
            with pytest.raises(OSError):
                sftp._request(CMD_WRITE, fh.handle, int64(offset), b"tail")
            # A file with a part missing is never delivered (paramiko's close() hides errors).
            with pytest.raises(OSError, match="Upload incomplete"):
                sftp._request(CMD_CLOSE, fh.handle)
            assert [] == visible(h.inbox("acme"))
        fh = sftp.open("/inbox/ok.persons", "wb")
        sftp._request(CMD_WRITE, fh.handle, int64(60 * 1024), b"tail")  # out of order: fine
        sftp._request(CMD_WRITE, fh.handle, int64(0), b"x" * 60 * 1024)
        fh.close()
    assert 60 * 1024 + 4 == (h.inbox("acme") / "ok.persons").stat().st_size
    # The second file_bytes hit is within LIMIT_LOG_SECONDS of the first: not repeated.
    assert ["write_gap_bytes", "file_bytes"] == [e["limit"] for e in events(logs, "sftp.limit")]
