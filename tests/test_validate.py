"""Validate-only imports through the engine (SPEC 4 ``mode``, 11): every rule, nothing written.

A validation must report exactly what the import of the same file would,
against the database as it stands, while ``persons`` (and the person id
sequence) stay untouched; later rows see earlier rows of the file through the
overlay (``store.overlay``), across chunks and across a resume.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from sqlalchemy import Engine, event

import reference
from engine_helpers import (
    Published,
    export,
    published,
    restore_persons,
    run_import,
)
from personsd import importer
from personsd.phones import offline_lookup
from personsd.rules import Person
from personsd.store import db, overlay
from personsd.store import imports as store_imports
from test_differential import (
    CHUNK_SIZES,
    FORTY_EXAMPLES,
    Bench,
    FileSpec,
    file_specs,
    reference_persons,
    render,
    seeded_bench,
)


@pytest.fixture
def bench(db_url: str, tmp_path: Path) -> Iterator[Bench]:
    with seeded_bench(db_url, tmp_path, (*CHUNK_SIZES, 2)) as seeded:
        yield seeded


def validate(
    bench: Bench, path: Path, *, chunk_rows: int, stop: threading.Event | None = None, **kw: object
) -> importer.Outcome:
    """Queue ``path`` as a validation and run it to its end."""
    import_id = importer.create(
        bench.engine, tenant=bench.tenant, path=path, source="cli", mode="validate"
    )
    return importer.run(bench.engine, bench.configs[chunk_rows], import_id, stop=stop, **kw)  # type: ignore[arg-type]


def write_file(bench: Bench, data: bytes) -> Path:
    path = bench.root / f"{uuid.uuid4().hex}.persons"
    path.write_bytes(data)
    return path


def sequence_state(engine: Engine) -> tuple[object, ...]:
    """Where the person id sequence stands (what the next new person would get)."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            sql = "SELECT last_value, is_called FROM persons_person_id_seq"
        else:
            sql = "SELECT seq FROM sqlite_sequence WHERE name = 'persons'"
        return tuple(conn.exec_driver_sql(sql).one())


def overlay_rows(engine: Engine, import_id: int) -> int:
    with engine.connect() as conn:
        return overlay.size(conn, import_id)


def comparable(reports: Published) -> tuple[bytes, dict[str, object]]:
    """errors.csv and the summary without what differs between two runs (and the mode)."""
    summary = {k: v for k, v in reports.stable_summary().items() if k != "mode"}
    return reports.errors, summary


def validation_then_import(
    bench: Bench, data: bytes, *, chunk_rows: int, carrier: object = None
) -> tuple[Published, Published]:
    """Validate ``data``, check nothing changed, then import it; both runs' reports."""
    path = write_file(bench, data)
    before = export(bench.engine, bench.tenant_id)
    ids_before = sequence_state(bench.engine)
    checked = validate(bench, path, chunk_rows=chunk_rows, carrier=carrier)
    assert before == export(bench.engine, bench.tenant_id), "a validation wrote persons"
    assert ids_before == sequence_state(bench.engine), "a validation took person ids"
    assert 0 == overlay_rows(bench.engine, checked.record.id)
    outcome = run_import(
        bench.engine,
        bench.configs[chunk_rows],
        bench.tenant,
        path,
        carrier=carrier,  # type: ignore[arg-type]
    )
    cfg = bench.configs[chunk_rows]
    return published(cfg, bench.tenant, checked), published(cfg, bench.tenant, outcome)


# -- against the model ----------------------------------------------------------------------


