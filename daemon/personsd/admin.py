"""What an operator does to imports by hand: run a file now, queue a failed one again."""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from sqlalchemy import Engine

from personsd import importer, layers
from personsd.config import Config
from personsd.errors import OperatorError, UnknownImport
from personsd.retry import RetryPolicy
from personsd.store import db
from personsd.store import imports as store_imports
from personsd.store import tenants as store_tenants
from personsd.tenancy import init_paths

OnChunk = Callable[[int, int], None]
# Given the plain content's size (None: unknown), the progress display's
# callback for every committed chunk, open while the import runs.
Progress = Callable[[int | None], AbstractContextManager[OnChunk | None]]


def import_file(
    connect: Callable[[], Engine],
    cfg: Config,
    file: Path,
    *,
    tenant: str,
    validate: bool,
    progress: Progress,
) -> importer.Outcome:
    """``personsd import``: ``file`` imported (or validated) now, in this process.

    ``connect`` opens (and migrates) the database; it is called once the file
    and personsd's directories are known to be there.

    The import is created claimed by this process, so no daemon sharing the
    database takes it meanwhile. Its work folder goes unless it failed (kept
    for ``imports retry``).
    """
    if not file.is_file():
        raise OperatorError(f"no such file: {file}")
    init_paths(cfg)
    engine = connect()
    with engine.connect() as conn:
        if store_tenants.get_tenant(conn, tenant) is None:
            raise OperatorError(f"unknown tenant {tenant!r}")
    import_id = importer.create(
        engine,
        tenant=tenant,
        path=file.resolve(),
        source="cli",
        claimed_by=f"cli:{socket.gethostname()}:{os.getpid()}",
        mode="validate" if validate else "import",
    )
    # Offsets are of the plain content: a compressed or encrypted file's size
    # says nothing of it, so its bar shows progress without an end.
    plain = not layers.split_name(file.name)[1]
    with progress(file.stat().st_size if plain else None) as on_chunk:
        outcome = run_with_attempts(engine, cfg, import_id, on_chunk)
    if outcome.summary.status != "failed":
        shutil.rmtree(cfg.work_dir / str(import_id), ignore_errors=True)
    return outcome


def run_with_attempts(
    engine: Engine, cfg: Config, import_id: int, on_chunk: OnChunk | None = None
) -> importer.Outcome:
    """The engine, retried from its checkpoint on internal errors, then ``failed``.

    Unlike the daemon's workers, every error but an operator's spends an
    attempt here, environment faults included.
    """
    policy = RetryPolicy(base=0.5, cap=10.0)
    attempt = 0
    while True:
        attempt += 1
        try:
            return importer.run(engine, cfg, import_id, on_chunk=on_chunk)
        except OperatorError:
            raise
        except Exception as exc:  # noqa: BLE001 -- our fault: retry from the checkpoint
            if attempt >= cfg.imports.max_attempts:
                return importer.fail(engine, cfg, import_id, repr(exc))
            time.sleep(policy.delay(attempt))


def retry_import(connect: Callable[[], Engine], import_id: int) -> None:
    """``imports retry``: a failed import queued again, to resume from its checkpoint.

    ``connect`` opens the database once ``import_id`` could be one.
    """
    if not 0 < import_id < 2**63:  # beyond any id: not an error of the database's
        raise OperatorError(f"import {import_id} does not exist")
    with db.write_tx(connect()) as conn:
        try:
            record = store_imports.get(conn, import_id)
        except UnknownImport as exc:  # the operator's id, not a bug
            raise OperatorError(str(exc)) from None
        if record.status != "failed":
            raise OperatorError(f"import {import_id} is {record.status}, not failed")
        store_imports.set_status(
            conn,
            import_id,
            "queued",
            attempts=0,
            finished_at=None,
            reports_published=False,
            claimed_by=None,
        )
