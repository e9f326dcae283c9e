"""Inbox watcher (SPEC 1.1, 5): reports each complete upload of every tenant inbox.

Every tenant has two upload boxes, ``inbox`` and ``validate`` (SPEC 11),
watched and reported alike: "inbox" below means either. A report's
:attr:`ReadyFile.mode` says which one the file came from.

Finding files
    One recursive inotify watch (watchdog) covers ``tenants_root``, so a tenant
    or an inbox created while running is watched as soon as its directory
    appears; that inbox is then scanned at once for files written before its
    watch existed. Events are only a wake-up, the scan is the truth: the kernel
    drops events when its queue overflows and watchdog does not tell us, so
    every inbox is scanned at start and every ``rescan_seconds``.

When a file is complete
    - The embedded SFTP server calls :meth:`InboxWatcher.notify_complete` when
      the client closes the file: reported at once.
    - Any other writer (OpenSSH, a local copy): after a close-write, a move
      into the inbox or a scan, and then ``settle_seconds`` without a change
      of (size, mtime, inode). A write seen after that (IN_MODIFY) means a
      writer is still at it, so the file waits for its next close (or the next
      scan); a metadata change (utime after ``put -p``, chmod) only restarts
      the clock.
    - Names SPEC 1.1 ignores (uploads in progress) are never stat'ed nor
      reported. Other names that do not end in ``.persons`` are reported under
      the same rule so that the queue can reject them. Only regular files
      count (not directories, symlinks, FIFOs).

Reported once per version
    Each complete version of a file (size, mtime, inode) is reported once while
    it stays in the inbox. A reported file still there at the next rescan,
    unchanged, is NOT reported again: from the report on, the consumer owns it.
    It is reported again only when it changes, when it leaves the inbox and
    comes back, when ``on_ready`` raised (retried at the next rescan), or after
    a restart (the initial scan reports the whole backlog).
    Why not re-report at every rescan: the consumer claims a file by renaming
    it out of the inbox. A second report of a file not yet claimed queues it
    twice, and if the partner meanwhile uploads a new file under the same name
    (OpenSSH writes in place), the stale entry would claim that upload before
    it is complete. So the consumer must keep every report until it has
    claimed the file or found it gone (a missing file is ignored: nothing is
    lost, nothing imported twice), and should check just before its rename that
    ``size``/``mtime_ns`` still match the report (if not, skip it: the new
    version is reported once it is complete).

``completed_at`` (wall clock, for the per-tenant import order): the time the
current version was first seen by an event (the last write, close or move);
for a file first met by a scan (the backlog at start, missed events), its
mtime; for a file the SFTP server vouches for, the time of that call.

``on_ready`` runs in the watcher's thread, in completion order; it must be
quick (enqueue only).

The pure settle state is in ``settle``, the inotify shell (watchdog's events
as messages) in ``inboxevents``; here are the thread and its scans.
"""

from __future__ import annotations

import os
import queue
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.observers.api import BaseObserver

from personsd.fileformat import classify_name
from personsd.inboxevents import UPLOAD_BOXES, VALIDATE, Gone, Saw, Scan, watch
from personsd.logging import Event, get_logger
from personsd.settle import Seen, Settled, SettleTracker, Stamp

log = get_logger()