@pytest.mark.timeout(300)
@FORTY_EXAMPLES
@given(spec=file_specs())
def test_validation_reports_what_the_model_imports(bench: Bench, spec: FileSpec) -> None:
    """SPEC 11: at chunk sizes 1, 3, 5000 a validation reports as the model, writes nothing."""
    data = render(spec, bench.seeded)
    path = write_file(bench, data)
    ref = reference.run(data, bench.fields, reference_persons(bench))
    counts = {k: ref.counts[k] for k in ("total", "succeeded", "failed", "created", "updated")}
    restore_persons(bench.engine, bench.tenant_id, bench.seeded)
    before = export(bench.engine, bench.tenant_id)
    for size in CHUNK_SIZES:
        outcome = validate(bench, path, chunk_rows=size)
        reports = published(bench.configs[size], bench.tenant, outcome)
        assert before == export(bench.engine, bench.tenant_id), f"chunk_rows={size}"
        assert ref.error_rows() == reports.error_rows(), f"chunk_rows={size}"
        assert counts == reports.summary["rows"], f"chunk_rows={size}"
        assert ("completed", "validate") == (reports.summary["status"], reports.summary["mode"])
        assert 0 == overlay_rows(bench.engine, outcome.record.id)
    path.unlink()


# -- against a real import of the same file -------------------------------------------------

# Identifiers repeated within the file across the boundaries of 2-row chunks:
# created then found again, taken by a second person, freed then taken, and an
# MDN the offline carrier lookup refuses (area code 299).
DUPLICATES = (
    b"external_person_id,mdn,vibes_device_id,score\n"
    b"n1,+12025550111,nd1,1\n"
    b"n2,,nd2,2\n"
    b"n3,,nd1,3\n"  # nd1 is n1's: PG::UniqueViolation
    b"n1,,nd3,4\n"  # n1 again, created two rows up: an update
    b"n4,+12025550111,,5\n"  # n1's MDN: MobilePhoneAlreadyAssigned
    b"n2,,[null],6\n"  # n2 gives nd2 up
    b"n5,,nd2,7\n"  # and n5 takes it
    b"n6,+12995550123,,8\n"  # not a valid number: PermanentLookupFailureError
    b"e1,,nd3,9\n"  # a stored person wants n1's new device: PG::UniqueViolation
    b"n1,+12025550112,,10\n"  # n1 has an MDN: MdnChangeNotAllowed
)


def test_duplicates_across_chunks_are_reported_as_an_import_reports_them(bench: Bench) -> None:
    """SPEC 2/11: later rows see earlier rows of the file across chunks, as in an import."""
    checked, imported = validation_then_import(
        bench, DUPLICATES, chunk_rows=2, carrier=offline_lookup
    )
    assert comparable(imported) == comparable(checked)
    assert {
        "PG::UniqueViolation": 2,
        "PersonErrors::MobilePhoneAlreadyAssigned": 1,
        "CarrierLookupService::PermanentLookupFailureError": 1,
        "PersonErrors::MdnChangeNotAllowed": 1,
    } == checked.summary["errors"]
    assert ("validate", "import") == (checked.summary["mode"], imported.summary["mode"])


def test_validation_counts_updates_of_stored_persons(bench: Bench) -> None:
    """SPEC 11: created/updated count what the import would do to the persons stored."""
    data = (
        b"external_person_id,vibes_device_id,score\n"
        b"e1,,1\n"  # stored: updated
        b"e2,d9,2\n"  # stored: updated
        b"new1,,3\n"  # created
        b"new1,,4\n"  # created above: updated
        b"e2,d9,2\n"  # unchanged in value, still a succeeded row
    )
    checked, imported = validation_then_import(bench, data, chunk_rows=3)
    assert comparable(imported) == comparable(checked)
    assert {"total": 5, "succeeded": 5, "failed": 0, "created": 1, "updated": 4} == checked.summary[
        "rows"
    ]


def test_rejected_validation_says_validate_and_keeps_no_overlay(bench: Bench) -> None:
    """A file-level error in a validation is reported like an import's, with mode validate."""
    path = write_file(bench, b"nick\nabc\n")
    outcome = validate(bench, path, chunk_rows=3)
    reports = published(bench.configs[3], bench.tenant, outcome)
    assert ("rejected", "validate") == (reports.summary["status"], reports.summary["mode"])
    assert "PersonErrors::InvalidImportFileFormat" == reports.summary["file_error"]["class"]


