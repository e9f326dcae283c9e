"""The virtual tree a tenant sees over SFTP: its paths and the names it may see and create.

A virtual root holds exactly ``/inbox`` and ``/validate`` (upload boxes) and
``/outbox``. Client paths are normalised like inside a chroot (``..`` stops at
``/``), so anything that is not ``/``, a box, or a plain name directly inside
a box resolves to nothing (SPEC 1.1 and 6).
"""

from __future__ import annotations

from personsd.sftp.quota import UPLOAD_TEMP

UPLOAD_BOXES = ("inbox", "validate")
BOXES = (*UPLOAD_BOXES, "outbox")
MAX_NAME_BYTES = 200  # SPEC 1.1: every name derived from it (reports, archive) still fits


def resolve(path: str) -> tuple[str, ...] | None:
    """``()`` for the root, ``(box,)`` or ``(box, name)``; None when nothing is there."""
    if "\x00" in path:
        return None
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    if not parts:
        return ()
    if parts[0] not in BOXES or len(parts) > 2:
        return None
    return tuple(parts)


def canonical(path: str) -> str:
    """The normalised virtual path (what REALPATH answers)."""
    parts: list[str] = []
    for part in path.replace("\x00", "").split("/"):
        if part == "..":
            if parts:
                parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return "/" + "/".join(parts)


def _plain(name: str) -> bool:
    return not any(ord(c) < 32 or ord(c) == 127 for c in name)


def visible_name(box: str, name: str) -> bool:
    """A name a client may see and reach in ``box``: ours (temp files) are not."""
    if box in UPLOAD_BOXES:
        return not UPLOAD_TEMP.match(name) and _plain(name)
    return not name.startswith(".") and _plain(name)


def name_bytes(name: str) -> int:
    return len(name.encode("utf-8", "surrogateescape"))


def creatable_name(name: str) -> bool:
    """A name a client may give an inbox file (open for writing, rename target)."""
    return visible_name("inbox", name) and name_bytes(name) <= MAX_NAME_BYTES
