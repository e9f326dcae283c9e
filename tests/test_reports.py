"""Reports of SPEC section 4: errors.csv, retry.persons, summary.json, publishing."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from personsd.errors import ErrorKind, RowError, TransientError, row_format_error
from personsd.fileformat import Layout
from personsd.reports import (
    ErrorsWriter,
    FileError,
    ReportLine,
    Reports,
    RetryWriter,
    RowCounts,
    Summary,
    neutralize,
    publish,
    publish_all,
    rejected_report,
    report_names,
)

FIELDS = ("external_person_id", "mdn", "color")
SHA = "ab" * 32
T0 = datetime(2026, 11, 23, 2, 15, tzinfo=UTC)


def mdn_error(value: str) -> RowError:
    return ErrorKind.INVALID_MDN_FORMAT.at("mdn", value)


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


# --- formula guard ---------------------------------------------------------


# Cells a spreadsheet reads as text or a number: left as they are.
KEPT = ["+12995550005", "-5", "-0.25", "a=b", "", "12"]
# Cells a spreadsheet may read as a formula: put behind a quote.
QUOTED = ["+cmd", "-x", "=1+1", "@SUM(A1)", "\tx", "\rx", "-1+1", "+", "-", "+1."]


@pytest.mark.parametrize(
    ("cell", "expected"), [*((c, c) for c in KEPT), *((c, "'" + c) for c in QUOTED)]
)
def test_neutralize_examples(cell: str, expected: str) -> None:
    """Cells starting with = @ TAB CR, or +/- not followed by a number, get a leading quote."""
    assert expected == neutralize(cell)


@given(st.from_regex(r"\A[+-][0-9]+(\.[0-9]+)?\Z"))
def test_neutralize_keeps_signed_numbers(cell: str) -> None:
    """A sign followed by a decimal number (the whole cell) is left alone."""
    assert cell == neutralize(cell)


@given(st.text())
def test_neutralize_output_is_never_a_formula(cell: str) -> None:
    """Whatever the input, the output is the input or the input behind one quote."""
    out = neutralize(cell)
    assert out in (cell, "'" + cell)
    dangerous = out[:1] in ("=", "@", "\t", "\r") or (
        out[:1] in ("+", "-")
        and not all(c.isascii() and (c.isdigit() or c == ".") for c in out[1:])
    )
    assert not dangerous


@given(st.sampled_from("=@\t\r"), st.text())
def test_neutralize_quotes_formula_starts(first: str, rest: str) -> None:
    """A cell starting with = @ TAB or CR is always quoted."""
    assert "'" + first + rest == neutralize(first + rest)


@given(st.sampled_from("+-"), st.text().filter(lambda t: not set(t) <= set("0123456789.")))
def test_neutralize_quotes_sign_before_non_number(sign: str, rest: str) -> None:
    """A sign followed by anything but digits (and a decimal point) is quoted."""
    assert "'" + sign + rest == neutralize(sign + rest)


# --- errors.csv --------------------------------------------------------------


def test_errors_writer_header_only(tmp_path: Path) -> None:
    """A new errors report holds the fixed columns then the file's columns, CRLF-terminated."""
    path = tmp_path / "e.csv"
    with ErrorsWriter(path, FIELDS) as writer:
        size = writer.flush_and_sync()
    expected = b"line,row,error_class,error_message,field,value,external_person_id,mdn,color\r\n"
    assert expected == path.read_bytes()
    assert len(expected) == size


def test_errors_writer_lines(tmp_path: Path) -> None:
    """One CSV line per error, values padded or cut to the file's columns, quoted per RFC 4180."""
    path = tmp_path / "e.csv"
    with ErrorsWriter(path, FIELDS) as writer:
        writer.append(
            [
                ReportLine(line=3, row=2, error=mdn_error("12x"), values=["e1", "12x", "red"]),
                ReportLine(line=4, row=3, error=mdn_error("=1"), values=["e,2", "=1"]),
                ReportLine(
                    line=5,
                    row=4,
                    error=row_format_error("Expected 3 fields, found 4"),
                    values=["a", 'say "hi"', "multi\nline", "extra"],
                ),
            ]
        )
        writer.flush_and_sync()
    rows = read_csv(path)
    cls = "MobilePhoneErrors::InvalidMDNFormat"
    msg = ErrorKind.INVALID_MDN_FORMAT.message
    assert [
        ["3", "2", cls, msg, "mdn", "12x", "e1", "12x", "red"],
        ["4", "3", cls, msg, "mdn", "'=1", "e,2", "'=1", ""],
        [
            "5",
            "4",
            "PersonErrors::InvalidImportRowFormat",
            "Expected 3 fields, found 4",
            "",
            "",
            "a",
            'say "hi"',
            "multi\nline",
        ],
    ] == rows[1:]


