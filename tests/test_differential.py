"""Chunking never changes the outcome: the engine against a naive reference (SPEC 2, 4, 5).

Each example seeds a fresh tenant through the engine, then runs one generated
file through the engine with chunk sizes 1, 3 and 5000 (the tenant's persons
put back to the seed before each run) and through ``tests/reference.py``.
Files mix creates, updates, in-file conflicts, clears and bad values, drawn
from small pools so that collisions are the rule.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

import reference
from engine_helpers import (
    export,
    fast_engine,
    fresh_tenant,
    make_config,
    normalise_export,
    persons_of,
    published,
    restore_persons,
    run_import,
)
from layer_helpers import VARIANTS, Keys, with_pgp_home, wrap
from personsd.config import Config
from personsd.fieldtypes import CustomField
from personsd.rules import Person

CHUNK_SIZES = (1, 3, 5000)
# For tests whose examples each run several imports on the shared bench.
FORTY_EXAMPLES = settings(
    max_examples=40,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    deadline=None,
)

# Four persons every example starts from; the file names them by index (@pid0,
# @key0...) since their real ids and keys are known only once seeded.
SEED = (
    b"external_person_id,mdn,vibes_device_id,nick,score,tier,tags\n"
    b"e1,+12025550101,d1,abc,7,gold,a|b\n"
    b"e2,,,,,,\n"
    b",+12025550102,d2,,1.5,,c\n"
    b",,d3,hi,,silver,\n"
)
SEEDED = 4
UNKNOWN_KEY = "0b7e6a51-3f7c-4a51-9d0e-2a1c5b7f0e11"

NUMBERS = [f"+120255501{i:02d}" for i in range(1, 7)]
POOLS: dict[str, list[str]] = {
    "person_id": [
        *(f"@pid{i}" for i in range(SEEDED)),
        "@0pid1",
        "999999999",
        "0",
        "-3",
        "abc",
        "[null]",
        "99999999999999999999",
    ],
    "person_key": [*(f"@key{i}" for i in range(SEEDED)), "@KEY0", UNKNOWN_KEY, "[null]"],
    "external_person_id": ["e1", "e2", "e3", "e4", "e5", "E1", "[null]", "x" * 256],
    "mdn": [
        *NUMBERS,
        "202-555-0101",
        "(202) 555-0103",
        "1 202 555 0104",
        "2025550105",
        "12345",
        "+1202555",
        "abc",
        "[null]",
    ],
    "vibes_device_id": ["d1", "d2", "d3", "d4", "d5", "[null]"],
    "nick": ["abc", "hello", "toolong", "€5", "naïve", "=A1", "@x", "[null]"],
    "score": ["7", "007.50", "-0.0", "-5", "1e5", "+5", "abc", "[null]"],
    "tier": ["gold", "silver", "bronze", "Gold", "platinum", "[null]"],
    "tags": ["a", "a|b", "b|a|b", "a | c", "a||b", "d", "[null]"],
    # Columns the tenant does not have (names match case-sensitively).
    "color": ["red", "[null]"],
    "Nick": ["abc", "[null]"],
}
IDENTIFIER_COLUMNS = ("person_id", "person_key", "external_person_id", "mdn", "vibes_device_id")
CUSTOM_COLUMNS = ("nick", "score", "tier", "tags")
UNKNOWN_COLUMNS = ("color", "Nick")


@dataclass(frozen=True, kw_only=True, slots=True)
class FileSpec:
    """A generated file before the seeded persons' ids and keys are filled in."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    crlf: bool


def _cell(column: str) -> st.SearchStrategy[str]:
    # Blank about half the time: blanks are the commonest value in real files.
    return st.one_of(st.just(""), st.sampled_from(POOLS[column]))


# Most rows are well-formed; a few have a field too few or too many, or are empty lines.
_SHAPES = st.sampled_from(["ok"] * 12 + ["short", "long", "blank"])


