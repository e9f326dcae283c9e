"""The start of a `.persons` file (SPEC 1.2): encoding sniff, header section, field names.

Pure; :func:`personsd.fileformat.read_layout` reads the field-name row (a
record like any other) after the section this module reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import BinaryIO

from personsd.errors import FileRejected

IDENTIFIERS = ("person_id", "person_key", "external_person_id", "mdn", "vibes_device_id")
NO_IDENTIFIER = "Couldn't find an external_person_id, mdn, or vibes_device_id field"

_SNIFF_BYTES = 64 * 1024
_UTF8_BOM = b"\xef\xbb\xbf"
_FOREIGN_BOMS = (b"\x00\x00\xfe\xff", b"\xff\xfe", b"\xfe\xff")  # UTF-32 BE; UTF-16/32 LE; 16 BE
_HEADER_START = re.compile(r"[A-Za-z][A-Za-z0-9-]*\s*:")
_HEADER_LINE = re.compile(r"([A-Za-z][A-Za-z0-9-]*)\s*:(.*)", re.DOTALL)
_HEADERS = frozenset({"fields", "delimiter", "multi-select-delimiter"})


@dataclass(frozen=True, kw_only=True, slots=True)
class HeaderSection:
    """What the header section (possibly absent) establishes, and where the rest starts."""

    header_names: frozenset[str] = frozenset()  # lower-cased, as given
    delimiter: str = ","
    multi_delimiter: str = "|"
    fields: tuple[str, ...] | None = None  # from a `Fields:` header
    body_offset: int = 0  # byte offset after the section (and the BOM)
    body_line: int = 1  # physical line number (1-based) there

    def __post_init__(self) -> None:
        if self.body_offset < 0 or self.body_line < 1:
            raise ValueError("body_offset must be >= 0 and body_line >= 1")


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


def check_fields(names: list[str], line: int) -> tuple[str, ...]:
    """The field names of a `Fields:` header or a field-name row, checked (SPEC 1.2)."""
    seen: set[str] = set()
    for index, name in enumerate(names, start=1):
        if not name:
            raise FileRejected.format(f"Field name {index} is empty", line=line)
        if name in seen:
            raise FileRejected.format(f"Repeated field name '{name}'", line=line)
        seen.add(name)
    if not seen.intersection(IDENTIFIERS):
        raise FileRejected.format(NO_IDENTIFIER, line=line)
    return tuple(names)


def _text_line(buf: bytes, line: int, cap: int) -> str:
    """A header-section line without its line ending."""
    if len(buf) == cap + 2 and buf[-1:] != b"\n":
        raise FileRejected.format(f"Line exceeds {cap} bytes", line=line)
    try:
        return buf.decode("utf-8").removesuffix("\n").removesuffix("\r")
    except UnicodeDecodeError:
        raise FileRejected.encoding(line=line) from None


def read_header_section(fh: BinaryIO, *, cap: int) -> HeaderSection:
    """Check the encoding and read the header section, if any; raise ``FileRejected``."""
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
                fields = check_fields([f.strip() for f in value.split(",")], line)
            elif key == "delimiter":
                delimiter = _one_char("Delimiter", value, line)
            else:
                multi = _one_char("Multi-Select-Delimiter", value, line)
            headers[key] = value
            pos, line = pos + len(buf), line + 1
            buf = fh.readline(cap + 2)
    return HeaderSection(
        header_names=frozenset(headers),
        delimiter=delimiter,
        multi_delimiter=multi,
        fields=fields,
        body_offset=pos,
        body_line=line,
    )
