"""The systemd notification protocol (sd_notify(3)), spoken directly.

A unit with ``Type=notify`` and ``WatchdogSec=`` hands the daemon two things
in its environment: ``NOTIFY_SOCKET`` (a datagram socket, a path or, with a
leading ``@``, an abstract name) and ``WATCHDOG_USEC``. Each call here sends
one datagram of newline-separated ``KEY=value`` assignments to it.

Written out rather than taken from the ``sdnotify`` package: the protocol is
a dozen lines, and that package (last released 2017) encodes text as
Latin-1, keeps one socket connected for the life of the process (stale after
``systemctl daemon-reexec``) and knows nothing of the watchdog variables.

Every function is a no-op returning False outside systemd (no
``NOTIFY_SOCKET``), so the daemon calls them unconditionally. A send that
fails is reported by the return value, never raised: losing a status line
must not take the daemon down (systemd notices a missing READY=1 or watchdog
ping on its own and acts on it).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"


def _address(env: Mapping[str, str]) -> str | None:
    value = env.get(NOTIFY_SOCKET, "")
    if value.startswith("@"):
        # Abstract namespace: the kernel name starts with a NUL byte.
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # Unset, empty, or a transport this daemon does not speak (vsock:, ...).
    return None


def notify(*assignments: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``KEY=value`` assignments in one datagram; True when it was sent."""
    address = _address(os.environ if env is None else env)
    if address is None or not assignments:
        return False
    message = "\n".join(assignments).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except OSError:
        return False
    return True


def _one_line(text: str) -> str:
    # A newline would start a new assignment that systemd would try to parse.
    return " ".join(text.splitlines())


def ready(status_text: str | None = None) -> bool:
    """Startup is finished (``READY=1``), optionally with a status line."""
    if status_text is None:
        return notify("READY=1")
    return notify("READY=1", f"STATUS={_one_line(status_text)}")


def status(text: str) -> bool:
    """A free-form one-line status shown by ``systemctl status``."""
    return notify(f"STATUS={_one_line(text)}")


def stopping() -> bool:
    """Shutdown has begun (``STOPPING=1``)."""
    return notify("STOPPING=1")


def reloading() -> bool:
    """A configuration reload has begun; send ``ready()`` when it is done.

    ``MONOTONIC_USEC`` is what ``Type=notify-reload`` (systemd >= 253) needs to
    match the reload to this message; older systemd ignores it.
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def watchdog_ping() -> bool:
    """Tell the service manager the daemon is alive (``WATCHDOG=1``)."""
    return notify("WATCHDOG=1")


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout in seconds when systemd expects pings from us, else None.

    Ping at half this interval at most, as sd_watchdog_enabled(3) advises.
    ``WATCHDOG_PID`` names the process the watchdog is meant for; a child
    that inherited the variables must not think it is watched.
    """
    env = os.environ if env is None else env
    try:
        usec = int(env.get(WATCHDOG_USEC, ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get(WATCHDOG_PID)
    if pid is not None:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 1_000_000
