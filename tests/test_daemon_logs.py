"""The daemon's logs (SPEC 9): JSON lines, stable event names and fields, no secrets.

One recorded run per database: start, a wrong then a right password login, one
small upload imported, one large local file imported until it reports
progress, SIGTERM; and a bare TCP connect (a health check). The tests read
that run's log.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
import pytest
from structlog.testing import capture_logs

from daemon_helpers import Daemon, add_tenants, free_port, ssh_key, start
from engine_helpers import add_tenant, make_config, run_import
from personsd.logging import Event
from personsd.store import db
from polling import wait_for
from test_daemon_e2e import SEED, SEED_ROWS

pytestmark = pytest.mark.slow

PASSWORD = "pw-" + uuid.uuid4().hex  # unique: any occurrence in the log is a leak
WRONG_PASSWORD = "wrong-" + uuid.uuid4().hex
CHUNK_ROWS = 500
# Progress is logged every 5 s of an import, so the file must outlast that on
# any box: ~4 s per 300 k rows on a fast one (2026-12), and the run stops at
# the first progress line, so a bigger file costs only its writing (~2 s).
BULK_ROWS = 3_000_000
IMPORT_EVENTS = (
    Event.IMPORT_QUEUED,
    Event.IMPORT_STARTED,
    Event.IMPORT_PROGRESS,
    Event.IMPORT_COMPLETED,
    Event.IMPORT_REJECTED,
    Event.IMPORT_FAILED,
    Event.IMPORT_RESUMED,
)
UTC_ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@dataclass(frozen=True, kw_only=True, slots=True)
class Run:
    lines: list[str]  # the raw log
    events: list[dict[str, Any]]
    summary: dict[str, Any]  # of the small upload
    exit_code: int
    stop_seconds: float

    def of(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
        ]


def login(port: int, password: str) -> paramiko.Transport:
    transport = paramiko.Transport(("127.0.0.1", port))
    transport.connect(username="acme", password=password)
    return transport


@pytest.fixture(scope="module")
def run(module_db: tuple[Path, str]) -> Iterator[Run]:
    home, url = module_db
    daemon = Daemon(
        home=home, db_url=url, port=free_port(), extra={"import": {"chunk_rows": CHUNK_ROWS}}
    )
    key = ssh_key(home)
    add_tenants(daemon, ("acme",), key, password=PASSWORD)
    add_tenants(daemon, ("bulk",), key, fields=(("color", "string", None),))
    start(daemon, ("acme", "bulk"))
    try:
        # What a load balancer's or monitoring's TCP check does: connect, close.
        socket.create_connection(("127.0.0.1", daemon.port), timeout=2).close()
        with pytest.raises(paramiko.AuthenticationException):
            login(daemon.port, WRONG_PASSWORD).close()
        transport = login(daemon.port, PASSWORD)
        try:
            sftp = paramiko.SFTPClient.from_transport(transport)
            assert sftp is not None
            with sftp.open("/inbox/seed.persons", "wb") as fh:
                fh.write(SEED.encode())
        finally:
            transport.close()
        summary = daemon.summary("acme", "seed.persons")
        wait_for(
            lambda: daemon.has_event("import.completed", tenant="acme"),
            what="import.completed of the small file",
        )

        staging = home / "bulk.persons"
        staging.write_text(
            "external_person_id,color\n" + "".join(f"p{i},c{i % 5}\n" for i in range(BULK_ROWS))
        )
        os.replace(staging, daemon.inbox("bulk") / "bulk.persons")
        # ProgressReporter's interval is fixed at 5 s (not in the config).
        wait_for(
            lambda: daemon.has_event("import.progress", tenant="bulk"),
            timeout=30,
            what="import.progress of the large file",
        )
        started = time.monotonic()
        code = daemon.stop()
        stopped = time.monotonic() - started
    finally:
        if daemon.proc is not None:
            daemon.kill()
    lines = daemon.log_path.read_text().splitlines()
    yield Run(
        lines=lines,
        events=daemon.events(),
        summary=summary,
        exit_code=code,
        stop_seconds=stopped,
    )


def test_one_import_logs_its_steps_in_order(run: Run) -> None:
    """SPEC 9: an SFTP import logs login, upload, detected, queued, started, completed."""
    names = [e["event"] for e in run.events if e.get("tenant") == "acme"]
    assert [
        "sftp.login",
        "sftp.upload",
        "file.detected",
        "import.queued",
        "import.started",
        "import.completed",
    ] == names


def test_import_events_carry_tenant_import_id_and_file(run: Run) -> None:
    """SPEC 9: each import event carries `tenant`, `import_id` and `file`."""
    found = [e for e in run.events if e["event"] in IMPORT_EVENTS]
    assert {"import.queued", "import.started", "import.progress", "import.completed"} <= {
        e["event"] for e in found
    }
    for event in found:
        assert {"tenant", "import_id", "file"} <= event.keys(), event
        assert isinstance(event["import_id"], int), event
    small = [e for e in found if e["tenant"] == "acme"]
    assert {(run.summary["import_id"], "seed.persons")} == {
        (e["import_id"], e["file"]) for e in small
    }


def test_completed_event_counts_match_the_summary(run: Run) -> None:
    """SPEC 9: `import.completed` reports the row counts of the summary."""
    [completed] = run.of("import.completed", tenant="acme")
    rows = SEED_ROWS
    assert (rows["total"], rows["succeeded"], rows["failed"], rows["created"], rows["updated"]) == (
        completed["rows"],
        completed["succeeded"],
        completed["failed"],
        completed["created"],
        completed["updated"],
    )


def test_sftp_events_name_tenant_method_and_file(run: Run) -> None:
    """SPEC 6/9: logins (good and bad) and uploads are logged with who and what."""
    assert [("acme", "password", "127.0.0.1")] == [
        (e["tenant"], e["method"], e["ip"]) for e in run.of("sftp.login")
    ]
    assert [("acme", "password")] == [(e["user"], e["method"]) for e in run.of("sftp.login_failed")]
    assert [("seed.persons", len(SEED.encode()))] == [
        (e["file"], e["bytes"]) for e in run.of("sftp.upload", tenant="acme")
    ]


def test_progress_event_fields(run: Run) -> None:
    """SPEC 9: `import.progress` gives rows, rows/s, percent of bytes and ETA."""
    progress = run.of("import.progress", tenant="bulk")
    assert progress
    for event in progress:
        assert "bulk.persons" == event["file"]
        assert 0 == event["rows"] % CHUNK_ROWS and 0 < event["rows"] < BULK_ROWS
        assert 0 < event["percent"] < 100
        assert event["rows_per_s"] > 0
        assert isinstance(event["eta_seconds"], int) and event["eta_seconds"] >= 0


def test_every_line_is_json_with_event_level_and_utc_timestamp(run: Run) -> None:
    """SPEC 9: stdout is one JSON object a line with `event`, `level`, `timestamp` (UTC, Z)."""
    assert run.lines
    for line in run.lines:
        entry = json.loads(line)
        assert {"event", "level", "timestamp"} <= entry.keys(), line
        assert UTC_ISO.match(entry["timestamp"]), line


def test_started_and_stopping_frame_the_run(run: Run) -> None:
    """SPEC 5/9: `daemon.started` at start, `daemon.stopping` at SIGTERM, exit 0 within 10 s."""
    names = [e["event"] for e in run.events]
    assert 1 == names.count("daemon.started") == names.count("daemon.stopping")
    assert names.index("daemon.started") < names.index("sftp.login")
    assert names.index("import.progress") < names.index("daemon.stopping")
    assert (0, True) == (run.exit_code, run.stop_seconds < 10)


def test_no_secrets_in_the_log(run: Run) -> None:
    """SPEC 6: passwords (right or wrong) never reach the log."""
    text = "\n".join(run.lines)
    assert [] == [s for s in (PASSWORD, WRONG_PASSWORD) if s in text]


def test_importer_run_events_in_process(tmp_path: Path, db_url: str) -> None:
    """SPEC 9: `importer.run` logs `import.started` and `import.completed` with their fields."""
    engine = db.connect(db_url)
    try:
        db.upgrade(engine)
        add_tenant(engine, "acme", fields=())
        cfg = make_config(tmp_path / "root", db_url, chunk_rows=2)
        source = tmp_path / "in.persons"
        source.write_text("external_person_id,mdn\ne1,\ne2,12345\ne3,\n")
        with capture_logs() as logs:
            outcome = run_import(engine, cfg, "acme", source)
    finally:
        engine.dispose()
    context = {"tenant": "acme", "import_id": outcome.record.id, "file": "in.persons"}
    started = [e for e in logs if e["event"] == "import.started"]
    completed = [e for e in logs if e["event"] == "import.completed"]
    assert [
        {
            **context,
            "event": "import.started",
            "log_level": "info",
            "attempt": 1,
            "row": 0,
            "bytes": source.stat().st_size,
            "mode": "import",
        }
    ] == [{k: v for k, v in e.items() if k != "logger"} for e in started]
    assert [
        {
            **context,
            "event": "import.completed",
            "log_level": "info",
            "rows": 3,
            "succeeded": 2,
            "failed": 1,
            "created": 2,
            "updated": 0,
            "mode": "import",
        }
    ] == [{k: v for k, v in e.items() if k != "logger"} for e in completed]


def test_a_healthy_run_logs_no_errors(run: Run) -> None:
    """SPEC 9: a run with nothing wrong (a port probe, a stop mid-import) logs no errors."""
    # Level `error` pages an operator: a wrong password is a warning, a TCP health
    # check (the test helper's port probe) or watchdog's shutdown chatter is nothing.
    assert [] == [
        (e["event"], e.get("logger")) for e in run.events if e["level"] in ("error", "critical")
    ]
