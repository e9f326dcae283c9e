"""The benchmark's table and its ``results.md``: ratios, targets, and the machine they ran on."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from common import PG_URL, versions

RSS_LIMIT_MB = 150.0
RSS_GROWTH = 0.10  # a 10M-row file within 10 % of a 1M-row file
ALT_FACTOR = 25.0
LIMIT_FACTORS = {"personsd initial": 0.25, "personsd delta": 0.5}
LATENCY_LIMIT = 1.0
YES, NO = "✓", "✗"


@dataclass(frozen=True, kw_only=True, slots=True)
class Result:
    """One measured line of the table: a child process's rows, wall time and peak RSS."""

    db: str
    size: int
    what: str  # raw copy | limit | alternative initial|delta | personsd fixed cost|initial|delta
    rows: int
    seconds: float
    peak_rss_mb: float
    cpu_seconds: float = 0.0
    failed: int = 0

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


class LatencyLike(Protocol):
    @property
    def samples(self) -> tuple[float, ...]: ...
    @property
    def warmup(self) -> float: ...
    @property
    def daemon_peak_rss_mb(self) -> float: ...
    @property
    def median(self) -> float: ...
    @property
    def worst(self) -> float: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class Check:
    """One target: what it asks, the figure found, and whether it holds."""

    target: str
    found: str
    met: bool

    def mark(self) -> str:
        return YES if self.met else NO


def _find(results: Sequence[Result], db: str, what: str, size: int | None = None) -> Result | None:
    for result in results:
        if result.db == db and result.what == what and (size is None or result.size == size):
            return result
    return None


@dataclass(frozen=True, kw_only=True, slots=True)
class Ratios:
    """A personsd line's rate over each reference's rate (None where it was not measured)."""

    limit: float | None = None
    raw: float | None = None
    alternative: float | None = None


def ratios(results: Sequence[Result], result: Result) -> Ratios:
    """personsd's rate over the limit's, the raw copy's and the alternative's (same db, size)."""
    if result.what not in LIMIT_FACTORS:
        return Ratios()

    def over(reference: Result | None) -> float | None:
        return result.rate / reference.rate if reference and reference.rate else None

    return Ratios(
        limit=over(_find(results, result.db, "limit", result.size)),
        raw=over(_find(results, result.db, "raw copy", result.size)),
        alternative=over(_find(results, result.db, result.what.replace("personsd", "alternative"))),
    )


def row_checks(results: Sequence[Result], result: Result) -> list[Check]:
    if result.what not in LIMIT_FACTORS:
        return []
    found = ratios(results, result)
    to_limit, to_alt = found.limit, found.alternative
    factor = LIMIT_FACTORS[result.what]
    checks = []
    if to_limit is not None:
        checks.append(
            Check(target=f"≥ {factor}× limit", found=f"{to_limit:.2f}×", met=to_limit >= factor)
        )
    if to_alt is not None:
        checks.append(
            Check(
                target=f"≥ {ALT_FACTOR:.0f}× alternative",
                found=f"{to_alt:.1f}×",
                met=to_alt >= ALT_FACTOR,
            )
        )
    checks.append(
        Check(
            target=f"RSS ≤ {RSS_LIMIT_MB:.0f} MB",
            found=f"{result.peak_rss_mb:.0f} MB",
            met=result.peak_rss_mb <= RSS_LIMIT_MB,
        )
    )
    if result.failed:
        checks.append(Check(target="no failed rows", found=str(result.failed), met=False))
    return checks


def global_checks(results: Sequence[Result], lat: LatencyLike | None) -> list[Check]:
    """Targets across lines: RSS flat from 1M to 10M rows, and the daemon's latency."""
    checks = []
    for db in dict.fromkeys(r.db for r in results):
        for what in LIMIT_FACTORS:
            small = _find(results, db, what, 1_000_000)
            big = _find(results, db, what, 10_000_000)
            if small and big:
                growth = big.peak_rss_mb / small.peak_rss_mb - 1
                checks.append(
                    Check(
                        target=f"{db} {what}: RSS at 10M within {RSS_GROWTH:.0%} of 1M",
                        found=f"{small.peak_rss_mb:.0f} → {big.peak_rss_mb:.0f} MB ({growth:+.1%})",
                        met=growth <= RSS_GROWTH,
                    )
                )
    if lat is not None:
        checks.append(
            Check(
                target=f"upload close → summary.json, 10 rows: median ≤ {LATENCY_LIMIT:.0f} s",
                found=f"median {lat.median * 1000:.0f} ms (max {lat.worst * 1000:.0f} ms, "
                f"{len(lat.samples)} uploads)",
                met=lat.median <= LATENCY_LIMIT,
            )
        )
    return checks


