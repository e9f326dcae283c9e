"""Tenant logins for the SFTP server, in memory and in a snapshot file (SPEC 5, 12)."""

from __future__ import annotations

import json
import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine

from personsd.logging import Event, get_logger
from personsd.sftp import TenantAuth
from personsd.store import tenants as store_tenants

log = get_logger("personsd.tenantcache")


class TenantCache:
    """Tenant logins for the SFTP server, kept in memory and in a snapshot file.

    The snapshot lets partners log in and upload while the database is down
    (SPEC 5: uploads keep being accepted), even across a restart.
    """

    def __init__(self, *, snapshot: Path, engine: Engine) -> None:
        self.snapshot = snapshot
        self._engine = engine
        self._tenants: dict[str, TenantAuth] = {}
        self._lock = threading.Lock()
        self._load_snapshot()

    def get(self, name: str) -> TenantAuth | None:
        with self._lock:
            found = self._tenants.get(name)
        if found is None:
            # A tenant added since the last refresh (or before the first one).
            try:
                with self._engine.connect() as conn:
                    tenant = store_tenants.get_tenant(conn, name)
            except Exception as exc:  # noqa: BLE001 -- database down: the snapshot is all we have
                log.warning(Event.TENANT_LOOKUP_FAILED, tenant=name[:100], error=repr(exc)[:200])
                return None
            if tenant is not None:
                found = TenantAuth(
                    name=tenant.name, public_keys=tenant.keys, password_hash=tenant.password_hash
                )
                with self._lock:
                    self._tenants[name] = found
        return found

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._tenants)

    def refresh(self, prepare: Callable[[str], None] | None = None) -> None:
        """Read every tenant from the database and write the snapshot.

        ``prepare(name)`` runs for each tenant before it is published: once a tenant
        is in the snapshot, whatever ``prepare`` sets up (its directories) exists.
        """
        with self._engine.connect() as conn:
            found = store_tenants.list_tenants(conn)
        tenants = {}
        for tenant in found:
            try:
                tenants[tenant.name] = TenantAuth(
                    name=tenant.name, public_keys=tenant.keys, password_hash=tenant.password_hash
                )
            except ValueError as exc:
                log.error(Event.TENANT_INVALID, tenant=tenant.name, error=str(exc))
        if prepare is not None:
            for name in tenants:
                prepare(name)
        with self._lock:
            self._tenants = tenants
        data = [
            {
                "name": t.name,
                "public_keys": [list(k) for k in t.public_keys],
                "password_hash": t.password_hash,
            }
            for t in tenants.values()
        ]
        # A name of its own: instances sharing the root write the snapshot too.
        temp = self.snapshot.with_name(f".{self.snapshot.name}.{secrets.token_hex(8)}.tmp")
        temp.write_text(json.dumps(data))
        os.chmod(temp, 0o600)
        os.replace(temp, self.snapshot)

    def _load_snapshot(self) -> None:
        try:
            data = json.loads(self.snapshot.read_text())
        except (FileNotFoundError, ValueError):
            return
        for item in data:
            try:
                auth = TenantAuth(
                    name=item["name"],
                    public_keys=tuple(tuple(k) for k in item["public_keys"]),
                    password_hash=item["password_hash"],
                )
            except (KeyError, TypeError, ValueError):
                continue
            self._tenants[auth.name] = auth
