"""The sha256 of an import's file: computed streaming, recorded at the import's start.

The daemon's intake only records a file's size; its worker hashes the file
when the import starts (:func:`record`), so a huge upload never holds up
another tenant's intake.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from sqlalchemy import Engine

from personsd.outcome import Interrupted
from personsd.store import imports as store_imports
from personsd.store import leases as store_leases
from personsd.store.db import write_tx
from personsd.store.imports import ImportRecord
from personsd.store.leases import Lease

# The sha256 of an import the intake queued without reading it (see importer.create).
UNHASHED = ""
READ_BUFFER = 1 << 20


def sha256_of(path: Path, stop: threading.Event | None = None) -> tuple[str, int]:
    """The file's sha256 and size, streamed; :class:`Interrupted` when ``stop`` is set."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while block := fh.read(READ_BUFFER):
            digest.update(block)
            size += len(block)
            if stop is not None and stop.is_set():
                raise Interrupted(f"stopped while hashing {path.name}")
    return digest.hexdigest(), size


def record(
    engine: Engine, record: ImportRecord, stop: threading.Event | None, lease: Lease | None
) -> ImportRecord:
    """The content's sha256, size and ``duplicate_of``, recorded at the import's start.

    Hashing a file of tens of GiB takes a while: meanwhile the workers'
    heartbeat thread renews the import's lease (``Workers._heartbeat``), so no
    other instance takes the import for abandoned (a SQLite daemon has no other).
    """
    digest, size = sha256_of(Path(record.work_path), stop)
    with write_tx(engine) as conn:
        if lease is not None:  # an instance that lost the import writes nothing
            store_leases.fence(conn, lease)
        duplicate = store_imports.find_duplicate(
            conn, record.tenant_id, digest, record.id, mode=record.mode
        )
        store_imports.set_status(
            conn, record.id, record.status, sha256=digest, bytes=size, duplicate_of=duplicate
        )
        return store_imports.get(conn, record.id)
