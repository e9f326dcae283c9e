"""The inbox quota (SPEC 8 ``[limits]``): bytes and files waiting in a tenant's upload boxes.

The tenant's boxes on disk are the shared state: on a tree shared by several
instances each one sees the others' uploads as well as the waiting files.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from personsd.logging import Event, get_logger
from personsd.sftp.limits import STALE_UPLOAD_SECONDS

QUOTA_SCAN_SECONDS = 2.0  # how stale the inbox scan behind the quota may be
# Our own upload temp files: invisible to clients, counted by the quota from memory.
UPLOAD_TEMP = re.compile(r"^\..*\.[0-9a-f]{16}\.upload$")
QUOTA_BOXES = ("inbox", "validate")

log = get_logger()


class InboxQuota(Protocol):
    """Bytes and files waiting in a tenant's /inbox and /validate (SPEC 8 ``[limits]``).

    ``key`` identifies one upload in progress, ``temp`` names its temp file in
    the inbox; its size is the highest offset written (holes count). The
    answers are None (fine) or the cap's name.
    """

    def open_upload(self, tenant: str, key: Hashable, temp: str) -> str | None: ...

    def grow(self, tenant: str, key: Hashable, end: int) -> str | None: ...

    def end_upload(self, tenant: str, key: Hashable) -> None: ...

    def changed(self, tenant: str) -> None: ...


@dataclass
class _Usage:
    scanned_at: float = float("-inf")
    disk_bytes: int = 0  # files in the boxes, our uploads in progress excepted
    disk_files: int = 0
    uploads: dict[Hashable, int] = field(default_factory=dict)  # in progress: apparent size
    upload_bytes: int = 0
    temps: dict[Hashable, str] = field(default_factory=dict)  # their temp files' names


class LocalInboxQuota:
    """The quota of a tenant's boxes on disk: this process's uploads in memory, the rest scanned.

    The scan (at most ``QUOTA_SCAN_SECONDS`` old) counts every file in the
    boxes, the temp files of other processes' uploads in progress included
    (at their apparent size), so on a tree shared by several instances each
    one sees the others' uploads as well as the waiting files: the disk is
    the shared state. Its own uploads count from memory, exact at each write.
    """

    def __init__(
        self,
        *,
        tenants_root: Path,
        inbox_bytes: int,
        inbox_files: int,
        stale_upload_seconds: float = STALE_UPLOAD_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._root = tenants_root
        self._stale = stale_upload_seconds
        self._bytes = inbox_bytes
        self._files = inbox_files
        self._clock = clock
        self._lock = threading.Lock()
        self._usage: dict[str, _Usage] = {}

    def _scan(self, tenant: str, own: frozenset[str]) -> tuple[int, int]:
        total = files = 0
        for box in QUOTA_BOXES:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                for entry in os.scandir(self._root / tenant / box):
                    temp = UPLOAD_TEMP.match(entry.name) is not None
                    if temp and entry.name in own:
                        continue  # counted from memory
                    try:
                        if not entry.is_file(follow_symlinks=False):
                            continue
                        found = entry.stat(follow_symlinks=False)
                        if temp and found.st_mtime < time.time() - self._stale:
                            os.unlink(entry.path)
                            log.info(
                                Event.SFTP_STALE_UPLOAD_REMOVED, tenant=tenant, file=entry.name
                            )
                            continue
                    except FileNotFoundError:
                        continue  # claimed, finished or removed meanwhile
                    total += found.st_size
                    files += 1
        return total, files

    def _current(self, tenant: str) -> _Usage:
        """The tenant's usage with a scan at most QUOTA_SCAN_SECONDS old (call unlocked)."""
        with self._lock:
            usage = self._usage.setdefault(tenant, _Usage())
            fresh = self._clock() - usage.scanned_at < QUOTA_SCAN_SECONDS
            own = frozenset(usage.temps.values())
        if not fresh:
            started = self._clock()
            disk_bytes, disk_files = self._scan(tenant, own)
            with self._lock:
                usage.scanned_at, usage.disk_bytes, usage.disk_files = (
                    started,
                    disk_bytes,
                    disk_files,
                )
        return usage

    def open_upload(self, tenant: str, key: Hashable, temp: str) -> str | None:
        with self._lock:  # ours before any scan sees it
            self._usage.setdefault(tenant, _Usage()).temps[key] = temp
        usage = self._current(tenant)
        with self._lock:
            if usage.disk_files + len(usage.uploads) + 1 > self._files:
                del usage.temps[key]
                return "inbox_files"
            usage.uploads[key] = 0
            return None

    def grow(self, tenant: str, key: Hashable, end: int) -> str | None:
        usage = self._current(tenant)
        with self._lock:
            old = usage.uploads.get(key, 0)
            if end <= old:
                return None
            if usage.disk_bytes + usage.upload_bytes - old + end > self._bytes:
                return "inbox_bytes"
            usage.uploads[key] = end
            usage.upload_bytes += end - old
            return None

    def end_upload(self, tenant: str, key: Hashable) -> None:
        """The upload became a file (call after the rename) or was abandoned."""
        with self._lock:
            usage = self._usage.get(tenant)
            if usage is None:
                return
            usage.upload_bytes -= usage.uploads.pop(key, 0)
            usage.temps.pop(key, None)
            usage.scanned_at = float("-inf")

    def changed(self, tenant: str) -> None:
        with self._lock:
            usage = self._usage.get(tenant)
            if usage is not None:
                usage.scanned_at = float("-inf")
