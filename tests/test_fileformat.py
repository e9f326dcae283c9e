"""SPEC 1.1-1.3: file names, encoding, header section and body of `.persons` files."""

# The house style puts the expected value first (`expected == actual`), which
# SIM300 calls a Yoda condition.

from __future__ import annotations

import csv
import io
import itertools
from pathlib import Path
from typing import BinaryIO, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from personsd.errors import ErrorKind, FileRejected, RowError, row_format_error
from personsd.fileformat import (
    MAX_NAME_BYTES,
    Layout,
    RawRow,
    check_name,
    classify_name,
    cut_name,
    iter_rows,
    name_bytes,
    read_layout,
)

CAP = 1024
FILE_FORMAT = ErrorKind.INVALID_FILE_FORMAT.error_class
ENCODING = ErrorKind.UNKNOWN_ENCODING.error_class
NO_IDENTIFIER = "Couldn't find an external_person_id, mdn, or vibes_device_id field"


def layout_of(data: bytes, cap: int = CAP) -> Layout:
    return read_layout(io.BytesIO(data), max_row_bytes=cap)


def rows_of(data: bytes, cap: int = CAP) -> list[RawRow]:
    fh = io.BytesIO(data)
    layout = read_layout(fh, max_row_bytes=cap)
    return list(iter_rows(fh, layout, max_row_bytes=cap))


def rejection(data: bytes, cap: int = CAP) -> tuple[str, str, int | None]:
    with pytest.raises(FileRejected) as caught:
        layout_of(data, cap)
    return caught.value.error_class, caught.value.message, caught.value.line


def values(rows: list[RawRow]) -> list[tuple[str, ...]]:
    return [r.values for r in rows]


# --------------------------------------------------------------------------- 1.1 names


# File names by what the inbox does with them.
NAMES = {
    "import": [
        "customers.persons",
        "dir/customers.persons",
        "x.persons.gz.pgp",
        "x.persons.zip",
        "x.persons.asc",
    ],
    "ignore": [
        ".customers.persons",
        "customers.persons.filepart",
        "customers.persons.part",
        "customers.persons.partial",
        "customers.persons.tmp",
        "customers.persons.uploading",
        "x.persons.gz.filepart",
    ],
    "reject": ["customers.csv", "customers.PERSONS", "persons", "x.persons.pgp.gz", "x.gz"],
}


@pytest.mark.parametrize(
    ("name", "expected"), [(name, verdict) for verdict, names in NAMES.items() for name in names]
)
def test_classify_name(name: str, expected: str) -> None:
    """SPEC 1.1: .persons (in the right layer order) imported, uploads ignored, others rejected."""
    assert expected == classify_name(name)


def test_check_name_rejects_other_suffix() -> None:
    """SPEC 1.1: a name not ending in .persons is InvalidImportFileFormat with the exact message."""
    check_name("ok.persons")
    with pytest.raises(FileRejected) as caught:
        check_name("customers.csv")
    assert (FILE_FORMAT, "File name must end with .persons") == (
        caught.value.error_class,
        caught.value.message,
    )


def _rejected_name(name: str) -> tuple[str, str]:
    with pytest.raises(FileRejected) as caught:
        check_name(name)
    return caught.value.error_class, caught.value.message


TOO_LONG = (FILE_FORMAT, "File name is longer than 200 bytes")


def test_name_of_200_bytes_is_fine_201_is_rejected() -> None:
    """SPEC 1.1: a name is at most 200 bytes (UTF-8); longer is rejected at file level."""
    check_name("a" * 192 + ".persons")
    assert TOO_LONG == _rejected_name("a" * 193 + ".persons")
    check_name("é" * 96 + ".persons")  # 2 bytes a character: 200 bytes
    assert TOO_LONG == _rejected_name("é" * 96 + "a.persons")
    # Undecodable bytes (surrogate escapes, as os.fsdecode gives them) count one byte each.
    check_name("\udcff" * 192 + ".persons")
    assert TOO_LONG == _rejected_name("\udcff" * 193 + ".persons")
    # The length comes first, whatever the suffix.
    assert TOO_LONG == _rejected_name("a" * 250 + ".csv")


