"""Rows validated ahead: the validator process gives exactly the inline chunks, the
wire form round-trips, and every way the process can end is handled."""

from __future__ import annotations

import dataclasses
import gc
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine
from structlog.testing import capture_logs

from engine_helpers import (
    TEST_FIELDS,
    Published,
    add_tenant,
    export,
    fast_engine,
    make_config,
    new_tenant_name,
    normalise_export,
    published,
)
from personsd import fileformat, importer, phones, rules, validation
from personsd.config import Config
from personsd.errors import ErrorKind, InternalError, RowError
from personsd.phones import CarrierCheck
from test_differential import FileSpec, file_specs, render
from test_resume import make_file

# Fields with ids, as the store gives them (the schema keys attributes by id).
FIELDS = tuple(dataclasses.replace(f, id=i) for i, f in enumerate(TEST_FIELDS, start=1))
MAX_ROW = 1 << 20


def awkward_file(path: Path, rows: int = 400) -> bytes:
    """Valid, invalid, quoted, multi-line, blank and non-UTF-8 rows (fixed seed)."""
    rnd = random.Random(7)
    body = [b"external_person_id,mdn,nick,score,tier,tags,unknown_col"]
    for i in range(rows):
        mdn = rnd.choice([f"+1206986{i:04d}", f"+1800555{i:04d}", "12345", "", "[null]"])
        cells = [
            f"e{i % 97}",
            mdn,
            rnd.choice(["abc", "naïve", '"a,b"', '"x\ny"']),
            rnd.choice(["7", "1e5", ""]),
            rnd.choice(["gold", "Gold", ""]),
            rnd.choice(["a|b", "a||b", ""]),
            rnd.choice(["", "", "x"]),
        ]
        line = ",".join(cells).encode()
        if i % 53 == 0:
            line += b"\xff"
        body.append(line)
        if i % 29 == 0:
            body.append(b"")
    data = b"\n".join(body) + b"\n"
    path.write_bytes(data)
    return data


def job_for(
    path: Path, *, chunk_rows: int, precheck: bool = False, start: fileformat.RawRow | None = None
) -> validation.Job:
    with path.open("rb") as fh:
        layout = fileformat.read_layout(fh, max_row_bytes=MAX_ROW)
    return validation.Job(
        path=str(path),
        layout=layout,
        fields=FIELDS,
        offset=None if start is None else start.end,
        line=None if start is None else start.next_line,
        row=0 if start is None else start.row,
        chunk_rows=chunk_rows,
        max_row_bytes=MAX_ROW,
        precheck=precheck,
    )


def chunks_of(job: validation.Job, mode: validation.Mode) -> list[validation.ValidatedChunk]:
    with validation.Chunks(job, mode) as chunks:
        return list(chunks)


def test_process_chunks_equal_inline_chunks(tmp_path: Path) -> None:
    """The validator process yields exactly the inline chunks, row errors included."""
    path = tmp_path / "awkward.persons"
    awkward_file(path)
    job = job_for(path, chunk_rows=37)
    inline = chunks_of(job, "inline")
    assert 400 == sum(len(c.rows) for c in inline)
    assert any(isinstance(r, validation.RowFailure) for c in inline for r in c.rows)
    assert inline == chunks_of(job, "process")


def test_process_chunks_from_a_checkpoint_equal_inline(tmp_path: Path) -> None:
    """Started at a checkpoint (offset, line, row), both ways read the same rows on."""
    path = tmp_path / "awkward.persons"
    awkward_file(path)
    with path.open("rb") as fh:
        layout = fileformat.read_layout(fh, max_row_bytes=MAX_ROW)
        start = list(fileformat.iter_rows(fh, layout, max_row_bytes=MAX_ROW))[150]
    job = job_for(path, chunk_rows=50, start=start)
    inline = chunks_of(job, "inline")
    assert start.row + 1 == inline[0].rows[0].row
    assert inline == chunks_of(job, "process")