# The settle state's names, where callers and tests always found them.
__all__ = ["InboxWatcher", "ReadyFile", "Seen", "SettleTracker", "Settled", "Stamp"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ReadyFile:
    """A complete file in a tenant inbox, ready to be claimed."""

    tenant: str
    path: Path
    completed_at: float  # wall clock; a tenant's files are imported in this order, ties by name
    size: int
    mtime_ns: int  # with size: lets the consumer check that it claims the version reported

    def __post_init__(self) -> None:
        if not self.tenant:
            raise ValueError("tenant must not be empty")
        if not self.path.is_absolute():
            raise ValueError(f"path must be absolute, got {self.path}")
        if self.size < 0:
            raise ValueError(f"size must be >= 0, got {self.size}")

    @property
    def mode(self) -> str:
        """``validate`` for a file dropped in ``/validate``, else ``import``."""
        return "validate" if self.path.parent.name == VALIDATE else "import"


# Messages from callers to the watcher thread, which alone touches the
# tracker; the observer's (Saw, Gone, Scan) come from inboxevents.
@dataclass(frozen=True, slots=True)
class _Trust:
    path: Path


@dataclass(frozen=True, slots=True)
class _Stop:
    pass


_Message = Saw | Gone | Scan | _Trust | _Stop


class InboxWatcher:
    """Watches every tenant inbox under ``tenants_root`` and reports complete files.

    ``use_events=False`` relies on the rescans alone (filesystems without
    inotify, e.g. NFS).
    """

    def __init__(
        self,
        *,
        tenants_root: Path,
        settle_seconds: float,
        rescan_seconds: float,
        on_ready: Callable[[ReadyFile], None],
        clock: Callable[[], float] = time.time,
        use_events: bool = True,
    ) -> None:
        if rescan_seconds <= 0:
            raise ValueError(f"rescan_seconds must be > 0, got {rescan_seconds}")
        self._root = Path(os.path.abspath(tenants_root))
        self._rescan_seconds = rescan_seconds
        self._on_ready = on_ready
        self._clock = clock
        self._use_events = use_events
        self._tracker = SettleTracker(settle_seconds)
        # SimpleQueue.put is reentrant: rescan() may be called from a signal handler.
        self._messages: queue.SimpleQueue[_Message] = queue.SimpleQueue()
        self._observer: BaseObserver | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Watch, then scan every inbox (the backlog), then rescan periodically."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("InboxWatcher already started")
            self._root.mkdir(parents=True, exist_ok=True)
            if self._use_events:
                self._observer = watch(self._root, self._messages.put)
            # Before the thread exists, so the tracker is still ours alone; after the
            # watch, so that nothing falls between the two.
            self._scan(None)
            self._thread = threading.Thread(target=self._run, name="personsd-watcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop watching; returns once no callback can run any more."""
        with self._lock:
            if self._observer is not None:
                self._observer.stop()
                self._observer.join()
                self._observer = None
            if self._thread is not None and self._thread.is_alive():
                self._messages.put(_Stop())
                self._thread.join()

    def notify_complete(self, tenant: str, path: Path) -> None:
        """The embedded SFTP server closed ``path``: report it without waiting."""
        path = Path(os.path.abspath(path))
        if path.parent not in [self._root / tenant / box for box in UPLOAD_BOXES]:
            raise ValueError(f"{path} is not in the inbox or validate box of tenant {tenant!r}")
        if classify_name(path.name) != "ignore":
            self._messages.put(_Trust(path))

    def rescan(self) -> None:
        """Scan every inbox now (in the watcher's thread)."""
        self._messages.put(Scan(None))

    def _run(self) -> None:
        next_rescan = time.monotonic() + self._rescan_seconds
        while True:
            now = time.monotonic()
            if now >= next_rescan:
                self._scan(None)
                next_rescan = now + self._rescan_seconds
            self._report()
            deadline = self._tracker.next_deadline()
            wake = next_rescan if deadline is None else min(deadline, next_rescan)
            try:
                message = self._messages.get(timeout=max(0.0, wake - time.monotonic()))
            except queue.Empty:
                continue
            while True:
                if isinstance(message, _Stop):
                    return
                self._handle(message)
                try:
                    message = self._messages.get_nowait()
                except queue.Empty:
                    break

    def _handle(self, message: _Message) -> None:
        if isinstance(message, Saw):
            self._stat_and(Path(message.path), message.seen)
        elif isinstance(message, Gone):
            self._tracker.forget(Path(message.path))
        elif isinstance(message, Scan):
            self._scan(message.inbox)
        elif isinstance(message, _Trust):
            self._stat_and(message.path, None)

    def _stat_and(self, path: Path, seen: Seen | None) -> None:
        """Observe ``path`` as ``seen`` (None: trusted) after a fresh lstat."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self._tracker.forget(path)
            return
        except OSError as exc:
            log.warning(Event.WATCHER_STAT_FAILED, file=str(path), error=str(exc))
            return
        if not stat.S_ISREG(st.st_mode):
            self._tracker.forget(path)
        elif seen is None:
            self._tracker.trusted(
                path, Stamp.of(st), now=time.monotonic(), completed_at=self._clock()
            )
        else:
            self._tracker.observe(
                path, Stamp.of(st), now=time.monotonic(), seen=seen, completed_at=self._clock()
            )

    def _inboxes(self) -> list[Path]:
        try:
            with os.scandir(self._root) as entries:
                tenants = [
                    e.path
                    for e in entries
                    if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)
                ]
        except OSError as exc:
            log.warning(Event.WATCHER_SCAN_FAILED, dir=str(self._root), error=str(exc))
            return []
        return sorted(
            Path(t, box)
            for t in tenants
            for box in UPLOAD_BOXES
            if os.path.isdir(os.path.join(t, box)) and not os.path.islink(os.path.join(t, box))
        )

    def _scan(self, inbox: Path | None) -> None:
        """Observe every file of one inbox (or all) and forget those gone."""
        inboxes = self._inboxes() if inbox is None else [inbox]
        present: set[Path] = set()
        for box in inboxes:
            present.update(self._scan_inbox(box))
        for key in self._tracker.tracked():
            if key not in present and (inbox is None or key.parent == inbox):
                self._tracker.forget(key)

    def _scan_inbox(self, inbox: Path) -> list[Path]:
        found = []
        try:
            with os.scandir(inbox) as entries:
                for entry in entries:
                    if classify_name(entry.name) == "ignore":
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if not stat.S_ISREG(st.st_mode):
                        continue
                    key = Path(entry.path)
                    found.append(key)
                    # Used only for a version no event showed us: its mtime is then the
                    # best evidence of when it was done.
                    self._tracker.observe(
                        key,
                        Stamp.of(st),
                        now=time.monotonic(),
                        seen=Seen.CLOSED,
                        completed_at=min(st.st_mtime, self._clock()),
                    )
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as exc:
            log.warning(Event.WATCHER_SCAN_FAILED, dir=str(inbox), error=str(exc))
            # Unreadable for now: keep what we knew rather than forget it.
            found.extend(k for k in self._tracker.tracked() if k.parent == inbox)
        return found

    def _report(self) -> None:
        for settled in self._tracker.due(time.monotonic()):
            ready = ReadyFile(
                tenant=settled.key.parent.parent.name,
                path=settled.key,
                completed_at=settled.completed_at,
                size=settled.stamp.size,
                mtime_ns=settled.stamp.mtime_ns,
            )
            log.info(
                Event.FILE_DETECTED,
                tenant=ready.tenant,
                file=ready.path.name,
                size=ready.size,
                mode=ready.mode,
            )
            try:
                self._on_ready(ready)
            except Exception:  # the consumer's bug must not kill the watcher
                log.exception(
                    Event.WATCHER_ON_READY_FAILED, tenant=ready.tenant, file=ready.path.name
                )
                self._tracker.forget(settled.key)  # the next scan offers it again
