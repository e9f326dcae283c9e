"""Bad input never crashes the engine nor loses data (SPEC 1.1-1.3, 4): the rest still imports.

Every file holds good rows (external ids `g…`) around the bad ones (`b…`). The
tests share one installation per database, each with a tenant of its own, so
that they stay fast; tenants share nothing (SPEC 6).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import pytest

from cli_helpers import FIXED_COLUMNS, Imported, Site

ROW_FORMAT = "PersonErrors::InvalidImportRowFormat"
ENCODING = (
    "FileEngine::EncodingDetection::Unknown8BitEncodingDetected",
    "File is not UTF-8 or ASCII encoded",
)
MDN_FORMAT = (
    "MobilePhoneErrors::InvalidMDNFormat",
    "The MDN is incorrectly formatted. It should be an E.164 MDN.",
)
BAD_SELECT = ("PersonErrors::InvalidSelectCustomFieldValue", "Invalid custom field value")
FIELD_NOT_FOUND = ("PersonErrors::CustomFieldNotFound", "Custom field not found")
EXCEEDS = (ROW_FORMAT, "Row exceeds 1048576 bytes")
NUL = (ROW_FORMAT, "Row contains a NUL byte")
HEAD = "external_person_id,nick\n"
TEN_MB = 10 * 1024 * 1024


_numbers = itertools.count(1)


@dataclass(frozen=True, kw_only=True, slots=True)
class Tenant:
    """A fresh tenant of the shared site with fields `nick` (string) and `tags` (a, b)."""

    site: Site
    name: str

    def run(self, name: str, data: bytes | str, *, expect: int = 0) -> Imported:
        return self.site.import_bytes(name, data, self.name, expect=expect)

    def persons(self) -> dict[str, dict[str, str]]:
        return self.site.by_external_id(self.name)


@pytest.fixture
def tenant(shared: Site) -> Tenant:
    name = f"t{next(_numbers)}"
    shared.add_tenant(name, [("nick", "string"), ("tags", "multi_select", "--options", "a,b")])
    return Tenant(site=shared, name=name)


def counts(total: int, failed: int) -> dict[str, int]:
    return {
        "total": total,
        "succeeded": total - failed,
        "failed": failed,
        "created": total - failed,
        "updated": 0,
    }


def test_unknown_column_fails_only_rows_using_it(tenant: Tenant) -> None:
    """SPEC 2 step 1: a non-blank value in an undefined column is CustomFieldNotFound."""
    done = tenant.run("cols.persons", "external_person_id,nick,shoe\ng1,a,\nb1,b,42\ng2,c,\n")

    assert [("3", "2", *FIELD_NOT_FOUND, "shoe", "42")] == done.errors_at()
    assert counts(3, 1) == done.summary["rows"]
    assert {"g1": "a", "g2": "c"} == {k: p["nick"] for k, p in tenant.persons().items()}


def test_wrong_value_counts_fail_their_rows(tenant: Tenant) -> None:
    """SPEC 1.3: a row with another number of values fails with `Expected N fields, found M`."""
    done = tenant.run("count.persons", HEAD + "g1,a\nb1\nb2,x,y\ng2,c\n")

    assert [
        ("3", "2", ROW_FORMAT, "Expected 2 fields, found 1", "", ""),
        ("4", "3", ROW_FORMAT, "Expected 2 fields, found 3", "", ""),
    ] == done.errors_at()
    assert ["b2", "x"] == done.errors[1][6:]
    assert counts(4, 2) == done.summary["rows"]
    assert {"g1", "g2"} == set(tenant.persons())


@pytest.mark.parametrize("quoted", [False, True], ids=["plain", "quoted"])
def test_ten_megabyte_field_fails_its_row_only(tenant: Tenant, quoted: bool) -> None:
    """SPEC 1.3: a row over max_row_bytes (1 MiB) fails; reading resumes at the next row.

    Quoted, the quote is still open when the row reaches the cap: `Unterminated quote`.
    """
    huge = "x" * TEN_MB
    value = f'"{huge}"' if quoted else huge
    data = HEAD + f"g1,a\nb1,{value}\ng2,c\nb2,d,e\n"

    done = tenant.run("huge.persons", data)

    message = "Unterminated quote" if quoted else EXCEEDS[1]
    assert [
        ("3", "2", ROW_FORMAT, message, "", ""),
        ("5", "4", ROW_FORMAT, "Expected 2 fields, found 3", "", ""),
    ] == done.errors_at()
    assert counts(4, 2) == done.summary["rows"]
    assert len(data) == done.summary["bytes"]
    assert {"g1": "a", "g2": "c"} == {k: p["nick"] for k, p in tenant.persons().items()}


def test_last_line_without_newline_is_imported(tenant: Tenant) -> None:
    """SPEC 1.3: the final row needs no line ending."""
    done = tenant.run("eof.persons", HEAD + "g1,a\nb1,x,y\ng2,c")

    assert [("3", "2", ROW_FORMAT, "Expected 2 fields, found 3", "", "")] == done.errors_at()
    assert {"g1": "a", "g2": "c"} == {k: p["nick"] for k, p in tenant.persons().items()}


def test_last_bad_line_without_newline_is_reported(tenant: Tenant) -> None:
    """SPEC 1.3/4: a failing final row without line ending still gets its error line."""
    done = tenant.run("eof2.persons", HEAD + "g1,a\nb1,x,y")

    assert [("3", "2", ROW_FORMAT, "Expected 2 fields, found 3", "", "")] == done.errors_at()
    assert {"g1"} == set(tenant.persons())


def test_invalid_utf8_mid_file_fails_only_its_row(tenant: Tenant) -> None:
    """SPEC 1.1: an invalid UTF-8 sequence after the start fails only the row holding it."""
    data = (HEAD + "g1,a\n").encode() + b"b1,caf\xe9\n" + b"g2,\xc3\xa9t\xc3\xa9\n"

    done = tenant.run("latin.persons", data)

    assert [("3", "2", *ENCODING, "", "")] == done.errors_at()
    # errors.csv stays UTF-8 (the helper decodes it strictly): the bad byte is replaced.
    assert ["b1", "caf\ufffd"] == done.errors[0][6:]
    assert {"g1": "a", "g2": "été"} == {k: p["nick"] for k, p in tenant.persons().items()}


def test_nul_byte_after_the_first_64_kib_fails_only_its_row(tenant: Tenant) -> None:
    """SPEC 1.3: a NUL byte beyond the first 64 KiB fails its row (`Row contains a NUL byte`)."""
    blank_lines = 70_000  # skipped, yet counted in line numbers
    data = (HEAD + "g1,a\n" + "\n" * blank_lines).encode() + b"b1,a\x00b\ng2,c\n"

    done = tenant.run("nul.persons", data)

    assert [(str(3 + blank_lines), "2", *NUL, "", "")] == done.errors_at()
    assert counts(3, 1) == done.summary["rows"]
    assert {"g1", "g2"} == set(tenant.persons())


@pytest.mark.parametrize(
    "data",
    [
        (HEAD + "g1,a\n").encode() + b"b1,a\x00b\ng2,c\n",
        (HEAD + "g1,a\ng2,c\n").encode("utf-16-le"),
        (HEAD + "g1,a\ng2,c\n").encode("utf-16"),
        (HEAD + "g1,a\ng2,c\n").encode("utf-32"),
    ],
    ids=["nul-in-first-64k", "utf-16-without-bom", "utf-16", "utf-32"],
)
def test_not_utf8_files_are_rejected_whole(tenant: Tenant, data: bytes) -> None:
    """SPEC 1.1: a UTF-16/32 BOM or NUL in the first 64 KiB rejects the file; nothing applied."""
    done = tenant.run("wide.persons", data, expect=3)

    assert "rejected" == done.summary["status"]
    assert {"class": ENCODING[0], "message": ENCODING[1]} == done.summary["file_error"]
    assert FIXED_COLUMNS == done.errors_header
    assert [["", "", *ENCODING, "", ""]] == done.errors
    assert {} == tenant.persons()


def test_unknown_header_rejects_the_whole_file(tenant: Tenant) -> None:
    """SPEC 1.2: an unknown header name rejects the file at file level; no row applied."""
    done = tenant.run("hdr.persons", "Delimeter: ;\n\nexternal_person_id;nick\ng1;a\n", expect=3)

    assert {
        "class": "PersonErrors::InvalidImportFileFormat",
        "message": "Unknown header 'Delimeter'",
    } == done.summary["file_error"]
    assert {} == tenant.persons()


def test_crlf_and_mixed_line_endings(tenant: Tenant) -> None:
    """SPEC 1.1: LF and CRLF, mixed, are both line endings; no CR stays in a value."""
    data = "external_person_id,nick\r\ng1,a\r\nb1,x,y\ng2,c\r\n\r\ng3,d\n"

    done = tenant.run("crlf.persons", data)

    assert [("3", "2", ROW_FORMAT, "Expected 2 fields, found 3", "", "")] == done.errors_at()
    assert counts(4, 1) == done.summary["rows"]
    assert {"g1": "a", "g2": "c", "g3": "d"} == {k: p["nick"] for k, p in tenant.persons().items()}


def test_quoted_line_breaks_keep_line_numbers_right(tenant: Tenant) -> None:
    """SPEC 1.3/4: quoted values span lines; errors.csv names the physical line a row starts."""
    data = HEAD + 'g1,"multi\nline\r\nvalue"\nb1,"x\ny",z\ng2,"say ""hi"", ok"\nb2,x,y\n'

    done = tenant.run("quoted.persons", data)

    assert [
        ("5", "2", ROW_FORMAT, "Expected 2 fields, found 3", "", ""),
        ("8", "4", ROW_FORMAT, "Expected 2 fields, found 3", "", ""),
    ] == done.errors_at()
    assert ["b1", "x\ny"] == done.errors[0][6:]
    site = tenant.site
    shown = json.loads(
        site.cli("persons", "show", "--tenant", tenant.name, "--external-person-id", "g1").stdout
    )
    assert "multi\nline\r\nvalue" == shown["fields"]["nick"]
    assert 'say "hi", ok' == tenant.persons()["g2"]["nick"]


def test_stray_quote_costs_one_row(tenant: Tenant) -> None:
    """SPEC 1.3: `X,"never closed` at line 3 fails alone; the megabyte of rows after it imports."""
    good = "".join(f"g{i},{'n' * 40}\n" for i in range(2, 26_002))  # 1.2 MB: over the cap
    done = tenant.run("open.persons", HEAD + 'g1,a\nb1,"never closed\n' + good)

    assert [("3", "2", ROW_FORMAT, "Unterminated quote", "", "")] == done.errors_at()
    assert ["b1", "never closed"] == done.errors[0][6:]
    assert counts(26_002, 1) == done.summary["rows"]
    assert {ROW_FORMAT: 1} == done.summary["errors"]
    persons = tenant.persons()
    assert 26_001 == len(persons)
    assert {"g1", "g2", "g26001"} <= set(persons)


def test_blank_lines_bom_and_spaces(tenant: Tenant) -> None:
    """SPEC 1.1/1.3: a UTF-8 BOM is dropped, blank lines skipped, values trimmed."""
    data = b"\xef\xbb\xbf" + (HEAD + "\n  g1 ,\t a \n \t\n\ng2,c\nb1, a , b , c\n").encode()

    done = tenant.run("bom.persons", data)

    assert [("7", "3", ROW_FORMAT, "Expected 2 fields, found 4", "", "")] == done.errors_at()
    assert 3 == done.summary["rows"]["total"]
    assert {"g1": "a", "g2": "c"} == {k: p["nick"] for k, p in tenant.persons().items()}


def test_fields_header_with_tab_delimiter(tenant: Tenant) -> None:
    """SPEC 1.2: `Fields` and `Delimiter: tab` headers; the body's first line is data."""
    data = (
        "Fields: external_person_id , nick,tags\nDelimiter: tab\n"
        "Multi-Select-Delimiter: ;\n\n"
        "g1\ta\ta;b\nb1\tx\ta|b\ng2\tc\t\n"
    )

    done = tenant.run("tab.persons", data)

    assert [("6", "2", *BAD_SELECT, "tags", "a|b")] == done.errors_at()
    persons = tenant.persons()
    assert {"g1": ("a", "a|b"), "g2": ("c", "")} == {
        k: (p["nick"], p["tags"]) for k, p in persons.items()
    }


