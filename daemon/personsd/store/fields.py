"""A tenant's custom field definitions, as ``fieldtypes.CustomField`` values."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

from sqlalchemy import Connection, delete, select

from personsd.errors import OperatorError
from personsd.fieldtypes import Charset, CustomField, FieldType
from personsd.store.db import dialect_insert
from personsd.store.models import CustomFieldRow


def add_field(conn: Connection, tenant_id: int, field: CustomField) -> CustomField:
    """Store ``field`` for the tenant and return it with its database id."""
    stmt = (
        dialect_insert(conn, CustomFieldRow)
        .values(
            tenant_id=tenant_id,
            name=field.name,
            type=str(field.type),
            charset=str(field.charset),
            max_length=field.max_length,
            options=json.dumps(list(field.options)),
            created_at=datetime.now(UTC),
        )
        .on_conflict_do_nothing(index_elements=["tenant_id", "name"])
        .returning(CustomFieldRow.id)
    )
    field_id = conn.execute(stmt).scalar()
    if field_id is None:
        raise OperatorError(f"field '{field.name}' already exists")
    return dataclasses.replace(field, id=field_id)


def list_fields(conn: Connection, tenant_id: int) -> list[CustomField]:
    """The tenant's custom fields, sorted by name."""
    rows = conn.execute(
        select(
            CustomFieldRow.id,
            CustomFieldRow.name,
            CustomFieldRow.type,
            CustomFieldRow.charset,
            CustomFieldRow.max_length,
            CustomFieldRow.options,
        )
        .where(CustomFieldRow.tenant_id == tenant_id)
        .order_by(CustomFieldRow.name)
    )
    return [
        CustomField(
            id=r.id,
            name=r.name,
            type=FieldType(r.type),
            charset=Charset(r.charset),
            max_length=r.max_length,
            options=tuple(json.loads(r.options)),
        )
        for r in rows
    ]


def remove_field(conn: Connection, tenant_id: int, name: str) -> bool:
    """Delete the field definition; False when the tenant has no such field.

    Stored values stay in the persons' attributes under the old id, which is
    never reused: they are invisible from then on and cost no table rewrite.
    """
    stmt = delete(CustomFieldRow).where(
        CustomFieldRow.tenant_id == tenant_id, CustomFieldRow.name == name
    )
    return conn.execute(stmt).rowcount > 0
