"""Who this process is among the daemons sharing a database (SPEC 5, 12).

An instance's name is ``cluster.instance`` when configured, else one made at
start that no other process shares: host, pid and a random part. (It used to
be host and root: two daemons on one host and root then took each other's
running imports for their own abandoned ones, issue 9.)

On SQLite only one daemon may serve a root and a database: :func:`hold_lock`
takes an exclusive lock on a file in the state directory and one next to the
database, held until the process ends (the kernel drops it on kill -9, so a
crash never leaves a stale lock), and refuses with the running daemon's pid
and instance when another holds either.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from sqlalchemy import make_url

from personsd.config import Config
from personsd.errors import AlreadyRunning

LOCK_NAME = "daemon.lock"
_generated: dict[int, str] = {}


def instance_name(cfg: Config) -> str:
    """``cluster.instance``, else ``host:pid:random``, the same for the whole process."""
    if cfg.cluster.instance:
        return cfg.cluster.instance
    pid = os.getpid()
    # Keyed by pid: a forked child is another process and gets its own.
    if pid not in _generated:
        _generated[pid] = f"{socket.gethostname()}:{pid}:{secrets.token_hex(4)}"
    return _generated[pid]


def lock_paths(cfg: Config) -> tuple[Path, ...]:
    """The files a SQLite daemon locks: one per root, one per database file."""
    paths = [cfg.state_dir / LOCK_NAME]
    url = make_url(cfg.database.url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        database = Path(str(url.database))
        paths.append(database.with_name(database.name + ".daemon.lock"))
    return tuple(paths)


@dataclass
class DaemonLock:
    """The open, locked files; closing them (or the process ending) releases them."""

    files: list[IO[str]] = field(default_factory=list)

    def release(self) -> None:
        for fh in self.files:
            fh.close()
        self.files.clear()


def hold_lock(cfg: Config, instance: str) -> DaemonLock:
    """Lock the root and the SQLite database for this daemon, or raise AlreadyRunning."""
    held = DaemonLock()
    try:
        for path in lock_paths(cfg):
            held.files.append(_lock(path, instance))
    except BaseException:
        held.release()
        raise
    return held


def _lock(path: Path, instance: str) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = path.open("a+", encoding="utf-8")
    try:
        fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EAGAIN):
            fh.close()
            raise
        fh.seek(0)
        owner = _owner(fh.read())
        fh.close()
        raise AlreadyRunning(
            f"another personsd is running on this root and SQLite database"
            f" ({owner}, lock {path}); with SQLite only one daemon may run,"
            " several instances need PostgreSQL (SPEC 12)"
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(json.dumps({"pid": os.getpid(), "instance": instance}) + "\n")
    fh.flush()
    return fh


def _owner(text: str) -> str:
    try:
        data = json.loads(text)
        return f"pid {int(data['pid'])}, instance {str(data['instance'])[:200]!r}"
    except (ValueError, KeyError, TypeError):
        return "owner unknown"