@st.composite
def file_specs(draw: st.DrawFn) -> FileSpec:
    ids = draw(st.lists(st.sampled_from(IDENTIFIER_COLUMNS), min_size=1, max_size=5, unique=True))
    custom = draw(st.lists(st.sampled_from(CUSTOM_COLUMNS), max_size=4, unique=True))
    unknown = draw(st.lists(st.sampled_from(UNKNOWN_COLUMNS), max_size=1))
    columns = tuple(draw(st.permutations(ids + custom + unknown)))
    # 0-25 rows, averaging about 8: enough for in-file conflicts across chunks of 3.
    size = draw(st.one_of(st.integers(0, 8), st.integers(0, 25)))
    row = st.tuples(_SHAPES, st.tuples(*map(_cell, columns)))
    drawn = draw(st.lists(row, min_size=size, max_size=size))
    rows = []
    for shape, values in drawn:
        if shape == "blank":
            rows.append(())  # an empty line: skipped, counted in line numbers
        elif shape == "short":
            rows.append(values[:-1])
        elif shape == "long":
            rows.append((*values, "extra"))
        else:
            rows.append(values)
    return FileSpec(columns=columns, rows=tuple(rows), crlf=draw(st.booleans()))


def render(spec: FileSpec, seeded: list[Person]) -> bytes:
    """The file's bytes, with @pidN/@0pidN/@keyN/@KEYN replaced by the seeded persons'."""
    names: dict[str, str] = {}
    for i, person in enumerate(seeded):
        names[f"@pid{i}"] = str(person.person_id)
        names[f"@0pid{i}"] = "00" + str(person.person_id)
        names[f"@key{i}"] = person.person_key
        names[f"@KEY{i}"] = person.person_key.upper()
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n" if spec.crlf else "\n")
    writer.writerow(spec.columns)
    for row in spec.rows:
        if row:
            writer.writerow([names.get(v, v) for v in row])
        else:
            buf.write("\r\n" if spec.crlf else "\n")
    return buf.getvalue().encode("utf-8")


@dataclass(frozen=True, kw_only=True, slots=True)
class Bench:
    """One database and tenant seeded with SEED's four persons, shared by a test's examples."""

    engine: Engine
    root: Path
    configs: dict[int, Config]
    tenant: str
    tenant_id: int
    fields: list[CustomField]
    seeded: list[Person]


@contextmanager
def seeded_bench(db_url: str, scratch: Path, chunk_sizes: Iterable[int]) -> Iterator[Bench]:
    """A :class:`Bench` with one config per chunk size, its tenant seeded with SEED."""
    # Hundreds of imports per test: keep their fsyncs off the disk (tmpfs when
    # there is one) and let PostgreSQL commit without waiting for its WAL
    # flush. Neither changes what an import does, only how long it waits.
    with fast_engine(db_url, scratch) as (root, url, engine):
        configs = {n: make_config(root, url, chunk_rows=n) for n in chunk_sizes}
        tenant = fresh_tenant(engine)
        (root / "seed.persons").write_bytes(SEED)
        outcome = run_import(engine, configs[5000], tenant.name, root / "seed.persons")
        assert SEEDED == outcome.summary.rows.created
        yield Bench(
            engine=engine,
            root=root,
            configs=configs,
            seeded=persons_of(engine, tenant.id),
            tenant=tenant.name,
            tenant_id=tenant.id,
            fields=tenant.fields,
        )


@pytest.fixture
def bench(db_url: str, tmp_path: Path) -> Iterator[Bench]:
    with seeded_bench(db_url, tmp_path, CHUNK_SIZES) as seeded:
        yield seeded


def reference_persons(bench: Bench) -> list[dict[str, Any]]:
    """The seeded persons as the reference holds them (custom values by field name)."""
    names = {str(f.id): f.name for f in bench.fields}
    out = []
    for p in bench.seeded:
        person = reference.new_person(p.person_id, p.person_key)
        person.update(
            external_person_id=p.external_person_id, mdn=p.mdn, vibes_device_id=p.vibes_device_id
        )
        person["fields"] = {names[k]: v for k, v in p.attributes.items()}
        out.append(person)
    return out


