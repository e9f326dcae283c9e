"""SPEC 5 database outage: ``personsd run`` on a PostgreSQL cluster that really stops.

The shared PostgreSQL of the machine serves other tests in parallel, so this
module starts a private cluster (``initdb``/``pg_ctl`` as the ``postgres``
user, trust authentication, a free port) and stops and starts that one.
Without the binaries the module is skipped, except in CI
(``PERSONSD_TEST_REQUIRE_PG``), where it fails.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import REQUIRE_PG
from daemon_helpers import Daemon, drop_file, free_port, sftp_put, ssh_key
from personsd.store import db
from polling import wait_for
from test_daemon_crash import (
    TENANT,
    Watch,
    comparable_summary,
    normalised_export,
    site,
    start,
    write_persons_file,
)
from test_daemon_faults import cpu_seconds

pytestmark = pytest.mark.slow

OUTAGE = 4.0  # seconds the database stays down while files arrive
BIG_ROWS = 30_000
BIG_CHUNK = 2000


# -- a private cluster -----------------------------------------------------------------


def _pg_bin() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class Cluster:
    """A throwaway PostgreSQL cluster in a temp dir, run as ``postgres`` when we are root."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        # Not under pytest's tmp dir: that one is private to root.
        self.base = Path(tempfile.mkdtemp(prefix="personsd-pg-"))
        self.data = self.base / "data"
        self.sockets = self.base / "sockets"
        self.sockets.mkdir()
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            for path in (self.base, self.sockets):
                shutil.chown(path, "postgres", "postgres")
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / tool), *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(
            command, capture_output=True, text=True, check=True, timeout=60, cwd=self.base
        )

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c max_connections=50"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.log),
            "-w",
            "-t",
            "30",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def is_running(self) -> bool:
        command = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "status"]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, check=False).returncode == 0

    @property
    def log(self) -> Path:
        return self.base / "server.log"

    def schema_url(self, *settings: str) -> str:
        """A fresh schema of its own, like conftest's ``pg_url``; ``settings`` as ``-c``."""
        schema = "t_" + uuid.uuid4().hex[:16]
        conninfo = self.url.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'create schema "{schema}"')
        options = "%20".join(
            f"-c{item.replace('=', '%3D')}" for item in (f"search_path={schema}", *settings)
        )
        return f"{self.url}?options={options}"

    def remove(self) -> None:
        if self.is_running():
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    bindir = _pg_bin()
    reason = None if bindir is not None else "no initdb found (/usr/lib/postgresql/*/bin)"
    made: Cluster | None = None
    if bindir is not None:
        try:
            made = Cluster(bindir)
            made.start()
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", "") or ""
            reason = f"cannot run a private PostgreSQL cluster: {exc} {detail}".strip()
    if made is None or reason is not None:
        if made is not None:
            made.remove()
        if REQUIRE_PG:
            pytest.fail(f"{reason} (PERSONSD_TEST_REQUIRE_PG is set)")
        pytest.skip(reason or "")
    try:
        yield made
    finally:
        made.remove()


@pytest.fixture
def down_guard(cluster: Cluster) -> Iterator[Cluster]:
    """Whatever a test did, the next one finds the cluster up."""
    yield cluster
    if not cluster.is_running():
        cluster.start()


# -- helpers -----------------------------------------------------------------------------


def small_file(index: int) -> str:
    """Ten rows of its own ext ids (no two files share a person), one malformed MDN."""
    base = 1_000 * index
    lines = ["external_person_id,mdn,first_name\n"]
    lines += [f"f{base + i},+1{3000000000 + base + i},n{i}\n" for i in range(1, 10)]
    lines.append(f"f{base + 10},12345,bad\n")
    return "".join(lines)


def sftp_upload(daemon: Daemon, key: Path, name: str, text: str, folder: Path) -> None:
    local = folder / name
    local.write_text(text)
    sftp_put(daemon.port, TENANT, key, local)


