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

Over 400 lines on purpose: the row reader's fast path and its quote state
machine (``_QuoteRun``, ``_SlowPath``) are one algorithm; the name rules
(``filenames``) and the header section (``fileheader``) live apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal

from personsd.errors import ErrorKind, FileRejected, InternalError, RowError, row_format_error
from personsd.fileheader import IDENTIFIERS as IDENTIFIERS
from personsd.fileheader import NO_IDENTIFIER, check_fields, read_header_section

# Re-exported: the name rules and the header section have modules of their own;
# callers and tests reach them through `fileformat` too.
from personsd.filenames import MAX_NAME_BYTES as MAX_NAME_BYTES
from personsd.filenames import check_name as check_name
from personsd.filenames import classify_name as classify_name
from personsd.filenames import cut_name as cut_name
from personsd.filenames import name_bytes as name_bytes

# readline() chunk for skipping the rest of an over-long line: large enough to
# skip 10 GB quickly, small enough to be no memory concern.
_SKIP_CHUNK = 64 * 1024


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


_START, _UNQUOTED, _QUOTED, _AFTER_QUOTE = range(4)


class _RecordParser:
    """Quote-aware splitter fed one physical line at a time (the slow path)."""

    __slots__ = ("delimiter", "parts", "state", "trim", "values")

    def __init__(self, delimiter: str, trim: str) -> None:
        self.delimiter = delimiter
        self.trim = trim
        self.values: list[str] = []
        self.parts: list[str] = []
        self.state = _START

    def feed(self, text: str) -> bool:
        """Consume one physical line (its line ending included); True once the record ends."""
        delimiter, trim = self.delimiter, self.trim
        n = len(text)
        eol = n - (2 if text.endswith("\r\n") else 1 if text.endswith("\n") else 0)
        i = 0
        state = self.state
        while True:
            if state == _START:
                while i < eol and text[i] in trim:
                    i += 1
                self.parts = []
                if i < eol and text[i] == '"':
                    state, i = _QUOTED, i + 1
                    continue
                state = _UNQUOTED
            if state == _QUOTED:
                j = text.find('"', i)
                if j < 0:
                    self.parts.append(text[i:])  # the line break belongs to the value
                    self.state = _QUOTED
                    return False
                self.parts.append(text[i:j])
                if j + 1 < n and text[j + 1] == '"':
                    self.parts.append('"')
                    i = j + 2
                else:
                    state, i = _AFTER_QUOTE, j + 1
                continue
            j = text.find(delimiter, i, eol)
            piece = text[i : eol if j < 0 else j].rstrip(trim)
            self.values.append("".join(self.parts) + piece if state == _AFTER_QUOTE else piece)
            if j < 0:
                self.state = _START
                return True
            state, i = _START, j + 1


def _decode(data: bytes) -> tuple[str, bool]:
    """Text of ``data`` and whether it was valid UTF-8."""
    try:
        return data.decode("utf-8"), True
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), False


def _skip_line(readline: Callable[[int], bytes]) -> int:
    """Consume the rest of the current physical line; the number of bytes skipped."""
    skipped = 0
    while True:
        chunk = readline(_SKIP_CHUNK)
        skipped += len(chunk)
        if not chunk or chunk[-1] == 10:
            return skipped


def _exceeds(cap: int) -> RowError:
    return row_format_error(f"Row exceeds {cap} bytes")


_UNTERMINATED = row_format_error("Unterminated quote")


def _closing_quote(line: bytes) -> int | None:
    """Offset of the quote that closes a quote open at the start of ``line``."""
    i = 0
    while (j := line.find(b'"', i)) >= 0:
        if line[j + 1 : j + 2] != b'"':
            return j
        i = j + 2  # `""`: a quote inside the value
    return None


def _line_content(line: bytes) -> int:
    """Length of ``line`` without its line ending."""
    if line.endswith(b"\r\n"):
        return len(line) - 2
    return len(line) - 1 if line.endswith(b"\n") else len(line)


class _QuoteRun:
    """Where a quote still open at the start of a line closes, found once per run of lines.

    Entered inside an open quote, a line ends inside it or not whatever came
    before. So every line start of a run of lines that all end inside the
    quote leads to the same closing line: a row opening a quote anywhere in
    the run continues to it. Rows read again after a stray quote (SPEC 1.3)
    ask the same run instead of each scanning up to ``max_row_bytes`` ahead,
    which would make a file of lines like ``a","b`` quadratic.
    """

    __slots__ = (
        "closing",
        "closing_line",
        "content_end",
        "eof",
        "line",
        "next",
        "pos",
        "quote_at",
        "start",
        "too_long",
    )

    def __init__(self, start: int, line: int) -> None:
        self.start = start  # a line start entered inside the quote
        self.pos, self.line = start, line  # the next line to scan and its number
        self.eof = False  # the file ended inside the quote
        self.closing: int | None = None  # start of the first line not ending inside it
        self.closing_line = 0
        self.content_end = 0  # ... its end without the line ending
        self.next = 0  # ... its end with the line ending
        self.quote_at: int | None = None  # the closing quote's offset in that line
        self.too_long = False  # that line alone is over the cap (read only up to it)

    def holds(self, start: int) -> bool:
        """Whether entering the line at ``start`` inside a quote is part of this run."""
        return self.start <= start <= (self.pos if self.closing is None else self.closing)

    def extend(self, fh: BinaryIO, until: int, *, cap: int, delimiter: str, trim: str) -> None:
        """Scan on until the closing line, the end of the file, or ``until`` is reached."""
        if self.closing is not None or self.eof or self.pos >= until:
            return
        fh.seek(self.pos)
        readline = fh.readline
        while self.pos < until:
            buf = readline(cap + 2)
            if not buf:
                self.eof = True
                return
            cut = len(buf) == cap + 2 and buf[-1] != 10
            if cut or _closes(buf, delimiter, trim):
                self.closing, self.closing_line = self.pos, self.line
                self.quote_at = _closing_quote(buf)
                self.too_long = cut
                self.content_end = self.pos + _line_content(buf)
                self.next = self.pos + len(buf) + (_skip_line(readline) if cut else 0)
                return
            self.pos += len(buf)
            self.line += 1


