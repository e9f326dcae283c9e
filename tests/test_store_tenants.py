"""store.tenants and store.fields: CRUD, duplicates and cascades, on both databases."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine

from personsd.errors import OperatorError
from personsd.fieldtypes import Charset, CustomField, FieldType
from personsd.rules import Person
from personsd.store import db, fields, imports, persons, tenants
from personsd.store.tenants import Tenant

KEY = ("ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIGx1Y2t5", "ops@example")


def test_add_get_list_tenants(engine: Engine) -> None:
    """A tenant reads back with its keys and password hash; list is sorted by name."""
    with db.write_tx(engine) as conn:
        acme = tenants.add_tenant(conn, "acme", keys=[KEY], password_hash="$scrypt$x")
        beta = tenants.add_tenant(conn, "beta-2")
    with engine.connect() as conn:
        got = tenants.get_tenant(conn, "acme")
        listed = tenants.list_tenants(conn)
        missing = tenants.get_tenant(conn, "nobody")
    expected = Tenant(id=acme, name="acme", password_hash="$scrypt$x", keys=(KEY[:2],))
    assert expected == got
    assert [expected, Tenant(id=beta, name="beta-2")] == listed
    assert None is missing


def test_duplicate_tenant_is_operator_error(engine: Engine) -> None:
    """Adding an existing tenant raises OperatorError naming it; the first stays intact."""
    with db.write_tx(engine) as conn:
        tenants.add_tenant(conn, "acme")
    with pytest.raises(OperatorError) as info, db.write_tx(engine) as conn:
        tenants.add_tenant(conn, "acme", password_hash="other")
    assert "tenant 'acme' already exists" == str(info.value)
    with engine.connect() as conn:
        assert [None] == [t.password_hash for t in tenants.list_tenants(conn)]


@pytest.mark.parametrize("name", ["", "Acme", "-acme", "a" * 65, "a b", "ac/me"])
def test_invalid_tenant_name_is_refused(engine: Engine, name: str) -> None:
    """Tenant names must match [a-z0-9][a-z0-9_-]{0,63}."""
    with pytest.raises(OperatorError, match="invalid tenant name"), db.write_tx(engine) as conn:
        tenants.add_tenant(conn, name)


def test_keys_add_once_and_remove(engine: Engine) -> None:
    """add_key is idempotent (False the second time); bad base64 is refused; remove_key revokes."""
    with db.write_tx(engine) as conn:
        tenant_id = tenants.add_tenant(conn, "acme")
        first = tenants.add_key(conn, tenant_id, KEY[0], KEY[1])
        second = tenants.add_key(conn, tenant_id, KEY[0], KEY[1], "again")
        with pytest.raises(OperatorError, match="not base64"):
            tenants.add_key(conn, tenant_id, "ssh-rsa", "not base64!")
    assert (True, False) == (first, second)
    with db.write_tx(engine) as conn:
        removed = tenants.remove_key(conn, tenant_id, KEY[0], KEY[1])
        again = tenants.remove_key(conn, tenant_id, KEY[0], KEY[1])
        keys = tenants.get_tenant(conn, "acme")
    assert (True, False) == (removed, again)
    assert keys is not None and () == keys.keys


def test_remove_tenant_cascades(engine: Engine) -> None:
    """Removing a tenant deletes its keys, fields, persons and imports, nobody else's."""
    with db.write_tx(engine) as conn:
        ids = [tenants.add_tenant(conn, name, keys=[KEY]) for name in ("acme", "beta")]
        for tenant_id in ids:
            fields.add_field(conn, tenant_id, CustomField(name="color", type=FieldType.STRING))
            [pid] = persons.allocate_ids(conn, 1)
            person = Person(person_id=pid, person_key=f"{pid:08x}-0000-4000-8000-000000000000")
            persons.write(conn, tenant_id, [person], [])
            imports.create(
                conn,
                tenant_id=tenant_id,
                file_name="a.persons",
                sha256="0" * 64,
                bytes=1,
                source="cli",
                work_path="/w",
                received_at=datetime.now(UTC),
            )
    with db.write_tx(engine) as conn:
        removed = tenants.remove_tenant(conn, "acme")
        again = tenants.remove_tenant(conn, "acme")
    assert (True, False) == (removed, again)
    with engine.connect() as conn:
        remaining = {
            table: conn.exec_driver_sql(f"SELECT DISTINCT tenant_id FROM {table}").scalars().all()
            for table in ("tenant_keys", "custom_fields", "persons", "imports")
        }
    assert {t: [ids[1]] for t in remaining} == remaining


def test_fields_add_list_remove(engine: Engine) -> None:
    """Fields come back with ids, sorted by name, with type, charset, length and options."""
    color = CustomField(name="color", type=FieldType.STRING, charset=Charset.GSM7, max_length=20)
    sports = CustomField(
        name="sports", type=FieldType.MULTI_SELECT, options=("soccer", "golf", "a.b-c_d")
    )
    with db.write_tx(engine) as conn:
        tenant_id = tenants.add_tenant(conn, "acme")
        other = tenants.add_tenant(conn, "beta")
        stored_sports = fields.add_field(conn, tenant_id, sports)
        stored_color = fields.add_field(conn, tenant_id, color)
        fields.add_field(conn, other, CustomField(name="age", type=FieldType.NUMBER))
    assert stored_color.id > stored_sports.id > 0
    with engine.connect() as conn:
        listed = fields.list_fields(conn, tenant_id)
    assert [stored_color, stored_sports] == listed
    assert ("soccer", "golf", "a.b-c_d") == listed[1].options
    with db.write_tx(engine) as conn:
        outcome = (
            fields.remove_field(conn, tenant_id, "color"),
            fields.remove_field(conn, tenant_id, "color"),
        )
        left = fields.list_fields(conn, tenant_id)
    assert (True, False) == outcome
    assert [stored_sports] == left


def test_duplicate_field_is_operator_error(engine: Engine) -> None:
    """A field name already used by the tenant raises OperatorError; another tenant may use it."""
    field = CustomField(name="color", type=FieldType.STRING)
    with db.write_tx(engine) as conn:
        tenant_id = tenants.add_tenant(conn, "acme")
        other = tenants.add_tenant(conn, "beta")
        fields.add_field(conn, tenant_id, field)
        fields.add_field(conn, other, field)
    with pytest.raises(OperatorError) as info, db.write_tx(engine) as conn:
        fields.add_field(conn, tenant_id, field)
    assert "field 'color' already exists" == str(info.value)


def test_field_ids_are_never_reused(engine: Engine) -> None:
    """A removed field's id is not given to a later field (its stale values stay hidden)."""
    field = CustomField(name="color", type=FieldType.STRING)
    with db.write_tx(engine) as conn:
        tenant_id = tenants.add_tenant(conn, "acme")
        first = fields.add_field(conn, tenant_id, field)
        fields.remove_field(conn, tenant_id, "color")
        second = fields.add_field(conn, tenant_id, field)
    assert second.id > first.id