def test_long_name_still_classifies_for_import() -> None:
    """SPEC 1.1: a long .persons name is picked up, so the partner hears of its rejection."""
    assert "import" == classify_name("a" * 250 + ".persons")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a" * 250, "a" * 200),
        ("é" * 150, "é" * 100),
        ("a" + "é" * 150, "a" + "é" * 99),  # the 100th é would end at byte 201
        ("€" * 70, "€" * 66),
        ("😀" * 60, "😀" * 50),
        ("ab\udcff" * 80, ("ab\udcff" * 67)[:200]),
        ("short.persons", "short.persons"),
    ],
)
def test_cut_name_at_a_character_boundary(name: str, expected: str) -> None:
    """SPEC 1.1: reports use the name's first 200 bytes, cut at a character boundary."""
    assert expected == cut_name(name)


@given(st.text(st.characters(codec="utf-8") | st.sampled_from(["\udc80", "\udcff"])))
def test_cut_name_is_the_longest_prefix_within_200_bytes(name: str) -> None:
    """SPEC 1.1: the cut is a prefix of at most 200 bytes, and one character more would not fit."""
    cut = cut_name(name)
    raw = cut.encode("utf-8", "surrogateescape")
    assert name.startswith(cut)
    assert len(raw) == name_bytes(cut) <= MAX_NAME_BYTES
    if cut != name:
        assert name_bytes(name[: len(cut) + 1]) > MAX_NAME_BYTES


# --------------------------------------------------------------------------- 1.1 encoding


def test_empty_file_rejected() -> None:
    """SPEC 1.3: a 0-byte file is rejected with `File is empty`."""
    assert (FILE_FORMAT, "File is empty", None) == rejection(b"")


def test_blank_only_file_rejected_as_empty() -> None:
    """Decision: a file of only a BOM and blank lines is as empty as a 0-byte file."""
    assert (FILE_FORMAT, "File is empty", None) == rejection(b"\xef\xbb\xbf\n \r\n")


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be", "utf-32", "utf-32-be"])
def test_utf16_and_utf32_rejected(codec: str) -> None:
    """SPEC 1.1: a UTF-16/UTF-32 file (BOM or NULs) is Unknown8BitEncodingDetected."""
    data = ("\ufeffmdn,name\n+12295551234,Ann\n").encode(codec)
    assert (ENCODING, "File is not UTF-8 or ASCII encoded", None) == rejection(data)


def test_nul_in_first_64k_rejects_file() -> None:
    """SPEC 1.1: a NUL byte in the first 64 KiB rejects the whole file."""
    data = b"mdn,name\n" + b"1,a\n" * 1000 + b"2,\0\n"
    assert (ENCODING, "File is not UTF-8 or ASCII encoded", None) == rejection(data)


def test_nul_beyond_64k_fails_only_its_row() -> None:
    """SPEC 1.3: a NUL byte after the first 64 KiB fails only the row holding it."""
    body = b"1,a\n" * 20000
    rows = rows_of(b"mdn,name\n" + body + b"2,x\0y\n3,b\n")
    assert 20002 == len(rows)
    assert row_format_error("Row contains a NUL byte") == rows[20000].error
    assert ("2", "x\ufffdy") == rows[20000].values
    assert (None, None, ("3", "b")) == (rows[19999].error, rows[20001].error, rows[20001].values)


def test_utf8_bom_dropped_and_counted_in_offset() -> None:
    """SPEC 1.1: a UTF-8 BOM is dropped; body_offset counts its 3 bytes."""
    layout = layout_of(b"\xef\xbb\xbfmdn,name\n1,a\n")
    assert (("mdn", "name"), 3 + 9, 2) == (layout.fields, layout.body_offset, layout.body_line)


def test_invalid_utf8_mid_file_fails_only_its_row() -> None:
    """SPEC 1.1: an invalid UTF-8 sequence later in the file fails only that row."""
    rows = rows_of(b'mdn,name\n1,a\n2,b\xff\xfec\n3,"d\xc3"\n4,\xc3\xa9\n')
    assert [None, ErrorKind.UNKNOWN_ENCODING.at(), ErrorKind.UNKNOWN_ENCODING.at(), None] == [
        r.error for r in rows
    ]
    assert [("1", "a"), ("2", "b\ufffd\ufffdc"), ("3", "d\ufffd"), ("4", "é")] == values(rows)


def test_invalid_utf8_in_field_name_row_rejects_file() -> None:
    """SPEC 1.1: invalid UTF-8 in the field-name row rejects the file, naming the line."""
    assert (ENCODING, "File is not UTF-8 or ASCII encoded", 3) == rejection(
        b"Delimiter: ;\n\nmdn;n\xffame\n"
    )