def test_precheck_knows_every_offline_failure_of_the_chunk(tmp_path: Path) -> None:
    """Checked ahead, a chunk's carrier check answers as phones.offline_lookup for its MDNs."""
    path = tmp_path / "awkward.persons"
    awkward_file(path)
    chunks = chunks_of(job_for(path, chunk_rows=64, precheck=True), "process")
    failing = set()
    for chunk in chunks:
        assert chunk.carrier_failures is not None
        check = chunk.carrier(phones.offline_lookup)
        for row in chunk.rows:
            if isinstance(row, rules.RowChange):
                for column, value in row.lookups:
                    if column == "mdn":
                        assert isinstance(value, str)
                        assert phones.offline_lookup(value) == check(value)
        failing |= chunk.carrier_failures
    assert any(value.startswith("+1800") for value in failing), "toll-free numbers fail"


def test_known_answers_are_only_for_the_offline_check() -> None:
    """A chunk checked ahead offline refuses to stand in for another carrier check."""
    chunk = validation.ValidatedChunk(
        rows=(
            validation.RowFailure(
                line=2, row=1, values=("x",), errors=(ErrorKind.CREATE_REQUIRES_KEY.at(),)
            ),
        ),
        end=10,
        next_line=3,
        last_row=1,
        carrier_failures=frozenset(),
    )
    with pytest.raises(ValueError, match="offline"):
        chunk.carrier(phones.no_lookup)


def test_value_objects_refuse_empty_chunks_and_failures() -> None:
    """A chunk holds rows; a failed row holds an error."""
    with pytest.raises(ValueError, match="at least one row"):
        validation.ValidatedChunk(rows=(), end=0, next_line=1, last_row=0)
    with pytest.raises(ValueError, match="at least one error"):
        validation.RowFailure(line=1, row=1, values=(), errors=())


_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=8
)
_stored = st.none() | _text | st.tuples(_text, _text)


@st.composite
def validated_rows(draw: st.DrawFn) -> validation.ValidatedRow:
    line = draw(st.integers(1, 10**9))
    row = draw(st.integers(1, 10**9))
    values = tuple(draw(st.lists(_text, min_size=3, max_size=3)))
    if draw(st.booleans()):
        errors = draw(
            st.lists(
                st.builds(
                    RowError,
                    error_class=st.just("X::Y"),
                    message=st.just("m"),
                    field=_text,
                    value=_text,
                ),
                min_size=1,
                max_size=3,
            )
        )
        return validation.RowFailure(line=line, row=row, values=values, errors=tuple(errors))
    key_value = draw(st.none() | _text.filter(bool) | st.integers(1, 2**63 - 1))
    key = None if key_value is None else ("person_id" if isinstance(key_value, int) else "mdn")
    return rules.RowChange(
        line=line,
        row=row,
        key=key,
        key_value=key_value,
        identifiers=tuple(
            draw(st.lists(st.tuples(st.just("vibes_device_id"), st.none() | _text), max_size=2))
        ),
        custom=tuple(draw(st.lists(st.tuples(st.sampled_from("123"), _stored), max_size=3))),
        lookups=() if key is None else ((key, key_value),),
        columns=("a", "b", "c"),
        values=values,
    )


@given(
    rows=st.lists(validated_rows(), min_size=1, max_size=6),
    failures=st.none() | st.frozensets(_text, max_size=3),
)
def test_wire_form_round_trips(
    rows: list[validation.ValidatedRow], failures: frozenset[str] | None
) -> None:
    """decode(encode(chunk)) is the chunk, whatever its rows hold."""
    layout = fileformat.Layout(
        fields=("a", "b", "c"),
        delimiter=",",
        multi_delimiter="|",
        declared_fields=False,
        body_offset=0,
        body_line=2,
    )
    chunk = validation.ValidatedChunk(
        rows=tuple(rows), end=99, next_line=7, last_row=5, carrier_failures=failures
    )
    assert chunk == validation.decode(validation.encode(chunk), layout)