def check_file(bench: Bench, spec: FileSpec) -> None:
    """Run ``spec`` from the seeded state at every chunk size and in the reference; compare."""
    data = render(spec, bench.seeded)
    path = bench.root / f"{uuid.uuid4().hex}.persons"
    path.write_bytes(data)
    ref = reference.run(data, bench.fields, reference_persons(bench))
    seed_keys = [p.person_key for p in bench.seeded]
    expected_export = normalise_export(ref.export(bench.fields), seed_keys)
    expected_counts = {
        k: ref.counts[k] for k in ("total", "succeeded", "failed", "created", "updated")
    }

    errors_bytes = None
    for size in CHUNK_SIZES:
        restore_persons(bench.engine, bench.tenant_id, bench.seeded)
        outcome = run_import(bench.engine, bench.configs[size], bench.tenant, path)
        reports = published(bench.configs[size], bench.tenant, outcome)
        actual = export(bench.engine, bench.tenant_id, bench.fields)
        assert expected_export == normalise_export(actual, seed_keys), f"chunk_rows={size}"
        new_keys = [row[1] for row in actual[1:] if row[1] not in seed_keys]
        assert all(str(uuid.UUID(k)) == k for k in new_keys), "new keys are lowercase uuids"
        assert len(set(new_keys)) == len(new_keys)
        assert ref.error_rows() == reports.error_rows(), f"chunk_rows={size}"
        if errors_bytes is None:
            errors_bytes = reports.errors
        assert errors_bytes == reports.errors, f"chunk_rows={size}: errors.csv bytes"
        assert None is reports.retry
        assert "completed" == reports.summary["status"]
        assert expected_counts == reports.summary["rows"], f"chunk_rows={size}"
        assert dict(ref.error_counts) == reports.summary["errors"], f"chunk_rows={size}"
    path.unlink()


# Each example is three imports (chunk sizes 1, 3 and 5000) and the model: at
# most 100 examples (about 25 s on PostgreSQL on a busy 2-core machine), fewer
# under the dev profile; the timeout's margin is for a machine busy with other work.
@pytest.mark.timeout(300)
@settings(
    max_examples=min(100, settings().max_examples),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    deadline=None,
)
@given(spec=file_specs())
@example(  # a clear then a re-use of the freed identifier within one chunk
    spec=FileSpec(
        columns=("person_id", "external_person_id"),
        rows=(("@pid0", "[null]"), ("", "e1")),
        crlf=False,
    )
)
@example(  # a device given up by one person and taken by another within one chunk
    spec=FileSpec(
        columns=("person_id", "vibes_device_id"),
        rows=(("@pid2", "d5"), ("@pid3", "d2"), ("@pid0", "d3")),
        crlf=True,
    )
)
def test_chunking_never_changes_the_outcome(bench: Bench, spec: FileSpec) -> None:
    """SPEC 5: exports, errors.csv and counts agree for chunk sizes 1, 3, 5000 and the model."""
    check_file(bench, spec)


def check_layers(bench: Bench, spec: FileSpec, keys: Keys) -> None:
    """Import ``spec`` plain and in every layered form (SPEC 11); the outcomes must agree."""
    data = render(spec, bench.seeded)
    cfg = with_pgp_home(bench.configs[LAYER_CHUNK_ROWS], keys)
    seed_keys = [p.person_key for p in bench.seeded]
    seen: dict[str, tuple[object, ...]] = {}
    for suffix, expected_layers in VARIANTS.items():
        restore_persons(bench.engine, bench.tenant_id, bench.seeded)
        path = bench.root / f"{uuid.uuid4().hex}.persons{suffix}"
        path.write_bytes(wrap(data, suffix, keys))
        outcome = run_import(bench.engine, cfg, bench.tenant, path)
        reports = published(cfg, bench.tenant, outcome)
        assert expected_layers == reports.summary["layers"], suffix
        summary = {
            k: v
            for k, v in reports.stable_summary().items()
            if k not in ("file", "sha256", "bytes", "layers")
        }
        result = (
            normalise_export(export(bench.engine, bench.tenant_id, bench.fields), seed_keys),
            reports.errors,
            reports.retry,
            summary,
        )
        seen[suffix] = result
        assert seen[""] == result, f"{suffix or 'plain'} differs from the plain file"
        path.unlink()


LAYER_CHUNK_ROWS = 3


# Five imports an example (two through gpg): 40 examples take about 15 s.
@pytest.mark.timeout(300)
@FORTY_EXAMPLES
@given(spec=file_specs())
def test_layers_never_change_the_outcome(bench: Bench, pgp_keys: Keys, spec: FileSpec) -> None:
    """SPEC 11: plain, .gz, .zip, .pgp and .gz.pgp give identical exports and reports."""
    check_layers(bench, spec, pgp_keys)
