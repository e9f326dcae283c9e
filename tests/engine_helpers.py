"""Shared helpers for tests that drive the import engine end to end.

A tenant with custom fields on a real database, an import run through
``importer.create``/``importer.run``, the tenant's persons exported like
``personsd persons export``, and the published reports read back.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from personsd import config, importer
from personsd.cli import BUILTIN_COLUMNS, export_rows
from personsd.fieldtypes import Charset, CustomField, FieldType
from personsd.phones import CarrierCheck
from personsd.reports import report_names
from personsd.rules import Person
from personsd.store import db
from personsd.store import fields as store_fields
from personsd.store import persons as store_persons
from personsd.store import tenants as store_tenants
from personsd.store.db import write_tx

# The custom fields every engine test tenant gets (SPEC 1.5 types with traps:
# a short gsm7 string, a canonicalised number, both select kinds).
TEST_FIELDS = (
    CustomField(name="nick", type=FieldType.STRING, charset=Charset.GSM7, max_length=5),
    CustomField(name="score", type=FieldType.NUMBER),
    CustomField(name="tier", type=FieldType.SINGLE_SELECT, options=("gold", "silver", "bronze")),
    CustomField(name="tags", type=FieldType.MULTI_SELECT, options=("a", "b", "c")),
)


def make_config(root: Path, db_url: str, *, chunk_rows: int) -> config.Config:
    """A config on ``root`` and ``db_url`` with carrier lookup off (SPEC 2: `none`)."""
    return config.parse(
        {
            "paths": {"root": str(root)},
            "database": {"url": db_url},
            "import": {"chunk_rows": chunk_rows, "carrier_lookup": "none"},
        },
        base=root,
        env={},
    )


def var_config(base: Path, db_url: str, **imports: Any) -> config.Config:
    """A config rooted at ``base/var`` on ``db_url``: carrier lookup off, ``imports`` on top."""
    return config.parse(
        {
            "paths": {"root": str(base / "var")},
            "database": {"url": db_url},
            "import": {"carrier_lookup": "none", **imports},
        },
        base=base,
        env={},
    )


def new_tenant_name() -> str:
    return "t" + uuid.uuid4().hex[:12]


def add_tenant(
    engine: Engine, name: str, fields: Iterable[CustomField] = TEST_FIELDS
) -> tuple[int, list[CustomField]]:
    """Create tenant ``name`` with ``fields``; its id and the fields with their ids."""
    with write_tx(engine) as conn:
        tenant_id = store_tenants.add_tenant(conn, name)
        stored = [store_fields.add_field(conn, tenant_id, f) for f in fields]
    return tenant_id, stored


@dataclass(frozen=True, kw_only=True, slots=True)
class Tenant:
    """A tenant on the database: its name, id and custom fields (with their ids)."""

    name: str
    id: int
    fields: list[CustomField]


def fresh_tenant(engine: Engine, fields: Iterable[CustomField] = TEST_FIELDS) -> Tenant:
    """A tenant of a new random name with ``fields``."""
    name = new_tenant_name()
    tenant_id, stored = add_tenant(engine, name, fields)
    return Tenant(name=name, id=tenant_id, fields=stored)


def run_import(
    engine: Engine,
    cfg: config.Config,
    tenant: str,
    path: Path,
    *,
    carrier: CarrierCheck | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
) -> importer.Outcome:
    """Queue ``path`` for ``tenant`` and run the import to its end."""
    import_id = importer.create(engine, tenant=tenant, path=path, source="cli")
    return importer.run(engine, cfg, import_id, carrier=carrier, on_chunk=on_chunk)


def persons_of(engine: Engine, tenant_id: int) -> list[Person]:
    with engine.connect() as conn:
        return list(store_persons.iter_all(conn, tenant_id))


def export(
    engine: Engine, tenant_id: int, fields: Sequence[CustomField] | None = None
) -> list[list[str]]:
    """The rows of ``personsd persons export`` (field-name row first).

    ``fields``: the tenant's custom fields when the caller knows them already.
    """
    with engine.connect() as conn:
        if fields is None:
            custom = store_fields.list_fields(conn, tenant_id)
        else:
            custom = sorted(fields, key=lambda f: f.name)
        rows = [list(BUILTIN_COLUMNS) + [f.name for f in custom]]
        rows.extend(export_rows(p, custom) for p in store_persons.iter_all(conn, tenant_id))
    return rows


def normalise_export(
    rows: Sequence[Sequence[str]], keep_keys: Iterable[str] = ()
) -> list[list[str]]:
    """An export with person_id replaced by its rank and unknown person_keys blanked.

    PostgreSQL sequences leave gaps and new keys are random, so only the order
    of ids and the keys of persons known beforehand (``keep_keys``) are
    comparable between two runs.
    """
    kept = set(keep_keys)
    out = [list(rows[0])]
    for rank, row in enumerate(rows[1:], start=1):
        key = row[1] if row[1] in kept else "<new>"
        out.append([str(rank), key, *row[2:]])
    return out


def restore_persons(engine: Engine, tenant_id: int, persons: Sequence[Person]) -> None:
    """Put the tenant's persons back to exactly ``persons`` (same ids and keys)."""
    with write_tx(engine) as conn:
        mark = "%(t)s" if conn.dialect.name == "postgresql" else ":t"
        conn.exec_driver_sql(f"DELETE FROM persons WHERE tenant_id = {mark}", {"t": tenant_id})
        store_persons.write(conn, tenant_id, [p.copy() for p in persons], [])


