"""What the partner gets back (SPEC section 4): errors.csv, retry.persons, summary.json.

The partial reports of a running import live in personsd's work area and only
grow by appending; the importer stores their durable length in each chunk's
checkpoint and, after a crash, truncates them back to it. Nothing reaches the
outbox before :func:`personsd.outbox.publish`, which makes every file appear
whole or not at all.

Over 400 lines on purpose: the three report files share the cell rules and the
append-only file with its checkpointed length; splitting them would split that.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, Literal, NamedTuple, Self

from personsd.errors import RowError
from personsd.fileformat import Layout, cut_name

# Re-exported: the publication of one file lives in `outbox`; callers and tests
# reach it as `reports.publish` too.
from personsd.outbox import DiskFull as DiskFull
from personsd.outbox import publish as publish

FIXED_COLUMNS = ("line", "row", "error_class", "error_message", "field", "value")
STATUSES = ("completed", "rejected", "failed")
Status = Literal["completed", "rejected", "failed"]
# SPEC 4: what the partner dropped the file for (``validate``: nothing was written).
MODES = ("import", "validate")
Mode = Literal["import", "validate"]

# RFC 4180 says CRLF; spreadsheets (the partner's likely reader) expect it too.
CSV_LINE_END = "\r\n"
# The retry file is a .persons file for machines; LF is what partners send most.
PERSONS_LINE_END = "\n"

# "+"/"-" followed by a number: the whole rest of the cell is an ASCII decimal
# (`+12995550005`, `-5`, `-0.25`). Anything else after a sign (`-1+1`,
# `+1 229 555 1234`, `-x`) is quoted: a spreadsheet may evaluate it.
_SIGNED_NUMBER = re.compile(r"[+-][0-9]+(?:\.[0-9]+)?")
_FORMULA_START = ("=", "@", "\t", "\r")
_SURROGATE = re.compile("[\ud800-\udfff]")
# A first line like this opens a header section (SPEC 1.2).
_HEADER_LINE = re.compile(r"[A-Za-z][A-Za-z0-9-]*\s*:")


def neutralize(cell: str) -> str:
    """Prefix ``'`` to a cell a spreadsheet would run as a formula (SPEC 4)."""
    if cell.startswith(_FORMULA_START):
        return "'" + cell
    if cell.startswith(("+", "-")) and not _SIGNED_NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


def _utf8(text: str) -> str:
    # Values of a row with an invalid UTF-8 sequence may carry surrogate escapes;
    # the reports stay valid UTF-8.
    return _SURROGATE.sub("\ufffd", text)


def _fit(values: Sequence[str], width: int) -> list[str]:
    cells = list(values[:width])
    cells.extend([""] * (width - len(cells)))
    return cells


@dataclass(frozen=True, kw_only=True, slots=True)
class ReportLine:
    """One line of errors.csv: an error of the row starting at physical ``line``."""

    line: int | None
    row: int | None
    error: RowError
    values: Sequence[str] = ()

    def __post_init__(self) -> None:
        for name in ("line", "row"):
            number = getattr(self, name)
            if number is not None and (isinstance(number, bool) or number < 1):
                raise ValueError(f"{name} must be >= 1 or None, got {number!r}")
        object.__setattr__(self, "values", tuple(self.values))


