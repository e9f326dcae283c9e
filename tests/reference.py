"""A deliberately naive model of SPEC section 2, written only for the tests.

Persons are a list of dicts in memory; each row is played alone, its checks
made one after the other in the order the SPEC text reads them. Nothing is
shared with ``personsd.rules`` (the code under test): only the pure value
parsers are reused, since chunking cannot change what they answer
(``fileformat.read_layout``/``iter_rows``, ``phones.normalize_mdn``,
``CustomField.parse``).

The documented decisions of ``personsd.rules`` where SPEC is silent are
followed (leading zeros in ``person_id``, ``[null]`` there is invalid and in
``person_key`` ignored, over-long identifiers are ``InvalidCustomFieldValue``,
identifier columns checked in precedence order, a found person counts as
``updated`` even when nothing changed).
"""

from __future__ import annotations

import io
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from personsd.fieldtypes import CustomField, FieldType, StoredValue
from personsd.fileformat import iter_rows, read_layout
from personsd.phones import normalize_mdn

BUILTINS = ("person_id", "person_key", "external_person_id", "mdn", "vibes_device_id")
FIXED_COLUMNS = ("line", "row", "error_class", "error_message", "field", "value")
NULL = "[null]"

# SPEC 3's table, copied by hand on purpose (the tests never read personsd.errors for it): a
# short name for each row with a fixed message, and the row's class and exact message.
SPEC3: dict[str, tuple[str, str]] = {
    "mdn_format": (
        "MobilePhoneErrors::InvalidMDNFormat",
        "The MDN is incorrectly formatted. It should be an E.164 MDN.",
    ),
    "field_not_found": ("PersonErrors::CustomFieldNotFound", "Custom field not found"),
    "charset": (
        "PersonErrors::InvalidSelectCustomFieldValue",
        "Custom field value is incompatible with the field’s character set",
    ),
    "bad_select": ("PersonErrors::InvalidSelectCustomFieldValue", "Invalid custom field value"),
    "bad_value": ("PersonErrors::InvalidCustomFieldValue", "Invalid custom field value"),
    "not_found": ("PersonErrors::PersonNotFound", "Person not found"),
    "phone_taken": ("PersonErrors::MobilePhoneAlreadyAssigned", "Mobile Phone Already Assigned"),
    "bad_person_id": ("PersonErrors::InvalidPersonID", "Invalid person_id"),
    "mdn_change": ("PersonErrors::MdnChangeNotAllowed", "mdn change not allowed"),
    "no_key": (
        "PersonErrors::PersonCreateRequiresDeviceOrExternalPersonId",
        "Creating a person requires a device or an external person id",
    ),
    "unique": ("PG::UniqueViolation", "duplicate key value violates unique constraint"),
    "transient": (
        "CarrierLookupService::TransientLookupFailureError",
        "A temporary issue with the carrier lookup service prevented the row from being "
        "processed. Please try again later.",
    ),
    "permanent": (
        "CarrierLookupService::PermanentLookupFailureError",
        "The MDN supplied is not a valid mobile phone active on a valid carrier.",
    ),
    "encoding": (
        "FileEngine::EncodingDetection::Unknown8BitEncodingDetected",
        "File is not UTF-8 or ASCII encoded",
    ),
}
# The two rows whose message SPEC gives case by case (1.1-1.3).
ROW_FORMAT = "PersonErrors::InvalidImportRowFormat"
FILE_FORMAT = "PersonErrors::InvalidImportFileFormat"


def new_person(person_id: int, person_key: str) -> dict[str, Any]:
    return {
        "person_id": person_id,
        "person_key": person_key,
        "external_person_id": None,
        "mdn": None,
        "vibes_device_id": None,
        "fields": {},
    }


@dataclass
class Result:
    """What the reference made of a file: error lines, counts, the persons after it."""

    persons: list[dict[str, Any]]
    columns: tuple[str, ...] = ()
    errors: list[list[str]] = field(default_factory=list)  # as errors.csv cells, unquoted
    counts: Counter[str] = field(default_factory=Counter)
    error_counts: Counter[str] = field(default_factory=Counter)

    def error_rows(self) -> list[list[str]]:
        """errors.csv as parsed rows: the field-name row, then one row per error."""
        header = [*FIXED_COLUMNS, *self.columns]
        return [[spreadsheet_safe(c) for c in row] for row in [header, *self.errors]]

    def export(self, fields: Sequence[CustomField]) -> list[list[str]]:
        """The rows of ``personsd persons export`` (SPEC 7), field-name row first."""
        ordered = sorted(fields, key=lambda f: f.name)
        rows = [[*BUILTINS, *(f.name for f in ordered)]]
        for p in sorted(self.persons, key=lambda p: p["person_id"]):
            row = [str(p["person_id"]), p["person_key"]]
            row += [p[c] or "" for c in BUILTINS[2:]]
            for f in ordered:
                value = p["fields"].get(f.name)
                row.append(
                    "" if value is None else "|".join(value) if isinstance(value, tuple) else value
                )
            rows.append(row)
        return rows


def spreadsheet_safe(cell: str) -> str:
    """SPEC 4: a cell a spreadsheet would run as a formula gets a leading quote."""
    if cell[:1] in ("=", "@", "\t", "\r"):
        return "'" + cell
    if cell[:1] in ("+", "-") and not re.fullmatch(r"[+-][0-9]+(\.[0-9]+)?", cell):
        return "'" + cell
    return cell


class RowFailed(Exception):
    def __init__(self, errors: list[tuple[str, str, str, str]]):
        self.errors = errors


