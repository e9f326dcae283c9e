"""Several instances (SPEC 12): 6 tenants' files through 1 daemon, then through 2.

Each round: a fresh PostgreSQL schema, 6 tenants with the bench's custom
fields, N real daemons (``personsd run``, SFTP off, ``import.workers = 2``,
their own ``cluster.instance``) on one root. The six files (``rows`` new
persons each, distinct per tenant) are dropped into the inboxes at once; the
clock runs from the drop to the last import completed (polled in the
database). CPU seconds are the daemons' own (user + system, from ``wait4``),
not the database server's; the server's share is read from
``pg_stat_statements``-free figures: the rows/s per instance and total.

    python bench/instances.py [--rows 50000] [--tenants 6] [--max-instances 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import generate
from common import CLEAN_ENV, Spawned, scratch_db, spawn

TENANTS = 6
POLL_SECONDS = 0.2
TIMEOUT_SECONDS = 1800


@dataclass(frozen=True, kw_only=True, slots=True)
class Round:
    instances: int
    tenants: int
    rows: int
    seconds: float
    cpu_seconds: float
    per_instance: dict[str, int]

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def line(self, baseline: Round | None = None) -> str:
        spread = ", ".join(f"{k}: {v}" for k, v in sorted(self.per_instance.items()))
        speedup = f", x{self.rate / baseline.rate:.2f} of 1 instance" if baseline else ""
        return (
            f"{self.instances} instance(s), {self.tenants} tenants x {self.rows // self.tenants}"
            f" rows (PostgreSQL): {self.seconds:.1f} s, {self.rate:,.0f} rows/s,"
            f" {self.cpu_seconds:.1f} daemon CPU s{speedup}; imports per instance: {spread}"
        )


def _setup(url: str, tenants: list[str]) -> None:
    from personsd.fieldtypes import CustomField, FieldType
    from personsd.store import db
    from personsd.store import fields as store_fields
    from personsd.store import tenants as store_tenants

    engine = db.connect(url)
    try:
        db.upgrade(engine)
        with db.write_tx(engine) as conn:
            for tenant in tenants:
                tenant_id = store_tenants.add_tenant(conn, tenant)
                for name, type_, options in generate.CUSTOM_FIELDS:
                    field = CustomField(
                        name=name,
                        type=FieldType(type_),
                        options=tuple(options.split(",")) if options else (),
                    )
                    store_fields.add_field(conn, tenant_id, field)
    finally:
        engine.dispose()


def _config(home: Path, url: str, root: Path, name: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    config = home / "personsd.toml"
    config.write_text(
        f"[database]\nurl = {json.dumps(url)}\n"
        f"[paths]\nroot = {json.dumps(str(root))}\n"
        "[sftp]\nenabled = false\n"
        '[import]\ncarrier_lookup = "offline"\nworkers = 2\nrescan_seconds = 2\n'
        f"[cluster]\ninstance = {json.dumps(name)}\n"
        '[log]\nformat = "json"\nlevel = "warning"\n'
    )
    return config


def _finished(url: str, expected: int) -> dict[str, int] | None:
    from sqlalchemy import text

    from personsd.store import db

    engine = db.connect(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT status, lease_holder FROM imports WHERE reports_published")
            ).all()
    finally:
        engine.dispose()
    done = [holder for status, holder in rows if status == "completed"]
    if len(done) < expected:
        return None
    counts: dict[str, int] = {}
    for holder in done:
        counts[holder] = counts.get(holder, 0) + 1
    return counts


def run_round(work: Path, instances: int, rows: int, tenants: int = TENANTS) -> Round:
    """N daemons on one root and schema; 6 files of ``rows`` rows dropped at once."""
    names = [f"bench{n}" for n in range(tenants)]
    root = work / f"root-{instances}"
    sources = []
    for index, _tenant in enumerate(names):
        # Distinct persons per tenant: each file starts where the last ended.
        path = work / f"tenant{index}-{rows}.persons"
        if not path.exists():
            generate.write(path, rows, start=index * rows)
        sources.append(path)
    with scratch_db("postgresql", work) as url:
        _setup(url, names)
        for tenant in names:
            (root / "tenants" / tenant / "inbox").mkdir(parents=True, exist_ok=True)
            (root / "tenants" / tenant / "outbox").mkdir(parents=True, exist_ok=True)
        daemons: list[Spawned] = []
        try:
            for n in range(instances):
                config = _config(work / f"node-{instances}-{n}", url, root, f"node-{n}")
                log = (config.parent / "daemon.log").open("wb")
                daemons.append(
                    spawn(
                        [sys.executable, "-m", "personsd", "--config", str(config), "run"],
                        stdout=log,
                        stderr=log,
                        env=CLEAN_ENV,
                    )
                )
            time.sleep(3.0)  # start-up: migrations checked, workers polling
            started = time.perf_counter()
            for tenant, source in zip(names, sources, strict=True):
                inbox = root / "tenants" / tenant / "inbox"
                os.link(source, inbox / f".{source.name}")
                os.replace(inbox / f".{source.name}", inbox / "nightly.persons")
            deadline = time.monotonic() + TIMEOUT_SECONDS
            while (spread := _finished(url, tenants)) is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{instances} instance(s): imports not done")
                time.sleep(POLL_SECONDS)
            seconds = time.perf_counter() - started
        finally:
            cpu = 0.0
            for daemon in daemons:
                daemon.proc.send_signal(signal.SIGTERM)
            for daemon in daemons:
                _code, _wall, _rss, used = daemon.finish(timeout=30)
                cpu += used
    return Round(
        instances=instances,
        tenants=tenants,
        rows=rows * tenants,
        seconds=seconds,
        cpu_seconds=cpu,
        per_instance=spread,
    )


def compare(work: Path, rows: int, max_instances: int = 2) -> list[Round]:
    """One round per instance count, 1 first (the baseline)."""
    work.mkdir(parents=True, exist_ok=True)
    return [run_round(work, n, rows) for n in range(1, max_instances + 1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="rows per tenant's file")
    parser.add_argument("--max-instances", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path(__file__).parent / "data" / "instances")
    args = parser.parse_args(argv)
    rounds = compare(args.work, args.rows, args.max_instances)
    for result in rounds:
        print(result.line(rounds[0] if result is not rounds[0] else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
