"""A hostile client against the embedded SFTP server: memory, descriptors, quotas, guesses.

Issue 9's observations 2-5 and 12-14, each as an attack bounded in bytes and
time yet large enough that the unbounded server failed it clearly. Memory and
descriptors are read from the real daemon's ``/proc/PID``; the rest runs
against the server in process (tests/test_sftp.py's harness), which is faster
and sees the same code.
"""

from __future__ import annotations

import contextlib
import re
import resource
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from paramiko.common import cMSG_CHANNEL_DATA
from paramiko.sftp import CMD_CLOSE, CMD_WRITE, int64
from structlog.testing import capture_logs

from daemon_helpers import Daemon, add_tenants, free_port, openssh_sftp, ssh_key, start
from personsd.passwords import hash_password
from personsd.sftp import SftpLimits
from polling import wait_for
from test_sftp import Harness, connect, events, running_server, sftp_client

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
# What an attack may add to the daemon's resident memory: far below what it streams.
GROWTH_ALLOWED = 24 * MiB
UNIT = Path(__file__).resolve().parents[1] / "deploy" / "personsd.service"


def proc_status(pid: int, field: str) -> int:
    """A numeric field of /proc/PID/status (kB fields in bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            parts = line.split()
            return int(parts[1]) * (1024 if parts[-1] == "kB" else 1)
    raise AssertionError(f"no {field} for {pid}")


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


class PeakRss:
    """Samples a process's VmRSS in the background; ``growth`` is its peak over the start."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.base = proc_status(pid, "VmRSS")
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, proc_status(self.pid, "VmRSS"))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, proc_status(self.pid, "VmRSS"))

    @property
    def growth(self) -> int:
        return self.peak - self.base


def pid_of(daemon: Daemon) -> int:
    assert daemon.proc is not None
    return daemon.proc.pid


def limit_events(daemon: Daemon, limit: str, since: int = 0) -> list[dict[str, Any]]:
    return [
        e
        for e in daemon.events()[since:]
        if e.get("event") == "sftp.limit" and e.get("limit") == limit
    ]


