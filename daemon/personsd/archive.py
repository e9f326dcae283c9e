"""The archive and quarantine (SPEC 5): the names files are kept under, and the sweep.

A finished import's file is kept as ``<id>.<name>`` (cut to fit a file name);
archived files older than ``archive.keep_days`` are deleted by the sweep.
"""

from __future__ import annotations

import time

from personsd.config import Config
from personsd.filenames import cut_name, name_bytes


def kept_name(import_id: int, file_name: str) -> str:
    """``<id>.<name>`` for the archive and quarantine, cut to fit NAME_MAX (255 bytes).

    The name part is cut by bytes at a character boundary, keeping its
    suffix from ``.persons`` on (or its last extension), so the archived
    file still says what it was.
    """
    prefix = f"{import_id}."
    room = NAME_MAX - len(prefix)
    if name_bytes(file_name) <= room:
        return prefix + file_name
    at = file_name.rfind(".persons")
    if at < 0:
        at = file_name.rfind(".")
    suffix = file_name[at:] if at > 0 and name_bytes(file_name[at:]) <= _KEPT_SUFFIX else ""
    head = cut_name(file_name[: len(file_name) - len(suffix)], room - name_bytes(suffix))
    return prefix + head + suffix


NAME_MAX = 255  # bytes in one file name (Linux filesystems)
_KEPT_SUFFIX = 32  # a suffix longer than this is not kept whole


def sweep_archive(cfg: Config, now: float | None = None) -> int:
    """Delete archived files older than ``archive.keep_days``; returns how many."""
    limit = (now or time.time()) - cfg.archive.keep_days * 86400
    removed = 0
    if not cfg.archive_dir.is_dir():
        return 0
    for folder in cfg.archive_dir.iterdir():
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            try:
                if path.is_file() and path.stat().st_mtime < limit:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
    return removed