def test_equal_delimiters_need_quoted_multi_select_values(tenant: Tenant) -> None:
    """SPEC 1.2: with `Delimiter: |` a multi-select value is quoted, then split."""
    data = 'Delimiter: |\n\nexternal_person_id|tags\ng1|"a|b"\nb1|a|b\ng2|b\n'

    done = tenant.run("pipes.persons", data)

    assert [("5", "2", ROW_FORMAT, "Expected 2 fields, found 3", "", "")] == done.errors_at()
    assert {"g1": "a|b", "g2": "b"} == {k: p["tags"] for k, p in tenant.persons().items()}


@pytest.mark.parametrize(
    "data",
    ["external_person_id,nick\n", "external_person_id,nick", "external_person_id,nick\n\n\r\n"],
    ids=["newline", "no-newline", "blank-lines"],
)
def test_field_names_without_rows_complete_with_zero_rows(tenant: Tenant, data: str) -> None:
    """SPEC 1.3: a file with field names and no rows completes with 0 rows."""
    done = tenant.run("none.persons", data)

    assert "completed" == done.summary["status"]
    assert counts(0, 0) == done.summary["rows"]
    assert [] == done.errors


def test_formula_cells_are_neutralised_in_errors_csv(tenant: Tenant) -> None:
    """SPEC 4: cells starting with =, @, TAB, CR or a sign not followed by a number get `'`."""
    site = tenant.site
    site.cli("fields", "add", "--tenant", tenant.name, "note", "--type", "string")
    data = (
        "external_person_id,mdn,note\n"
        "=cmd|' /C calc'!A0,=1+2,@SUM(A1)\n"
        'b2,+1 299,"\t=x"\n'
        "b3,-5,+12995550005\n"
        "g1,,-7.5\n"
    )

    done = tenant.run("formula.persons", data)

    assert [
        ["2", "1", *MDN_FORMAT, "mdn", "'=1+2", "'=cmd|' /C calc'!A0", "'=1+2", "'@SUM(A1)"],
        ["3", "2", *MDN_FORMAT, "mdn", "'+1 299", "b2", "'+1 299", "'\t=x"],
        ["4", "3", *MDN_FORMAT, "mdn", "-5", "b3", "-5", "+12995550005"],
    ] == done.errors
    assert {"g1": "-7.5"} == {k: p["note"] for k, p in tenant.persons().items()}


def test_many_errors_do_not_stop_the_file(tenant: Tenant) -> None:
    """SPEC 2: every row is tried; a file of mostly bad rows still imports its good ones."""
    lines = [HEAD.rstrip("\n")]
    for n in range(300):
        lines.append(f"g{n},ok" if n % 3 == 0 else f"b{n},x,{n}")
    done = tenant.run("many.persons", "\n".join(lines) + "\n")

    assert counts(300, 200) == done.summary["rows"]
    assert {ROW_FORMAT: 200} == done.summary["errors"]
    assert 100 == len(tenant.persons())