def test_errors_writer_guards_header_cells(tmp_path: Path) -> None:
    """A column name from the file that looks like a formula is neutralised in the header too."""
    path = tmp_path / "e.csv"
    with ErrorsWriter(path, ["mdn", "=cmd"]):
        pass
    assert ["mdn", "'=cmd"] == read_csv(path)[0][6:]


def test_errors_writer_invalid_utf8_stays_utf8(tmp_path: Path) -> None:
    """Surrogate escapes of an undecodable row become U+FFFD, so the report stays UTF-8."""
    path = tmp_path / "e.csv"
    bad = b"caf\xe9".decode("utf-8", "surrogateescape")
    with ErrorsWriter(path, ["mdn"]) as writer:
        writer.append(
            [ReportLine(line=2, row=1, error=ErrorKind.UNKNOWN_ENCODING.at(), values=[bad])]
        )
    assert "caf\ufffd" == read_csv(path)[1][6]


def test_errors_writer_truncate_and_resume(tmp_path: Path) -> None:
    """Truncating to a checkpointed length and appending again equals an uninterrupted run."""
    lines = [
        ReportLine(line=i + 2, row=i + 1, error=mdn_error(str(i)), values=["e", str(i)])
        for i in range(6)
    ]
    straight = tmp_path / "straight.csv"
    with ErrorsWriter(straight, FIELDS) as writer:
        writer.append(lines[:3])
        writer.append(lines[3:])
        writer.flush_and_sync()

    resumed = tmp_path / "resumed.csv"
    with ErrorsWriter(resumed, FIELDS) as writer:
        writer.append(lines[:3])
        checkpoint = writer.flush_and_sync()
        writer.append(lines[3:5])  # written after the checkpoint, then "crash"
        writer.flush_and_sync()
    with ErrorsWriter(resumed, FIELDS) as writer:  # restart: the file exists
        writer.truncate(checkpoint)
        writer.append(lines[3:])
        writer.flush_and_sync()
    assert straight.read_bytes() == resumed.read_bytes()


def test_errors_writer_truncate_below_header_restores_header(tmp_path: Path) -> None:
    """Truncating to 0 (never checkpointed) leaves the header, not an empty file."""
    path = tmp_path / "e.csv"
    with ErrorsWriter(path, FIELDS) as writer:
        header = writer.flush_and_sync()
        writer.append([ReportLine(line=2, row=1, error=mdn_error("x"), values=[])])
        writer.truncate(0)
        assert header == writer.flush_and_sync()
    assert 1 == len(read_csv(path))


def test_errors_writer_refuses_truncate_beyond_end(tmp_path: Path) -> None:
    """A checkpoint longer than the file means the file is not the checkpointed one."""
    with ErrorsWriter(tmp_path / "e.csv", FIELDS) as writer:
        size = writer.flush_and_sync()
        with pytest.raises(ValueError, match="cannot truncate"):
            writer.truncate(size + 1)


def test_errors_writer_rewrites_a_torn_header(tmp_path: Path) -> None:
    """A file shorter than its header (torn by a crash) starts over with the header."""
    path = tmp_path / "e.csv"
    path.write_bytes(b"line,ro")
    with ErrorsWriter(path, FIELDS):
        pass
    assert [["line", "row", "error_class", "error_message", "field", "value", *FIELDS]] == (
        read_csv(path)
    )


def test_report_line_validates_numbers() -> None:
    """Line and row numbers are 1-based or absent."""
    with pytest.raises(ValueError, match="line"):
        ReportLine(line=0, row=1, error=mdn_error("x"))


