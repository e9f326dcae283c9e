"""The `.persons` file format (SPEC section 1): bytes -> rows, pure.

CONTRACT STUB — to be implemented (see docs/design.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from personsd.errors import RowError

IDENTIFIERS = ("person_id", "person_key", "external_person_id", "mdn", "vibes_device_id")


@dataclass(frozen=True, kw_only=True, slots=True)
class Layout:
    """What the header section and the field-name row establish."""

    fields: tuple[str, ...]
    delimiter: str = ","
    multi_delimiter: str = "|"
    declared_fields: bool = False  # given by a `Fields:` header, so no field-name row
    body_offset: int = 0  # byte offset of the first data row
    body_line: int = 1  # physical line number (1-based) of the first data row


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
