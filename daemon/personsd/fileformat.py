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
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal

from personsd.errors import ErrorKind, FileRejected, InternalError, RowError, row_format_error
from personsd.layers import split_name

# SPEC 1.1; with `.ID.retry.persons` (34 bytes at most) every derived name fits in 255.
MAX_NAME_BYTES = 200
IDENTIFIERS = ("person_id", "person_key", "external_person_id", "mdn", "vibes_device_id")

_SNIFF_BYTES = 64 * 1024
# readline() chunk for skipping the rest of an over-long line: large enough to
# skip 10 GB quickly, small enough to be no memory concern.
_SKIP_CHUNK = 64 * 1024
_IGNORED_SUFFIXES = (".filepart", ".part", ".partial", ".tmp", ".uploading")
_UTF8_BOM = b"\xef\xbb\xbf"
_FOREIGN_BOMS = (b"\x00\x00\xfe\xff", b"\xff\xfe", b"\xfe\xff")  # UTF-32 BE; UTF-16/32 LE; 16 BE
_HEADER_START = re.compile(r"[A-Za-z][A-Za-z0-9-]*\s*:")
_HEADER_LINE = re.compile(r"([A-Za-z][A-Za-z0-9-]*)\s*:(.*)", re.DOTALL)
_HEADERS = frozenset({"fields", "delimiter", "multi-select-delimiter"})
_NO_IDENTIFIER = "Couldn't find an external_person_id, mdn, or vibes_device_id field"


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


# --------------------------------------------------------------------------- names


def classify_name(name: str) -> Literal["import", "ignore", "reject"]:
    """SPEC 1.1: what the inbox does with a file of this name.

    A name over 200 bytes still classifies by its suffix: it is imported, and
    the import rejects it (:func:`check_name`), so the partner gets reports.
    """
    base = name.rsplit("/", 1)[-1]
    if base.startswith(".") or base.endswith(_IGNORED_SUFFIXES):
        return "ignore"
    if split_name(base)[0].endswith(".persons"):  # with its layer suffixes (SPEC 11)
        return "import"
    return "reject"


def name_bytes(name: str) -> int:
    """Length of a file name in bytes, as the filesystem holds it (SPEC 1.1).

    Names are text; bytes that were not UTF-8 arrive as surrogate escapes
    (``os.fsdecode``) and count one byte each.
    """
    return sum(_char_bytes(char) for char in name) if not name.isascii() else len(name)


def _char_bytes(char: str) -> int:
    if "\udc80" <= char <= "\udcff":  # an undecodable byte, escaped
        return 1
    return len(char.encode("utf-8", "surrogatepass"))


def cut_name(name: str, limit: int = MAX_NAME_BYTES) -> str:
    """The longest start of ``name`` of at most ``limit`` bytes, cut at a character boundary."""
    total = 0
    for index, char in enumerate(name):
        total += _char_bytes(char)
        if total > limit:
            return name[:index]
    return name


def check_name(name: str) -> None:
    """Raise the file-level error of SPEC 1.1 for a name personsd does not import.

    The length comes first: whatever else is wrong, a name over 200 bytes
    cannot be given reports named after it in full.
    """
    if name_bytes(name) > MAX_NAME_BYTES:
        raise FileRejected.format(f"File name is longer than {MAX_NAME_BYTES} bytes")
    if not split_name(name)[0].endswith(".persons"):
        raise FileRejected.format("File name must end with .persons")


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


def _one_char(header: str, value: str, line: int) -> str:
    text = value.strip(" \t")
    if not text and "\t" in value:
        text = "\t"  # a literal TAB as the value
    if text.lower() == "tab" or text == "\\t":
        text = "\t"
    if len(text) != 1 or text in '"\r\n':
        raise FileRejected.format(
            f"Invalid {header} '{text}': must be one character other than '\"', CR or LF",
            line=line,
        )
    return text


def _check_fields(names: list[str], line: int) -> tuple[str, ...]:
    seen: set[str] = set()
    for index, name in enumerate(names, start=1):
        if not name:
            raise FileRejected.format(f"Field name {index} is empty", line=line)
        if name in seen:
            raise FileRejected.format(f"Repeated field name '{name}'", line=line)
        seen.add(name)
    if not seen.intersection(IDENTIFIERS):
        raise FileRejected.format(_NO_IDENTIFIER, line=line)
    return tuple(names)


def _text_line(buf: bytes, line: int, cap: int) -> str:
    """A header-section line without its line ending."""
    if len(buf) == cap + 2 and buf[-1:] != b"\n":
        raise FileRejected.format(f"Line exceeds {cap} bytes", line=line)
    try:
        return buf.decode("utf-8").removesuffix("\n").removesuffix("\r")
    except UnicodeDecodeError:
        raise FileRejected.encoding(line=line) from None


def read_layout(fh: BinaryIO, *, max_row_bytes: int) -> Layout:
    """Read the encoding, header section and field-name row; raise ``FileRejected``."""
    cap = max_row_bytes
    fh.seek(0)
    head = fh.read(_SNIFF_BYTES)
    if not head:
        raise FileRejected.format("File is empty")
    if head.startswith(_FOREIGN_BOMS) or b"\0" in head:
        raise FileRejected.encoding()
    pos = len(_UTF8_BOM) if head.startswith(_UTF8_BOM) else 0
    del head
    fh.seek(pos)
    line = 1
    headers: dict[str, str] = {}
    delimiter, multi = ",", "|"
    fields: tuple[str, ...] | None = None
    buf = fh.readline(cap + 2)
    first = _text_line(buf, line, cap)
    if _HEADER_START.match(first):
        while True:
            if not buf:
                raise FileRejected.format(
                    "Header section not closed by an empty line", line=line - 1
                )
            text = _text_line(buf, line, cap)
            if not text.strip(" \t"):
                pos, line = pos + len(buf), line + 1
                break
            match = _HEADER_LINE.fullmatch(text)
            if match is None or not buf.endswith(b"\n"):
                raise FileRejected.format("Header section not closed by an empty line", line=line)
            name, value = match.group(1), match.group(2)
            key = name.lower()
            if key not in _HEADERS:
                raise FileRejected.format(f"Unknown header '{name}'", line=line)
            if key in headers:
                raise FileRejected.format(f"Repeated header '{name}'", line=line)
            if key == "fields":
                fields = _check_fields([f.strip() for f in value.split(",")], line)
            elif key == "delimiter":
                delimiter = _one_char("Delimiter", value, line)
            else:
                multi = _one_char("Multi-Select-Delimiter", value, line)
            headers[key] = value
            pos, line = pos + len(buf), line + 1
            buf = fh.readline(cap + 2)
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
        if not headers:
            raise FileRejected.format("File is empty")
        raise FileRejected.format(_NO_IDENTIFIER, line=line)
    if names.error is not None:
        if names.error.error_class == ErrorKind.UNKNOWN_ENCODING.error_class:
            raise FileRejected.encoding(line=names.line)
        message = names.error.message
        if message == _UNTERMINATED.message:
            message += " in the field-name row"
        raise FileRejected.format(message.replace("Row", "Field-name row"), line=names.line)
    return Layout(
        fields=_check_fields(list(names.values), names.line),
        delimiter=delimiter,
        multi_delimiter=multi,
        declared_fields=False,
        body_offset=names.end,
        body_line=names.next_line,
    )