def test_rejected_report(tmp_path: Path) -> None:
    """A rejected file's errors.csv has the fixed columns only and one line, row empty."""
    path = rejected_report(
        tmp_path / "r.csv", "PersonErrors::InvalidImportFileFormat", "Unknown header 'Delimeter'", 1
    )
    assert (
        b"line,row,error_class,error_message,field,value\r\n"
        b"1,,PersonErrors::InvalidImportFileFormat,Unknown header 'Delimeter',,\r\n"
    ) == path.read_bytes()
    rejected_report(path, "PersonErrors::InvalidImportFileFormat", "File is empty", None)
    assert ["", "", "PersonErrors::InvalidImportFileFormat", "File is empty", "", ""] == (
        read_csv(path)[1]
    )


# --- retry.persons -----------------------------------------------------------


def retry_text(tmp_path: Path, layout: Layout, rows: list[list[str]]) -> str:
    path = tmp_path / "r.persons"
    with RetryWriter(path, layout) as writer:
        writer.append(rows)
        writer.flush_and_sync()
    return path.read_bytes().decode("utf-8")


def test_retry_default_delimiters(tmp_path: Path) -> None:
    """Default delimiters: no header section, a field-name row, then the rows."""
    layout = Layout(fields=("mdn", "tags"))
    text = retry_text(tmp_path, layout, [["+12295551234", "soccer|golf"], ["2295551234", ""]])
    assert "mdn,tags\n+12295551234,soccer|golf\n2295551234,\n" == text


def test_retry_declared_fields_become_a_field_name_row(tmp_path: Path) -> None:
    """A file whose names came from a `Fields:` header gets a field-name row in the retry file."""
    layout = Layout(fields=("mdn", "a"), declared_fields=True, body_offset=20, body_line=3)
    assert "mdn,a\n1,2\n" == retry_text(tmp_path, layout, [["1", "2"]])


def test_retry_equal_delimiters_quote_multi_select(tmp_path: Path) -> None:
    """With `Delimiter: |` and the default multi-select `|`, a multi value is written quoted."""
    layout = Layout(fields=("external_person_id", "tags"), delimiter="|")
    text = retry_text(tmp_path, layout, [["e1", "soccer|golf"]])
    assert 'Delimiter: |\n\nexternal_person_id|tags\ne1|"soccer|golf"\n' == text


def test_retry_tab_and_multi_delimiter_declared(tmp_path: Path) -> None:
    """Non-default delimiters are declared; TAB is written as `tab`."""
    layout = Layout(fields=("mdn", "tags"), delimiter="\t", multi_delimiter=";")
    text = retry_text(tmp_path, layout, [["1", "a;b"], ["2", "x\ty"]])
    assert 'Delimiter: tab\nMulti-Select-Delimiter: ;\n\nmdn\ttags\n1\ta;b\n2\t"x\ty"\n' == text


def test_retry_quotes_quotes_and_line_breaks(tmp_path: Path) -> None:
    """Values holding a quote, CR or LF are quoted with doubled quotes."""
    layout = Layout(fields=("mdn", "note"))
    text = retry_text(tmp_path, layout, [["1", 'a "b"'], ["2", "x\ry"], ["3", "l1\nl2"]])
    assert 'mdn,note\n1,"a ""b"""\n2,"x\ry"\n3,"l1\nl2"\n' == text


def test_retry_colon_in_field_name_is_not_a_header(tmp_path: Path) -> None:
    """A field-name row that would read as a header line is preceded by a header section."""
    layout = Layout(fields=("a:b", "mdn"))
    assert "Delimiter: ,\n\na:b,mdn\n" == retry_text(tmp_path, layout, [])


def test_retry_has_rows_and_truncate(tmp_path: Path) -> None:
    """has_rows is false for the header alone, true after a row, false again once cut back."""
    with RetryWriter(tmp_path / "r.persons", Layout(fields=("mdn",))) as writer:
        checkpoint = writer.flush_and_sync()
        assert not writer.has_rows()
        writer.append([["+12295551234"]])
        assert writer.has_rows()
        writer.truncate(checkpoint)
        assert not writer.has_rows()