def test_invalid_utf8_in_header_rejects_file() -> None:
    """SPEC 1.1: invalid UTF-8 in a header line rejects the file, naming the line."""
    assert (ENCODING, "File is not UTF-8 or ASCII encoded", 2) == rejection(
        b"Delimiter: ;\nFields: mdn,\xff\n\n"
    )


# --------------------------------------------------------------------------- 1.2 headers


def test_header_section_with_fields_and_equal_delimiters() -> None:
    """SPEC 1.2: Fields + Delimiter `|` equal to the multi-select one; quoting resolved first."""
    data = b'Delimiter: |\nFields: external_person_id , sport_interests\n\ne1|"soccer|golf"\n'
    layout = layout_of(data)
    expected = Layout(
        fields=("external_person_id", "sport_interests"),
        delimiter="|",
        multi_delimiter="|",
        declared_fields=True,
        body_offset=len(data) - len(b'e1|"soccer|golf"\n'),
        body_line=4,
    )
    assert expected == layout
    rows = rows_of(data)
    assert [("e1", "soccer|golf")] == values(rows)
    assert (4, 1, None) == (rows[0].line, rows[0].row, rows[0].error)


@pytest.mark.parametrize("spelling", ["tab", "TAB", "\\t", "\t"])
def test_tab_delimiter_spellings(spelling: str) -> None:
    """SPEC 1.2: `tab` or `\\t` (and a literal TAB) mean a TAB delimiter."""
    data = f"delimiter:{spelling}\n\nmdn\tname\n 1 \t a b \n".encode()
    rows = rows_of(data)
    assert "\t" == layout_of(data).delimiter
    assert [("1", "a b")] == values(rows)


def test_header_names_case_insensitive_and_multi_select() -> None:
    """SPEC 1.2: header names are case-insensitive; Multi-Select-Delimiter sets one char."""
    layout = layout_of(b"MULTI-select-DELIMITER : ;\r\ndelimiter: ,\r\n\r\nmdn,x\r\n")
    assert (";", ",", ("mdn", "x"), 5) == (
        layout.multi_delimiter,
        layout.delimiter,
        layout.fields,
        layout.body_line,
    )


@pytest.mark.parametrize(
    ("data", "message", "line"),
    [
        (b"Delimeter: ;\n\nmdn\n", "Unknown header 'Delimeter'", 1),
        (b"Delimiter: ;\ndelimiter: ;\n\nmdn\n", "Repeated header 'delimiter'", 2),
        (
            b"Delimiter: ;;\n\nmdn\n",
            "Invalid Delimiter ';;': must be one character other than '\"', CR or LF",
            1,
        ),
        (
            b'Delimiter: "\n\nmdn\n',
            "Invalid Delimiter '\"': must be one character other than '\"', CR or LF",
            1,
        ),
        (
            b"Delimiter: ;\nMulti-Select-Delimiter:\n\nmdn\n",
            "Invalid Multi-Select-Delimiter '': must be one character other than '\"', CR or LF",
            2,
        ),
        (b"Delimiter: ;\nmdn;name\n1;a\n", "Header section not closed by an empty line", 2),
        (b"Delimiter: ;\nFields: mdn", "Header section not closed by an empty line", 2),
        (b"Delimiter: ;\n", "Header section not closed by an empty line", 1),
    ],
)
def test_header_section_errors(data: bytes, message: str, line: int) -> None:
    """SPEC 1.2: unknown/repeated header, bad delimiter, unclosed section name the problem."""
    assert (FILE_FORMAT, message, line) == rejection(data)


def test_header_only_with_no_field_row_rejected() -> None:
    """A header section without Fields and without a field-name row has no identifier."""
    assert (FILE_FORMAT, NO_IDENTIFIER, 3) == rejection(b"Delimiter: ;\n\n")


# --------------------------------------------------------------------------- 1.3 field names


def test_field_names_trimmed_and_case_kept() -> None:
    """SPEC 1.3: field names are trimmed of spaces/tabs and kept case-sensitive."""
    assert ("mdn", "First_Name", "a b") == layout_of(b' mdn ,\tFirst_Name\t,"a b"\n').fields