def login(port: int, key: Path, user: str, *, source: str = "127.0.0.1") -> paramiko.Transport:
    """A logged-in paramiko transport from ``source`` (any 127/8 address reaches 127.0.0.1)."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    transport = paramiko.Transport(sock)
    try:
        transport.connect(username=user, pkey=paramiko.Ed25519Key(filename=str(key)))
    except Exception:
        transport.close()
        raise
    return transport


def flood(sock: socket.socket, total: int, deadline: float = 10.0) -> bool:
    """Send up to ``total`` bytes of zeros; whether the peer hung up within ``deadline`` s."""
    chunk = b"\x00" * MiB
    sent = 0
    until = time.monotonic() + deadline
    try:
        while sent < total:
            sock.settimeout(max(until - time.monotonic(), 0.01))
            sock.sendall(chunk)
            sent += len(chunk)
    except TimeoutError:
        return False  # the daemon stopped reading but kept the connection
    except OSError:
        return True  # the daemon hung up: what we want
    return False


# -- one daemon for the module (SQLite: these attacks do not depend on the database) ----------

TENANTS = ("mallory", "flooder", "quota", "alice")  # one per test: slots free up lazily
LIMITS = {"inbox_bytes": 4 * MiB, "inbox_files": 5, "connections_per_tenant": 6}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Path]]:
    home = tmp_path_factory.mktemp("abuse")
    daemon = Daemon(
        home=home,
        db_url=f"sqlite:///{home / 'persons.db'}",
        port=free_port(),
        extra={"import": {"rescan_seconds": 0.5}, "limits": LIMITS},
    )
    key = ssh_key(home)
    add_tenants(daemon, TENANTS, key)
    start(daemon, TENANTS)
    try:
        yield daemon, key
    finally:
        daemon.stop()


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    """The server in process (tests/test_sftp.py): tenants acme and beta."""
    with running_server(tmp_path) as harness:
        yield harness


# -- 2: memory and time before login --------------------------------------------------------


def declare_a_huge_packet(sock: socket.socket) -> None:
    """Exchange version strings, then begin one packet declared 2 GiB long."""
    sock.settimeout(10)
    assert sock.recv(64).startswith(b"SSH-2.0-")
    sock.sendall(b"SSH-2.0-abuser\r\n")
    # (size - 4) is a multiple of the 8-byte pre-kex block, as the framing demands.
    sock.sendall(struct.pack(">I", 0x7FFFFFFC) + b"\x04" + b"\x00" * 3)


@pytest.mark.parametrize(
    ("prelude", "flooded", "limit", "unbounded"),
    [
        pytest.param(
            declare_a_huge_packet,
            48 * MiB,
            "packet_bytes",
            "the daemon read 48 MiB into one packet",
            id="a-2-GiB-packet-after-the-banner",
        ),
        pytest.param(
            None,
            32 * MiB,
            "banner_bytes",
            "the daemon kept reading one banner line",
            id="no-line-end-before-the-version-string",
        ),
    ],
)
def test_a_flood_before_login_costs_no_memory(
    site: tuple[Daemon, Path],
    prelude: Callable[[socket.socket], None] | None,
    flooded: int,
    limit: str,
    unbounded: str,
) -> None:
    """Before login a packet is cut at max_packet_bytes, a banner line at max_banner_bytes."""
    daemon, _ = site
    mark = len(daemon.events())
    with (
        PeakRss(pid_of(daemon)) as mem,
        socket.create_connection(("127.0.0.1", daemon.port)) as sock,
    ):
        if prelude is not None:
            prelude(sock)
        hung_up = flood(sock, flooded)
    assert mem.growth < GROWTH_ALLOWED, f"grew by {mem.growth / MiB:.0f} MiB"
    assert hung_up, unbounded
    wait_for(lambda: limit_events(daemon, limit, mark), what=f"sftp.limit {limit}")
    assert "127.0.0.1" == limit_events(daemon, limit, mark)[0]["ip"]


def test_login_must_complete_within_the_grace_time(tmp_path: Path) -> None:
    """A client that connects and never logs in is cut after login_grace_seconds."""
    with (
        running_server(tmp_path, limits=SftpLimits(login_grace_seconds=1)) as h,
        capture_logs() as logs,
        socket.create_connection(("127.0.0.1", h.port)) as sock,
    ):
        sock.settimeout(10)
        sock.sendall(b"SSH-2.0-silent\r\n")
        started = time.monotonic()
        while sock.recv(4096):
            pass  # until the server hangs up
        assert time.monotonic() - started < 8
        wait_for(lambda: events(logs, "sftp.limit"))
    assert [("login_grace", "127.0.0.1")] == [
        (e["limit"], e["ip"]) for e in events(logs, "sftp.limit")
    ]


# -- 3: memory after login ------------------------------------------------------------------


def test_channel_data_beyond_the_window_ends_the_connection(site: tuple[Daemon, Path]) -> None:
    """A session channel with no subsystem flooded past its window: cut, memory bounded."""
    daemon, key = site
    mark = len(daemon.events())
    transport = login(daemon.port, key, "flooder")
    sent = 0
    try:
        channel = transport.open_session()
        block = b"\x00" * 32 * 1024
        with PeakRss(pid_of(daemon)) as mem:
            deadline = time.monotonic() + 20
            try:
                while sent < 64 * MiB and transport.is_active() and time.monotonic() < deadline:
                    # Channel.send would honour the window; a hostile client does not.
                    msg = paramiko.Message()
                    msg.add_byte(cMSG_CHANNEL_DATA)
                    msg.add_int(channel.remote_chanid)
                    msg.add_string(block)
                    transport._send_message(msg)
                    sent += len(block)
            except (OSError, EOFError, paramiko.SSHException):
                pass
            wait_for(lambda: not transport.is_active(), timeout=10, what="the daemon to hang up")
    finally:
        transport.close()
    assert mem.growth < GROWTH_ALLOWED, f"grew by {mem.growth / MiB:.0f} MiB"
    found = wait_for(
        lambda: limit_events(daemon, "channel_window", mark), what="sftp.limit channel_window"
    )
    assert ("flooder", "127.0.0.1") == (found[0]["tenant"], found[0]["ip"])


def test_channels_per_connection_are_capped(tmp_path: Path) -> None:
    """At most max_channels_per_connection open at once, max_channel_opens over its life."""
    limits = SftpLimits(max_channels_per_connection=3, max_channel_opens_per_connection=5)
    with running_server(tmp_path, limits=limits) as h, capture_logs() as logs:
        transport = connect(h.port, "acme", key=h.keys["acme"].pkey)
        try:
            channels = [transport.open_session() for _ in range(3)]
            with pytest.raises(paramiko.ChannelException):
                transport.open_session()
            channels.pop().close()
            wait_for(lambda: _reopens(transport))
            with pytest.raises(paramiko.ChannelException):
                transport.open_session()  # the sixth of its life
        finally:
            transport.close()
    assert ["channels_per_connection", "channel_opens"] == [
        e["limit"] for e in events(logs, "sftp.limit")
    ]


def _reopens(transport: paramiko.Transport) -> bool:
    try:
        transport.open_session()  # the fifth: allowed once a slot is free
    except paramiko.ChannelException:
        return False
    return True


# -- 4: descriptors -------------------------------------------------------------------------


def hold_handles(
    port: int,
    key: Path,
    user: str,
    source: str,
    sessions: int,
    handles: int,
    held: list[Any],
    refusals: list[str],
) -> None:
    """One connection, ``sessions`` SFTP sessions, each opening up to ``handles`` files."""
    try:
        transport = login(port, key, user, source=source)
    except (paramiko.SSHException, OSError, EOFError) as exc:
        refusals.append(f"connect: {exc}")
        return
    held.append(transport)
    for _ in range(sessions):
        try:
            client = paramiko.SFTPClient.from_transport(transport)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            refusals.append(f"session: {exc}")
            return
        assert client is not None
        held.append(client)
        for _ in range(handles):
            try:
                held.append(client.open("/outbox/r.csv", "rb"))
            except OSError as exc:
                refusals.append(str(exc))
                break


def attack_handles(
    port: int, key: Path, user: str, source: str = "127.0.0.1", connections: int = 10
) -> tuple[list[Any], list[str]]:
    held: list[Any] = []
    refusals: list[str] = []
    threads = [
        threading.Thread(target=hold_handles, args=(port, key, user, source, 4, 64, held, refusals))
        for _ in range(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return held, refusals


def release(held: list[Any]) -> None:
    for item in reversed(held):
        item.close()


def test_handles_and_connections_per_tenant_leave_others_room(site: tuple[Daemon, Path]) -> None:
    """10 connections x 4 sessions x 64 handles: capped per tenant; alice still uploads."""
    daemon, key = site
    mark = len(daemon.events())
    (daemon.outbox("mallory") / "r.csv").write_bytes(b"r")
    held, refusals = attack_handles(daemon.port, key, "mallory", source="127.0.0.3")
    try:
        handles = [h for h in held if isinstance(h, paramiko.SFTPFile)]
        sessions = [h for h in held if isinstance(h, paramiko.SFTPClient)]
        # connections_per_tenant = 6 of the 10; together they hold max_handles_per_tenant.
        assert (6 * 4, SftpLimits().max_handles_per_tenant) == (len(sessions), len(handles))
        assert any("Too many open handles for this account" in r for r in refusals)
        wait_for(
            lambda: limit_events(daemon, "handles_per_tenant", mark),
            what="sftp.limit handles_per_tenant",
        )
        assert limit_events(daemon, "connections_per_tenant", mark)
        # Another tenant, from another address, logs in and uploads meanwhile.
        transport = login(daemon.port, key, "alice", source="127.0.0.2")
        try:
            sftp = paramiko.SFTPClient.from_transport(transport)
            assert sftp is not None
            with sftp.open("/inbox/during.persons", "wb") as fh:
                fh.write(b"external_person_id\ne1\n")
        finally:
            transport.close()
        assert "completed" == daemon.summary("alice", "during.persons")["status"]
    finally:
        release(held)


def test_the_daemon_keeps_descriptors_for_itself(tmp_path: Path) -> None:
    """Near its RLIMIT_NOFILE the daemon refuses SFTP handles but still imports and logs."""
    daemon = Daemon(
        home=tmp_path,
        db_url=f"sqlite:///{tmp_path / 'persons.db'}",
        port=free_port(),
        extra={"import": {"rescan_seconds": 0.5}},
    )
    key = ssh_key(tmp_path)
    add_tenants(daemon, ("mallory", "alice"), key)
    start(daemon, ("mallory", "alice"))
    try:
        pid = pid_of(daemon)
        limit = 300  # the reserve is then min(fd_reserve, 300 // 4) = 75 descriptors
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
        (daemon.outbox("mallory") / "r.csv").write_bytes(b"r")
        held, refusals = attack_handles(daemon.port, key, "mallory")
        try:
            # Parallel sessions may each pass the check at once: a few over, never the reserve.
            assert open_fds(pid) < limit - 32, "SFTP took the daemon's reserve"
            assert any("Too many open files on the server" in r for r in refusals)
            found = wait_for(
                lambda: limit_events(daemon, "descriptors"), what="sftp.limit descriptors"
            )
            assert "mallory" == found[0]["tenant"]
            # The daemon still has descriptors for the database, an import and its log.
            (daemon.inbox("alice") / "local.persons").write_text("external_person_id\ne1\n")
            assert "completed" == daemon.summary("alice", "local.persons")["status"]
        finally:
            release(held)

        # Once mallory is gone (the daemon frees its side lazily), logins work again.
        def alice_logs_in() -> bool:
            try:
                login(daemon.port, key, "alice", source="127.0.0.2").close()
            except (paramiko.SSHException, OSError, EOFError):
                return False
            return True

        wait_for(alice_logs_in, what="alice's login after the attack")
        assert daemon.proc is not None and daemon.proc.poll() is None
    finally:
        daemon.stop()


def test_the_unit_raises_the_descriptor_limit() -> None:
    """deploy/personsd.service sets LimitNOFILE well above the usual 1024."""
    found = re.findall(r"(?m)^LimitNOFILE=(\d+)$", UNIT.read_text())
    assert 1 == len(found)
    assert int(found[0]) >= 16384


# -- 5: holes and quotas --------------------------------------------------------------------


def test_walking_the_write_gap_gives_no_giant_sparse_file(h: Harness) -> None:
    """1-byte writes, each max_write_gap_bytes past the last: refused once holes pass the cap."""
    gap = SftpLimits().max_write_gap_bytes
    accepted = 0
    with capture_logs() as logs, sftp_client(h.port, "acme", h.keys["acme"].pkey) as sftp:
        fh = sftp.open("/inbox/sparse.persons.filepart", "wb")
        for step in range(1024):
            try:
                sftp._request(CMD_WRITE, fh.handle, int64(step * gap), b"x")
            except OSError:
                break
            accepted += 1
        biggest = max(p.stat().st_size for p in h.inbox("acme").iterdir())
        with pytest.raises(OSError, match="Upload incomplete"):  # close() would hide it
            sftp._request(CMD_CLOSE, fh.handle)
    assert accepted <= 2
    assert biggest <= gap + 1
    assert [] == list(h.inbox("acme").iterdir())
    assert ["write_gap_bytes"] == [e["limit"] for e in events(logs, "sftp.limit")]


def upload(sftp: paramiko.SFTPClient, name: str, size: int, errors: list[str]) -> None:
    try:
        with sftp.open(f"/inbox/{name}", "wb") as fh:
            for _ in range(size // (256 * 1024)):
                fh.write(b"x" * 256 * 1024)
    except OSError as exc:
        errors.append(str(exc))


def test_inbox_quota_holds_across_connections(site: tuple[Daemon, Path]) -> None:
    """[limits] inbox_bytes: parallel uploads of one tenant fail at write once over; holes count."""
    daemon, key = site
    mark = len(daemon.events())
    transports = [login(daemon.port, key, "quota") for _ in range(2)]
    try:
        clients = [paramiko.SFTPClient.from_transport(t) for t in transports]
        errors: list[str] = []
        threads = [
            threading.Thread(target=upload, args=(c, f"big{i}.persons.filepart", 3 * MiB, errors))
            for i, c in enumerate(clients)
            if c is not None
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        # Whichever wrote past the quota failed (both may have, racing); nothing is over.
        assert errors and all("Inbox quota exceeded (bytes)" in e for e in errors), errors
        waiting = sum(p.stat().st_size for p in daemon.inbox("quota").iterdir())
        assert waiting <= LIMITS["inbox_bytes"]
        # A hole counts at its full size: one byte just past 4 MiB is over, whatever waits.
        client = clients[0]
        assert client is not None
        fh = client.open("/inbox/hole.persons.filepart", "wb")
        with pytest.raises(OSError, match="quota"):
            client._request(CMD_WRITE, fh.handle, int64(LIMITS["inbox_bytes"]), b"x")
        with pytest.raises(OSError, match="Upload incomplete"):  # close() would hide it
            client._request(CMD_CLOSE, fh.handle)
    finally:
        for transport in transports:
            transport.close()
    found = limit_events(daemon, "inbox_bytes", mark)
    assert found and {"quota"} == {e["tenant"] for e in found}


def test_inbox_files_quota_fails_at_open(site: tuple[Daemon, Path]) -> None:
    """[limits] inbox_files: a new file past the count fails at open; removing one makes room."""
    daemon, key = site
    mark = len(daemon.events())
    transport = login(daemon.port, key, "quota")
    try:
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        for old in sftp.listdir("/inbox"):  # what the test before left
            sftp.remove(f"/inbox/{old}")
        for n in range(LIMITS["inbox_files"]):
            with sftp.open(f"/inbox/.in.f{n}.persons", "wb") as fh:
                fh.write(b"x")
        with pytest.raises(OSError, match="quota"):
            sftp.open("/inbox/.in.one-too-many.persons", "wb")
        sftp.remove("/inbox/.in.f0.persons")
        sftp.open("/inbox/.in.now-fits.persons", "wb").close()
    finally:
        transport.close()
    assert [("quota", "inbox_files")] == [
        (e["tenant"], e["limit"]) for e in limit_events(daemon, "inbox_files", mark)
    ]


# -- SPEC 1.1 and 12: names -----------------------------------------------------------------


def test_names_longer_than_200_bytes_cannot_be_created(h: Harness) -> None:
    """SPEC 1.1: open for writing and rename refuse a name of more than 200 bytes (UTF-8)."""
    fits, too_long = "ü" * 96 + ".persons", "ü" * 97 + ".persons"  # 200 and 202 bytes
    with capture_logs() as logs, sftp_client(h.port, "acme", h.keys["acme"].pkey) as sftp:
        with pytest.raises(PermissionError):
            sftp.open(f"/inbox/{too_long}", "wb")
        with sftp.open("/inbox/x.filepart", "wb") as fh:
            fh.write(b"x")
        with pytest.raises(PermissionError):
            sftp.rename("/inbox/x.filepart", f"/inbox/{too_long}")
        sftp.rename("/inbox/x.filepart", f"/inbox/{fits}")
    assert [fits] == [p.name for p in h.inbox("acme").iterdir()]
    assert ["name_bytes"] == [e["limit"] for e in events(logs, "sftp.limit")]


def test_dot_name_uploads_are_the_clients_own(h: Harness) -> None:
    """Issue 9 (12): .in.NAME is created, written, renamed and removed; our temps stay ours."""
    with sftp_client(h.port, "acme", h.keys["acme"].pkey) as sftp:
        for name in (".in.a.persons", ".in.b.persons"):
            with sftp.open(f"/inbox/{name}", "wb") as fh:
                fh.write(b"external_person_id\ne1\n")
        assert [".in.a.persons", ".in.b.persons"] == sorted(sftp.listdir("/inbox"))
        assert [] == h.uploads  # uploads in progress: not handed to the daemon
        sftp.rename("/inbox/.in.a.persons", "/inbox/a.persons")
        sftp.remove("/inbox/.in.b.persons")
        with pytest.raises(PermissionError):
            sftp.open("/inbox/.a.persons.0123456789abcdef.upload", "wb")
    assert ["a.persons"] == [p.name for p in h.inbox("acme").iterdir()]
    assert [("acme", h.inbox("acme") / "a.persons")] == h.uploads


# -- 14: guesses, auth answers, key exchange ------------------------------------------------


def test_parallel_connections_get_no_more_guesses_than_the_cap(tmp_path: Path) -> None:
    """10 connections guessing at once: at most max_failed_logins passwords are verified."""
    limits = SftpLimits(max_failed_logins=5, ban_seconds=60)
    with (
        running_server(tmp_path, limits=limits, passwords={"acme": hash_password("right")}) as h,
        capture_logs() as logs,
    ):
        barrier = threading.Barrier(10)

        def guess(n: int) -> None:
            transport = paramiko.Transport(("127.0.0.1", h.port))
            try:
                transport.start_client(timeout=20)
                barrier.wait(20)
                for attempt in range(3):
                    with contextlib.suppress(paramiko.AuthenticationException):
                        transport.auth_password("acme", f"wrong {n} {attempt}")
            except (paramiko.SSHException, OSError, EOFError, threading.BrokenBarrierError):
                pass
            finally:
                transport.close()

        threads = [threading.Thread(target=guess, args=(n,)) for n in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        wait_for(lambda: events(logs, "sftp.banned"))
    reasons = [e["reason"] for e in events(logs, "sftp.login_failed")]
    assert reasons.count("wrong_password") <= limits.max_failed_logins  # verified guesses
    assert len(reasons) > 2 * limits.max_failed_logins  # the others were turned away unchecked
    assert set(reasons) <= {"wrong_password", "throttled", "banned"}


def test_allowed_methods_are_the_same_for_every_user(tmp_path: Path) -> None:
    """The none method's answer does not tell which tenants exist or have a password."""
    with running_server(tmp_path, passwords={"acme": hash_password("pw")}) as h:
        answers = []
        for user in ("acme", "beta", "nobody"):
            transport = paramiko.Transport(("127.0.0.1", h.port))
            try:
                transport.start_client(timeout=10)
                with pytest.raises(paramiko.BadAuthenticationType) as refused:
                    transport.auth_none(user)
                answers.append(sorted(refused.value.allowed_types))
            finally:
                transport.close()
    assert [["password", "publickey"]] * 3 == answers