@given(
    st.lists(
        st.lists(
            st.text(alphabet='ab|,;\t"\r\n x', max_size=6).map(str.strip), min_size=2, max_size=2
        ),
        max_size=5,
    ),
    st.sampled_from([",", "|", "\t", ";"]),
)
def test_retry_roundtrips_through_rfc4180(
    tmp_path_factory: pytest.TempPathFactory, rows: list[list[str]], delimiter: str
) -> None:
    """An RFC 4180 reader with the declared delimiter gets back the rows exactly."""
    layout = Layout(fields=("mdn", "tags"), delimiter=delimiter)
    text = retry_text(tmp_path_factory.mktemp("r"), layout, rows)
    body = text.split("\n\n", 1)[1] if delimiter != "," else text
    # Empty-line separation of records the reader would skip cannot occur: every
    # line has a delimiter (two columns).
    parsed = list(csv.reader(io.StringIO(body, newline=""), delimiter=delimiter, strict=True))
    assert [["mdn", "tags"], *rows] == parsed


# --- names and summary -------------------------------------------------------


def test_report_names() -> None:
    """Outbox names are NAME.ID.errors.csv, NAME.ID.retry.persons, NAME.ID.summary.json."""
    assert (
        "customer_test.persons.17.errors.csv",
        "customer_test.persons.17.retry.persons",
        "customer_test.persons.17.summary.json",
    ) == report_names("customer_test.persons", 17)


def test_report_names_refuse_paths() -> None:
    """A name with a slash would escape the outbox."""
    with pytest.raises(ValueError, match="not a file name"):
        report_names("../x.persons", 1)


@given(
    name=st.text(
        st.characters(codec="utf-8") | st.sampled_from(["\udc80", "\udcff"]),
        min_size=1,
        max_size=300,
    ).filter(lambda n: "/" not in n and n not in (".", "..")),
    import_id=st.integers(min_value=1, max_value=2**63 - 1),
)
def test_report_names_fit_in_255_bytes(name: str, import_id: int) -> None:
    """SPEC 1.1: whatever the name, every report name is NAME(first 200 bytes).ID.kind <= 255."""
    for report in report_names(name, import_id):
        raw = report.encode("utf-8", "surrogateescape")
        assert len(raw) <= 255
        stem = report.rsplit(f".{import_id}.", 1)[0]
        assert name.startswith(stem)
        assert len(stem.encode("utf-8", "surrogateescape")) <= 200


def test_long_name_reports_use_its_first_200_bytes_summary_the_full_name() -> None:
    """SPEC 1.1/4: a 250-byte name's reports are named by its first 200 bytes; `file` is whole."""
    name = "é" * 121 + ".persons"  # 250 bytes
    stem = "é" * 100
    summary = completed_summary(file=name)
    assert name == summary.as_dict()["file"]
    assert f"{stem}.17.errors.csv" == summary.as_dict()["reports"]["errors"]
    assert (
        f"{stem}.17.errors.csv",
        f"{stem}.17.retry.persons",
        f"{stem}.17.summary.json",
    ) == report_names(name, 17)


def test_summary_of_undecodable_name_is_utf8() -> None:
    """summary.json stays valid UTF-8 when the uploaded name held bytes that are not UTF-8."""
    summary = completed_summary(file="caf\udce9.persons")
    text = summary.to_json()
    assert "caf\ufffd.persons" == json.loads(text.encode("utf-8"))["file"]


def completed_summary(**overrides: object) -> Summary:
    values: dict[str, object] = {
        "import_id": 17,
        "tenant": "acme",
        "file": "customer_test.persons",
        "sha256": SHA,
        "bytes": 212,
        "status": "completed",
        "received_at": T0,
        "started_at": T0 + timedelta(seconds=1),
        "finished_at": T0 + timedelta(seconds=2),
        "rows": RowCounts(total=4, succeeded=3, failed=1, created=2, updated=1),
        "errors": {"MobilePhoneErrors::InvalidMDNFormat": 1},
    }
    values.update(overrides)
    return Summary(**values)  # type: ignore[arg-type]