@pytest.mark.parametrize(
    ("data", "message", "line"),
    [
        (b"mdn,name,name\n", "Repeated field name 'name'", 1),
        (b"Fields: mdn, mdn\n\n", "Repeated field name 'mdn'", 1),
        (b"name,Mdn\n1,2\n", NO_IDENTIFIER, 1),
        (b"\nFields: first\n\n", NO_IDENTIFIER, 2),
        (b"mdn,,x\n", "Field name 2 is empty", 1),
        (b"\n\nmdn," + b"x" * CAP + b"\n", f"Field-name row exceeds {CAP} bytes", 3),
    ],
)
def test_field_name_errors(data: bytes, message: str, line: int) -> None:
    """SPEC 1.3: repeated field name, no identifier column: file-level InvalidImportFileFormat."""
    assert (FILE_FORMAT, message, line) == rejection(data)


@pytest.mark.parametrize(
    "identifier", ["person_id", "person_key", "external_person_id", "vibes_device_id"]
)
def test_any_identifier_column_suffices(identifier: str) -> None:
    """SPEC 1.3: any of the five identifier columns satisfies the file-level check."""
    assert ("name", identifier) == layout_of(f"name,{identifier}\n".encode()).fields


def test_field_names_and_no_rows_is_fine() -> None:
    """SPEC 1.3: a file with field names and no rows has 0 rows."""
    assert [] == rows_of(b"mdn,name\n\n  \n")
    assert [] == rows_of(b"mdn,name")


# --------------------------------------------------------------------------- 1.3 body


def test_crlf_mixed_blank_lines_and_no_final_newline() -> None:
    """SPEC 1.3: LF/CRLF mixed, blank lines skipped but counted in lines, last line unterminated."""
    data = b"mdn,name\r\n1,a\n\r\n \t \n2,b\r\n\n3 , c "
    rows = rows_of(data)
    assert [("1", "a"), ("2", "b"), ("3", "c")] == values(rows)
    assert [(2, 1), (5, 2), (7, 3)] == [(r.line, r.row) for r in rows]
    assert len(data) == rows[-1].end


def test_quoted_values_with_newlines_keep_line_numbers() -> None:
    """SPEC 1.3: quoted values hold delimiter, line breaks, `""`; later line numbers stay right."""
    data = b'mdn,note\n1,"a,b\nc\r\nd"\n2,  "say ""hi""  "  \n3,x"y\n4,"a" b\n'
    rows = rows_of(data)
    assert [
        ("1", "a,b\nc\r\nd"),
        ("2", 'say "hi"  '),
        ("3", 'x"y'),
        ("4", "a b"),
    ] == values(rows)
    assert [2, 5, 6, 7] == [r.line for r in rows]
    assert [5, 6, 7, 8] == [r.next_line for r in rows]
    assert [None] * 4 == [r.error for r in rows]


def test_field_count_mismatch() -> None:
    """SPEC 1.3: a row with the wrong number of values fails with `Expected N fields, found M`."""
    rows = rows_of(b"mdn,name,x\n1,2\n1,2,3,4\n,,\n")
    assert [
        row_format_error("Expected 3 fields, found 2"),
        row_format_error("Expected 3 fields, found 4"),
        None,
    ] == [r.error for r in rows]
    assert [("1", "2"), ("1", "2", "3", "4"), ("", "", "")] == values(rows)


def test_tab_only_line_is_a_row_with_tab_delimiter() -> None:
    """Decision: with a TAB delimiter a line of TABs is a row of empty values, not a blank line."""
    rows = rows_of(b"Delimiter: tab\n\nmdn\tname\n\t\n  \n")
    assert [("", "")] == values(rows)


def test_row_exceeding_cap_fails_and_reading_resumes() -> None:
    """SPEC 1.3: a row longer than max_row_bytes fails; the next row is read."""
    cap = 20
    data = b"mdn,x\n1," + b"a" * 18 + b"\n2," + b"a" * 19 + b"\r\n3,ok\n"
    rows = rows_of(data, cap)
    assert [None, row_format_error("Row exceeds 20 bytes"), None] == [r.error for r in rows]
    assert [("1", "a" * 18), (), ("3", "ok")] == values(rows)
    assert [2, 3, 4] == [r.line for r in rows]


UNTERMINATED = row_format_error("Unterminated quote")


