"""Real faults for tests: a small tmpfs that fills up, a port nobody listens on."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

_BLOCK = 64 * 1024
# Bounds the filling loop whatever the mount's size (256 MiB of blocks at most).
_MAX_BLOCKS = 4096


@contextmanager
def tmpfs(folder: Path, size: str = "1m") -> Iterator[Path]:
    """``folder`` as a tmpfs of ``size``, unmounted afterwards.

    Needs root (CI runs as root: a failure to mount fails there); anyone
    else gets a skip with the reason.
    """
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs at {folder}: {done.stderr.strip()}"
        if os.geteuid() == 0 and os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def fill(folder: Path, name: str = "filler") -> Path:
    """Write ``folder/name`` until the filesystem is full; returns its path."""
    path = folder / name
    with path.open("ab", buffering=0) as out:
        for _ in range(_MAX_BLOCKS):
            try:
                out.write(b"\0" * _BLOCK)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        else:
            raise AssertionError(f"{folder} never filled up")
    # Small writes may still fit in the last partial block: take them too.
    with path.open("ab", buffering=0) as out:
        for _ in range(_BLOCK):
            try:
                out.write(b"\0" * 512)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return path


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
