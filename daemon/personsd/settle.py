"""When a file in an inbox is complete: the watcher's settle state, pure (cf. h11 ``_state``).

No I/O and no clock of its own: every observation and every time is given,
so each rule of "When a file is complete" (see ``watcher``) is tested
without a filesystem (tests/test_watcher.py).
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path


class Seen(enum.Enum):
    """What an observation says about the writer."""

    WRITTEN = "written"  # created or written to: a writer is at work
    CLOSED = "closed"  # closed after writing, moved into the inbox, or met by a scan
    TOUCHED = "touched"  # metadata only (utime, chmod): restarts the clock, nothing more


@dataclass(frozen=True, kw_only=True, slots=True)
class Stamp:
    """Identifies one version of a file; any difference is a change."""

    size: int
    mtime_ns: int
    inode: int = 0

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError(f"size must be >= 0, got {self.size}")

    @classmethod
    def of(cls, st: os.stat_result) -> Stamp:
        return cls(size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino)


@dataclass(frozen=True, kw_only=True, slots=True)
class Settled:
    """A file version found complete by :meth:`SettleTracker.due`."""

    key: Path
    stamp: Stamp
    completed_at: float


@dataclass(slots=True)
class _Entry:
    stamp: Stamp
    since: float  # when this stamp was first seen: the settle clock starts here
    completed_at: float
    armed: bool  # a close, a move or a scan has been seen since the last write
    trusted: bool = False
    reported: bool = False


class SettleTracker:
    """Decides when a file is complete. Pure: no I/O, every time is given.

    ``now`` is any monotonic clock; ``completed_at`` is carried through as
    given (default: ``now``).
    """

    def __init__(self, settle_seconds: float) -> None:
        if settle_seconds < 0:
            raise ValueError(f"settle_seconds must be >= 0, got {settle_seconds}")
        self._settle = settle_seconds
        self._entries: dict[Path, _Entry] = {}

    def observe(
        self, key: Path, stamp: Stamp, *, now: float, seen: Seen, completed_at: float | None = None
    ) -> None:
        """An event or a scan saw ``key`` with ``stamp``."""
        entry = self._entries.get(key)
        if entry is None or entry.stamp != stamp:
            armed = seen is Seen.CLOSED or (
                seen is Seen.TOUCHED and entry is not None and entry.armed
            )
            self._entries[key] = _Entry(
                stamp=stamp,
                since=now,
                armed=armed,
                completed_at=now if completed_at is None else completed_at,
            )
        elif seen is Seen.CLOSED:
            entry.armed = True

    def trusted(
        self, key: Path, stamp: Stamp, *, now: float, completed_at: float | None = None
    ) -> None:
        """The embedded SFTP server says this version is complete: due at once."""
        entry = self._entries.get(key)
        if entry is None or entry.stamp != stamp:
            entry = _Entry(
                stamp=stamp,
                since=now,
                armed=True,
                completed_at=now if completed_at is None else completed_at,
            )
            self._entries[key] = entry
        entry.armed = entry.trusted = True

    def forget(self, key: Path) -> None:
        """The file left the inbox (or must be looked at afresh)."""
        self._entries.pop(key, None)

    def tracked(self) -> list[Path]:
        return list(self._entries)

    def due(self, now: float) -> list[Settled]:
        """Versions complete at ``now``, each returned once, in completion order."""
        ready = []
        for key, entry in self._entries.items():
            if self._is_due(entry, now):
                entry.reported = True
                ready.append(Settled(key=key, stamp=entry.stamp, completed_at=entry.completed_at))
        ready.sort(key=lambda s: (s.completed_at, s.key.name, str(s.key)))
        return ready

    def next_deadline(self) -> float | None:
        """The earliest time at which :meth:`due` may return something new."""
        times = [
            e.since if e.trusted else e.since + self._settle
            for e in self._entries.values()
            if e.armed and not e.reported
        ]
        return min(times, default=None)

    def _is_due(self, entry: _Entry, now: float) -> bool:
        return (
            entry.armed
            and not entry.reported
            and (entry.trusted or now - entry.since >= self._settle)
        )