@dataclass(frozen=True, kw_only=True, slots=True)
class Published:
    """The outbox files of one finished import."""

    errors: bytes
    retry: bytes | None
    summary: dict[str, Any]

    def error_rows(self) -> list[list[str]]:
        """errors.csv parsed as CSV (field-name row first)."""
        return list(csv.reader(io.StringIO(self.errors.decode("utf-8"), newline="")))

    def stable_summary(self) -> dict[str, Any]:
        """The summary without what differs between two runs of the same file."""
        unstable = {
            "import_id",
            "tenant",
            "received_at",
            "started_at",
            "finished_at",
            "reports",
            "duplicate_of",
        }
        return {k: v for k, v in self.summary.items() if k not in unstable}


def published(cfg: config.Config, tenant: str, outcome: importer.Outcome) -> Published:
    """Read back the reports ``outcome``'s import published to the tenant's outbox."""
    names = report_names(outcome.record.file_name, outcome.record.id)
    outbox = cfg.outbox(tenant)
    retry = outbox / names.retry
    return Published(
        errors=(outbox / names.errors).read_bytes(),
        retry=retry.read_bytes() if retry.exists() else None,
        summary=json.loads((outbox / names.summary).read_text(encoding="utf-8")),
    )


@contextmanager
def fast_dir(fallback: Path) -> Iterator[Path]:
    """A scratch directory on tmpfs (fsync costs nothing there), else ``fallback``."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield fallback
        return
    path = Path(tempfile.mkdtemp(prefix="personsd-test-", dir=shm))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def fast_url(db_url: str, scratch: Path) -> str:
    """``db_url`` for a test that commits a lot: SQLite moved into ``scratch``
    (see :func:`fast_dir`), PostgreSQL commits not waiting for the WAL flush."""
    if db_url.startswith("sqlite"):
        return f"sqlite:///{scratch / 'persons.db'}"
    option = "-csynchronous_commit%3Doff"
    if "options=" in db_url:
        return db_url.replace("options=", f"options={option}%20", 1)
    return db_url + ("&" if "?" in db_url else "?") + f"options={option}"


@contextmanager
def fast_engine(db_url: str, scratch: Path) -> Iterator[tuple[Path, str, Engine]]:
    """A migrated engine for a test that commits a lot: the :func:`fast_dir`
    root, the :func:`fast_url` and the engine on it (disposed afterwards)."""
    with fast_dir(scratch) as root:
        url = fast_url(db_url, root)
        engine = db.connect(url)
        try:
            db.upgrade(engine)
            yield root, url, engine
        finally:
            engine.dispose()


def migrate_with_tenant(cfg: config.Config, tenant: str) -> None:
    """Bring ``cfg``'s database to the schema's head and add ``tenant`` with its outbox."""
    engine = db.connect(cfg.database.url)
    try:
        db.upgrade(engine)
        with write_tx(engine) as conn:
            store_tenants.add_tenant(conn, tenant)
    finally:
        engine.dispose()
    cfg.outbox(tenant).mkdir(parents=True)


def import_summary(db_url: str, root: Path, path: Path, *, chunk_rows: int) -> dict[str, Any]:
    """Import ``path`` for a fresh tenant on ``db_url`` (config on ``root``); the
    summary it published."""
    engine = db.connect(db_url)
    try:
        db.upgrade(engine)
        cfg = make_config(root, db_url, chunk_rows=chunk_rows)
        tenant = new_tenant_name()
        add_tenant(engine, tenant)
        return published(cfg, tenant, run_import(engine, cfg, tenant, path)).summary
    finally:
        engine.dispose()
