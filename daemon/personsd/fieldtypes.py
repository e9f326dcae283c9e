"""Custom field definitions and their value types (SPEC 1.5), pure.

``CustomField.parse`` runs once per cell, so for millions of rows: every table
and regex is built once at import time, and a field's option set is built once
when the field is.

Decisions where SPEC 1.5 is silent (also in docs/decisions.md):

* string: when a value is both outside the charset and too long, the charset
  error is the one reported (one error per field): it names what to fix, and
  shortening the value would not make it valid. Length counts code points.
* gsm7: the GSM 03.38 basic set plus the extension table, every character
  counting as one towards ``max_length`` (the SMS septet cost is not our
  concern here).
* number: at most ``MAX_NUMBER_CHARS`` characters as written (sign, digits,
  point), so a stored number always fits an ordinary column.
* date: ``T`` and ``Z`` upper case only; offsets up to ±23:59; a value whose
  UTC form falls outside years 0001–9999 is invalid.
* multi_select: an empty element (``a||b``, ``a|``) makes the value invalid;
  a blank value as a whole is the caller's business (it clears).
* postal_code: shape only (``A1A 1A1`` with any letters), no check that the
  code exists, as for US ZIP codes.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from personsd.errors import ErrorKind, RowError
from personsd.fileformat import IDENTIFIERS

# The value that clears a column (SPEC 1.5); the caller handles it, never parse.
CLEAR_TOKEN = "[null]"

_E = TypeVar("_E", bound=enum.StrEnum)

MAX_NUMBER_CHARS = 64
DEFAULT_MAX_LENGTH = 255


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

SELECT_TYPES = frozenset({FieldType.SINGLE_SELECT, FieldType.MULTI_SELECT})

# GSM 03.38 basic character set, code points 0x00-0x7F in order (0x1B, the
# escape to the extension table, is not a character and is left out).
GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞÆæßÉ"  # 0x1B, the escape, sits between Ξ and Æ
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
# GSM 03.38 extension table (reached through the escape): form feed and ^{}\[~]|€.
GSM7_EXTENSION = "\f^{}\\[~]|€"
GSM7_CHARS = frozenset(GSM7_BASIC + GSM7_EXTENSION)

_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_OPTION_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_NUMBER = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?")
_DATE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:Z|([+-])([0-9]{2}):?([0-9]{2})))?"
)
_US_ZIP = re.compile(r"[0-9]{5}(?:-[0-9]{4})?")
_CA_POSTAL = re.compile(r"([A-Za-z][0-9][A-Za-z]) ?([0-9][A-Za-z][0-9])")
_MULTI_TRIM = " \t"


def _in_charset(charset: Charset, text: str) -> bool:
    if charset is Charset.UNICODE:
        return True
    if charset is Charset.ASCII:
        return text.isascii()
    if charset is Charset.LATIN1:
        return not text or max(text) <= "\xff"
    return GSM7_CHARS.issuperset(text)


def canonical_number(sign: str, whole: str, fraction: str) -> str:
    """The canonical decimal of a matched number: exact string work, never float."""
    whole = whole.lstrip("0") or "0"
    fraction = fraction.rstrip("0")
    text = f"{whole}.{fraction}" if fraction else whole
    return text if not sign or text == "0" else "-" + text


def canonical_date(text: str) -> str | None:
    """``text`` as UTC ``YYYY-MM-DDTHH:MM:SSZ``, or None when not an accepted date."""
    m = _DATE.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second, sign, off_h, off_m = m.groups()
    if hour is None:
        try:
            datetime(int(year), int(month), int(day))
        except ValueError:
            return None
        return f"{year}-{month}-{day}T00:00:00Z"
    try:
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
    except ValueError:
        return None
    if sign is not None:
        hours, minutes = int(off_h), int(off_m)
        if hours > 23 or minutes > 59:
            return None
        offset = timedelta(hours=hours, minutes=minutes)
        try:
            # Local time minus its offset is UTC.
            moment = moment - offset if sign == "+" else moment + offset
        except OverflowError:
            return None
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}Z"
    )


def canonical_postal_code(text: str) -> str | None:
    """US ZIP as given; Canadian upper case with one space; else None."""
    if _US_ZIP.fullmatch(text):
        return text
    m = _CA_POSTAL.fullmatch(text)
    if m is None:
        return None
    return f"{m.group(1).upper()} {m.group(2).upper()}"


@dataclass(frozen=True, kw_only=True, slots=True)
class CustomField:
    """A tenant's custom field; validated when built (name, options, max_length)."""

    name: str
    type: FieldType
    id: int = 0  # database id; custom values are stored keyed by str(id)
    options: tuple[str, ...] = ()
    charset: Charset = Charset.UNICODE
    max_length: int = DEFAULT_MAX_LENGTH
    # Built once here so that parse does a set lookup per cell.
    _option_set: frozenset[str] = field(init=False, repr=False, compare=False, default=frozenset())

    def __post_init__(self) -> None:
        # Callers reading the database or the command line may hand in plain
        # strings and lists; normalise them so equality and hashing hold.
        object.__setattr__(self, "type", _enum(FieldType, self.type, "type"))
        object.__setattr__(self, "charset", _enum(Charset, self.charset, "charset"))
        object.__setattr__(self, "options", tuple(self.options))
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(f"invalid field name {self.name!r}: must match [a-z][a-z0-9_]{{0,63}}")
        if self.name in IDENTIFIERS:
            raise ValueError(f"invalid field name {self.name!r}: it is a built-in field")
        if isinstance(self.id, bool) or not isinstance(self.id, int) or self.id < 0:
            raise ValueError(f"field {self.name}: invalid id {self.id!r}")
        self._check_options()
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int):
            raise ValueError(f"field {self.name}: max_length must be an integer")
        if self.max_length < 1:
            raise ValueError(f"field {self.name}: max_length must be at least 1")
        if self.type is not FieldType.STRING:
            if self.max_length != DEFAULT_MAX_LENGTH:
                raise ValueError(f"field {self.name}: max_length applies to string fields only")
            if self.charset is not Charset.UNICODE:
                raise ValueError(f"field {self.name}: charset applies to string fields only")
        object.__setattr__(self, "_option_set", frozenset(self.options))

    def _check_options(self) -> None:
        if self.type not in SELECT_TYPES:
            if self.options:
                raise ValueError(
                    f"field {self.name}: options apply to single_select and multi_select only"
                )
            return
        if not self.options:
            raise ValueError(f"field {self.name}: a {self.type} field needs at least one option")
        seen: set[str] = set()
        for key in self.options:
            if not isinstance(key, str) or not _OPTION_KEY.fullmatch(key):
                raise ValueError(
                    f"field {self.name}: invalid option key {key!r}: "
                    "1-64 letters, digits, '_', '-' or '.'"
                )
            if key in seen:
                raise ValueError(f"field {self.name}: repeated option key {key!r}")
            seen.add(key)

    def parse(self, raw: str, *, multi_delimiter: str) -> StoredValue | RowError:
        """The stored form of ``raw`` (non-blank, not ``[null]``), or the row error."""
        kind = self.type
        if kind is FieldType.STRING:
            if not _in_charset(self.charset, raw):
                return ErrorKind.CHARSET_MISMATCH.at(field=self.name, value=raw)
            if len(raw) > self.max_length:
                return ErrorKind.INVALID_CUSTOM_FIELD_VALUE.at(field=self.name, value=raw)
            return raw
        if kind is FieldType.SINGLE_SELECT:
            if raw in self._option_set:
                return raw
            return ErrorKind.INVALID_SELECT_VALUE.at(field=self.name, value=raw)
        if kind is FieldType.MULTI_SELECT:
            keys = [key.strip(_MULTI_TRIM) for key in raw.split(multi_delimiter)]
            if not self._option_set.issuperset(keys):
                return ErrorKind.INVALID_SELECT_VALUE.at(field=self.name, value=raw)
            return tuple(dict.fromkeys(keys))
        result: str | None
        if kind is FieldType.NUMBER:
            m = _NUMBER.fullmatch(raw) if len(raw) <= MAX_NUMBER_CHARS else None
            result = None if m is None else canonical_number(m[1], m[2], m[3] or "")
        elif kind is FieldType.DATE:
            result = canonical_date(raw)
        else:
            result = canonical_postal_code(raw)
        if result is None:
            return ErrorKind.INVALID_CUSTOM_FIELD_VALUE.at(field=self.name, value=raw)
        return result


def format_value(value: StoredValue) -> str:
    """The export form of a stored value: multi-select keys joined by ``|``."""
    return "|".join(value) if isinstance(value, tuple) else value


def _enum(cls: type[_E], value: object, what: str) -> _E:
    if isinstance(value, cls):
        return value
    if isinstance(value, str) and value in cls._value2member_map_:
        return cls(value)
    allowed = ", ".join(cls)
    raise ValueError(f"invalid {what} {value!r}: one of {allowed}")