def test_summary_json_matches_spec_example() -> None:
    """Keys in SPEC order, UTC timestamps with Z, duplicate_of always present."""
    assert (
        '{"import_id": 17, "tenant": "acme", "file": "customer_test.persons", '
        f'"sha256": "{SHA}", "bytes": 212, "status": "completed", '
        '"received_at": "2026-11-23T02:15:00Z", "started_at": "2026-11-23T02:15:01Z", '
        '"finished_at": "2026-11-23T02:15:02Z", '
        '"rows": {"total": 4, "succeeded": 3, "failed": 1, "created": 2, "updated": 1}, '
        '"errors": {"MobilePhoneErrors::InvalidMDNFormat": 1}, "file_error": null, '
        '"reports": {"errors": "customer_test.persons.17.errors.csv", "retry": null}, '
        '"duplicate_of": null, "mode": "import", "layers": []}'
    ) == completed_summary().to_json()


def test_summary_converts_to_utc_and_sorts_errors() -> None:
    """Offsets are converted to UTC; error classes are sorted so a resumed run writes the same."""
    summary = completed_summary(
        received_at=datetime(2026, 11, 22, 21, 15, tzinfo=timezone(timedelta(hours=-5))),
        errors={"b": 1, "a": 2},
        rows=RowCounts(total=5, succeeded=3, failed=2, created=2, updated=1),
    )
    data = json.loads(summary.to_json())
    assert "2026-11-23T02:15:00Z" == data["received_at"]
    assert ["a", "b"] == list(data["errors"])


def test_summary_of_a_validation_says_mode_validate() -> None:
    """SPEC 4: a file dropped in /validate has mode validate in its summary."""
    assert "validate" == json.loads(completed_summary(mode="validate").to_json())["mode"]


def test_summary_rejected_and_duplicate() -> None:
    """A rejected import carries file_error {class, message}; duplicate_of names the earlier one."""
    summary = completed_summary(
        status="rejected",
        rows=RowCounts(),
        errors={"PersonErrors::InvalidImportFileFormat": 1},
        file_error=FileError(
            error_class="PersonErrors::InvalidImportFileFormat", message="File is empty"
        ),
        duplicate_of=9,
    )
    data = json.loads(summary.to_json())
    assert {"class": "PersonErrors::InvalidImportFileFormat", "message": "File is empty"} == (
        data["file_error"]
    )
    assert 9 == data["duplicate_of"]


def test_summary_retry_report_name() -> None:
    """With a retry file the summary names it."""
    summary = completed_summary(reports=Reports.of("customer_test.persons", 17, retry=True))
    assert (
        "customer_test.persons.17.retry.persons"
        == json.loads(summary.to_json())["reports"]["retry"]
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"status": "done"}, "status"),
        ({"sha256": "xyz"}, "sha256"),
        ({"received_at": datetime(2026, 1, 1)}, "timezone-aware"),
        ({"status": "rejected"}, "file_error"),
        ({"errors": {"x": 0}}, "error counts"),
        ({"reports": Reports(errors="other.csv")}, "reports.errors"),
        ({"mode": "dry-run"}, "mode"),
    ],
)
def test_summary_validation(overrides: dict[str, object], message: str) -> None:
    """An inconsistent summary cannot be built."""
    with pytest.raises(ValueError, match=message):
        completed_summary(**overrides)


def test_row_counts_must_add_up() -> None:
    """succeeded + failed = total, and created + updated never exceed succeeded."""
    with pytest.raises(ValueError, match="total"):
        RowCounts(total=3, succeeded=1, failed=1)
    with pytest.raises(ValueError, match="exceed"):
        RowCounts(total=1, succeeded=1, created=1, updated=1)


# --- publishing --------------------------------------------------------------


def test_publish_bytes_and_path(tmp_path: Path) -> None:
    """publish writes the content under the final name, leaves no temp, keeps the source."""
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    source = tmp_path / "work.csv"
    source.write_bytes(b"a,b\r\n")
    assert outbox / "x.csv" == publish(outbox, "x.csv", source)
    assert outbox / "y.json" == publish(outbox, "y.json", b"{}", scratch=tmp_path)
    assert b"a,b\r\n" == (outbox / "x.csv").read_bytes()
    assert b"{}" == (outbox / "y.json").read_bytes()
    assert ["x.csv", "y.json"] == sorted(os.listdir(outbox))
    assert ["outbox", "work.csv"] == sorted(os.listdir(tmp_path))


