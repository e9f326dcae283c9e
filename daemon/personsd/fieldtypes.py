"""Custom field definitions and their value types (SPEC 1.5), pure.

CONTRACT STUB — to be implemented (see docs/design.md).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class FieldType(enum.StrEnum):
    STRING = "string"
    NUMBER = "number"
    DATE = "date"
    SINGLE_SELECT = "single_select"
    MULTI_SELECT = "multi_select"
    POSTAL_CODE = "postal_code"


class Charset(enum.StrEnum):
    UNICODE = "unicode"
    GSM7 = "gsm7"
    LATIN1 = "latin1"
    ASCII = "ascii"


# A stored custom value: text for every type but multi_select (keys in order).
StoredValue = str | tuple[str, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class CustomField:
    """A tenant's custom field; validated when built (name, options, max_length)."""

    name: str
    type: FieldType
    id: int = 0  # database id; custom values are stored keyed by str(id)
    options: tuple[str, ...] = ()
    charset: Charset = Charset.UNICODE
    max_length: int = 255