def test_auto_takes_a_process_only_for_big_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto: inline below PROCESS_MIN_BYTES or on one CPU, a process otherwise."""
    big = validation.PROCESS_MIN_BYTES
    monkeypatch.setattr(validation, "usable_cpus", lambda: 2)
    assert "inline" == validation.choose("auto", remaining_bytes=big - 1)
    assert "process" == validation.choose("auto", remaining_bytes=big)
    assert "inline" == validation.choose("inline", remaining_bytes=big)
    assert "process" == validation.choose("process", remaining_bytes=1)
    monkeypatch.setattr(validation, "usable_cpus", lambda: 1)
    assert "inline" == validation.choose("auto", remaining_bytes=big * 100)
    with pytest.raises(ValueError, match="unknown validation mode"):
        validation.choose("threads", remaining_bytes=1)


def test_a_missing_file_is_a_specific_internal_error(tmp_path: Path) -> None:
    """The validator process reports why it failed; the importer gets an InternalError."""
    path = tmp_path / "gone.persons"
    awkward_file(path, rows=5)
    job = job_for(path, chunk_rows=10)
    path.unlink()
    with pytest.raises(InternalError, match="validator process failed: FileNotFoundError"):
        chunks_of(job, "process")


def test_a_killed_validator_is_an_internal_error(tmp_path: Path) -> None:
    """Killed mid-file, the validator's end is noticed, not taken for the end of the file."""
    path = tmp_path / "big.persons"
    awkward_file(path, rows=20_000)
    with validation.Chunks(job_for(path, chunk_rows=10), "process") as chunks:
        stream = iter(chunks)
        next(stream)
        assert chunks._proc is not None
        chunks._proc.kill()
        with pytest.raises(InternalError, match=r"ended unexpectedly \(exit code -9\)"):
            list(stream)


def test_the_validator_ignores_sigterm(tmp_path: Path) -> None:
    """systemd's SIGTERM to the whole group leaves the validator to the daemon's shutdown."""
    path = tmp_path / "awkward.persons"
    awkward_file(path)
    job = job_for(path, chunk_rows=37)
    with validation.Chunks(job, "process") as chunks:
        stream = iter(chunks)
        first = next(stream)
        assert chunks._proc is not None
        time.sleep(0.2)  # past the start-up, its handlers are installed
        chunks._proc.send_signal(signal.SIGTERM)
        rest = list(stream)
    assert chunks_of(job, "inline") == [first, *rest]


def test_close_kills_the_validator(tmp_path: Path) -> None:
    """Chunks no longer wanted (a stop between chunks): close ends the process at once."""
    path = tmp_path / "big.persons"
    awkward_file(path, rows=20_000)
    chunks = validation.Chunks(job_for(path, chunk_rows=10), "process")
    next(iter(chunks))
    proc = chunks._proc
    assert proc is not None
    chunks.close()
    assert proc.returncode is not None


