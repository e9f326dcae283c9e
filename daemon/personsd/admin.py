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
from personsd.logging import Event, get_logger
from personsd.retry import RetryPolicy
from personsd.store import db, faults
from personsd.store import imports as store_imports
from personsd.store import tenants as store_tenants
from personsd.tenancy import init_paths

log = get_logger("personsd.admin")

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
    path = file.resolve()
    import_id = importer.create(
        engine,
        tenant=tenant,
        path=path,
        source="cli",
        claimed_by=f"cli:{socket.gethostname()}:{os.getpid()}",
        mode="validate" if validate else "import",
    )
    # Offsets are of the plain content: a compressed or encrypted file's size
    # says nothing of it, so its bar shows progress without an end.
    plain = not layers.split_name(file.name)[1]
    with progress(file.stat().st_size if plain else None) as on_chunk:
        outcome = run_with_attempts(
            engine, cfg, import_id, on_chunk, tenant=tenant, file_name=path.name
        )
    if outcome.summary.status != "failed":
        shutil.rmtree(cfg.work_dir / str(import_id), ignore_errors=True)
    return outcome


# The pauses between runs of ``personsd import``: those of the daemon's workers
# (``import.waiting``), capped lower for a command someone waits on.
POLICY = RetryPolicy(base=0.5, cap=10.0)
# The daemon waits out the environment without a bound (its import stays
# queued), but a foreground command must end: an environment fault that
# outlasts this many waits in a row (no chunk committed between them; about a
# minute of POLICY's pauses) spends an attempt, as a database error that
# outlasts the retries does (SPEC 5).
MAX_WAITS = 10


def run_with_attempts(
    engine: Engine,
    cfg: Config,
    import_id: int,
    on_chunk: OnChunk | None = None,
    *,
    tenant: str,
    file_name: str,
    policy: RetryPolicy = POLICY,
) -> importer.Outcome:
    """The engine, retried from its checkpoint, then ``failed``: the workers' accounting.

    As in the daemon (``store.faults`` decides): an environment fault waits
    (``import.waiting``) and spends no attempt, up to ``MAX_WAITS`` in a row;
    an internal error, or an environment fault past that bound, spends one
    (``import.attempt_failed``), and after ``import.max_attempts`` the import
    is failed. ``tenant`` and ``file_name`` are for the log lines (SPEC 9).
    """
    bound = log.bind(tenant=tenant, import_id=import_id, file=file_name)
    attempt = waits = 0
    progressed = False

    def chunk_done(rows: int, done: int) -> None:
        nonlocal progressed
        progressed = True
        if on_chunk is not None:
            on_chunk(rows, done)

    while True:
        try:
            return importer.run(engine, cfg, import_id, on_chunk=chunk_done)
        except OperatorError:
            raise
        except Exception as exc:  # noqa: BLE001 -- classified below
            if progressed:  # the environment came back meanwhile: a new run of waits
                waits, progressed = 0, False
            if faults.classify(exc) is not faults.Kind.INTERNAL and waits < MAX_WAITS:
                waits += 1
                pause = policy.delay(waits)
                bound.warning(
                    Event.IMPORT_WAITING,
                    reason=faults.reason(exc),
                    retry_in=round(pause, 2),
                    waits=waits,
                    error=repr(exc)[:300],
                )
                time.sleep(pause)
                continue
            attempt += 1
            bound.error(
                Event.IMPORT_ATTEMPT_FAILED,
                attempt=attempt,
                max_attempts=cfg.imports.max_attempts,
                exc_info=exc,
            )
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
