"""service.Daemon in-process: start, reload and shutdown without a subprocess (SPEC 5, 8)."""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from personsd import config, tenancy
from personsd.service import Daemon
from personsd.store import db
from personsd.store import tenants as store_tenants

CONFIG = """\
[paths]
root = "{root}"
[database]
url = "{url}"
[sftp]
enabled = false
[import]
workers = 1
rescan_seconds = 3600
[archive]
keep_days = {keep_days}
"""


def write_config(path: Path, root: Path, url: str, keep_days: int) -> None:
    path.write_text(CONFIG.format(root=root, url=url, keep_days=keep_days))


@pytest.fixture(autouse=True)
def _restore_logging(restore_logging: None) -> None:
    """reload() reconfigures logging onto the test's stdout: undo it for the next tests."""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Daemon, Path, threading.Thread]]:
    """A started daemon (SQLite, no SFTP) whose main loop runs in a thread."""
    source = tmp_path / "personsd.toml"
    url = f"sqlite:///{tmp_path / 'persons.db'}"
    write_config(source, tmp_path / "root", url, 30)
    daemon = Daemon(config.load(source, env={}))
    daemon.start()
    loop = threading.Thread(target=daemon.serve, daemon=True)
    loop.start()
    try:
        yield daemon, source, loop
    finally:
        daemon.stop.set()
        daemon._wakeup.set()
        loop.join(5)
        if daemon.lock is not None:  # shutdown() releases it; a failed test may not get there
            daemon.lock.release()


def test_reload_applies_a_changed_config_in_process(
    served: tuple[Daemon, Path, threading.Thread], capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGHUP's reload: a changed setting applies to the daemon and its workers at once."""
    daemon, source, _loop = served
    write_config(source, daemon.cfg.root, daemon.cfg.database.url, 7)
    capsys.readouterr()
    daemon.reload()  # reconfigures logging (the new log settings): read its JSON lines
    events = [json.loads(line)["event"] for line in capsys.readouterr().out.splitlines()]
    assert (7.0, 7.0) == (daemon.cfg.archive.keep_days, daemon.workers.cfg.archive.keep_days)
    assert ["config.reloaded"] == [e for e in events if e.startswith("config.")]


def test_reload_keeps_the_database_until_restart(
    served: tuple[Daemon, Path, threading.Thread], tmp_path: Path
) -> None:
    """SPEC 8: paths, database and sftp change only at restart; the rest still applies."""
    daemon, source, _loop = served
    before = daemon.cfg.database
    write_config(source, daemon.cfg.root, f"sqlite:///{tmp_path / 'other.db'}", 3)
    with capture_logs() as logs:
        daemon.reload()
    assert (before, 3.0) == (daemon.cfg.database, daemon.cfg.archive.keep_days)
    assert "config.restart_needed" in [e["event"] for e in logs]


def test_a_broken_config_on_reload_keeps_the_running_one(
    served: tuple[Daemon, Path, threading.Thread],
) -> None:
    """A reload that cannot read its file logs config.reload_failed and changes nothing."""
    daemon, source, _loop = served
    source.write_text("[archive]\nkeep_days = -1\n")
    with capture_logs() as logs:
        daemon.reload()
    assert 30.0 == daemon.cfg.archive.keep_days
    assert "config.reload_failed" in [e["event"] for e in logs]


def test_reload_makes_a_new_tenants_directories_through_tenancy(
    served: tuple[Daemon, Path, threading.Thread], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tenant's directories come from tenancy.tenant_dirs, the one place deciding them."""
    daemon, _source, _loop = served
    with db.write_tx(daemon.engine) as conn:
        store_tenants.add_tenant(conn, "acme", keys=[])
    calls: list[str] = []
    real = tenancy.tenant_dirs

    def counted(cfg: config.Config, name: str) -> None:
        calls.append(name)
        real(cfg, name)

    monkeypatch.setattr(tenancy, "tenant_dirs", counted)
    daemon.reload()
    cfg = daemon.cfg
    assert ["acme"] == calls
    assert [True, True, True] == [
        box.is_dir() for box in (cfg.inbox("acme"), cfg.validate_box("acme"), cfg.outbox("acme"))
    ]


def test_tenant_boxes_are_made_0750_and_an_existing_box_keeps_its_mode(tmp_path: Path) -> None:
    """tenancy.tenant_dirs makes a box as an SFTP login does (0750) and never re-modes one."""
    cfg = config.parse({"paths": {"root": str(tmp_path)}}, base=tmp_path, env={})
    cfg.inbox("acme").mkdir(parents=True)
    cfg.inbox("acme").chmod(0o2770)  # deploy/openssh-tenant.sh's inbox
    old = os.umask(0o022)
    try:
        tenancy.tenant_dirs(cfg, "acme")
    finally:
        os.umask(old)
    modes = [
        stat.S_IMODE(box.stat().st_mode)
        for box in (cfg.inbox("acme"), cfg.validate_box("acme"), cfg.outbox("acme"))
    ]
    assert [0o2770, 0o750, 0o750] == modes


def test_shutdown_stops_the_loop_and_exits_0(
    served: tuple[Daemon, Path, threading.Thread],
) -> None:
    """SIGTERM's path in-process: the main loop ends, shutdown drains and returns 0."""
    daemon, _source, loop = served
    daemon.stop.set()
    daemon._wakeup.set()
    loop.join(5)
    assert not loop.is_alive()
    with capture_logs() as logs:
        code = daemon.shutdown()
    assert 0 == code
    assert ["daemon.stopping", "daemon.stopped"] == [
        e["event"] for e in logs if e["event"].startswith("daemon.")
    ]
