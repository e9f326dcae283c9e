"""Logs of SPEC section 9: event names, JSON lines, progress reports."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import re
import select
import subprocess
import sys
import tty
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from personsd.logging import (
    Event,
    OneLineConsoleRenderer,
    ProgressReporter,
    configure,
    get_logger,
)
from polling import Clock

SPEC_EVENTS = {
    "sftp.login",
    "sftp.login_failed",
    "sftp.upload",
    "file.detected",
    "import.queued",
    "import.started",
    "import.progress",
    "import.completed",
    "import.rejected",
    "import.failed",
    "import.resumed",
    "daemon.started",
    "daemon.stopping",
    "import.waiting",
    "sftp.limit",
    "sftp.banned",
    "notify.delivered",
    "notify.failed",
    "cluster.takeover",
}


@pytest.fixture(autouse=True)
def _restore_logging(restore_logging: None) -> None:
    """Tests here configure logging: undo it for the next tests."""


def test_event_names_are_spec_names() -> None:
    """Event holds exactly the stable event names of SPEC 9."""
    assert SPEC_EVENTS == set(Event.ALL)
    assert len(SPEC_EVENTS) == len(Event.ALL)


def test_capture_logs_with_context() -> None:
    """A bound logger carries its context (tenant, import_id, file) into every event."""
    log = get_logger("importer", tenant="acme", import_id=17, file="a.persons")
    with capture_logs() as logs:
        log.info(Event.IMPORT_STARTED, rows=0)
    assert [
        {
            "event": "import.started",
            "log_level": "info",
            "logger": "importer",
            "tenant": "acme",
            "import_id": 17,
            "file": "a.persons",
            "rows": 0,
        }
    ] == logs


def test_json_lines_in_a_subprocess() -> None:
    """Not on a TTY (as under systemd), auto format writes one JSON object a line on stdout."""
    code = (
        "import logging\n"
        "from personsd.logging import configure, get_logger\n"
        "configure('auto', 'info')\n"
        "log = get_logger(tenant='acme')\n"
        "log.debug('hidden')\n"
        "log.info('daemon.started', version='1')\n"
        "logging.getLogger('paramiko.transport').info('noise')\n"
        "logging.getLogger('paramiko.transport').warning('bad %s', 'banner')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    before = datetime.now(UTC).replace(microsecond=0)
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=30,
    )
    after = datetime.now(UTC) + timedelta(seconds=1)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert 2 == len(lines), result.stdout
    first, second = lines
    assert {"event": "daemon.started", "level": "info", "tenant": "acme", "version": "1"} == {
        k: v for k, v in first.items() if k != "timestamp"
    }
    assert first["timestamp"].endswith("Z")
    stamp = datetime.fromisoformat(first["timestamp"].replace("Z", "+00:00"))
    assert before <= stamp <= after
    assert {"event": "bad banner", "level": "warning", "logger": "paramiko.transport"} == {
        k: v for k, v in second.items() if k != "timestamp"
    }
    assert "" == result.stderr


def test_console_format_is_not_json() -> None:
    """The console format renders readable text, with the event name and context."""
    out = io.StringIO()
    configure("console", "info", stream=out)
    get_logger().info(Event.DAEMON_STOPPING, reason="SIGTERM")
    text = out.getvalue()
    assert "daemon.stopping" in text and "reason=SIGTERM" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_level_filters_and_reconfigure_applies_to_existing_loggers() -> None:
    """Loggers made before a reconfiguration (SIGHUP) follow the new level and stream."""
    log = get_logger()
    first, second = io.StringIO(), io.StringIO()
    configure("json", "warning", stream=first)
    log.info("dropped")
    log.warning("kept")
    configure("json", "debug", stream=second)
    log.debug("now kept")
    assert ["kept"] == [json.loads(line)["event"] for line in first.getvalue().splitlines()]
    assert ["now kept"] == [json.loads(line)["event"] for line in second.getvalue().splitlines()]


def test_exceptions_are_one_json_line() -> None:
    """A logged exception stays inside its JSON line, as a string."""
    out = io.StringIO()
    configure("json", stream=out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger().exception(Event.IMPORT_FAILED)
    (line,) = out.getvalue().splitlines()
    assert "RuntimeError: boom" in json.loads(line)["exception"]


def test_configure_refuses_unknown_values() -> None:
    """Unknown formats and levels are refused with a message naming them."""
    with pytest.raises(ValueError, match="'xml'"):
        configure("xml")
    with pytest.raises(ValueError, match="'loud'"):
        configure("json", "loud")


def test_reconfigure_keeps_one_stdlib_handler() -> None:
    """Configuring twice does not double the stdlib output."""
    out = io.StringIO()
    configure("json", stream=io.StringIO())
    configure("json", stream=out)
    logging.getLogger("paramiko").error("once")
    assert 1 == len(out.getvalue().splitlines())


# --- progress ----------------------------------------------------------------


def test_progress_not_before_interval() -> None:
    """No progress event before `interval` seconds, then one, then none until the next interval."""
    clock = Clock(100.0)
    reporter = ProgressReporter(1000, interval=5, clock=clock)
    clock.now += 4.9
    assert None is reporter.update(10, 100)
    clock.now += 0.1
    assert reporter.update(20, 200) is not None
    clock.now += 4
    assert None is reporter.update(30, 300)
    clock.now += 1
    assert reporter.update(40, 400) is not None


def test_progress_values() -> None:
    """rows, rows/s, percent of bytes and ETA from the byte rate."""
    clock = Clock(100.0)
    reporter = ProgressReporter(1000, clock=clock)
    clock.now += 10
    progress = reporter.update(500, 250)
    assert progress is not None
    assert {"rows": 500, "rows_per_s": 50.0, "percent": 25.0, "eta_seconds": 30} == (
        progress.as_fields()
    )


def test_progress_resumed_counts_only_this_run() -> None:
    """A resumed import's rate counts rows and bytes since the resume, not the earlier run's."""
    clock = Clock(100.0)
    reporter = ProgressReporter(1000, clock=clock, start_rows=400, start_bytes=500)
    clock.now += 10
    progress = reporter.measure(500, 600)
    assert (500, 10.0, 60.0, 40) == (
        progress.rows,
        progress.rows_per_s,
        progress.percent,
        progress.eta_seconds,
    )


def test_progress_edge_cases() -> None:
    """No time elapsed: no rate and no ETA; an empty file is 100 % done."""
    clock = Clock(100.0)
    assert (0.0, None) == (lambda p: (p.rows_per_s, p.eta_seconds))(
        ProgressReporter(1000, clock=clock).measure(0, 0)
    )
    empty = ProgressReporter(0, clock=clock).measure(0, 0)
    assert (100.0, 0) == (empty.percent, empty.eta_seconds)


@given(
    total=st.integers(0, 10**12),
    done=st.integers(0, 10**12),
    rows=st.integers(0, 10**9),
    elapsed=st.floats(0, 10**6),
)
def test_progress_bounds(total: int, done: int, rows: int, elapsed: float) -> None:
    """Percent stays within 0..100, rate and ETA are never negative."""
    clock = Clock(100.0)
    reporter = ProgressReporter(total, clock=clock)
    clock.now += elapsed
    progress = reporter.measure(rows, done)
    assert 0.0 <= progress.percent <= 100.0
    assert progress.rows_per_s >= 0
    assert progress.eta_seconds is None or progress.eta_seconds >= 0


def test_progress_refuses_bad_arguments() -> None:
    """Negative sizes and a non-positive interval are programming errors."""
    with pytest.raises(ValueError, match="interval"):
        ProgressReporter(10, interval=0)
    with pytest.raises(ValueError, match=">= 0"):
        ProgressReporter(-1)


# --------------------------------------------------------------------------- escaping (SPEC 9)

# One of each kind SPEC 9 names: C0 (ESC, NUL, BEL, LF, CR, TAB), DEL, C1 (NEL, CSI),
# line/paragraph separators, bidi embedding/override/isolate, an undecodable byte.
UNSAFE_TEXT = "\x1b[2J\x00\x07\n\r\t\x7f\x85\x9b\u2028\u2029\u202a\u202e\u2066\u2069\udcff"
RAW = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
SGR = re.compile("\x1b\\[[0-9;]*m")  # the console renderer's own colours


def emit_hostile(text: str) -> None:
    """Log ``text`` in every place an event can carry it: name, values, nesting, exception."""
    log = get_logger("personsd.test", tenant="acme")
    log.warning(
        "sftp.login_failed" + text,
        user=text,
        file=f"{text}.persons",
        nested={text: [text, (text, 1)]},
        path=Path(text),
    )
    try:
        raise ValueError(f"bad name {text}")
    except ValueError:
        log.exception(Event.IMPORT_FAILED, file=text)
    # pytest's own log capture (sent between xdist processes) cannot carry a lone surrogate.
    logging.getLogger("paramiko.transport").warning("banner %s", text.replace("\udcff", "?"))


def console_on_a_terminal(emit: Callable[[], None]) -> str:
    """What the console format writes to a real terminal (a pty, raw mode)."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    stream = open(slave, "w", encoding="utf-8", errors="strict", closefd=True)  # noqa: SIM115
    try:
        configure("console", "info", stream=stream)
        emit()
        stream.flush()
        chunks = []
        while select.select([master], [], [], 0.2)[0]:
            chunks.append(os.read(master, 1 << 16))
    finally:
        stream.close()
        os.close(master)
    return b"".join(chunks).decode("utf-8")