def test_stray_quote_costs_one_row() -> None:
    """SPEC 1.3: `X,"never closed` fails alone (Unterminated quote); every later line is a row."""
    good = b"".join(b"%d,v%d\n" % (i, i) for i in range(3000))  # far more than the cap
    rows = rows_of(b'mdn,x\n1,a\nX,"never closed\n' + good)
    assert [None, UNTERMINATED] + [None] * 3000 == [r.error for r in rows]
    assert ("X", "never closed") == rows[1].values
    assert (3, 4) == (rows[1].line, rows[1].next_line)
    assert [4, 3003] == [rows[2].line, rows[-1].line]
    assert ("2999", "v2999") == rows[-1].values


def test_quote_open_over_cap_is_unterminated_and_lines_are_read_again() -> None:
    """SPEC 1.3: a quote still open when the row reaches the cap fails only the first line."""
    cap = 20
    data = b'mdn,x\n1,"' + b"a\n" * 8 + b"b" * 30 + b'"\n2,ok\n'
    rows = rows_of(data, cap)
    assert [UNTERMINATED] + [row_format_error("Expected 2 fields, found 1")] * 7 + [
        _exceeds_error(cap),
        None,
    ] == [r.error for r in rows]
    assert [("1", "a"), *[("a",)] * 7, (), ("2", "ok")] == values(rows)
    assert list(range(2, 12)) == [r.line for r in rows]


def _exceeds_error(cap: int) -> RowError:
    return row_format_error(f"Row exceeds {cap} bytes")


def test_quote_closed_within_cap_then_too_long_resumes_after_the_row() -> None:
    """SPEC 1.3: over the cap outside quotes: Row exceeds, and reading resumes after the row."""
    cap = 20
    data = b'mdn,x\n1,"a\nb",' + b"c" * 30 + b"\n2,ok\n"
    rows = rows_of(data, cap)
    assert [_exceeds_error(cap), None] == [r.error for r in rows]
    assert [(2, 4), (4, 5)] == [(r.line, r.next_line) for r in rows]


def test_quoted_row_just_within_cap_is_read_whole() -> None:
    """SPEC 1.3: a multi-line quoted row of exactly max_row_bytes is a good row; one more fails."""
    cap = 20
    value = "a\n" * 5 + "b" * 6  # the row `1,"VALUE"` is 20 bytes
    rows = rows_of(b'mdn,x\n1,"' + value.encode() + b'"\n2,ok\n', cap)
    assert [("1", value), ("2", "ok")] == values(rows)
    assert [None, None] == [r.error for r in rows]
    # One byte more: the closing quote is the 21st byte, so the quote was open at the cap.
    rows = rows_of(b'mdn,x\n1,"' + value.encode() + b'b"\n2,ok\n', cap)
    assert [UNTERMINATED] + [row_format_error("Expected 2 fields, found 1")] * 5 + [None] == [
        r.error for r in rows
    ]
    assert ('bbbbbbb"',) == rows[5].values


def test_unterminated_quote_at_eof_fails_its_row_only() -> None:
    """SPEC 1.3: a quote left open to the end of the file fails its row; later lines are rows."""
    rows = rows_of(b'mdn,x\n1,a\n2,"open\n3,b\n4,c')
    assert [None, UNTERMINATED, None, None] == [r.error for r in rows]
    assert [(2, 3), (3, 4), (4, 5), (5, 6)] == [(r.line, r.next_line) for r in rows]
    rows = rows_of(b'mdn,x\n1,a\n2,"open')
    assert [None, UNTERMINATED] == [r.error for r in rows]
    assert ("2", "open") == rows[1].values


def test_stray_quote_in_field_name_row_rejects_the_file() -> None:
    """SPEC 1.3: an open quote in the field-name row is a file-level error naming it."""
    assert (FILE_FORMAT, "Unterminated quote in the field-name row", 1) == rejection(
        b'mdn,"x\n1,2\n'
    )


