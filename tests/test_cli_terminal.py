"""`personsd import` on a real terminal: log lines and the progress bar keep their own lines."""

from __future__ import annotations

import fcntl
import os
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from cli_helpers import CLEAN_ENV, toml_string

COLUMNS = 250  # wider than any log line here: rows never wrap
# One console log line starts with its ISO timestamp (structlog's ConsoleRenderer).
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
_CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")


def screen(output: str) -> list[str]:
    """The terminal's rows after ``output``: text, CR, LF and the cursor and erase
    sequences rich and structlog write (colours ignored); an unknown one fails."""
    rows: list[list[str]] = [[]]
    row = col = 0
    at = 0
    while at < len(output):
        char = output[at]
        if char == "\x1b":
            match = _CSI.match(output, at)
            assert match is not None, repr(output[at : at + 10])
            params, command = match.groups()
            count = int(params) if params.isdigit() else 1
            if command == "A":
                row = max(0, row - count)
            elif command == "B":
                row += count
            elif command == "G":
                col = count - 1
            elif command == "K":
                line = rows[row]
                del line[col if params in ("", "0") else 0 :]
                if params == "1":
                    line.extend(" " * col)
            elif command in "mhl":  # colours, cursor shown/hidden
                pass
            else:
                raise AssertionError(f"unexpected escape sequence {match.group(0)!r}")
            at = match.end()
            while len(rows) <= row:
                rows.append([])
            continue
        if char == "\r":
            col = 0
        elif char == "\n":
            row += 1
            col = 0
            while len(rows) <= row:
                rows.append([])
        else:
            line = rows[row]
            line.extend(" " * (col - len(line)))
            if col < len(line):
                line[col] = char
            else:
                line.append(char)
            col += 1
        at += 1
    shown = ["".join(line).rstrip() for line in rows]
    while shown and not shown[-1]:
        shown.pop()
    return shown


def run_on_terminal(argv: list[str], cwd: Path, timeout: float = 60.0) -> tuple[int, str, str]:
    """Run ``argv`` with stderr on a pseudo-terminal: (exit code, stdout, terminal output)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, COLUMNS, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    env.update(TERM="xterm-256color", COLUMNS=str(COLUMNS))
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, cwd=cwd, env=env
    )
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer of the terminal is gone
                break
            if not chunk:
                break
            chunks.append(chunk)
        stdout = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0]
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stdout.decode(), b"".join(chunks).decode("utf-8", "replace")


def test_screen_emulation_keeps_what_a_terminal_shows() -> None:
    """The emulator overwrites on CR, erases on ESC[2K, moves up on ESC[1A."""
    output = "bar 1\r\x1b[2Kbar 2\r\nlog\n\x1b[1A\x1b[2Kx\x1b[32my\x1b[0m"
    assert ["bar 2", "xy"] == screen(output)


def test_import_logs_stay_off_the_progress_bar(tmp_path: Path) -> None:
    """On a terminal, each console log line of `personsd import` has a row of its own."""
    config = tmp_path / "personsd.toml"
    config.write_text(
        "\n".join(
            [
                "[database]",
                "url = " + toml_string(f"sqlite:///{tmp_path / 'persons.db'}"),
                "[paths]",
                'root = "var"',
                "[sftp]",
                'host_key = "var/host_key"',
                # Small chunks: the bar is redrawn many times while the import logs.
                "[import]",
                'carrier_lookup = "none"',
                "chunk_rows = 500",
                "[log]",
                'format = "auto"',
            ]
        )
        + "\n"
    )
    cli = [sys.executable, "-m", "personsd", "--config", str(config)]
    for args in (
        ["tenants", "add", "acme"],
        ["fields", "add", "--tenant", "acme", "name", "--type", "string"],
    ):
        subprocess.run([*cli, *args], check=True, capture_output=True, cwd=tmp_path, timeout=60)
    source = tmp_path / "big.persons"
    source.write_text(
        "external_person_id,name\n" + "".join(f"e{i},name {i}\n" for i in range(10_000))
    )

    code, stdout, terminal = run_on_terminal(
        [*cli, "import", str(source), "--tenant", "acme"], tmp_path
    )

    assert 0 == code, terminal
    assert '"status": "completed"' in stdout
    assert "importing" in terminal  # the bar was drawn
    rows = screen(terminal)
    logs = [row for row in rows if LOG_LINE.search(row)]
    events = [event for row in logs for event in re.findall(r"import\.\w+", row)]
    assert "import.started" in events and "import.completed" in events, rows
    misplaced = [row for row in logs if not LOG_LINE.match(row) or "importing" in row]
    assert [] == misplaced
