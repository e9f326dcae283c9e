"""Workers: a poison import is retried max_attempts times, failed, quarantined, retried by hand."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine

from engine_helpers import migrate_with_tenant, var_config
from personsd import config, importer
from personsd.cli import main as cli_main
from personsd.retry import RetryPolicy
from personsd.store import db
from personsd.store import imports as store_imports
from personsd.store import queue as store_queue
from personsd.workers import Workers, sweep_archive
from polling import wait_for

GOOD = "external_person_id\nalice\nbob\n"


@pytest.fixture
def site(tmp_path: Path, db_url: str) -> Iterator[config.Config]:
    cfg = var_config(tmp_path, db_url, max_attempts=2, workers=1)
    migrate_with_tenant(cfg, "acme")
    yield cfg


def _status(cfg: config.Config, import_id: int) -> str:
    engine = db.connect(cfg.database.url)
    try:
        with engine.connect() as conn:
            return store_imports.get(conn, import_id).status
    finally:
        engine.dispose()


def _work_until(engine: Engine, cfg: config.Config, import_id: int, status: str, **kw: Any) -> None:
    """Run the daemon's workers until import ``import_id`` reaches ``status``."""
    stop = threading.Event()
    workers = Workers(engine=engine, cfg=cfg, stop=stop, **kw)
    workers.start()
    try:
        wait_for(lambda: _status(cfg, import_id) == status)
    finally:
        stop.set()
        workers.join(time.monotonic() + 10)


def _summary(cfg: config.Config, import_id: int) -> Any:
    """The summary.json published for ``nightly.persons`` as import ``import_id``."""
    return json.loads(
        (cfg.outbox("acme") / f"nightly.persons.{import_id}.summary.json").read_text()
    )


def test_poison_import_fails_after_max_attempts_and_retry_completes_it(
    site: config.Config, tmp_path: Path
) -> None:
    """An import that cannot be read fails after max_attempts; `imports retry` redoes it."""
    cfg = site
    claimed = cfg.work_dir / "claimed" / "acme" / "00001.nightly.persons"
    claimed.parent.mkdir(parents=True)
    claimed.write_text(GOOD)
    engine = db.connect(cfg.database.url)
    import_id = importer.create(
        engine, tenant="acme", path=claimed, source="sftp", file_name="nightly.persons"
    )
    # A directory where the file should be: every attempt fails with an OSError.
    claimed.unlink()
    claimed.mkdir()
    _work_until(engine, cfg, import_id, "failed", policy=RetryPolicy(base=0.01, cap=0.05))
    summary = _summary(cfg, import_id)
    assert "failed" == summary["status"]
    quarantined = cfg.quarantine_dir / "acme" / f"{import_id}.nightly.persons"
    assert quarantined.is_dir()
    with engine.connect() as conn:
        record = store_imports.get(conn, import_id)
    assert 2 == record.attempts
    assert "IsADirectoryError" in (record.last_error or "")

    # The operator mends the file and asks for a retry.
    quarantined.rmdir()
    quarantined.write_text(GOOD)
    config_file = tmp_path / "personsd.toml"
    config_file.write_text(
        f'[paths]\nroot = "{cfg.root}"\n[database]\nurl = '
        f'{json.dumps(cfg.database.url)}\n[import]\ncarrier_lookup = "none"\n'
    )
    result = CliRunner().invoke(
        cli_main, ["--config", str(config_file), "imports", "retry", str(import_id)]
    )
    assert 0 == result.exit_code, result.output
    _work_until(engine, cfg, import_id, "completed")
    summary = _summary(cfg, import_id)
    assert ("completed", 2) == (summary["status"], summary["rows"]["created"])
    assert (cfg.archive_dir / "acme" / f"{import_id}.nightly.persons").is_file()
    engine.dispose()


def test_archive_sweep_deletes_only_files_older_than_keep_days(site: config.Config) -> None:
    """archive.keep_days: older archived files go, younger ones stay."""
    folder = site.archive_dir / "acme"
    folder.mkdir(parents=True)
    old, young = folder / "1.old.persons", folder / "2.young.persons"
    old.write_text(GOOD)
    young.write_text(GOOD)
    now = time.time()
    os.utime(old, (now - 31 * 86400, now - 31 * 86400))
    assert 1 == sweep_archive(site, now=now)
    assert (False, True) == (old.exists(), young.exists())


def test_a_cli_import_is_never_claimed_by_a_daemon(site: config.Config, tmp_path: Path) -> None:
    """`personsd import` records its import as running, so no worker can take it meanwhile."""
    source = tmp_path / "now.persons"
    source.write_text(GOOD)
    engine = db.connect(site.database.url)
    import_id = importer.create(
        engine, tenant="acme", path=source, source="cli", claimed_by="cli:host:1"
    )
    with db.write_tx(engine) as conn:
        claimed = store_queue.claim_next(
            conn, instance="host:1:ab", tenants_busy=set(), lease_seconds=30
        )
        record = store_imports.get(conn, import_id)
    engine.dispose()
    assert (None, "running", 1) == (claimed, record.status, record.attempts)