def run(
    data: bytes,
    fields: Sequence[CustomField],
    persons: list[dict[str, Any]],
    *,
    max_row_bytes: int = 1 << 20,
) -> Result:
    """Import ``data`` row by row into ``persons`` (changed in place)."""
    fh = io.BytesIO(data)
    layout = read_layout(fh, max_row_bytes=max_row_bytes)
    result = Result(persons=persons, columns=layout.fields)
    by_name = {f.name: f for f in fields}
    next_id = max((p["person_id"] for p in persons), default=0) + 1
    for raw in iter_rows(fh, layout, max_row_bytes=max_row_bytes):
        result.counts["total"] += 1
        try:
            if raw.error is not None:
                e = raw.error
                raise RowFailed([(e.error_class, e.message, e.field, e.value)])
            outcome = one_row(
                dict(zip(layout.fields, raw.values, strict=False)),
                len(layout.fields),
                len(raw.values),
                by_name,
                layout.multi_delimiter,
                persons,
                next_id,
            )
        except RowFailed as failed:
            result.counts["failed"] += 1
            width = len(layout.fields)
            values = list(raw.values[:width]) + [""] * (width - len(raw.values))
            for error_class, message, column, value in failed.errors:
                result.errors.append(
                    [str(raw.line), str(raw.row), error_class, message, column, value, *values]
                )
                result.error_counts[error_class] += 1
            continue
        result.counts[outcome] += 1
        result.counts["succeeded"] += 1
        if outcome == "created":
            next_id += 1
    return result


def holder(persons: list[dict[str, Any]], column: str, value: object) -> dict[str, Any] | None:
    for p in persons:
        if p[column] == value:
            return p
    return None


def one_row(
    row: dict[str, str],
    expected: int,
    found: int,
    fields: dict[str, CustomField],
    multi_delimiter: str,
    persons: list[dict[str, Any]],
    next_id: int,
) -> str:
    """SPEC 2 for one row; raises RowFailed, else answers "created" or "updated"."""
    if expected != found:
        raise RowFailed([(ROW_FORMAT, f"Expected {expected} fields, found {found}", "", "")])

    # 1. Validate values, every column, every error.
    errors: list[tuple[str, str, str, str]] = []
    ids: dict[str, Any] = {}  # identifier column -> normalised value, None for [null]
    custom: dict[str, StoredValue | None] = {}  # field name -> value, None to clear
    for column, value in row.items():
        if column == "person_id":
            if value == "":
                continue
            if value.isascii() and value.isdigit() and 0 < int(value) < 2**63:
                ids[column] = int(value)
            else:
                errors.append((*SPEC3["bad_person_id"], column, value))
        elif column == "person_key":
            if value not in ("", NULL):
                ids[column] = value
        elif column in ("external_person_id", "vibes_device_id"):
            if value == "":
                continue
            if value == NULL:
                ids[column] = None
            elif len(value) > 255:
                errors.append((*SPEC3["bad_value"], column, value))
            else:
                ids[column] = value
        elif column == "mdn":
            if value == "":
                continue
            if value == NULL:
                ids[column] = None
            elif normalize_mdn(value) is None:
                errors.append((*SPEC3["mdn_format"], column, value))
            else:
                ids[column] = normalize_mdn(value)
        elif column in fields:
            f = fields[column]
            selects = (FieldType.SINGLE_SELECT, FieldType.MULTI_SELECT)
            if value == "":
                if f.type in selects:
                    custom[column] = None  # a blank select clears (SPEC 1.5)
            elif value == NULL:
                custom[column] = None
            else:
                parsed = f.parse(value, multi_delimiter=multi_delimiter)
                if isinstance(parsed, (str, tuple)):
                    custom[column] = parsed
                else:
                    errors.append((parsed.error_class, parsed.message, column, value))
        elif value != "":
            errors.append((*SPEC3["field_not_found"], column, value))
    if errors:
        raise RowFailed(errors)

    # 2. Find the key.
    key = next((c for c in BUILTINS if ids.get(c) is not None), None)
    if key is None:
        raise RowFailed([(*SPEC3["no_key"], "", "")])

    # 3. Resolve.
    person = holder(persons, key, ids[key])
    if person is None and key in ("person_id", "person_key"):
        raise RowFailed([(*SPEC3["not_found"], key, row[key])])
    created = person is None
    if person is None:
        person = new_person(next_id, f"<new {next_id}>")
        person[key] = ids[key]
        if key == "mdn":
            pass  # carrier lookup "none": every well-formed MDN passes

    # 4. Identifier columns other than the key, on a copy: the row is all or nothing.
    changed = dict(person)
    for column in ("external_person_id", "mdn", "vibes_device_id"):
        if column == key or column not in ids:
            continue
        value = ids[column]
        current = person[column]
        if column == "mdn":
            if value == current:
                continue
            if current is not None:
                raise RowFailed([(*SPEC3["mdn_change"], "mdn", row["mdn"])])
            if value is None:
                continue
            other = holder(persons, "mdn", value)
            if other is not None and other is not person:
                raise RowFailed([(*SPEC3["phone_taken"], "mdn", row["mdn"])])
            changed["mdn"] = value  # carrier lookup "none" passes
        else:
            if value is not None:
                other = holder(persons, column, value)
                if other is not None and other is not person:
                    raise RowFailed([(*SPEC3["unique"], column, row[column])])
            changed[column] = value

    # 5. Custom fields.
    values = dict(person["fields"])
    for name, stored in custom.items():
        if stored is None:
            values.pop(name, None)
        else:
            values[name] = stored
    changed["fields"] = values

    person.update(changed)
    if created:
        persons.append(person)
        return "created"
    return "updated"