class _AppendFile:
    """A file that grows by appends, starts with a fixed header, and can be cut back."""

    def __init__(self, path: Path, header: bytes) -> None:
        self.path = path
        self._header = header
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self._fh: IO[bytes] = os.fdopen(fd, "r+b")
        self._synced = -1  # length at the last fsync (none yet)
        self._fh.seek(0, os.SEEK_END)
        if self._fh.tell() < len(header):
            # New, or a crash cut the header short: (re)start with the header.
            self._fh.truncate(0)
            self._fh.seek(0)
            self._fh.write(header)

    @property
    def header_length(self) -> int:
        return len(self._header)

    def truncate(self, length: int) -> None:
        """Cut back to a checkpointed length; below the header, start over with it."""
        self._fh.flush()
        size = os.fstat(self._fh.fileno()).st_size
        if not 0 <= length <= size:
            raise ValueError(f"{self.path}: cannot truncate {size} bytes to {length}")
        if length < len(self._header):
            # Never checkpointed (or the header itself was lost): start afresh.
            length = 0
        self._fh.truncate(length)
        self._fh.seek(length)
        self._synced = -1  # a truncation must reach the disk too
        if length == 0:
            self._fh.write(self._header)

    def write(self, data: bytes) -> None:
        self._fh.write(data)

    def flush_and_sync(self) -> int:
        """Make everything written durable; the length to store in the checkpoint."""
        self._fh.flush()
        length = self._fh.tell()
        # Most chunks add no report line: what is on disk is durable already.
        if length != self._synced:
            os.fsync(self._fh.fileno())
            self._synced = length
        return length

    def size(self) -> int:
        self._fh.flush()
        return self._fh.tell()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _csv_bytes(rows: Iterable[Sequence[str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator=CSV_LINE_END)
    for cells in rows:
        writer.writerow([neutralize(_utf8(c)) for c in cells])
    return buf.getvalue().encode("utf-8")


class ErrorsWriter(_AppendFile):
    """The partial ``NAME.ID.errors.csv`` of one import (fixed columns + the file's)."""

    def __init__(self, path: Path, file_fields: Sequence[str]) -> None:
        self.file_fields = tuple(file_fields)
        super().__init__(path, _csv_bytes([FIXED_COLUMNS + self.file_fields]))

    def append(self, lines: Iterable[ReportLine]) -> None:
        width = len(self.file_fields)
        self.write(
            _csv_bytes(
                [
                    "" if r.line is None else str(r.line),
                    "" if r.row is None else str(r.row),
                    r.error.error_class,
                    r.error.message,
                    r.error.field,
                    r.error.value,
                    *_fit(r.values, width),
                ]
                for r in lines
            )
        )


def rejected_report(path: Path, error_class: str, message: str, line: int | None) -> Path:
    """errors.csv of a rejected file: fixed columns only, one line for the file error."""
    data = _csv_bytes(
        [FIXED_COLUMNS, ["" if line is None else str(line), "", error_class, message, "", ""]]
    )
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return path


def _header_value(char: str) -> str:
    return "tab" if char == "\t" else char


def persons_line(values: Sequence[str], delimiter: str) -> str:
    # With equal delimiters a multi-select value holds the delimiter, so it is
    # quoted like any other value holding it (SPEC 1.2: `e1|"soccer|golf"`).
    special = {delimiter, '"', "\r", "\n"}
    cells = []
    for value in values:
        text = _utf8(value)
        # Values are trimmed on reading, so surrounding blanks only survive quoted;
        # a lone empty cell is quoted so the line is not a (skipped) blank line.
        if (
            any(c in special for c in text)
            or text != text.strip(" \t")
            or (text == "" and len(values) == 1)
        ):
            text = '"' + text.replace('"', '""') + '"'
        cells.append(text)
    return delimiter.join(cells) + PERSONS_LINE_END


def persons_header(layout: Layout) -> str:
    """Header section (only if needed) and field-name row of a retry file."""
    names = persons_line(layout.fields, layout.delimiter)
    lines = []
    # Declare the delimiter also when the field-name row would itself read as a
    # header line (a name with a colon, possible through a `Fields:` header).
    if layout.delimiter != "," or _HEADER_LINE.match(names):
        lines.append(f"Delimiter: {_header_value(layout.delimiter)}")
    if layout.multi_delimiter != "|":
        lines.append(f"Multi-Select-Delimiter: {_header_value(layout.multi_delimiter)}")
    head = "".join(line + PERSONS_LINE_END for line in lines)
    return (head + PERSONS_LINE_END if head else "") + names


class RetryWriter(_AppendFile):
    """The partial ``NAME.ID.retry.persons``: transiently failed rows, re-droppable."""

    def __init__(self, path: Path, layout: Layout) -> None:
        self.layout = layout
        super().__init__(path, persons_header(layout).encode("utf-8"))

    def append(self, rows: Iterable[Sequence[str]]) -> None:
        lay = self.layout
        width = len(lay.fields)
        self.write(
            "".join(persons_line(_fit(values, width), lay.delimiter) for values in rows).encode(
                "utf-8"
            )
        )

    def has_rows(self) -> bool:
        """Whether anything beyond the header was written (publish only then)."""
        return self.size() > self.header_length


class ReportNames(NamedTuple):
    errors: str
    retry: str
    summary: str


def report_names(file: str, import_id: int) -> ReportNames:
    """``NAME.ID.errors.csv``, ``NAME.ID.retry.persons``, ``NAME.ID.summary.json``.

    NAME is the file's name cut to its first 200 bytes at a character boundary
    (SPEC 1.1), so every report name fits in 255 bytes whatever was uploaded.
    """
    if not file or "/" in file or file in (".", ".."):
        raise ValueError(f"not a file name: {file!r}")
    stem = f"{cut_name(file)}.{import_id}"
    return ReportNames(f"{stem}.errors.csv", f"{stem}.retry.persons", f"{stem}.summary.json")


@dataclass(frozen=True, kw_only=True, slots=True)
class RowCounts:
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    created: int = 0
    updated: int = 0

    def __post_init__(self) -> None:
        counts = (self.total, self.succeeded, self.failed, self.created, self.updated)
        if any(isinstance(n, bool) or n < 0 for n in counts):
            raise ValueError(f"row counts must be integers >= 0: {self}")
        if self.succeeded + self.failed != self.total:
            raise ValueError(f"succeeded + failed must equal total: {self}")
        if self.created + self.updated > self.succeeded:
            raise ValueError(f"created + updated cannot exceed succeeded: {self}")


@dataclass(frozen=True, kw_only=True, slots=True)
class FileError:
    error_class: str
    message: str

    def __post_init__(self) -> None:
        if not self.error_class or not self.message:
            raise ValueError("a file error needs a class and a message")


@dataclass(frozen=True, kw_only=True, slots=True)
class Reports:
    errors: str
    retry: str | None = None

    @classmethod
    def of(cls, file: str, import_id: int, *, retry: bool) -> Reports:
        names = report_names(file, import_id)
        return cls(errors=names.errors, retry=names.retry if retry else None)


def _timestamp(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, kw_only=True, slots=True)
class Summary:
    """``NAME.ID.summary.json`` (SPEC 4); timestamps must be timezone-aware."""

    import_id: int
    tenant: str
    file: str
    sha256: str | None  # None: a failed import whose file could not even be read
    bytes: int
    status: Status
    received_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    rows: RowCounts = field(default_factory=RowCounts)
    errors: Mapping[str, int] = field(default_factory=dict)
    file_error: FileError | None = None
    reports: Reports | None = None  # None: the default names, without a retry file
    duplicate_of: int | None = None
    mode: Mode = "import"
    layers: tuple[str, ...] = ()  # what was undone before reading, outermost first (SPEC 11)

    def __post_init__(self) -> None:
        if not set(self.layers) <= {"pgp", "gzip", "zip"}:
            raise ValueError(f"layers must be pgp, gzip or zip: {self.layers}")
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.sha256 is None and self.status != "failed":
            raise ValueError("sha256 may be unknown for a failed import only")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if self.bytes < 0:
            raise ValueError(f"bytes must be >= 0, got {self.bytes}")
        for name in ("received_at", "started_at", "finished_at"):
            moment = getattr(self, name)
            if moment is not None and moment.utcoffset() is None:
                raise ValueError(f"{name} must be timezone-aware")
        if (self.status == "rejected") != (self.file_error is not None):
            raise ValueError("file_error is set exactly when the status is rejected")
        if any(n < 1 for n in self.errors.values()):
            raise ValueError(f"error counts must be >= 1: {dict(self.errors)}")
        # Sorted by class so that a resumed import writes the same bytes.
        object.__setattr__(self, "errors", MappingProxyType(dict(sorted(self.errors.items()))))
        expected = Reports.of(self.file, self.import_id, retry=False).errors
        if self.reports is None:
            object.__setattr__(self, "reports", Reports(errors=expected))
        elif self.reports.errors != expected:
            raise ValueError(f"reports.errors must be {expected!r}")

    def as_dict(self) -> dict[str, Any]:
        """The JSON object, keys in SPEC order."""
        assert self.reports is not None  # set in __post_init__
        return {
            "import_id": self.import_id,
            "tenant": self.tenant,
            "file": self.file,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "status": self.status,
            "received_at": _timestamp(self.received_at),
            "started_at": _timestamp(self.started_at),
            "finished_at": _timestamp(self.finished_at),
            "rows": {
                "total": self.rows.total,
                "succeeded": self.rows.succeeded,
                "failed": self.rows.failed,
                "created": self.rows.created,
                "updated": self.rows.updated,
            },
            "errors": dict(self.errors),
            "file_error": None
            if self.file_error is None
            else {"class": self.file_error.error_class, "message": self.file_error.message},
            "reports": {"errors": self.reports.errors, "retry": self.reports.retry},
            "duplicate_of": self.duplicate_of,
            "mode": self.mode,
            "layers": list(self.layers),
        }

    def to_json(self) -> str:
        """One line of JSON (no trailing newline), valid UTF-8 whatever bytes the name held."""
        return _utf8(json.dumps(self.as_dict(), ensure_ascii=False))


def publish_all(
    outbox: Path,
    file: str,
    import_id: int,
    errors_path: Path,
    retry_path: Path | None,
    summary: Summary,
    *,
    scratch: Path | None = None,
    displaced: Path | None = None,
) -> tuple[Path, ...]:
    """Publish errors.csv, then retry.persons (if any), then summary.json last.

    Temp files go to ``scratch`` (default: the directory of ``errors_path``,
    the import's work area); see :func:`publish`.
    """
    if (summary.file, summary.import_id) != (file, import_id):
        raise ValueError(f"summary is of {summary.file}#{summary.import_id}")
    names = report_names(file, import_id)
    expected_retry = names.retry if retry_path is not None else None
    assert summary.reports is not None
    if summary.reports.retry != expected_retry:
        raise ValueError(f"summary reports.retry must be {expected_retry!r}")
    work = scratch or errors_path.parent
    published = [publish(outbox, names.errors, errors_path, scratch=work, displaced=displaced)]
    if retry_path is not None:
        published.append(
            publish(outbox, names.retry, retry_path, scratch=work, displaced=displaced)
        )
    summary_bytes = (summary.to_json() + "\n").encode()
    published.append(
        publish(outbox, names.summary, summary_bytes, scratch=work, displaced=displaced)
    )
    return tuple(published)