def files_anywhere(daemon: Daemon, name: str) -> list[Path]:
    """Every copy of ``name`` under the daemon's root (inbox, claimed, archive)."""
    return [
        p
        for p in daemon.root.rglob(f"*{name}")
        if p.is_file() and not p.name.endswith((".summary.json", ".errors.csv"))
    ]


def key_spec(private: Path) -> tuple[str, str]:
    kind, data = Path(f"{private}.pub").read_text().split()[:2]
    return kind, data


def summaries(daemon: Daemon) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in daemon.outbox(TENANT).glob("*.summary.json"):
        summary = json.loads(path.read_text())
        assert summary["file"] not in found, f"{summary['file']} has two summaries"
        found[summary["file"]] = summary
    return found


def fresh_watch(url: str) -> Watch:
    return Watch(engine=db.connect(url), tenant=TENANT)


# -- the tests ---------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_files_arriving_while_the_database_is_down_are_all_imported_once(
    down_guard: Cluster, tmp_path: Path
) -> None:
    """SPEC 5: database down, uploads are accepted and queued; each is imported once after."""
    cluster = down_guard
    key = ssh_key(tmp_path)
    daemon = site(
        tmp_path / "home",
        cluster.schema_url(),
        keys=(key_spec(key),),
        extra={"sftp": {"enabled": True}},
    )
    files = {f"night{i}.persons": small_file(i) for i in range(1, 5)}
    try:
        start(daemon)
        wait_for(
            lambda: (daemon.root / "state" / "tenants.json").exists(), what="the tenant snapshot"
        )
        cluster.stop("fast")
        names = sorted(files)
        for name in names[:3]:
            drop_file(daemon.inbox(TENANT), name, files[name])
        # The SFTP login works from the snapshot: the database is down.
        sftp_upload(daemon, key, names[3], files[names[3]], tmp_path)

        assert daemon.proc is not None
        cpu_before = cpu_seconds(daemon.proc.pid)
        time.sleep(OUTAGE)
        # Issue 9: waiting is not spinning (< 5 CPU-s in 20 s; the same share here).
        cpu_share = (cpu_seconds(daemon.proc.pid) - cpu_before) / OUTAGE
        assert daemon.proc.poll() is None, "the daemon died"
        assert cpu_share < 0.25, f"{cpu_share:.0%} of a CPU while the database was down"
        assert daemon.has_event("db.unavailable")
        assert {} == summaries(daemon)
        assert {name: 1 for name in names} == {
            name: len(files_anywhere(daemon, name)) for name in names
        }, "a file went missing"

        cluster.start()
        wait_for(
            lambda: len(summaries(daemon)) == len(files),
            timeout=90,
            interval=0.2,
            what="four summaries",
        )
        watch = fresh_watch(daemon.db_url)
        try:
            imports = watch.imports()
        finally:
            watch.engine.dispose()
        export = daemon.export(TENANT)
        assert 0 == daemon.stop()
    finally:
        if daemon.proc is not None:
            daemon.kill()

    found = summaries(daemon)
    assert {name: "completed" for name in names} == {n: s["status"] for n, s in found.items()}
    assert {
        name: {"total": 10, "succeeded": 9, "failed": 1, "created": 9, "updated": 0}
        for name in names
    } == {n: s["rows"] for n, s in found.items()}
    assert sorted(names) == sorted(record.file_name for record in imports), "imported twice?"
    exported = {line.split(",")[2] for line in export.splitlines()[1:]}
    assert {f"f{1000 * i + r}" for i in range(1, 5) for r in range(1, 10)} == exported