class ReadRecorder:
    """A file object that remembers the largest chunk handed to the parser."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.largest = 0

    def _seen(self, data: bytes) -> bytes:
        self.largest = max(self.largest, len(data))
        return data

    def read(self, size: int = -1) -> bytes:
        return self._seen(self.fh.read(size))

    def readline(self, size: int = -1) -> bytes:
        return self._seen(self.fh.readline(size))

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.fh.seek(offset, whence)


@pytest.mark.parametrize(
    ("quote", "message"),
    [(b"", "Row exceeds 1048576 bytes"), (b'"', "Unterminated quote")],
)
def test_ten_megabyte_field_memory_bounded(tmp_path: Path, quote: bytes, message: str) -> None:
    """SPEC 1.3: a 10 MB field fails its row, later rows are read, reads stay within 2x the cap.

    Quoted, the quote is still open when the row reaches the cap: `Unterminated quote`.
    """
    cap = 1 << 20
    path = tmp_path / "big.persons"
    big = quote + b"x" * (10 << 20) + quote
    path.write_bytes(b"mdn,note\n1,ok\n2," + big + b"\n3,fine\n")
    with path.open("rb") as raw:
        fh = ReadRecorder(raw)
        layout = read_layout(cast(BinaryIO, fh), max_row_bytes=cap)
        rows = list(iter_rows(cast(BinaryIO, fh), layout, max_row_bytes=cap))
    assert [None, row_format_error(message), None] == [r.error for r in rows]
    assert [("1", "ok"), (), ("3", "fine")] == values(rows)
    assert [2, 3, 4] == [r.line for r in rows]
    assert fh.largest <= 2 * cap


# --------------------------------------------------------------------------- properties

# A lone CR is left out: csv writes it unquoted with an LF terminator, and a
# value ending in CR before LF cannot be told from a CRLF line ending.
_TOKENS = st.sampled_from([*'ab é€ \t,|;"\n', "\r\n"])
_VALUE = st.lists(_TOKENS, max_size=8).map("".join)


def _quoted_by_csv(value: str, delimiter: str, ending: str) -> bool:
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator=ending).writerow(["x", value])
    return out.getvalue().split(delimiter, 1)[1].startswith('"')


@given(
    delimiter=st.sampled_from([",", "|", ";", "\t"]),
    width=st.integers(min_value=2, max_value=4),
    data=st.data(),
)
def test_round_trip_with_csv_writer(delimiter: str, width: int, data: st.DataObject) -> None:
    """SPEC 1.3: what Python's csv writer produces parses back to the trimmed values and lines."""
    fields = ["mdn", *(f"f{i}" for i in range(1, width))]
    table = data.draw(st.lists(st.lists(_VALUE, min_size=width, max_size=width), max_size=8))
    endings = data.draw(st.lists(st.sampled_from(["\n", "\r\n"]), min_size=len(table) + 1))
    out = io.StringIO()
    line = 1
    if delimiter != ",":
        out.write(f"Delimiter: {'tab' if delimiter == chr(9) else delimiter}\r\n\n")
        line = 3
    out.write(delimiter.join(fields) + endings[-1])
    line += 1
    expected = []
    for record, ending in zip(table, endings, strict=False):
        text = io.StringIO()
        csv.writer(text, delimiter=delimiter, lineterminator=ending).writerow(record)
        trimmed = tuple(
            v if _quoted_by_csv(v, delimiter, ending) else v.strip(" \t".replace(delimiter, ""))
            for v in record
        )
        expected.append((line, trimmed))
        line += text.getvalue().count("\n")
        out.write(text.getvalue())
    rows = rows_of(out.getvalue().encode())
    assert expected == [(r.line, r.values) for r in rows]
    assert list(range(1, len(table) + 1)) == [r.row for r in rows]
    assert [None] * len(table) == [r.error for r in rows]


_LINES = st.sampled_from(
    [
        b"1,a",
        b" 2 , b ",
        b"",
        b" \t",
        b'3,"x\ny"',
        b'4,"x\r\n\r\ny""z"',
        b"5,b,c",
        b"6," + b"z" * 40,
        b'7,"' + b"q\n" * 20 + b'"',
        b"8,\xff",
        b"9,\0",
        b'10,"open',
        b'11,close"',
    ]
)


@given(
    lines=st.lists(_LINES, max_size=12),
    endings=st.lists(st.sampled_from([b"\n", b"\r\n"]), min_size=12, max_size=12),
    final_newline=st.booleans(),
)
def test_resume_at_every_row_boundary(
    lines: list[bytes], endings: list[bytes], final_newline: bool
) -> None:
    """Resume: iterating from a row's end/next_line/row continues exactly like one run."""
    cap = 32
    body = b"".join(text + ending for text, ending in zip(lines, endings, strict=False))
    if not final_newline and body.endswith(b"\n"):
        body = body.removesuffix(b"\n").removesuffix(b"\r")
    # Built by hand: a NUL this early would make read_layout reject the file.
    layout = Layout(fields=("mdn", "name"), body_offset=9, body_line=2)
    fh = io.BytesIO(b"mdn,name\n" + body)
    whole = list(iter_rows(fh, layout, max_row_bytes=cap))
    for index, done in enumerate(whole):
        rest = iter_rows(
            fh, layout, max_row_bytes=cap, offset=done.end, line=done.next_line, row=done.row
        )
        assert whole == whole[: index + 1] + list(rest)
    for before, after in itertools.pairwise(whole):
        assert before.end <= after.offset
        assert before.next_line <= after.line
        assert before.row + 1 == after.row
    assert all(isinstance(r.error, RowError | None) for r in whole)


