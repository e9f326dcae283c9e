"""The benchmark's limit writes exactly the rows personsd writes, or its ratios mean nothing."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from sqlalchemy import text

from cli_helpers import make_site
from conftest import database_url
from personsd.store import db

BENCH = Path(__file__).resolve().parent.parent / "bench"
COLUMNS = "person_id, tenant_id, person_key, external_person_id, mdn, vibes_device_id, attributes"


def _bench_module(name: str) -> ModuleType:
    """A bench script as a module, without putting bench/ on sys.path."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


generate = _bench_module("generate")
common = _bench_module("common")


def _spelled_otherwise(line: str) -> str:
    """A generated row with the same meaning in forms personsd normalises."""
    ext_id, mdn, name, age, sports = line.split(",")
    national = mdn.removeprefix("+1")
    sports = f"{sports}|{sports.split('|')[0]}" if sports else ""
    return (
        f" {ext_id}\t,({national[:3]}) {national[3:6]}-{national[6:]}, {name} ,00{age}.00,{sports}"
    )


def _bench_file(path: Path) -> Path:
    """300 generated rows, then a few more written the ways a partner might."""
    lines = [generate.HEADER, *generate.rows(300)]
    lines += [_spelled_otherwise(line) for line in generate.rows(5, start=50_000)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _persons(url: str) -> list[dict[str, Any]]:
    engine = db.connect(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(f"SELECT {COLUMNS} FROM persons ORDER BY person_id"))
            return [dict(row._mapping) for row in rows]
    finally:
        engine.dispose()


def _key_shape(key: str) -> tuple[bool, int, str]:
    """(canonical lowercase text, UUID version, variant) of a person_key."""
    parsed = uuid.UUID(key)
    return str(parsed) == key, parsed.version or 0, parsed.variant


@pytest.fixture(params=["sqlite", "postgresql"])
def two_databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two fresh, empty databases of one kind: one for personsd, one for the limit."""
    (tmp_path / "personsd").mkdir()
    (tmp_path / "limit").mkdir()
    with (
        database_url(request.param, tmp_path / "personsd") as first,
        database_url(request.param, tmp_path / "limit") as second,
    ):
        yield first, second


def test_limit_writes_the_rows_personsd_writes(
    two_databases: tuple[str, str], tmp_path: Path
) -> None:
    """bench/limit.py stores what `personsd import` stores: same columns, v7 keys alike."""
    personsd_url, limit_url = two_databases
    path = _bench_file(tmp_path / "bench.persons")

    site = make_site(tmp_path / "site", personsd_url, carrier="offline")
    site.add_tenant(
        common.TENANT,
        fields=[
            (name, type_, *(["--options", options] if options else []))
            for name, type_, options in generate.CUSTOM_FIELDS
        ],
    )
    summary = site.import_file(path, common.TENANT).summary
    assert (305, 305, 0) == (
        summary["rows"]["total"],
        summary["rows"]["created"],
        summary["rows"]["failed"],
    )

    tenant_id = common.personsd_schema(limit_url, generate.CUSTOM_FIELDS)
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "limit.py"),
            "--url",
            limit_url,
            "--tenant-id",
            str(tenant_id),
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert 0 == done.returncode, done.stderr
    assert 305 == json.loads(done.stdout)["rows"]

    by_personsd, by_limit = _persons(personsd_url), _persons(limit_url)
    personsd_keys = [row.pop("person_key") for row in by_personsd]
    limit_keys = [row.pop("person_key") for row in by_limit]
    assert by_personsd == by_limit
    assert {(True, 7, uuid.RFC_4122)} == {_key_shape(k) for k in personsd_keys}
    assert {(True, 7, uuid.RFC_4122)} == {_key_shape(k) for k in limit_keys}
