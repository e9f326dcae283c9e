"""A tenant's persons as the CLI shows them: a .persons file, or one person as JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Connection

from personsd import fileformat, reports
from personsd.errors import OperatorError
from personsd.fieldtypes import CustomField, format_value
from personsd.rules import Person
from personsd.store import fields as store_fields
from personsd.store import persons as store_persons

# The columns every export starts with: the identifiers of the file format.
BUILTIN_COLUMNS = fileformat.IDENTIFIERS


def export_rows(person: Person, custom: list[CustomField]) -> list[str]:
    """One person's row of an export: the identifiers, then ``custom``'s values."""
    row = [
        str(person.person_id),
        person.person_key,
        person.external_person_id or "",
        person.mdn or "",
        person.vibes_device_id or "",
    ]
    for field in custom:
        value = person.attributes.get(str(field.id))
        row.append("" if value is None else format_value(value))
    return row


def write_persons(conn: Connection, tenant_id: int, output: Path | None, stdout: TextIO) -> None:
    """Every person of a tenant as a .persons file, by person_id, custom fields by name.

    Written to ``output``, or to ``stdout`` when None.
    """
    custom = store_fields.list_fields(conn, tenant_id)  # sorted by name
    header = BUILTIN_COLUMNS + tuple(f.name for f in custom)
    out: TextIO
    try:
        out = output.open("w", encoding="utf-8", newline="") if output else stdout
    except OSError as exc:
        raise OperatorError(f"cannot write {output}: {exc.strerror}") from None
    try:
        out.write(reports.persons_line(header, ","))
        for person in store_persons.iter_all(conn, tenant_id):
            out.write(reports.persons_line(export_rows(person, custom), ","))
    finally:
        if output:
            out.close()


def person_body(person: Person, custom: list[CustomField]) -> dict[str, Any]:
    """``persons show``'s JSON object: the identifiers, then ``fields`` the person holds."""
    body: dict[str, Any] = {c: getattr(person, c) for c in BUILTIN_COLUMNS}
    body["fields"] = {
        f.name: format_value(person.attributes[str(f.id)])
        for f in custom
        if str(f.id) in person.attributes
    }
    return body
