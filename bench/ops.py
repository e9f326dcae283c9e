"""What metrics and webhooks cost an import: the daemon's rows/s with them off and on.

Starts the real daemon (``python -m personsd run``, SFTP off) on a fresh SQLite
or PostgreSQL database, drops one generated file of ``--rows`` new persons into
the inbox and times it from the drop to its ``summary.json``. "on" adds
``[metrics]`` (scraped every second by this script) and ``[notify]`` (a signed
webhook to a local receiver, which must arrive). Modes alternate, ``--repeats``
times each; the medians are compared. ``--pythonpath DIR`` runs another
checkout's daemon (e.g. the commit before metrics existed) for a before/after.

    python bench/ops.py [--rows 200000] [--repeats 3] [--db sqlite|postgresql] [--pythonpath DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import generate
from common import CLEAN_ENV, TENANT, scratch_db
from latency import free_port

MODES = ("off", "on")


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.calls += 1  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


@contextmanager
def receiver() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    server.calls = 0  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _scrape(url: str, stop: threading.Event, counts: list[int]) -> None:
    while not stop.wait(1.0):
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                response.read()
                counts[0] += 1
        except OSError:
            continue


def one_run(mode: str, rows: int, source: Path, db_url: str, env: dict[str, str]) -> float:
    """Seconds from the drop to the summary."""
    home = Path(tempfile.mkdtemp(prefix=f"personsd-ops-{mode}-"))
    try:
        with receiver() as hook:
            metrics_port = free_port()
            (home / "secret").write_text("bench-key\n")
            lines = [
                "[database]",
                f"url = {json.dumps(db_url)}",
                '[paths]\nroot = "var"',
                "[sftp]\nenabled = false",
                '[import]\nsettle_seconds = 0.2\ncarrier_lookup = "none"',
                '[log]\nformat = "json"',
            ]
            if mode == "on":
                lines += [
                    f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"',
                    f'[notify]\nurl = "http://127.0.0.1:{hook.server_address[1]}/hook"',
                    'secret_file = "secret"',
                ]
            config = home / "personsd.toml"
            config.write_text("\n".join(lines) + "\n")
            base = [sys.executable, "-m", "personsd", "--config", str(config)]

            def cli(*args: str) -> None:
                subprocess.run([*base, *args], check=True, env=env, capture_output=True)

            cli("tenants", "add", TENANT)
            for name, type_, options in generate.CUSTOM_FIELDS:
                extra = ["--options", options] if options else []
                cli("fields", "add", "--tenant", TENANT, name, "--type", type_, *extra)
            log = (home / "daemon.log").open("ab")
            daemon = subprocess.Popen([*base, "run"], stdout=log, stderr=subprocess.STDOUT, env=env)
            log.close()
            stop = threading.Event()
            scrapes = [0]
            try:
                _wait(lambda: b"daemon.started" in (home / "daemon.log").read_bytes(), 60)
                time.sleep(1.0)  # the database prepared, the workers idle
                if mode == "on":
                    url = f"http://127.0.0.1:{metrics_port}/metrics"
                    threading.Thread(target=_scrape, args=(url, stop, scrapes), daemon=True).start()
                inbox = home / "var" / "tenants" / TENANT / "inbox"
                staged = inbox.parent / "staged.persons"
                shutil.copyfile(source, staged)
                outbox = inbox.parent / "outbox"
                dropped = time.perf_counter()
                os.replace(staged, inbox / "bench.persons")
                _wait(lambda: any(outbox.glob("bench.persons.*.summary.json")), 1800)
                took = time.perf_counter() - dropped
                summary = json.loads(next(outbox.glob("bench.persons.*.summary.json")).read_text())
                if summary["rows"]["succeeded"] != rows:
                    raise RuntimeError(f"the import did not succeed: {summary['rows']}")
                if mode == "on":
                    _wait(lambda: hook.calls >= 1, 30)  # type: ignore[attr-defined]
                    if scrapes[0] == 0:
                        raise RuntimeError("no scrape succeeded")
            finally:
                stop.set()
                daemon.terminate()
                daemon.wait(30)
        return took
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _wait(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise RuntimeError(f"timed out after {timeout} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pythonpath", type=Path, default=None, help="another checkout's daemon/")
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    if args.pythonpath is not None:
        env["PYTHONPATH"] = str(args.pythonpath.resolve())
    source = generate.cached(args.rows)
    modes = args.modes.split(",")
    seconds: dict[str, list[float]] = {m: [] for m in modes}
    for repeat in range(args.repeats):
        for mode in modes:
            with tempfile.TemporaryDirectory() as folder, scratch_db(args.db, Path(folder)) as url:
                took = one_run(mode, args.rows, source, url, env)
            seconds[mode].append(took)
            print(
                f"{args.db} {mode:<3} #{repeat + 1}: {took:6.2f} s {args.rows / took:8.0f} rows/s",
                file=sys.stderr,
                flush=True,
            )
    for mode in modes:
        median = statistics.median(seconds[mode])
        rate = args.rows / median
        print(f"{args.db} metrics+webhooks {mode}: median {median:.2f} s, {rate:.0f} rows/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