def test_group_exchange_is_not_offered(h: Harness, tmp_path: Path) -> None:
    """A client preferring diffie-hellman-group-exchange-sha256 gets another kex, not a reset."""
    gex = "diffie-hellman-group-exchange-sha256"
    preferring = openssh_sftp(
        h.port,
        "acme",
        h.keys["acme"].path,
        "ls /\n",
        tmp_path,
        "-o",
        f"KexAlgorithms={gex},curve25519-sha256@libssh.org",
        "-v",
    )
    assert 0 == preferring.returncode, preferring.stderr
    assert "kex: algorithm: curve25519-sha256@libssh.org" in preferring.stderr
    only = openssh_sftp(
        h.port, "acme", h.keys["acme"].path, "ls /\n", tmp_path, "-o", f"KexAlgorithms={gex}"
    )
    assert 0 != only.returncode  # nothing in common: refused


def test_ssh_audit_finds_no_failure(h: Harness) -> None:
    """ssh-audit (Debian package) against the server: no failure-level finding."""
    if shutil.which("ssh-audit") is None:
        pytest.skip("ssh-audit is not installed (Debian package ssh-audit); .ci/run installs it")
    result = subprocess.run(
        ["ssh-audit", "-n", "-b", "-t", "20", "-p", str(h.port), "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "[fail]" not in result.stdout, result.stdout
    assert result.returncode in (0, 2), result.stdout + result.stderr  # 2: warnings only
    assert "diffie-hellman-group-exchange" not in result.stdout
