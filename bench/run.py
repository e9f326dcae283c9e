"""personsd's benchmark: rows/s and peak RSS against two references and the usual alternative.

In one run on one machine, for each size and database: a raw copy of the
file's columns into a plain table (``raw.py``), the limit (COPY /
executemany of the rows personsd writes, no validation, ``limit.py``), personsd through
its real CLI (an initial load of new persons, then the same file again as a
delta of updates), and, once per database on the first rows of the file, a
row-at-a-time ORM import (``alternative.py``). Then the daemon's latency
from an SFTP upload's close to its summary (``latency.py``). Prints a table
and writes it to ``bench/results.md``. See bench/README.md.

    python bench/run.py [--sizes 100000,1000000] [--with-10m] [--db sqlite,postgresql] [--quick]
                        [--personsd-only] [--instance-rows N] [--no-instances]

With PostgreSQL, last: 6 tenants' files through 1 daemon, then 2 daemons on
one root and database (``instances.py``), one line each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import generate
import instances
import latency
import layered
import report
from common import (
    BENCH_DIR,
    CLEAN_ENV,
    TENANT,
    Measured,
    measure,
    personsd_schema,
    pg_available,
    python,
    scratch_db,
    sqlite_pragmas,
)
from report import Result

DEFAULT_SIZES = (100_000, 1_000_000)
QUICK_SIZE = 20_000
DATABASES = ("sqlite", "postgresql")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def record(result: Result) -> Result:
    log(
        f"  {result.db:<10} {result.size:>9} {result.what:<22} {result.rows:>9} rows "
        f"{result.seconds:8.2f} s ({result.cpu_seconds:6.2f} CPU s) {result.rate:8.0f} rows/s "
        f"{result.peak_rss_mb:7.1f} MB"
    )
    return result


def run_raw(db: str, size: int, path: Path, work: Path) -> Result:
    """The file's columns into a plain table with two unique indexes: bare ingest speed."""
    with scratch_db(db, work) as url:
        pragmas = sqlite_pragmas(url) if db == "sqlite" else []
        measured = measure(
            python("raw.py", "--url", url, *(f"--pragma={p}" for p in pragmas), str(path))
        ).check(f"raw copy on {db}")
    return record(
        Result(
            db=db,
            size=size,
            what="raw copy",
            rows=int(measured.json()["rows"]),
            seconds=float(measured.json()["seconds"]),
            peak_rss_mb=measured.peak_rss_mb,
            cpu_seconds=measured.cpu_seconds,
        )
    )


def run_limit(db: str, size: int, path: Path, work: Path) -> Result:
    """The rows personsd writes, straight into its persons table."""
    with scratch_db(db, work) as url:
        tenant_id = personsd_schema(url, generate.CUSTOM_FIELDS)
        pragmas = sqlite_pragmas(url) if db == "sqlite" else []
        measured = measure(
            python(
                "limit.py",
                "--url",
                url,
                "--tenant-id",
                str(tenant_id),
                *(f"--pragma={p}" for p in pragmas),
                str(path),
            )
        ).check(f"limit on {db}")
    rows = int(measured.json()["rows"])
    # The database's own time (rows encoded beforehand): the ceiling to compare with.
    seconds = float(measured.json()["seconds"])
    return record(
        Result(
            db=db,
            size=size,
            what="limit",
            rows=rows,
            seconds=seconds,
            peak_rss_mb=measured.peak_rss_mb,
            cpu_seconds=measured.cpu_seconds,
        )
    )


def run_alternative(db: str, path: Path, rows: int, work: Path) -> list[Result]:
    """The ORM import of the first ``rows`` rows: new persons, then the same rows again."""
    results = []
    with scratch_db(db, work) as url:
        tenant_id = personsd_schema(url)
        for what, expected in (("initial", "created"), ("delta", "updated")):
            measured = measure(
                python(
                    "alternative.py",
                    "--url",
                    url,
                    "--tenant-id",
                    str(tenant_id),
                    "--rows",
                    str(rows),
                    str(path),
                )
            )
            counts = measured.check(f"alternative on {db}").json()
            if counts[expected] != counts["rows"]:
                log(f"  warning: alternative {what} on {db}: {counts}")
            results.append(
                record(
                    Result(
                        db=db,
                        size=rows,
                        what=f"alternative {what}",
                        rows=int(counts["rows"]),
                        seconds=measured.seconds,
                        peak_rss_mb=measured.peak_rss_mb,
                        cpu_seconds=measured.cpu_seconds,
                        failed=int(counts["failed"]),
                    )
                )
            )
    return results


