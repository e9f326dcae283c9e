"""`make run`: the first-run setup starts a daemon whose printed sftp command works."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from daemon_helpers import free_port, ssh_key
from personsd import firstrun
from polling import wait_for

pytestmark = pytest.mark.slow


def _start(cwd: Path, home: Path, port: int) -> tuple[subprocess.Popen[str], Path]:
    var = cwd / "var"
    var.mkdir()
    # The shipped config, on a free port so the test never fights a real `make run`.
    (var / "personsd.toml").write_text(firstrun.CONFIG.replace("2222", str(port)))
    out = cwd / "out.txt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "personsd.firstrun"],
        cwd=cwd,
        text=True,
        stdout=out.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "HOME": str(home)},
    )
    return proc, out


def _sftp(argv: list[str], batch: Path, home: Path) -> subprocess.CompletedProcess[str]:
    """The printed sftp command ``argv`` run on ``batch``, as the user whose home is ``home``."""
    return subprocess.run(
        [
            argv[0],
            "-b",
            str(batch),
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            *argv[1:],
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": str(home)},
    )


def test_printed_sftp_command_uploads_and_gets_reports(tmp_path: Path) -> None:
    """With a key in ~/.ssh, the printed sftp command logs in and the example imports."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    key = ssh_key(home / ".ssh")
    cwd = tmp_path / "work"
    cwd.mkdir()
    port = free_port()
    proc, out = _start(cwd, home, port)
    try:
        text = wait_for(
            lambda: "daemon.started" in out.read_text() and out.read_text(),
            what="the daemon to start",
        )
        command = re.search(r"^\s+(sftp -P .*)$", text, re.MULTILINE)
        put = re.search(r"sftp> (put .*)$", text, re.MULTILINE)
        assert command is not None and put is not None
        argv = shlex.split(command.group(1).replace("~", str(home)))
        batch = cwd / "batch"
        batch.write_text(f"{put.group(1)}\n")
        result = _sftp(argv, batch, home)
        assert 0 == result.returncode, result.stderr
        outbox = cwd / "var" / "tenants" / "demo" / "outbox"
        summary_path = wait_for(
            lambda: next(outbox.glob("*.summary.json"), None), what="the summary"
        )
        summary = json.loads(summary_path.read_text())
        # Offline carrier lookup: the three real mobile numbers pass, the 299 one fails.
        assert {"total": 4, "succeeded": 3, "failed": 1, "created": 3, "updated": 0} == summary[
            "rows"
        ]
        get = batch.with_name("get")
        get.write_text(f"get /outbox/{summary_path.name} {cwd / 'fetched.json'}\n")
        fetched = _sftp(argv, get, home)
        assert 0 == fetched.returncode, fetched.stderr
        assert summary == json.loads((cwd / "fetched.json").read_text())
        assert key.with_suffix(".pub").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        exit_code = proc.wait(15)
    assert 0 == exit_code


def test_without_keys_a_password_is_generated_and_shown_once(tmp_path: Path) -> None:
    """No ~/.ssh keys: the demo tenant gets a password, printed on the first run only."""
    home = tmp_path / "home"
    home.mkdir()
    cwd = tmp_path / "work"
    cwd.mkdir()
    proc, out = _start(cwd, home, free_port())
    try:
        text = wait_for(
            lambda: "daemon.started" in out.read_text() and out.read_text(),
            what="the daemon to start",
        )
        assert re.search(r"password: \S+ +<- shown once", text)
    finally:
        proc.send_signal(signal.SIGTERM)
        exit_code = proc.wait(15)
    assert 0 == exit_code
