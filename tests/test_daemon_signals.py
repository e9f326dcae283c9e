"""Signals of the real daemon: SIGHUP reloads, a bad config on SIGHUP is survived."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from daemon_helpers import Daemon, free_port
from polling import wait_for

pytestmark = pytest.mark.slow


def _tenants_snapshot(daemon: Daemon) -> list[str]:
    path = daemon.root / "state" / "tenants.json"
    return sorted(t["name"] for t in json.loads(path.read_text())) if path.exists() else []


def test_sighup_reloads_tenants_and_config(tmp_path: Path, db_url: str) -> None:
    """SIGHUP: tenants added since start are loaded, the new config is read."""
    daemon = Daemon(
        home=tmp_path, db_url=db_url, port=free_port(), extra={"import": {"rescan_seconds": 3600}}
    )
    daemon.write_config()
    daemon.add_tenant("acme")
    daemon.start()
    try:
        wait_for(lambda: ["acme"] == _tenants_snapshot(daemon), what="the first snapshot")
        daemon.add_tenant("beta")
        daemon.extra["log"] = {"level": "debug"}
        daemon.write_config()
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: daemon.has_event("config.reloaded"), what="config.reloaded")
        assert ["acme", "beta"] == _tenants_snapshot(daemon)
        assert daemon.proc is not None and daemon.proc.poll() is None
    finally:
        exit_code = daemon.stop()
    assert 0 == exit_code


def test_sighup_with_a_broken_config_keeps_the_old_one(tmp_path: Path, db_url: str) -> None:
    """A config that does not parse on SIGHUP is logged and the daemon keeps running."""
    daemon = Daemon(home=tmp_path, db_url=db_url, port=free_port())
    daemon.write_config()
    daemon.add_tenant("acme")
    daemon.start()
    try:
        daemon.extra["import"] = {"workerz": 3}
        daemon.write_config()
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: daemon.has_event("config.reload_failed"), what="config.reload_failed")
        failed = next(e for e in daemon.events() if e["event"] == "config.reload_failed")
        assert "workerz" in failed["error"]
        assert daemon.proc is not None and daemon.proc.poll() is None
    finally:
        exit_code = daemon.stop()
    assert 0 == exit_code