def test_an_import_after_a_validation_is_no_duplicate(bench: Bench) -> None:
    """duplicate_of names only an earlier run of the same mode: a validation wrote nothing."""
    checked, imported = validation_then_import(bench, b"external_person_id\nz1\n", chunk_rows=3)
    assert None is imported.summary["duplicate_of"]
    again = validate(bench, write_file(bench, b"external_person_id\nz1\n"), chunk_rows=3)
    assert checked.summary["import_id"] == again.summary.duplicate_of


# -- resume ---------------------------------------------------------------------------------


def test_stopped_validation_resumes_with_its_overlay(bench: Bench) -> None:
    """SPEC 5/11: stopped after chunk 2, a validation resumes and reports as if never stopped."""
    path = write_file(bench, DUPLICATES)
    whole = published(bench.configs[2], bench.tenant, validate(bench, path, chunk_rows=2))
    before = export(bench.engine, bench.tenant_id)

    import_id = importer.create(
        bench.engine, tenant=bench.tenant, path=path, source="cli", mode="validate"
    )
    stop = threading.Event()
    done: list[int] = []

    def on_chunk(rows: int, _bytes: int) -> None:
        done.append(rows)
        if len(done) == 2:
            stop.set()

    with pytest.raises(importer.Interrupted):
        importer.run(bench.engine, bench.configs[2], import_id, stop=stop, on_chunk=on_chunk)
    with bench.engine.connect() as conn:
        assert 4 == store_imports.get(conn, import_id).rows_total
    # n1, n2 (created) in the overlay, nothing in persons.
    assert 2 == overlay_rows(bench.engine, import_id)
    assert before == export(bench.engine, bench.tenant_id)

    resumed = importer.run(bench.engine, bench.configs[2], import_id)
    reports = published(bench.configs[2], bench.tenant, resumed)
    assert comparable(whole) == comparable(reports)
    assert 0 == overlay_rows(bench.engine, import_id)
    assert before == export(bench.engine, bench.tenant_id)


class Crash(Exception):
    """Stands for the process dying while a chunk's transaction is open."""


def test_a_chunk_rolled_back_takes_its_overlay_rows_with_it(bench: Bench) -> None:
    """SPEC 5: the overlay commits with the checkpoint; a chunk that fails leaves neither."""
    path = write_file(bench, DUPLICATES)
    whole = published(bench.configs[2], bench.tenant, validate(bench, path, chunk_rows=2))
    import_id = importer.create(
        bench.engine, tenant=bench.tenant, path=path, source="cli", mode="validate"
    )
    saves: list[str] = []

    def fail_fourth_checkpoint(_c: object, _cur: object, statement: str, *_: object) -> None:
        if statement.startswith("UPDATE imports") and "next_offset" in statement:
            saves.append(statement)
            if len(saves) == 4:
                raise Crash("saving the checkpoint of chunk 4")

    event.listen(bench.engine, "before_cursor_execute", fail_fourth_checkpoint)
    try:
        with pytest.raises(Crash):
            importer.run(bench.engine, bench.configs[2], import_id)
    finally:
        event.remove(bench.engine, "before_cursor_execute", fail_fourth_checkpoint)
    with bench.engine.connect() as conn:
        assert 6 == store_imports.get(conn, import_id).rows_total
    assert 2 == overlay_rows(bench.engine, import_id), "n1 and n2; chunk 4's n5 rolled back"

    resumed = importer.run(bench.engine, bench.configs[2], import_id)
    assert comparable(whole) == comparable(published(bench.configs[2], bench.tenant, resumed))


def test_a_validation_starting_afresh_ignores_a_stale_overlay(bench: Bench) -> None:
    """Overlay rows of a run that never checkpointed are dropped before the first chunk."""
    path = write_file(bench, b"external_person_id,score\nstale,5\n")
    import_id = importer.create(
        bench.engine, tenant=bench.tenant, path=path, source="cli", mode="validate"
    )
    with db.write_tx(bench.engine) as conn:
        ghost = Person(person_id=-1, person_key=str(uuid.uuid4()), external_person_id="stale")
        overlay.store(conn, import_id, [ghost], [])
    outcome = importer.run(bench.engine, bench.configs[3], import_id)
    assert (1, 0) == (outcome.summary.rows.created, outcome.summary.rows.updated)