def test_publish_is_idempotent(tmp_path: Path) -> None:
    """Publishing again replaces the file with the new bytes; nothing else is left anywhere."""
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    publish(outbox, "x.csv", b"one", scratch=tmp_path)
    publish(outbox, "x.csv", b"two", scratch=tmp_path)
    assert ["x.csv"] == os.listdir(outbox)
    assert b"two" == (outbox / "x.csv").read_bytes()
    assert ["outbox"] == os.listdir(tmp_path)


def test_publish_bytes_needs_a_scratch_directory(tmp_path: Path) -> None:
    """Bytes have no directory of their own: where the temp file goes must be said."""
    with pytest.raises(ValueError, match="scratch"):
        publish(tmp_path, "x.csv", b"one")


def test_publish_refuses_dot_and_path_names(tmp_path: Path) -> None:
    """Published names are plain, visible names inside the outbox."""
    for name in (".hidden", "a/b", ""):
        with pytest.raises(ValueError, match="publishable"):
            publish(tmp_path, name, b"")


def test_publish_all_order_and_content(tmp_path: Path) -> None:
    """errors, then retry, then summary last; the summary names what was published."""
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    errors = tmp_path / "e.csv"
    retry = tmp_path / "r.persons"
    errors.write_bytes(b"e")
    retry.write_bytes(b"r")
    summary = completed_summary(reports=Reports.of("customer_test.persons", 17, retry=True))
    published = publish_all(outbox, "customer_test.persons", 17, errors, retry, summary)
    assert [
        "customer_test.persons.17.errors.csv",
        "customer_test.persons.17.retry.persons",
        "customer_test.persons.17.summary.json",
    ] == [p.name for p in published]
    assert summary.to_json() + "\n" == published[2].read_text()


def test_publish_all_summary_comes_last(tmp_path: Path) -> None:
    """When publishing the retry file fails, errors.csv is out and summary.json is not."""
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    errors = tmp_path / "e.csv"
    errors.write_bytes(b"e")
    summary = completed_summary(reports=Reports.of("customer_test.persons", 17, retry=True))
    with pytest.raises(FileNotFoundError):
        publish_all(outbox, "customer_test.persons", 17, errors, tmp_path / "gone", summary)
    assert ["customer_test.persons.17.errors.csv"] == os.listdir(outbox)


def test_publish_all_without_retry(tmp_path: Path) -> None:
    """Without a retry file only errors.csv and summary.json appear."""
    errors = tmp_path / "e.csv"
    errors.write_bytes(b"e")
    outbox = tmp_path / "o"
    outbox.mkdir()
    publish_all(outbox, "customer_test.persons", 17, errors, None, completed_summary())
    assert [
        "customer_test.persons.17.errors.csv",
        "customer_test.persons.17.summary.json",
    ] == sorted(os.listdir(outbox))


def test_publish_all_refuses_mismatched_summary(tmp_path: Path) -> None:
    """A summary announcing a retry file that is not published is refused before any write."""
    summary = completed_summary(reports=Reports.of("customer_test.persons", 17, retry=True))
    with pytest.raises(ValueError, match="retry"):
        publish_all(tmp_path, "customer_test.persons", 17, tmp_path / "e", None, summary)
    assert [] == os.listdir(tmp_path)


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, to run out of space for real."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def test_publish_disk_full_leaves_nothing(tiny_fs: Path, tmp_path: Path) -> None:
    """ENOSPC while publishing raises TransientError and leaves no partial file anywhere."""
    outbox, work = tiny_fs / "outbox", tiny_fs / "work"
    outbox.mkdir()
    work.mkdir()
    (outbox / "old.csv").write_bytes(b"kept")
    big = work / "big.csv"
    with big.open("wb") as fh:  # most of the 64 KiB: a copy cannot fit
        fh.write(b"x" * (40 * 1024))
    with pytest.raises(TransientError, match="disk full") as caught:
        publish(outbox, "big.csv", big)
    assert isinstance(caught.value, OSError) and errno.ENOSPC == caught.value.errno
    assert ["old.csv"] == os.listdir(outbox)
    assert ["big.csv"] == os.listdir(work)
    with pytest.raises(TransientError):
        publish(outbox, "big.csv", b"y" * (256 * 1024), scratch=work)
    assert ["old.csv"] == os.listdir(outbox)
    assert ["big.csv"] == os.listdir(work)
