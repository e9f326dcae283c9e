"""Tenants: partner accounts with their SSH keys and optional password hash."""

from __future__ import annotations

import binascii
import re
from base64 import b64decode
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, delete, select, update

from personsd.errors import OperatorError
from personsd.store.db import dialect_insert
from personsd.store.models import TENANT_NAME_PATTERN, TenantKeyRow, TenantRow

_NAME = re.compile(TENANT_NAME_PATTERN)
_KEY_TYPE = re.compile(r"[A-Za-z0-9@._+-]{1,64}")

# (key_type, key_data) or (key_type, key_data, comment), as in authorized_keys.
KeySpec = tuple[str, str] | tuple[str, str, str]


@dataclass(frozen=True, kw_only=True, slots=True)
class Tenant:
    """A tenant as stored; ``keys`` are (key_type, key_data) pairs, in insertion order."""

    id: int
    name: str
    password_hash: str | None = None
    keys: tuple[tuple[str, str], ...] = ()
    expect_every_seconds: int | None = None  # SPEC 10: the partner's cadence
    notify_url: str | None = None  # SPEC 10: this tenant's webhook (None: notify.url)

    def __post_init__(self) -> None:
        check_name(self.name)


def check_name(name: str) -> None:
    """Raise OperatorError unless ``name`` is a valid tenant name."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise OperatorError(
            f"invalid tenant name {name!r}: use 1-64 lowercase letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )


def _check_key(key_type: str, key_data: str) -> None:
    if not _KEY_TYPE.fullmatch(key_type):
        raise OperatorError(f"invalid SSH key type {key_type!r}")
    try:
        b64decode(key_data, validate=True)
    except (binascii.Error, ValueError):
        raise OperatorError(f"invalid SSH key data for {key_type}: not base64") from None
    if not key_data:
        raise OperatorError(f"invalid SSH key data for {key_type}: empty")


def add_tenant(
    conn: Connection, name: str, *, keys: Iterable[KeySpec] = (), password_hash: str | None = None
) -> int:
    """Create a tenant and return its id; an existing name is an OperatorError."""
    check_name(name)
    key_list = list(keys)
    for key in key_list:
        _check_key(key[0], key[1])
    # ON CONFLICT keeps a PostgreSQL transaction usable (no aborted statement).
    stmt = (
        dialect_insert(conn, TenantRow)
        .values(name=name, password_hash=password_hash, created_at=datetime.now(UTC))
        .on_conflict_do_nothing(index_elements=["name"])
        .returning(TenantRow.id)
    )
    tenant_id = conn.execute(stmt).scalar()
    if tenant_id is None:
        raise OperatorError(f"tenant '{name}' already exists")
    for key in key_list:
        add_key(conn, tenant_id, key[0], key[1], key[2] if len(key) == 3 else "")
    return tenant_id


def add_key(
    conn: Connection, tenant_id: int, key_type: str, key_data: str, comment: str = ""
) -> bool:
    """Authorise an SSH public key for the tenant; False when it was already there."""
    _check_key(key_type, key_data)
    stmt = (
        dialect_insert(conn, TenantKeyRow)
        .values(tenant_id=tenant_id, key_type=key_type, key_data=key_data, comment=comment)
        .on_conflict_do_nothing(index_elements=["tenant_id", "key_type", "key_data"])
        .returning(TenantKeyRow.id)
    )
    return conn.execute(stmt).scalar() is not None


def remove_key(conn: Connection, tenant_id: int, key_type: str, key_data: str) -> bool:
    """Revoke an SSH key; False when the tenant did not have it."""
    stmt = delete(TenantKeyRow).where(
        TenantKeyRow.tenant_id == tenant_id,
        TenantKeyRow.key_type == key_type,
        TenantKeyRow.key_data == key_data,
    )
    return conn.execute(stmt).rowcount > 0


def set_password_hash(conn: Connection, tenant_id: int, password_hash: str | None) -> None:
    """Replace (or with None, remove) the tenant's password hash."""
    conn.execute(
        update(TenantRow).where(TenantRow.id == tenant_id).values(password_hash=password_hash)
    )


