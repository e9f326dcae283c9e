"""personsd.sdnotify against real AF_UNIX datagram sockets standing in for systemd."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from unittest.mock import patch

import pytest
from hypothesis import given
from hypothesis import strategies as st

from personsd import sdnotify


class Listener:
    """The receiving end of NOTIFY_SOCKET, as the service manager holds it."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def receive(self) -> list[str]:
        """The assignments of the next datagram (waits at most 2 s)."""
        self.sock.settimeout(2)
        return self.sock.recv(65536).decode("utf-8").split("\n")

    def receive_with_sender(self) -> tuple[list[str], int]:
        """The next datagram and the pid the kernel vouches sent it (SCM_CREDENTIALS)."""
        self.sock.settimeout(2)
        data, ancdata, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(12))
        pids = [
            struct.unpack("3i", d[:12])[0]
            for level, kind, d in ancdata
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
        ]
        assert 1 == len(pids)
        return data.decode("utf-8").split("\n"), pids[0]

    def pending(self) -> bool:
        """Whether a datagram is waiting."""
        self.sock.setblocking(False)
        try:
            self.sock.recv(65536, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        return True


@pytest.fixture
def path_listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    """A socket bound to a file path (sun_path is limited to 108 bytes: keep it short)."""
    with (
        tempfile.TemporaryDirectory(prefix="sdn") as tmp,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
    ):
        path = os.path.join(tmp, "notify")
        sock.bind(path)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        yield Listener(sock, path)


@pytest.fixture
def abstract_listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    """A socket in the abstract namespace, which systemd names with a leading '@'."""
    name = f"personsd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        yield Listener(sock, "@" + name)


def test_ready_sends_ready_1(path_listener: Listener) -> None:
    """ready() sends exactly READY=1 to a path socket."""
    assert sdnotify.ready()
    assert ["READY=1"] == path_listener.receive()


def test_ready_with_status_sends_one_datagram(path_listener: Listener) -> None:
    """ready(status) carries READY=1 and STATUS= in a single datagram."""
    assert sdnotify.ready("listening on 127.0.0.1:2222")
    assert ["READY=1", "STATUS=listening on 127.0.0.1:2222"] == path_listener.receive()
    assert not path_listener.pending()


def test_abstract_socket(abstract_listener: Listener) -> None:
    """A NOTIFY_SOCKET starting with '@' is an abstract socket name."""
    assert sdnotify.ready()
    assert ["READY=1"] == abstract_listener.receive()


def test_status_stopping_watchdog(abstract_listener: Listener) -> None:
    """status(), stopping() and watchdog_ping() send their assignments in call order."""
    assert sdnotify.status("importing acme/x.persons: 40%")
    assert sdnotify.watchdog_ping()
    assert sdnotify.stopping()
    assert ["STATUS=importing acme/x.persons: 40%"] == abstract_listener.receive()
    assert ["WATCHDOG=1"] == abstract_listener.receive()
    assert ["STOPPING=1"] == abstract_listener.receive()


def test_status_is_utf8_and_one_line(path_listener: Listener) -> None:
    """Status text is sent as UTF-8 with line breaks flattened, so it stays one assignment."""
    assert sdnotify.status("café\nline two\r\nthree")
    assert ["STATUS=café line two three"] == path_listener.receive()


@given(text=st.text(max_size=200))
def test_status_never_adds_assignments(text: str) -> None:
    """Whatever the text, status() sends exactly one STATUS= assignment."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        name = f"personsd-prop-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        sock.settimeout(2)
        with patch.dict(os.environ, {"NOTIFY_SOCKET": "@" + name}):
            assert sdnotify.status(text)
        lines = sock.recv(65536).decode("utf-8").split("\n")
    assert 1 == len(lines)
    assert lines[0].startswith("STATUS=")


def test_reloading_carries_monotonic_usec(path_listener: Listener) -> None:
    """reloading() sends RELOADING=1 with the current CLOCK_MONOTONIC in microseconds."""
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = path_listener.receive()
    assert "RELOADING=1" == first
    key, _, value = second.partition("=")
    assert "MONOTONIC_USEC" == key
    assert before <= int(value) <= after


def test_sent_by_the_calling_process(path_listener: Listener) -> None:
    """The datagram comes from the main process itself, as NotifyAccess=main requires."""
    assert sdnotify.ready()
    lines, pid = path_listener.receive_with_sender()
    assert (["READY=1"], os.getpid()) == (lines, pid)


def test_works_from_a_real_daemon_process(path_listener: Listener) -> None:
    """A separate process started with NOTIFY_SOCKET in its environment reaches the listener."""
    code = "from personsd import sdnotify; import sys; sys.exit(0 if sdnotify.ready() else 1)"
    with subprocess.Popen([sys.executable, "-c", code]) as proc:
        returncode = proc.wait(timeout=30)
    lines, pid = path_listener.receive_with_sender()
    assert (0, ["READY=1"], proc.pid) == (returncode, lines, pid)


def test_noop_without_notify_socket(
    path_listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without NOTIFY_SOCKET every call returns False and sends nothing."""
    monkeypatch.delenv("NOTIFY_SOCKET")
    results = [
        sdnotify.ready(),
        sdnotify.status("x"),
        sdnotify.stopping(),
        sdnotify.reloading(),
        sdnotify.watchdog_ping(),
    ]
    assert [False] * 5 == results
    assert not path_listener.pending()


@pytest.mark.parametrize("value", ["", "relative/socket", "vsock:2:1234"])
def test_unsupported_addresses_are_noops(value: str) -> None:
    """Empty, relative and non-AF_UNIX addresses are ignored rather than guessed at."""
    assert not sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": value})


def test_unreachable_socket_returns_false(tmp_path: Path) -> None:
    """A socket path nobody listens on reports failure instead of raising."""
    assert not sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "gone")})


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "1500000", "WATCHDOG_PID": "{pid}"}, 1.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "me"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    """WATCHDOG_USEC in seconds, only when WATCHDOG_PID is absent or names this process."""
    env = {k: v.format(pid=os.getpid()) for k, v in env.items()}
    assert expected == sdnotify.watchdog_interval(env)


def test_watchdog_interval_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit mapping the process environment is read."""
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert 30.0 == sdnotify.watchdog_interval()