def test_the_validator_exits_when_its_parent_dies(tmp_path: Path) -> None:
    """A parent killed with -9 leaves no validator behind: its next write breaks the pipe."""
    path = tmp_path / "big.persons"
    awkward_file(path, rows=50_000)
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_validation import job_for
        from personsd import validation
        from pathlib import Path
        chunks = validation.Chunks(job_for(Path({str(path)!r}), chunk_rows=10), "process")
        next(iter(chunks))
        print(chunks._proc.pid, flush=True)
        os.kill(os.getpid(), 9)
    """)
    parent = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert -9 == parent.returncode, parent.stderr
    pid = int(parent.stdout)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def site(db_url: str, tmp_path: Path) -> Iterator[tuple[Engine, Config]]:
    with fast_engine(db_url, tmp_path) as (root, url, engine):
        yield engine, make_config(root, url, chunk_rows=10)


def _import(
    engine: Engine,
    cfg: Config,
    path: Path,
    mode: validation.Mode,
    carrier: CarrierCheck | None = None,
) -> tuple[list[list[str]], Published]:
    tenant = new_tenant_name()
    tenant_id, _ = add_tenant(engine, tenant)
    import_id = importer.create(engine, tenant=tenant, path=path, source="cli")
    outcome = importer.run(engine, cfg, import_id, validate_in=mode, carrier=carrier)
    return normalise_export(export(engine, tenant_id)), published(cfg, tenant, outcome)


def test_import_through_the_validator_equals_inline(site: tuple[Engine, Config]) -> None:
    """An import validated in a second process leaves the same persons and reports."""
    engine, cfg = site
    path = cfg.root / "nightly.persons"
    make_file(path)
    with path.open("a") as fh:  # toll-free numbers: the offline check refuses them
        fh.writelines(f"toll{i},+1800555{i:04d},,,,,\n" for i in range(5))
    inline = _import(engine, cfg, path, "inline", carrier=phones.offline_lookup)
    through = _import(engine, cfg, path, "process", carrier=phones.offline_lookup)
    assert inline[0] == through[0]
    assert inline[1].errors == through[1].errors
    assert inline[1].retry == through[1].retry
    assert inline[1].stable_summary() == through[1].stable_summary()
    assert 5 == inline[1].summary["errors"]["CarrierLookupService::PermanentLookupFailureError"]


def mixed_file(path: Path, rows: int) -> None:
    """Creates, updates and failures over a pool of 3,000 persons (fixed seed)."""
    rnd = random.Random(11)
    lines = ["external_person_id,mdn,nick,score,tier,tags"]
    for i in range(rows):
        lines.append(
            ",".join(
                [
                    f"e{rnd.randrange(3000)}",
                    rnd.choice(["", f"+1206986{i % 9000:04d}", "123"]),
                    rnd.choice(["abc", "toolong"]),
                    str(i % 50),
                    rnd.choice(["gold", "Gold"]),
                    rnd.choice(["a|b", "c", ""]),
                ]
            )
        )
    path.write_text("\n".join(lines) + "\n")


def test_killed_validator_fails_the_run_and_resume_is_exact(site: tuple[Engine, Config]) -> None:
    """A validator killed mid-import is our fault: the run raises, the resumed run is exact."""
    engine, cfg = site
    cfg = dataclasses.replace(cfg, imports=dataclasses.replace(cfg.imports, chunk_rows=500))
    path = cfg.root / "big.persons"
    # Chunks of ~80 KB: the pipe holds at most one, so the validator is mid-file when killed.
    mixed_file(path, 20_000)
    baseline = _import(engine, cfg, path, "inline")
    tenant = new_tenant_name()
    tenant_id, _ = add_tenant(engine, tenant)
    import_id = importer.create(engine, tenant=tenant, path=path, source="cli")
    seen: list[int] = []
    real = validation.Chunks.__iter__

    def killing(self: validation.Chunks) -> Iterator[validation.ValidatedChunk]:
        for n, chunk in enumerate(real(self)):
            if n == 3 and self._proc is not None:
                self._proc.kill()
            seen.append(n)
            yield chunk

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(validation.Chunks, "__iter__", killing)
        with pytest.raises(InternalError, match="validator process ended unexpectedly"):
            importer.run(engine, cfg, import_id, validate_in="process")
    assert 4 <= len(seen) < 40
    outcome = importer.run(engine, cfg, import_id, validate_in="process")
    assert baseline[0] == normalise_export(export(engine, tenant_id))
    again = published(cfg, tenant, outcome)
    assert baseline[1].errors == again.errors
    assert baseline[1].stable_summary() == again.stable_summary()
    assert baseline[1].summary["rows"]["failed"] > 0


def test_advice_turns_the_offline_precheck_off_and_on(tmp_path: Path) -> None:
    """The importer's advice reaches the validator within two chunks and changes nothing else."""
    path = tmp_path / "big.persons"
    awkward_file(path, rows=20_000)
    job = job_for(path, chunk_rows=500, precheck=True)  # ~80 KB frames: the pipe holds one
    checked: list[bool] = []
    with validation.Chunks(job, "process") as chunks:
        got = []
        for n, chunk in enumerate(chunks):
            got.append(chunk)
            checked.append(chunk.carrier_failures is not None)
            if n == 3:
                chunks.advise(precheck=False)
            if n == 20:
                chunks.advise(precheck=True)
    assert all(checked[:4])
    assert not any(checked[7:21]), checked
    assert all(checked[24:]), checked
    inline = chunks_of(job, "inline")
    assert [c.rows for c in inline] == [c.rows for c in got]


