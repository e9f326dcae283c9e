"""A hostile client against the real daemon: memory, descriptors, quotas, guesses (SPEC 6).

Each test attacks a running ``personsd run`` over real sockets and reads the
daemon's own ``/proc/PID/status`` and JSON log. The attacks are bounded in
bytes and time, yet large enough that an unbounded daemon fails clearly.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from paramiko.common import cMSG_CHANNEL_DATA

from daemon_helpers import Daemon, free_port, wait_for
from test_daemon_e2e import add_tenants, start

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
# What an attack may add to the daemon's resident memory: far below what it streams.
GROWTH_ALLOWED = 24 * MiB


def rss(pid: int, field: str = "VmRSS") -> int:
    """A field of /proc/PID/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


class PeakRss:
    """Samples a process's VmRSS in the background; ``peak`` is the highest seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.base = rss(pid)
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss(self.pid))

    @property
    def growth(self) -> int:
        return self.peak - self.base


def pid_of(daemon: Daemon) -> int:
    assert daemon.proc is not None
    return daemon.proc.pid


def limit_events(daemon: Daemon, limit: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events()
            if e.get("event") == "sftp.limit" and e.get("limit") == limit]


def login(daemon: Daemon, key: Path, user: str, *, source: str = "127.0.0.1"
          ) -> paramiko.Transport:
    """A logged-in paramiko transport from ``source`` (any 127/8 address reaches 127.0.0.1)."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", daemon.port))
    transport = paramiko.Transport(sock)
    try:
        transport.connect(username=user, pkey=paramiko.Ed25519Key(filename=str(key)))
    except Exception:
        transport.close()
        raise
    return transport


# -- one daemon for the module (SQLite: these attacks do not depend on the database) ----------

TENANTS = ("mallory", "alice")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Path]]:
    home = tmp_path_factory.mktemp("abuse")
    daemon = Daemon(home=home, db_url=f"sqlite:///{home / 'persons.db'}", port=free_port(),
                    extra={"import": {"rescan_seconds": 0.5}})
    from daemon_helpers import ssh_key
    key = ssh_key(home)
    add_tenants(daemon, TENANTS, key)
    start(daemon, TENANTS)
    try:
        yield daemon, key
    finally:
        daemon.stop()


# -- 2: memory before login -----------------------------------------------------------------

def test_a_huge_packet_before_login_costs_no_memory(site: tuple[Daemon, Path]) -> None:
    """A banner, then one declared 2 GiB packet streamed into: cut at the packet cap."""
    daemon, _ = site
    pid = pid_of(daemon)
    sent = 0
    with PeakRss(pid) as mem, socket.create_connection(("127.0.0.1", daemon.port)) as sock:
        sock.settimeout(10)
        assert sock.recv(64).startswith(b"SSH-2.0-")
        sock.sendall(b"SSH-2.0-abuser\r\n")
        # (size - 4) is a multiple of the 8-byte pre-kex block, as the framing demands.
        sock.sendall(struct.pack(">I", 0x7FFFFFFC) + b"\x04" + b"\x00" * 3)
        chunk = b"\x00" * MiB
        deadline = time.monotonic() + 20
        try:
            while sent < 48 * MiB and time.monotonic() < deadline:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the daemon hung up: what we want
    assert mem.growth < GROWTH_ALLOWED, f"grew by {mem.growth / MiB:.0f} MiB"
    assert sent < 48 * MiB, "the daemon read 48 MiB into one packet"
    wait_for(lambda: limit_events(daemon, "packet_bytes"), what="sftp.limit packet_bytes")
    assert "127.0.0.1" == limit_events(daemon, "packet_bytes")[-1]["ip"]


# -- 3: memory after login ------------------------------------------------------------------

def test_channel_data_beyond_the_window_ends_the_connection(site: tuple[Daemon, Path]) -> None:
    """A session channel with no subsystem flooded past its window: cut, memory bounded."""
    daemon, key = site
    pid = pid_of(daemon)
    transport = login(daemon, key, "mallory")
    sent = 0
    try:
        channel = transport.open_session()
        block = b"\x00" * 32 * 1024
        with PeakRss(pid) as mem:
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
    wait_for(lambda: limit_events(daemon, "channel_window"), what="sftp.limit channel_window")
    assert "mallory" == limit_events(daemon, "channel_window")[-1]["tenant"]