def write_site(home: Path, url: str, gnupg: Path | None = None) -> Path:
    """A personsd installation using ``url``: config, the bench tenant and its fields."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "personsd.toml"
    config.write_text(
        f"[database]\nurl = {json.dumps(url)}\n"
        '[paths]\nroot = "var"\n'
        '[sftp]\nhost_key = "var/host_key"\n'
        '[import]\ncarrier_lookup = "offline"\n'
        '[log]\nformat = "json"\nlevel = "info"\n'
        + (f"[pgp]\nhome = {json.dumps(str(gnupg))}\n" if gnupg else "")
    )
    add_tenant(config, TENANT)
    return config


def add_tenant(config: Path, tenant: str) -> None:
    personsd_cli(config, "tenants", "add", tenant).check("personsd tenants add")
    for name, type_, options in generate.CUSTOM_FIELDS:
        personsd_cli(
            config,
            "fields",
            "add",
            "--tenant",
            tenant,
            name,
            "--type",
            type_,
            *(["--options", options] if options else []),
        ).check("personsd fields add")


def personsd_cli(config: Path, *args: str) -> Measured:
    return measure(
        [sys.executable, "-m", "personsd", "--config", str(config), *args], env=CLEAN_ENV
    )


def run_personsd(db: str, size: int, path: Path, work: Path) -> list[Result]:
    """Fixed cost (a file with no rows), the initial load, then the same file as a delta.

    Each load is preceded by a validation of the same file (``import
    --validate``): what checking a file costs beside importing it.
    """
    empty = work / "empty.persons"
    empty.write_text(generate.HEADER + "\n")
    results = []
    with scratch_db(db, work) as url:
        home = work / f"site-{db}-{size}"
        config = write_site(home, url)
        try:
            for what, source, expected, mode in (
                ("personsd fixed cost", empty, None, ()),
                ("personsd validate initial", path, "created", ("--validate",)),
                ("personsd initial", path, "created", ()),
                ("personsd validate delta", path, "updated", ("--validate",)),
                ("personsd delta", path, "updated", ()),
            ):
                results.append(import_result(config, db, size, what, source, expected, mode))
        finally:
            shutil.rmtree(home, ignore_errors=True)
    return results


def run_layered(db: str, size: int, path: Path, work: Path) -> list[Result]:
    """The file as .gz and as .gz.pgp, each an initial load into a fresh database.

    A fresh database each, as for the plain file's initial load: a second
    tenant's initial load beside a loaded one is another measurement.
    """
    results = []
    gnupg = layered.gnupg_home()
    wrapped: dict[str, Path] = {}
    try:
        for what, suffix in layered.LINES:
            with scratch_db(db, work) as url:
                home = work / f"site-{db}-{size}{suffix}"
                config = write_site(home, url, gnupg)
                try:
                    if not wrapped:
                        personsd_cli(config, "pgp", "init").check("personsd pgp init")
                        public = personsd_cli(config, "pgp", "public-key").check("pgp public-key")
                        wrapped = layered.files(path, work, public.stdout.encode())
                    results.append(
                        import_result(config, db, size, what, wrapped[suffix], "created")
                    )
                finally:
                    shutil.rmtree(home, ignore_errors=True)
    finally:
        subprocess.run(["gpgconf", "--homedir", str(gnupg), "--kill", "gpg-agent"], check=False)
        shutil.rmtree(gnupg, ignore_errors=True)
        for made in wrapped.values():
            made.unlink(missing_ok=True)
    return results


def import_result(
    config: Path,
    db: str,
    size: int,
    what: str,
    source: Path,
    expected: str | None,
    options: tuple[str, ...] = (),
) -> Result:
    """``personsd import SOURCE [OPTIONS]`` for the bench tenant, measured."""
    measured = personsd_cli(config, "import", str(source), "--tenant", TENANT, *options)
    summary = measured.check(f"personsd import on {db}").json()
    counts = summary["rows"]
    if expected and (counts[expected] != counts["total"] or counts["failed"]):
        log(f"  warning: {what} on {db}: rows {counts}, errors {summary['errors']}")
    return record(
        Result(
            db=db,
            size=size,
            what=what,
            rows=int(counts["total"]),
            seconds=measured.seconds,
            peak_rss_mb=measured.peak_rss_mb,
            cpu_seconds=measured.cpu_seconds,
            failed=int(counts["failed"]),
        )
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default=",".join(map(str, DEFAULT_SIZES)),
        help="comma-separated row counts (default: 100000,1000000)",
    )
    parser.add_argument("--with-10m", action="store_true", help="also 10,000,000 rows")
    parser.add_argument(
        "--db",
        default=",".join(DATABASES),
        help="comma-separated: sqlite, postgresql (default: both)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: {QUICK_SIZE} rows, a small ORM subset, 3 uploads",
    )
    parser.add_argument(
        "--alt-rows",
        type=int,
        default=None,
        help="rows of the ORM alternative (default 10000; 2000 with --quick)",
    )
    parser.add_argument(
        "--latency-repeats",
        type=int,
        default=None,
        help="measured uploads (default 7; 3 with --quick)",
    )
    parser.add_argument("--no-latency", action="store_true", help="skip the daemon latency")
    parser.add_argument(
        "--personsd-only",
        action="store_true",
        help="skip the two references and the alternative (a 10M-row memory check)",
    )
    parser.add_argument(
        "--instance-rows",
        type=int,
        default=None,
        help="rows per tenant in the instances line (default 50000; 5000 with --quick)",
    )
    parser.add_argument(
        "--no-instances", action="store_true", help="skip the 2 instances vs 1 line"
    )
    parser.add_argument("--output", type=Path, default=BENCH_DIR / "results.md")
    args = parser.parse_args(argv)
    args.sizes = (
        [QUICK_SIZE]
        if args.quick
        else sorted(
            {int(s) for s in args.sizes.split(",") if s}
            | ({10_000_000} if args.with_10m else set())
        )
    )
    args.db = [d.strip() for d in args.db.split(",") if d.strip()]
    unknown = set(args.db) - set(DATABASES)
    if unknown or not args.db or not args.sizes or min(args.sizes) < 1:
        parser.error(f"--db takes {', '.join(DATABASES)}; --sizes positive integers")
    if args.alt_rows is None:
        args.alt_rows = 2_000 if args.quick else 10_000
    if args.instance_rows is None:
        args.instance_rows = 5_000 if args.quick else 50_000
    if args.latency_repeats is None:
        args.latency_repeats = 3 if args.quick else 7
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    notes = []
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1) * 0.5:
        # Other work on the machine skews wall times; CPU s stays meaningful.
        notes.append(f"load average {load:.2f} at the start: the machine was busy")
        log(f"warning: load average {load:.2f}: wall times will be inflated")
    if "postgresql" in args.db and (reason := pg_available()) is not None:
        log(f"skipping PostgreSQL: {reason}")
        notes.append(f"PostgreSQL skipped: {reason}")
        args.db = [d for d in args.db if d != "postgresql"]
    work = BENCH_DIR / "data" / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    results: list[Result] = []
    lat: latency.Latency | None = None
    try:
        for size in args.sizes:
            log(f"generating {size} rows (cached under bench/data/)")
            generate.cached(size)
        alt_rows = min(args.alt_rows, args.sizes[0])
        for db in args.db:
            if not args.personsd_only:
                log(f"{db}: the ORM alternative on the first {alt_rows} rows")
                results += run_alternative(db, generate.cached(args.sizes[0]), alt_rows, work)
            for size in args.sizes:
                path = generate.cached(size)
                log(f"{db}: {size} rows")
                if not args.personsd_only:
                    results.append(run_raw(db, size, path, work))
                    results.append(run_limit(db, size, path, work))
                results += run_personsd(db, size, path, work)
                results += run_layered(db, size, path, work)
        if not args.no_latency:
            log(f"daemon latency: {args.latency_repeats} uploads of 10 rows")
            lat = latency.measure_latency(work / "latency", repeats=args.latency_repeats)
            log(
                f"  median {lat.median * 1000:.0f} ms, max {lat.worst * 1000:.0f} ms, "
                f"warm-up {lat.warmup * 1000:.0f} ms, daemon peak RSS "
                f"{lat.daemon_peak_rss_mb:.1f} MB"
            )
        if "postgresql" in args.db and not args.no_instances:
            log(f"2 instances vs 1: 6 tenants x {args.instance_rows} rows on PostgreSQL")
            rounds = instances.compare(work / "instances", args.instance_rows)
            for result in rounds:
                line = result.line(rounds[0] if result is not rounds[0] else None)
                log(f"  {line}")
                notes.append(line)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - started
    page = report.render(
        results,
        lat,
        argv=sys.argv[1:] if argv is None else argv,
        alt_rows=alt_rows,
        wall_seconds=wall,
        notes=notes,
    )
    print(report.table_text(results, lat))
    args.output.write_text(page, encoding="utf-8")
    log(f"wrote {args.output} ({wall:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