def set_operations(conn: Connection, tenant_id: int, **changes: int | str | None) -> None:
    """Set ``expect_every_seconds`` and/or ``notify_url`` (None clears them)."""
    unknown = set(changes) - {"expect_every_seconds", "notify_url"}
    if unknown:
        raise ValueError(f"not an operations setting: {sorted(unknown)}")
    seconds = changes.get("expect_every_seconds")
    if isinstance(seconds, int) and seconds <= 0:
        raise OperatorError(f"the expected interval must be positive, got {seconds} s")
    url = changes.get("notify_url")
    if isinstance(url, str) and not url.startswith(("http://", "https://")):
        raise OperatorError("the notify URL must start with http:// or https://")
    if changes:
        conn.execute(update(TenantRow).where(TenantRow.id == tenant_id).values(**changes))


_COLUMNS = (
    TenantRow.id,
    TenantRow.name,
    TenantRow.password_hash,
    TenantRow.expect_every_seconds,
    TenantRow.notify_url,
)


def _tenant(row: Any, keys: tuple[tuple[str, str], ...]) -> Tenant:
    return Tenant(
        id=row.id,
        name=row.name,
        password_hash=row.password_hash,
        keys=keys,
        expect_every_seconds=row.expect_every_seconds,
        notify_url=row.notify_url,
    )


def get_tenant(conn: Connection, name: str) -> Tenant | None:
    """The tenant called ``name``, None when there is none."""
    row = conn.execute(select(*_COLUMNS).where(TenantRow.name == name)).one_or_none()
    if row is None:
        return None
    return _tenant(row, _keys(conn, [row.id])[row.id])


def list_tenants(conn: Connection) -> list[Tenant]:
    """Every tenant, sorted by name."""
    rows = conn.execute(select(*_COLUMNS).order_by(TenantRow.name)).all()
    keys = _keys(conn, None)
    return [_tenant(r, keys.get(r.id, ())) for r in rows]


def remove_tenant(conn: Connection, name: str) -> bool:
    """Delete a tenant with its keys, fields, persons and imports; False if unknown."""
    return conn.execute(delete(TenantRow).where(TenantRow.name == name)).rowcount > 0


def _keys(conn: Connection, tenant_ids: list[int] | None) -> dict[int, tuple[tuple[str, str], ...]]:
    stmt = select(TenantKeyRow.tenant_id, TenantKeyRow.key_type, TenantKeyRow.key_data).order_by(
        TenantKeyRow.id
    )
    if tenant_ids is not None:
        stmt = stmt.where(TenantKeyRow.tenant_id.in_(tenant_ids))
    found: dict[int, list[tuple[str, str]]] = {t: [] for t in tenant_ids or ()}
    for tenant_id, key_type, key_data in conn.execute(stmt):
        found.setdefault(tenant_id, []).append((key_type, key_data))
    return {t: tuple(keys) for t, keys in found.items()}


def tenant_name(conn: Connection, tenant_id: int) -> str | None:
    """The name of the tenant with ``tenant_id``, or None."""
    name = conn.execute(select(TenantRow.name).where(TenantRow.id == tenant_id)).scalar()
    return None if name is None else str(name)


def set_pgp_verify_key(
    conn: Connection, tenant_id: int, armored: str | None, fingerprint: str | None
) -> None:
    """Require (or, with None, stop requiring) the tenant's files to be signed by this key."""
    if (armored is None) != (fingerprint is None):
        raise ValueError("a verify key comes with its fingerprint")
    conn.execute(
        update(TenantRow)
        .where(TenantRow.id == tenant_id)
        .values(pgp_verify_key=armored, pgp_verify_fingerprint=fingerprint)
    )


def pgp_verify_key(conn: Connection, tenant_id: int) -> tuple[str, str] | None:
    """The tenant's verify key (armoured) and its fingerprint, or None."""
    row = conn.execute(
        select(TenantRow.pgp_verify_key, TenantRow.pgp_verify_fingerprint).where(
            TenantRow.id == tenant_id
        )
    ).one_or_none()
    if row is None or row.pgp_verify_key is None or row.pgp_verify_fingerprint is None:
        return None
    return row.pgp_verify_key, row.pgp_verify_fingerprint
