"""Plumbing shared by the benchmark's parts: measured subprocesses and scratch databases.

Every measured thing runs in a child process of its own, and its peak RSS is
the kernel's figure for that one process (``wait4`` in a small launcher), so
measurements never inherit each other's memory, nor this process's. A
database server's own memory is not counted (the same server serves every
measurement).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
PG_URL = os.environ.get(
    "PERSONSD_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
TENANT = "bench"
# personsd reads these; a shell's own must not redirect the bench's sites.
CLEAN_ENV: dict[str, str | None] = {"PERSONSD_CONFIG": None, "PERSONSD_DATABASE_URL": None}


@dataclass(frozen=True, kw_only=True, slots=True)
class Measured:
    """One child process: exit code, wall time, peak RSS, and what it printed."""

    returncode: int
    seconds: float
    peak_rss_mb: float
    cpu_seconds: float  # the child's own user + system time
    stdout: str
    stderr: str

    def check(self, what: str) -> Measured:
        if self.returncode != 0:
            raise RuntimeError(f"{what} exited {self.returncode}:\n{self.stderr[-4000:]}")
        return self

    def json(self) -> Any:
        return json.loads(self.stdout)


# Linux gives a child the memory high-water mark of the image it exec'ed
# from, so a child of this (large) process would report at least this
# process's RSS. A small launcher, a bare interpreter, forks the measured
# command from its own few MB and reports that grandchild's rusage. The
# kernel's peak is per process (personsd's validator process is a second
# one), so the launcher also samples the memory of the command's whole
# process tree every 100 ms (the sum of each process's PSS: private pages,
# plus shared ones divided among the processes sharing them) and reports the
# larger of the two peaks.
_LAUNCHER = """
import os, signal, sys, threading
report, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, lambda signum, frame: os.kill(pid, signum))

def memory_kb(p):
    # Pss: shared pages (the interpreter, libraries) counted once across the tree.
    for name, key in ((f"/proc/{p}/smaps_rollup", "Pss:"), (f"/proc/{p}/status", "VmRSS:")):
        try:
            with open(name) as fh:
                return next(int(l.split()[1]) for l in fh if l.startswith(key))
        except (OSError, StopIteration, ValueError):
            continue
    return 0

def tree_kb(root):
    total, todo = 0, [root]
    while todo:
        p = todo.pop()
        total += memory_kb(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except (OSError, ValueError):
            pass
    return total

peak, done = [0], threading.Event()
def sample():
    while not done.wait(0.1):
        peak[0] = max(peak[0], tree_kb(pid))
threading.Thread(target=sample, daemon=True).start()
_, status, usage = os.wait4(pid, 0)
done.set()
with open(report, "w") as fh:
    fh.write(f"{max(usage.ru_maxrss, peak[0])} {usage.ru_utime + usage.ru_stime}")
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


@dataclass(frozen=True, kw_only=True, slots=True)
class Spawned:
    """A command started through the launcher; ``finish`` reaps it."""

    proc: subprocess.Popen[bytes]
    report: Path
    started: float

    def finish(self, timeout: float | None = None) -> tuple[int, float, float, float]:
        """(exit code, wall seconds, peak RSS MB, CPU seconds) of the measured command."""
        code = self.proc.wait(timeout)
        seconds = time.perf_counter() - self.started
        try:
            maxrss_kb, cpu = self.report.read_text().split()
        finally:
            self.report.unlink(missing_ok=True)
        return code, seconds, int(maxrss_kb) / 1024, float(cpu)


def spawn(
    argv: Sequence[str],
    *,
    stdout: IO[bytes] | int | None = None,
    stderr: IO[bytes] | int | None = None,
    cwd: Path | None = None,
    env: dict[str, str | None] | None = None,
) -> Spawned:
    """Start ``argv`` under the launcher; signals to ``proc`` reach the command.

    ``env`` adds variables to this process's environment; None removes one.
    """
    child_env = {**os.environ, **(env or {})}
    environment = {name: value for name, value in child_env.items() if value is not None}
    report = Path(tempfile.gettempdir()) / f"bench-rusage-{uuid.uuid4().hex}"
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(report), *argv],
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        env=environment,
    )
    return Spawned(proc=proc, report=report, started=started)


