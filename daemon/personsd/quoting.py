"""The row reader's slow path (SPEC 1.3): rows that hold a quote or run over the cap.

``fileformat`` reads a line without a quote, within ``max_row_bytes``, at
once; any other row comes here (:class:`SlowPath`), to the quote state
machine (``_RecordParser``) and the search for where an open quote closes
(``_QuoteRun``). The rules they follow (quoting, trimming, the size of a
row, where reading resumes after a stray quote) are in ``fileformat``'s
docstring.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO, Literal

from personsd.errors import ErrorKind, InternalError, RowError, row_format_error

# readline() chunk for skipping the rest of an over-long line: large enough to
# skip 10 GB quickly, small enough to be no memory concern.
_SKIP_CHUNK = 64 * 1024

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


UNTERMINATED = row_format_error("Unterminated quote")


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


class SlowPath:
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
            over = _exceeds(cap) if parser.feed(text) else UNTERMINATED
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
                return _clean(shown, nul), UNTERMINATED, used, lines
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