def _closes(line: bytes, delimiter: str, trim: str) -> bool:
    """Whether ``line``, entered inside an open quote, ends outside quotes."""
    parser = _RecordParser(delimiter, trim)
    parser.state = _QUOTED
    return parser.feed(_decode(line)[0])


class _SlowPath:
    """Records that hold a quote or are too long (SPEC 1.3)."""

    __slots__ = ("cap", "delimiter", "fh", "run", "trim")

    def __init__(self, fh: BinaryIO, *, cap: int, delimiter: str, trim: str) -> None:
        self.fh = fh
        self.cap = cap
        self.delimiter = delimiter
        self.trim = trim
        self.run: _QuoteRun | None = None

    def record(
        self, first: bytes, pos: int, line: int
    ) -> tuple[tuple[str, ...], RowError | None, int, int]:
        """(values, error, bytes, physical lines) of the record at ``pos``.

        ``first`` is what ``readline(cap + 2)`` returned for its first line;
        the file is left at the start of the next record.
        """
        cap = self.cap
        readline = self.fh.readline
        parser = _RecordParser(self.delimiter, self.trim)
        text, valid = _decode(first)
        if len(first) == cap + 2 and first[-1] != 10:  # cut at the cap
            over = _exceeds(cap) if parser.feed(text) else _UNTERMINATED
            return (), over, len(first) + _skip_line(readline), 1
        nul = b"\0" in first
        used, lines = len(first), 1
        if not parser.feed(text):
            # The first line ends inside an open quote: the row goes on to the
            # line where the quote closes, if that is within the cap.
            verdict, end, last = self._quoted(pos, used, line)
            if verdict == "unterminated":
                # A stray quote costs this row only: read on after its first line.
                shown = [*parser.values, "".join(parser.parts).removesuffix("\n")]
                shown[-1] = shown[-1].removesuffix("\r")
                return _clean(shown, nul), _UNTERMINATED, used, lines
            if verdict == "exceeds":
                return (), _exceeds(cap), end - pos, last - line + 1
            while True:
                buf = readline(cap + 2)
                if not buf:
                    raise InternalError(f"quoted row at byte {pos} ended before its quote run")
                used += len(buf)
                lines += 1
                nul = nul or b"\0" in buf
                text, ok = _decode(buf)
                valid = valid and ok
                if parser.feed(text):
                    break
        elif _line_content(first) > cap:
            return (), _exceeds(cap), used, lines
        values = _clean(parser.values, nul)
        error: RowError | None = None
        if nul:
            error = row_format_error("Row contains a NUL byte")
        elif not valid:
            error = ErrorKind.UNKNOWN_ENCODING.at()
        return values, error, used, lines

    def _quoted(
        self, pos: int, first: int, line: int
    ) -> tuple[Literal["fits", "unterminated", "exceeds"], int, int]:
        """A row whose first line (``first`` bytes) ends inside a quote: (verdict, end, last line).

        ``unterminated``: the quote ran over the cap or into the end of the
        file; the file is left after the first line. ``exceeds``: the quote
        closed within the cap, the row is over it and ends at ``end`` (line
        ``last``), where the file is left. ``fits``: the file is left after
        the first line, to be parsed on.
        """
        cap, fh = self.cap, self.fh
        start = pos + first
        run = self.run
        if run is None or not run.holds(start):
            run = self.run = _QuoteRun(start, line + 1)
        run.extend(fh, pos + cap, cap=cap, delimiter=self.delimiter, trim=self.trim)
        if run.closing is None or run.closing - pos >= cap:
            fh.seek(start)
            return "unterminated", start, line
        if run.too_long or run.content_end - pos > cap:
            if run.quote_at is not None and run.closing + run.quote_at + 1 - pos <= cap:
                fh.seek(run.next)
                return "exceeds", run.next, run.closing_line
            fh.seek(start)
            return "unterminated", start, line
        fh.seek(start)
        return "fits", start, line


def _clean(values: list[str], nul: bool) -> tuple[str, ...]:
    # A report never holds a NUL byte.
    if nul:
        return tuple(v.replace("\0", "\ufffd") for v in values)
    return tuple(values)


def _iter_records(
    fh: BinaryIO, *, delimiter: str, nfields: int | None, cap: int, pos: int, line: int, row: int
) -> Iterator[RawRow]:
    """Every non-blank record from ``pos``; ``nfields=None`` skips the value-count check."""
    if cap < 1:
        raise ValueError("max_row_bytes must be positive")
    fh.seek(pos)
    readline = fh.readline
    trim = _trim_chars(delimiter)
    slow = _SlowPath(fh, cap=cap, delimiter=delimiter, trim=trim)
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
        if message == _UNTERMINATED.message:
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