def test_advice_is_read_without_waiting_and_the_last_word_counts() -> None:
    """No advice yet: check ahead; then the latest byte decides, also after the pipe closes."""
    read, write = os.pipe()
    with os.fdopen(read, "rb", buffering=0) as stream:
        advice = validation._Advice(stream)
        assert advice() is True
        os.write(write, b"0")
        assert advice() is False
        os.write(write, b"01")
        assert advice() is True
        os.write(write, b"0")
        os.close(write)
        assert advice() is False
        assert advice() is False


def test_inline_chunks_never_check_ahead(tmp_path: Path) -> None:
    """Inline, the importer's own check runs as rows apply: no check ahead, advice a no-op."""
    path = tmp_path / "awkward.persons"
    awkward_file(path, rows=50)
    with validation.Chunks(job_for(path, chunk_rows=10, precheck=True), "inline") as chunks:
        chunks.advise(precheck=True)
        assert all(c.carrier_failures is None for c in chunks)


@given(spec=file_specs())
@settings(max_examples=25, deadline=None)  # a process per example
def test_validator_process_agrees_with_inline_on_generated_files(spec: FileSpec) -> None:
    """On the differential test's generated files, the process gives the inline chunks."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "generated.persons"
        path.write_bytes(render(spec, []))
        job = job_for(path, chunk_rows=3, precheck=True)
        assert chunks_of(job, "inline") == [
            dataclasses.replace(c, carrier_failures=None) for c in chunks_of(job, "process")
        ]


def test_a_validator_that_cannot_start_falls_back_to_inline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No process to be had (no interpreter at sys.executable): inline, logged, same chunks."""
    path = tmp_path / "awkward.persons"
    awkward_file(path, rows=50)
    job = job_for(path, chunk_rows=10)
    expected = chunks_of(job, "inline")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    with capture_logs() as logs, validation.Chunks(job, "process") as chunks:
        assert "inline" == chunks.mode
        assert expected == list(chunks)
    assert ["import.validator_unavailable"] == [e["event"] for e in logs]
    assert "FileNotFoundError" in logs[0]["error"]


def test_tune_memory_sets_the_collector_for_import_work() -> None:
    """personsd's processes collect young objects every 50,000 allocations, not 700."""
    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        validation.tune_memory()
        assert validation.GC_THRESHOLDS == gc.get_threshold()
    finally:
        gc.set_threshold(*saved)


def test_a_frame_of_an_unexpected_kind_is_an_internal_error(tmp_path: Path) -> None:
    """Anything but chunk, end or error frames from the validator stops the import."""
    path = tmp_path / "awkward.persons"
    awkward_file(path, rows=5)
    chunks = validation.Chunks(job_for(path, chunk_rows=10), "process")
    assert chunks._proc is not None
    chunks._proc.kill()
    chunks._proc.wait()
    chunks._proc = subprocess.Popen(  # stands in for a confused validator
        [sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'j' + bytes(8))"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    with chunks, pytest.raises(InternalError, match="sent a job frame"):
        list(chunks)