def measure(
    argv: Sequence[str], *, cwd: Path | None = None, env: dict[str, str | None] | None = None
) -> Measured:
    """Run ``argv`` to completion: its wall time, peak RSS and CPU time, and its output."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        code, seconds, rss_mb, cpu = spawn(argv, stdout=out, stderr=err, cwd=cwd, env=env).finish()
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
    return Measured(
        returncode=code,
        seconds=seconds,
        peak_rss_mb=rss_mb,
        cpu_seconds=cpu,
        stdout=stdout,
        stderr=stderr,
    )


def python(script: str, *args: str) -> list[str]:
    """argv running a bench script with this interpreter."""
    return [sys.executable, str(BENCH_DIR / script), *args]


def pg_conninfo(url: str) -> str:
    """A libpq URI for psycopg from a SQLAlchemy URL."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def pg_available() -> str | None:
    """Why PostgreSQL cannot be used, or None."""
    import psycopg

    try:
        with psycopg.connect(pg_conninfo(PG_URL), connect_timeout=3) as conn:
            conn.execute("select 1")
    except psycopg.Error as exc:  # any failure to connect means "not here"
        return f"PostgreSQL at {PG_URL} unreachable: {exc}"
    return None


@contextmanager
def pg_schema(url: str, prefix: str) -> Iterator[str]:
    """``url`` with its search_path on a fresh schema (``prefix`` + random hex), dropped after.

    tests/conftest.py gives every PostgreSQL test its schema through this too.
    """
    import psycopg

    schema = prefix + uuid.uuid4().hex[:16]
    with psycopg.connect(pg_conninfo(url), autocommit=True) as conn:
        conn.execute(f'create schema "{schema}"')
    sep = "&" if "?" in url else "?"
    try:
        yield f"{url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(pg_conninfo(url), autocommit=True) as conn:
            conn.execute(f'drop schema "{schema}" cascade')


@contextmanager
def scratch_db(kind: str, folder: Path) -> Iterator[str]:
    """A SQLAlchemy URL of an empty database: a fresh SQLite file, or a fresh PG schema."""
    if kind == "sqlite":
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"persons-{uuid.uuid4().hex[:8]}.db"
        try:
            yield f"sqlite:///{path}"
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    with pg_schema(PG_URL, "bench_") as url:
        yield url


def personsd_schema(url: str, fields: Sequence[tuple[str, str, str | None]] = ()) -> int:
    """Migrate ``url`` to personsd's schema and add the bench tenant; its id.

    ``fields`` are the tenant's custom fields, ``(name, type, options)`` as for
    ``personsd fields add``, stored through personsd's own store code.
    """
    from sqlalchemy import text

    from personsd.fieldtypes import CustomField, FieldType
    from personsd.store import db
    from personsd.store import fields as store_fields

    engine = db.connect(url)
    try:
        db.upgrade(engine)
        with db.write_tx(engine) as conn:
            conn.execute(
                text("INSERT INTO tenants (name, created_at) VALUES (:n, :t)"),
                {"n": TENANT, "t": _now_param(conn.dialect.name)},
            )
            tenant_id = conn.execute(
                text("SELECT id FROM tenants WHERE name = :n"), {"n": TENANT}
            ).scalar_one()
            for name, type_, options in fields:
                store_fields.add_field(
                    conn,
                    int(tenant_id),
                    CustomField(
                        name=name,
                        type=FieldType(type_),
                        options=tuple(options.split(",")) if options else (),
                    ),
                )
    finally:
        engine.dispose()
    return int(tenant_id)


# What a SQLite connection's speed depends on; foreign_keys so the limit checks
# the tenant reference as personsd's writes do.
SQLITE_PRAGMAS = (
    "journal_mode",
    "synchronous",
    "foreign_keys",
    "cache_size",
    "temp_store",
    "mmap_size",
    "locking_mode",
)


def sqlite_pragmas(url: str) -> list[str]:
    """``NAME=VALUE`` of each of ``SQLITE_PRAGMAS`` on a connection personsd opens."""
    from personsd.store import db

    engine = db.connect(url)
    try:
        with engine.connect() as conn:
            return [
                f"{name}={conn.exec_driver_sql(f'PRAGMA {name}').scalar()}"
                for name in SQLITE_PRAGMAS
            ]
    finally:
        engine.dispose()


def _now_param(dialect: str) -> object:
    from personsd.store.models import sqlite_timestamp

    moment = datetime.now(UTC)
    return sqlite_timestamp(moment) if dialect == "sqlite" else moment


def versions() -> dict[str, str]:
    """Python, SQLite, PostgreSQL and library versions, for the results page."""
    import sqlite3

    import phonenumbers
    import sqlalchemy

    found = {
        "Python": sys.version.split()[0],
        "SQLite": sqlite3.sqlite_version,
        "SQLAlchemy": sqlalchemy.__version__,
        "phonenumbers": phonenumbers.__version__,
    }
    if pg_available() is None:
        import psycopg

        with psycopg.connect(pg_conninfo(PG_URL)) as conn:
            row = conn.execute("show server_version").fetchone()
        found["PostgreSQL"] = str(row[0]) if row else "?"
        found["psycopg"] = psycopg.__version__
    return found
