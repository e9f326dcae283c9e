"""The `.persons` file format (SPEC section 1): bytes -> rows, pure.

Everything here works on a binary file object handed in and keeps memory
bounded by ``max_row_bytes``: lines are read with ``readline(limit)``, never
whole.

Quoting and trimming (SPEC 1.3 says "RFC 4180" and "spaces and tabs around
each value are trimmed"; this is how the two meet):

* spaces and tabs (minus the delimiter itself) before a value are skipped;
  if the value then starts with ``"`` it is quoted, and everything up to the
  closing quote is kept as is (spaces, delimiters, line breaks as written,
  ``""`` meaning ``"``);
* after the closing quote, text up to the delimiter is appended with its
  trailing spaces/tabs trimmed (``"a" b`` gives ``a b``, ``  "a b"  `` gives
  ``a b``): lenient like Python's csv module rather than failing the row;
* a ``"`` inside an unquoted value is an ordinary character (``ab"c``).

Row size: the bytes of a row, line breaks inside it included, its final line
ending excluded. A row over ``max_row_bytes`` fails (SPEC 1.3): where a quote
is open when it runs over (or at the end of the file) with ``Unterminated
quote`` and reading resumes at the line after the row's first line, so a
stray quote costs one row; otherwise with ``Row exceeds N bytes`` and reading
resumes after the row. "Open when it runs over" is decided per line: the
row's lines that end inside the quote already hold ``max_row_bytes``, or the
line where the quote closes closes it beyond the cap.

Here: the layout and the row reader's fast path (a line without a quote,
within the cap). Rows that hold a quote or run over the cap take its slow
path, in ``quoting``; the name rules live in ``filenames``, the header
section in ``fileheader``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from personsd.errors import ErrorKind, FileRejected, RowError, row_format_error
from personsd.fileheader import IDENTIFIERS as IDENTIFIERS
from personsd.fileheader import NO_IDENTIFIER, check_fields, read_header_section

# Re-exported: the name rules and the header section have modules of their own;
# callers and tests reach them through `fileformat` too.
from personsd.filenames import MAX_NAME_BYTES as MAX_NAME_BYTES
from personsd.filenames import check_name as check_name
from personsd.filenames import classify_name as classify_name
from personsd.filenames import cut_name as cut_name
from personsd.filenames import name_bytes as name_bytes
from personsd.quoting import UNTERMINATED, SlowPath


@dataclass(frozen=True, kw_only=True, slots=True)
class Layout:
    """What the header section and the field-name row establish."""

    fields: tuple[str, ...]
    delimiter: str = ","
    multi_delimiter: str = "|"
    declared_fields: bool = False  # given by a `Fields:` header, so no field-name row
    body_offset: int = 0  # byte offset of the first data row
    body_line: int = 1  # physical line number (1-based) of the first data row

    def __post_init__(self) -> None:
        for name, char in (
            ("delimiter", self.delimiter),
            ("multi_delimiter", self.multi_delimiter),
        ):
            if len(char) != 1 or char in '"\r\n':
                raise ValueError(f"{name} must be one character other than '\"', CR or LF")
        if self.body_offset < 0 or self.body_line < 1:
            raise ValueError("body_offset must be >= 0 and body_line >= 1")


@dataclass(frozen=True, kw_only=True, slots=True)
class RawRow:
    """One data record as read, before any validation."""

    line: int  # physical line where the row starts, 1-based, counting the header section
    row: int  # data row number, 1-based (blank lines not counted)
    offset: int  # byte offset where the row starts
    end: int  # byte offset just past the row, line ending included
    next_line: int  # physical line number at `end`
    values: tuple[str, ...]  # trimmed values as read (best effort when `error` is set)
    error: RowError | None = None  # InvalidImportRowFormat or Unknown8BitEncodingDetected


# --------------------------------------------------------------------------- records


def _trim_chars(delimiter: str) -> str:
    # A TAB (or space) delimiter separates values: it is never trimmed away.
    return " \t".replace(delimiter, "")


def _iter_records(
    fh: BinaryIO, *, delimiter: str, nfields: int | None, cap: int, pos: int, line: int, row: int
) -> Iterator[RawRow]:
    """Every non-blank record from ``pos``; ``nfields=None`` skips the value-count check."""
    if cap < 1:
        raise ValueError("max_row_bytes must be positive")
    fh.seek(pos)
    readline = fh.readline
    trim = _trim_chars(delimiter)
    slow = SlowPath(fh, cap=cap, delimiter=delimiter, trim=trim)
    blank = (trim + "\r\n").encode()
    limit = cap + 2  # a row of `cap` bytes plus CRLF
    while True:
        buf = readline(limit)
        if not buf:
            return
        size = len(buf)
        if buf[-1] == 10:
            content = size - 2 if size > 1 and buf[-2] == 13 else size - 1
        elif size == limit:
            content = limit  # cut: over the cap, handled below
        else:
            content = size  # last line, no line ending
        if b'"' not in buf and content <= cap:
            if not buf.strip(blank):
                pos += size
                line += 1
                continue
            error: RowError | None = None
            raw = buf[:content]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("utf-8", errors="replace")
                error = ErrorKind.UNKNOWN_ENCODING.at()
            values = tuple([v.strip(trim) for v in text.split(delimiter)])
            if b"\0" in raw:
                values = tuple(v.replace("\0", "\ufffd") for v in values)
                error = row_format_error("Row contains a NUL byte")
            lines = 1
        else:
            values, error, size, lines = slow.record(buf, pos, line)
        if error is None and nfields is not None and len(values) != nfields:
            error = row_format_error(f"Expected {nfields} fields, found {len(values)}")
        row += 1
        yield RawRow(
            line=line,
            row=row,
            offset=pos,
            end=pos + size,
            next_line=line + lines,
            values=values,
            error=error,
        )
        pos += size
        line += lines


def iter_rows(
    fh: BinaryIO,
    layout: Layout,
    *,
    max_row_bytes: int,
    offset: int | None = None,
    line: int | None = None,
    row: int = 0,
) -> Iterator[RawRow]:
    """Stream the data rows of the body from ``offset`` (default: the first data row).

    ``fh`` should be buffered (``open(path, "rb")``, ``io.BytesIO``): rows are
    read with ``readline(limit)``. Row errors are carried in ``RawRow.error``,
    never raised. Iterating again
    from ``offset=r.end, line=r.next_line, row=r.row`` continues right after ``r``.
    """
    return _iter_records(
        fh,
        delimiter=layout.delimiter,
        nfields=len(layout.fields),
        cap=max_row_bytes,
        pos=layout.body_offset if offset is None else offset,
        line=layout.body_line if line is None else line,
        row=row,
    )


# --------------------------------------------------------------------------- layout


def read_layout(fh: BinaryIO, *, max_row_bytes: int) -> Layout:
    """Read the encoding, header section and field-name row; raise ``FileRejected``."""
    cap = max_row_bytes
    section = read_header_section(fh, cap=cap)
    delimiter, multi = section.delimiter, section.multi_delimiter
    fields, pos, line = section.fields, section.body_offset, section.body_line
    if fields is not None:
        return Layout(
            fields=fields,
            delimiter=delimiter,
            multi_delimiter=multi,
            declared_fields=True,
            body_offset=pos,
            body_line=line,
        )
    records = _iter_records(
        fh, delimiter=delimiter, nfields=None, cap=cap, pos=pos, line=line, row=0
    )
    names = next(records, None)
    if names is None:
        if not section.header_names:
            raise FileRejected.format("File is empty")
        raise FileRejected.format(NO_IDENTIFIER, line=line)
    if names.error is not None:
        if names.error.error_class == ErrorKind.UNKNOWN_ENCODING.error_class:
            raise FileRejected.encoding(line=names.line)
        message = names.error.message
        if message == UNTERMINATED.message:
            message += " in the field-name row"
        raise FileRejected.format(message.replace("Row", "Field-name row"), line=names.line)
    return Layout(
        fields=check_fields(list(names.values), names.line),
        delimiter=delimiter,
        multi_delimiter=multi,
        declared_fields=False,
        body_offset=names.end,
        body_line=names.next_line,
    )