@pytest.mark.timeout(240)
def test_an_import_cut_off_by_a_database_crash_completes_with_the_same_result(
    down_guard: Cluster, tmp_path: Path
) -> None:
    """SPEC 5: the database dies mid-import; once back, the import ends as if never cut."""
    cluster = down_guard
    source = write_persons_file(tmp_path / "big.persons", BIG_ROWS)
    daemon = site(
        tmp_path / "home",
        cluster.schema_url(),
        tenants=(TENANT, "reference"),
        extra={"import": {"chunk_rows": BIG_CHUNK}},
    )
    # The uninterrupted run first, before the daemon exists: nothing can take it over.
    done = daemon.cli("import", str(source), "--tenant", "reference")
    expected = json.loads(done.stdout)
    expected_errors = (daemon.outbox("reference") / expected["reports"]["errors"]).read_bytes()
    expected_export = normalised_export(daemon.export("reference"))

    watch = fresh_watch(daemon.db_url)
    try:
        start(daemon)
        drop_file(daemon.inbox(TENANT), source.name, source.read_text())
        watch.wait_rows(BIG_ROWS // 4)
        cut_at = watch.rows_done()
        watch.engine.dispose()
        cluster.stop("immediate")  # as a crash: no shutdown checkpoint, clients cut off
        time.sleep(2.0)
        assert daemon.proc is not None and daemon.proc.poll() is None, "the daemon died"
        cluster.start()
        summary = daemon.summary(TENANT, source.name, timeout=120)
        imports = watch.imports()
        export = normalised_export(daemon.export(TENANT))
        assert 0 == daemon.stop()
    finally:
        watch.engine.dispose()
        if daemon.proc is not None:
            daemon.kill()

    assert cut_at < BIG_ROWS, "the database stopped after the import, not during it"
    assert daemon.has_event("import.waiting", import_id=summary["import_id"])
    assert [summary["import_id"]] == [record.id for record in imports]
    assert "completed" == summary["status"]
    assert comparable_summary(expected) == comparable_summary(summary)
    assert expected_errors == (daemon.outbox(TENANT) / summary["reports"]["errors"]).read_bytes()
    assert expected_export == export


@pytest.mark.timeout(120)
def test_person_lookups_keep_using_the_unique_indexes_as_the_table_grows(
    down_guard: Cluster, tmp_path: Path
) -> None:
    """SPEC 5 (any file size): each chunk's lookups probe the (tenant, key) unique indexes.

    On a table without statistics (autovacuum has not analysed it yet; the
    CI server runs without autovacuum), PostgreSQL estimates that a tenant has
    a handful of persons and plans ``tenant_id = $1 AND mdn = ANY($2)`` as a
    scan of the whole tenant filtered by the array: every chunk then reads
    all the tenant's persons (quadratic import), and once psycopg prepares
    the statement (6th run) the generic plan's filter is a linear search of
    the array for each of them (seconds per chunk at 30,000 persons).
    auto_explain (superuser, per session) logs the plan of every statement.
    """
    cluster = down_guard
    url = cluster.schema_url(
        "session_preload_libraries=auto_explain", "auto_explain.log_min_duration=0"
    )
    source = write_persons_file(tmp_path / "grow.persons", 12_000)
    daemon = site(tmp_path / "home", url, extra={"import": {"chunk_rows": 200}})
    start_of_log = cluster.log.stat().st_size
    daemon.cli("import", str(source), "--tenant", TENANT)
    with cluster.log.open("rb") as log:
        log.seek(start_of_log)
        text = log.read().decode(errors="replace")
    lookups = 0
    scans: list[str] = []
    plans = text.split(" plan:\n")[1:]
    # While the table is small a scan is the right plan; once it has grown
    # (the last third of the import) every lookup must probe the index.
    for plan in plans[2 * len(plans) // 3 :]:
        query = plan.split("\n", 1)[0]
        if "CROSS JOIN LATERAL (SELECT" not in query:
            continue
        lookups += 1
        column = query.split("tenant_id = $2 AND ", 1)[1].split(" ", 1)[0]
        probes = [line for line in plan.splitlines() if "Index Cond:" in line and column in line]
        if not probes:
            scans.append(
                f"{column}: " + " | ".join(line.strip() for line in plan.splitlines()[1:4])
            )
    assert lookups >= 2 * 60 // 3 - 2, "auto_explain did not log every chunk's lookups"
    assert [] == scans, f"{len(scans)} of {lookups} lookups scanned the whole tenant"