# Pieces of lines that open, close and reopen quotes, escape them, or run long.
_PIECES = st.sampled_from(
    [b"a", b" ", b",", b'"', b'""', b'a","b', b'x" y', b"\t", b"z" * 25, b"\xff", "é".encode()]
)
_STRAY_LINE = st.lists(_PIECES, max_size=6).map(b"".join)


def _first_closing_quote(line: bytes) -> int:
    """Offset of the quote that closes a quote open at the start of ``line``."""
    return len(line.replace(b'""', b"__").split(b'"', 1)[0])


def _physical_lines(body: bytes) -> list[bytes]:
    return body.splitlines(keepends=True) if body else []


@given(
    lines=st.lists(_STRAY_LINE, max_size=14),
    endings=st.lists(st.sampled_from([b"\n", b"\r\n"]), min_size=14, max_size=14),
    cap=st.integers(min_value=6, max_value=48),
    final_newline=st.booleans(),
)
def test_stray_quotes_lose_no_line_and_resume_exactly(
    lines: list[bytes], endings: list[bytes], cap: int, final_newline: bool
) -> None:
    """SPEC 1.3: with stray quotes every line is in exactly one row or blank; resume is exact."""
    body = b"".join(text + ending for text, ending in zip(lines, endings, strict=False))
    if not final_newline and body.endswith(b"\n"):
        body = body.removesuffix(b"\n").removesuffix(b"\r")
    head = b"mdn,name\n"
    layout = Layout(fields=("mdn", "name"), body_offset=len(head), body_line=2)
    fh = io.BytesIO(head + body)
    whole = list(iter_rows(fh, layout, max_row_bytes=cap))

    physical = _physical_lines(body)
    starts = list(itertools.accumulate((len(p) for p in physical), initial=len(head)))
    covered = [n for r in whole for n in range(r.line, r.next_line)]
    assert len(covered) == len(set(covered))  # no line in two rows
    for number, text in enumerate(physical, start=2):
        assert number in covered or not text.strip(b" \t\r\n"), (number, text)
    for r in whole:  # each row is whole lines, its bytes those of its lines
        assert (starts[r.line - 2], starts[r.next_line - 2]) == (r.offset, r.end)
        if r.next_line - r.line == 1:
            continue
        # Several lines: a quote open at the end of each but the last, closed in
        # the last within the cap; a stray quote (Unterminated) keeps its first line only.
        assert r.error != UNTERMINATED
        last = physical[r.next_line - 3]
        closing = starts[r.next_line - 3] + _first_closing_quote(last)
        assert closing + 1 - r.offset <= cap
        if r.error != _exceeds_error(cap):
            assert r.end - r.offset - (len(last) - len(last.rstrip(b"\r\n"))) <= cap

    for index, done in enumerate(whole):
        rest = iter_rows(
            fh, layout, max_row_bytes=cap, offset=done.end, line=done.next_line, row=done.row
        )
        assert whole == whole[: index + 1] + list(rest)


def test_stray_quote_on_every_line_reads_the_file_a_bounded_number_of_times() -> None:
    """SPEC 1.3/5: lines that each reopen a quote cost linear, not quadratic, reading."""
    cap = 64 * 1024
    data = b"mdn,x\n" + b'a","b\n' * 40_000
    fh = ReadCounter(io.BytesIO(data))
    layout = read_layout(cast(BinaryIO, fh), max_row_bytes=cap)
    rows = list(iter_rows(cast(BinaryIO, fh), layout, max_row_bytes=cap))
    assert [UNTERMINATED] * 40_000 == [r.error for r in rows]
    assert fh.total <= 4 * len(data) + 4 * cap


class ReadCounter:
    """A file object that counts the bytes handed to the parser."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.total = 0

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        self.total += len(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        data = self.fh.readline(size)
        self.total += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.fh.seek(offset, whence)
