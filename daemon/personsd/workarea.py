"""An import's partial reports in personsd's work area, one folder per claim."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from personsd.config import Config
from personsd.digest import READ_BUFFER
from personsd.store.imports import Checkpoint, ImportRecord
from personsd.store.leases import Lease


def work_paths(cfg: Config, import_id: int, generation: int = 0) -> tuple[Path, Path]:
    """The partial errors and retry reports of an import, in personsd's work area.

    Each daemon claim (lease ``generation`` > 0, SPEC 12) writes its own
    copies in a folder of its own, seeded from the previous claim's
    checkpointed lengths: a holder frozen past its lease that wakes up can
    only ever write into files that nobody reads any more.
    """
    folder = cfg.work_dir / str(import_id)
    if generation > 0:
        folder = folder / f"g{generation}"
    return folder / "errors.csv", folder / "retry.persons"


def generation(record: ImportRecord, lease: Lease | None) -> int:
    """The claim whose work folder a run writes to."""
    # The lease's own: the row may already show a newer claim's.
    return lease.generation if lease is not None else record.lease_generation


def adopt(cfg: Config, import_id: int, generation: int, point: Checkpoint) -> None:
    """Seed this claim's reports with the checkpointed part of the newest earlier claim's."""
    errors_path, retry_path = work_paths(cfg, import_id, generation)
    if generation == 0 or errors_path.exists():
        return
    earlier = [0]
    for folder in (cfg.work_dir / str(import_id)).glob("g*"):
        number = folder.name[1:]
        if number.isdigit() and int(number) < generation:
            earlier.append(int(number))
    source_errors, source_retry = work_paths(cfg, import_id, max(earlier))
    _copy_prefix(source_retry, retry_path, point.retry_bytes)
    # The errors file last: its presence says the copies are complete.
    _copy_prefix(source_errors, errors_path, point.errors_bytes)


def _copy_prefix(source: Path, path: Path, length: int) -> None:
    """``path`` becomes a new file holding the first ``length`` bytes of ``source``."""
    if not source.exists():
        return
    temp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    with source.open("rb") as src, temp.open("wb") as out:
        remaining = length
        while remaining > 0:
            block = src.read(min(READ_BUFFER, remaining))
            if not block:
                break
            out.write(block)
            remaining -= len(block)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, path)
