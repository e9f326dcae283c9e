"""What the kernel says about the inboxes, as messages for the watcher's thread.

One recursive inotify watch (watchdog) on ``tenants_root``: a write, close,
metadata change, move or removal of a file in an upload box becomes a
:class:`Saw` or :class:`Gone`, and a tenant or box directory appearing a
:class:`Scan` of it (files may land before its watch exists). Nothing here
decides when a file is complete: :mod:`personsd.watcher` does, and rescans
anyway, since the kernel drops events when its queue overflows.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver

from personsd.fileformat import classify_name
from personsd.logging import Event, get_logger
from personsd.settle import Seen

log = get_logger()

INBOX = "inbox"
VALIDATE = "validate"
# Watched alike; a file's box decides its mode (SPEC 11: /validate writes nothing).
UPLOAD_BOXES = (INBOX, VALIDATE)


@dataclass(frozen=True, slots=True)
class Saw:
    """A file of an upload box written, closed, touched or moved in."""

    path: str
    seen: Seen


@dataclass(frozen=True, slots=True)
class Gone:
    """A file of an upload box removed or moved away."""

    path: str


@dataclass(frozen=True, slots=True)
class Scan:
    """An upload box (None: every one) to scan whole."""

    inbox: Path | None  # None: every inbox


_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirMovedEvent,
]


class _Handler(FileSystemEventHandler):
    """Runs in watchdog's thread: filters and forwards, nothing more."""

    def __init__(self, root: str, post: Callable[[Saw | Gone | Scan], None]) -> None:
        super().__init__()
        self._root = root
        self._post = post

    def _in_inbox(self, path: str) -> bool:
        inbox = os.path.dirname(path)
        tenant_dir = os.path.dirname(inbox)
        return (
            os.path.basename(inbox) in UPLOAD_BOXES
            and os.path.dirname(tenant_dir) == self._root
            and not os.path.basename(tenant_dir).startswith(".")
            and classify_name(os.path.basename(path)) != "ignore"
        )

    def on_any_event(self, event: FileSystemEvent) -> None:
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path)
        if event.is_directory:
            if isinstance(event, DirCreatedEvent | DirMovedEvent):
                self._new_dir(dest or src)
            return
        if isinstance(event, FileMovedEvent):
            if src and self._in_inbox(src):
                self._post(Gone(src))
            if dest and self._in_inbox(dest):
                self._post(Saw(dest, Seen.CLOSED))
            return
        if not self._in_inbox(src):
            return
        if isinstance(event, FileClosedEvent):
            self._post(Saw(src, Seen.CLOSED))
        elif isinstance(event, FileCreatedEvent | FileModifiedEvent):
            self._post(Saw(src, Seen.WRITTEN))
        elif isinstance(event, FileAttribEvent):
            self._post(Saw(src, Seen.TOUCHED))
        elif isinstance(event, FileDeletedEvent):
            self._post(Gone(src))

    def _new_dir(self, path: str) -> None:
        # Files may have landed before watchdog added the new directory's watch.
        if os.path.dirname(path) == self._root:
            for box in UPLOAD_BOXES:
                self._post(Scan(Path(path, box)))
        elif (
            os.path.basename(path) in UPLOAD_BOXES
            and os.path.dirname(os.path.dirname(path)) == self._root
        ):
            self._post(Scan(Path(path)))


def _new_observer() -> BaseObserver:
    try:
        from watchdog.observers.inotify import InotifyObserver
    except ImportError:  # not Linux: whatever watchdog offers, moves in may look like creations
        from watchdog.observers import Observer

        return Observer()
    # Full events: a file moved in from outside the tree is a move (complete), not a creation.
    return InotifyObserver(generate_full_events=True)


def watch(root: Path, post: Callable[[Saw | Gone | Scan], None]) -> BaseObserver | None:
    """Start posting the events of ``root``'s upload boxes; None when the kernel will not."""
    observer = _new_observer()
    try:
        observer.schedule(
            _Handler(str(root), post),
            str(root),
            recursive=True,
            event_filter=_EVENTS,
        )
        observer.start()
    except OSError as exc:  # e.g. out of inotify watches: the rescans still find everything
        log.warning(Event.WATCHER_EVENTS_UNAVAILABLE, root=str(root), error=str(exc))
        observer.stop()
        return None
    return observer