def table_text(results: Sequence[Result], lat: LatencyLike | None) -> str:
    """The results as a Markdown table, and the targets across lines below it."""
    lines = [
        "| DB | file rows | measurement | rows | seconds | CPU s | rows/s | peak RSS MB "
        "| × limit | × raw copy | × alternative | targets |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for result in results:
        found = ratios(results, result)
        checks = " ".join(f"{c.mark()} {c.target}" for c in row_checks(results, result))
        lines.append(
            f"| {result.db} | {result.size:,} | {result.what} | {result.rows:,} "
            f"| {result.seconds:.2f} | {result.cpu_seconds:.2f} | {result.rate:,.0f} "
            f"| {result.peak_rss_mb:.1f} "
            f"| {_ratio(found.limit, 2)} | {_ratio(found.raw, 2)} | {_ratio(found.alternative, 1)} "
            f"| {checks} |"
        )
    if lat is not None:
        lines.append(
            f"| sqlite | 10 | daemon: upload close → summary (median of {len(lat.samples)}) "
            f"| 10 | {lat.median:.3f} | | | {lat.daemon_peak_rss_mb:.1f} | | | "
            f"| {YES if lat.median <= LATENCY_LIMIT else NO} median ≤ 1 s |"
        )
    extra = global_checks(results, lat)
    if extra:
        lines.append("")
        lines.extend(f"- {c.mark()} {c.target}: {c.found}" for c in extra)
    return "\n".join(lines)


def _ratio(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}×"


def machine() -> dict[str, str]:
    uname = subprocess.run(["uname", "-a"], capture_output=True, text=True).stdout.strip()
    cpu = _proc_field("/proc/cpuinfo", "model name", lambda v: v)
    memory = _proc_field(
        "/proc/meminfo", "MemTotal", lambda v: f"{int(v.split()[0]) / 1024 / 1024:.1f} GiB"
    )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "uname -a": uname or platform.platform(),
        "CPU": cpu,
        "nproc": str(os.cpu_count()),
        "memory": memory,
        "load average (1, 5, 15 min) at the end": load,
    }


def _proc_field(path: str, name: str, shape: Callable[[str], str]) -> str:
    """``name``'s value in a ``/proc`` file of ``name: value`` lines, shaped; ``?`` if absent."""
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(name):
                    return shape(line.split(":", 1)[1].strip())
    except OSError:
        pass
    return "?"


def render(
    results: Sequence[Result],
    lat: LatencyLike | None,
    *,
    argv: Sequence[str],
    alt_rows: int,
    wall_seconds: float,
    notes: Sequence[str],
) -> str:
    """The whole results page."""
    host = "\n".join(f"- {name}: `{value}`" for name, value in {**machine(), **versions()}.items())
    lines = [
        "# personsd benchmark results",
        "",
        f"Run {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} with "
        f"`python bench/run.py {' '.join(argv)}` in {wall_seconds:.0f} s.",
        "",
        "## Machine",
        "",
        host,
        f"- PostgreSQL URL: `{PG_URL}` (a fresh schema per measurement)",
        "",
        "## Results",
        "",
        table_text(results, lat),
        "",
        "Two references, each timing the database's work only: `raw copy` loads the",
        "file's own columns as text into a plain table whose only indexes are unique",
        "ones on `external_person_id` and `mdn` (PostgreSQL `COPY` of the CSV, SQLite",
        "`executemany`); `limit` loads the very rows personsd writes (its UUIDv7",
        "person keys, stored values, attributes JSON) into personsd's `persons` table",
        "with its indexes and foreign key, without validating anything.",
        "Every other line is one child process: rows/s is rows / its wall time, start-up",
        "included (the `personsd fixed cost` line is an import of a file with no rows);",
        "CPU s counts the child and its children (personsd's validator process);",
        "peak RSS is the child's process tree (the larger of `wait4`'s peak and the",
        "tree's summed PSS sampled every 100 ms), the database server's not counted.",
        f"The alternative imports the first {alt_rows:,} rows of the smallest file.",
    ]
    if lat is not None:
        lines.append(
            f"Daemon latency samples (s): {', '.join(f'{s:.3f}' for s in lat.samples)}; "
            f"the unmeasured warm-up upload took {lat.warmup:.3f} s."
        )
    lines += [
        "",
        "## Targets",
        "",
        "- personsd initial load ≥ 0.25 × the limit, delta ≥ 0.5 × the limit, on each database",
        "- ≥ 25 × the row-at-a-time alternative",
        "- peak RSS ≤ 150 MB; a 10M-row file within 10 % of a 1M-row file",
        "- upload close to summary.json for a 10-row file: median ≤ 1 s",
    ]
    if notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"