def test_console_on_a_terminal_escapes_outside_text_and_keeps_colours() -> None:
    """SPEC 9: on a terminal, outside text is escaped, one event a line, colours still on."""
    text = console_on_a_terminal(lambda: emit_hostile(UNSAFE_TEXT))
    lines = text.split("\n")
    assert 4 == len(lines) and "" == lines[-1]
    assert SGR.search(text) is not None  # the renderer's own colours
    assert [] == RAW.findall(SGR.sub("", "".join(lines)))
    assert "\\x1b[2J" in text and "\\u202e" in text and "\\udcff" in text
    assert "ValueError: bad name" in lines[1] and "exception=" in lines[1]


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_every_format_writes_outside_text_escaped_on_one_line(fmt: str) -> None:
    """SPEC 9: in every format control, separator and bidi characters arrive escaped."""
    out = io.StringIO()
    configure(fmt, "info", stream=out)
    emit_hostile(UNSAFE_TEXT)
    lines = out.getvalue().split("\n")
    assert 4 == len(lines) and "" == lines[-1]
    assert [] == RAW.findall("".join(lines))
    if fmt == "json":  # escaped, not lost: the consumer reads the text back exactly
        first, failed, foreign = (json.loads(line) for line in lines[:3])
        assert (UNSAFE_TEXT, f"{UNSAFE_TEXT}.persons") == (first["user"], first["file"])
        assert "sftp.login_failed" + UNSAFE_TEXT == first["event"]
        assert f"bad name {UNSAFE_TEXT}" in failed["exception"]
        assert "banner " + UNSAFE_TEXT.replace("\udcff", "?") == foreign["event"]


_ANY_TEXT = st.text(st.characters() | st.sampled_from(list(UNSAFE_TEXT)), max_size=12)


@given(text=_ANY_TEXT, fmt=st.sampled_from(["console", "json"]))
def test_any_outside_text_renders_as_one_safe_line(text: str, fmt: str) -> None:
    """SPEC 9: whatever text an event carries, anywhere, it renders as one line, nothing raw."""
    out = io.StringIO()
    configure(fmt, "info", stream=out)
    log = get_logger("personsd.test")
    log.warning(text or "x", user=text, nested={text: [text]})
    try:
        raise OSError(text)
    except OSError:
        log.exception("import.failed", file=text)
    lines = out.getvalue().split("\n")
    assert 3 == len(lines) and "" == lines[-1]
    assert [] == RAW.findall("".join(lines))
    colored = OneLineConsoleRenderer(colors=True)(
        None, "warning", {"event": text, "level": "warning", "user": text, "x": [text]}
    )
    assert "\n" not in colored
    assert [] == RAW.findall(SGR.sub("", colored))
