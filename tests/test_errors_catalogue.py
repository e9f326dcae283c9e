"""Every error of SPEC section 3, produced through `personsd import`, and what it leaves behind."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import FIXED_COLUMNS, Site, make_site, shared_database
from http_helpers import CarrierStub, send_json
from reference import FILE_FORMAT, ROW_FORMAT, SPEC3

# SPEC 1.3's message for a field-name row without an identifier column.
NO_IDENTIFIER = "Couldn't find an external_person_id, mdn, or vibes_device_id field"

FIELDS = [
    ("nick", "string", "--charset", "ascii"),
    ("bio", "string", "--max-length", "5"),
    ("score", "number"),
    ("born", "date"),
    ("zip", "postal_code"),
    ("color", "single_select", "--options", "red,blue"),
    ("tags", "multi_select", "--options", "a,b"),
]
# p1 holds an MDN and device d1; p2 has device d2 and no MDN.
PRIOR = (
    "external_person_id,mdn,vibes_device_id,nick,bio,score,born,zip,color,tags\n"
    "p1,+12295551234,d1,one,hi,7.5,2020-01-02,12345,red,a|b\n"
    "p2,,d2,two,yo,1,2021-03-04,K1A 0B1,blue,b\n"
)


@dataclass(frozen=True, slots=True)
class RowCase:
    """A one-row file that fails with one error, against the PRIOR state."""

    body: str  # field-name row and the failing row; {p1_id}, {p2_id}, {p1_key_upper} filled in
    error: tuple[str, str]
    field: str = ""
    value: str = ""
    carrier: str = "none"
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


# Rows naming a PRIOR person by external_person_id with one bad cell: the person, the
# column, the cell and the SPEC 3 row it fails with.
CELL_CASES = {
    "mdn-format": ("p2", "mdn", "12345", "mdn_format"),
    "custom-field-not-found": ("p1", "nosuch", "zzz", "field_not_found"),
    "charset": ("p1", "nick", "café", "charset"),
    "single-select": ("p1", "color", "green", "bad_select"),
    "single-select-case": ("p1", "color", "Red", "bad_select"),
    "multi-select": ("p1", "tags", "a|zzz", "bad_select"),
    "number": ("p1", "score", "1e5", "bad_value"),
    "date": ("p1", "born", "2020-13-01", "bad_value"),
    "postal-code": ("p1", "zip", "1234", "bad_value"),
    "string-too-long": ("p1", "bio", "abcdef", "bad_value"),
    "phone-already-assigned": ("p2", "mdn", "(229) 555-1234", "phone_taken"),
    "mdn-change": ("p1", "mdn", "+12295559999", "mdn_change"),
    "mdn-null-clear": ("p1", "mdn", "[null]", "mdn_change"),
    "unique-device-id": ("p2", "vibes_device_id", "d1", "unique"),
}
ROW_CASES = {
    **{
        name: RowCase(f"external_person_id,{column}\n{who},{cell}\n", SPEC3[error], column, cell)
        for name, (who, column, cell, error) in CELL_CASES.items()
    },
    "person-id-not-found": RowCase(
        "person_id,nick\n999999,x\n", SPEC3["not_found"], "person_id", "999999"
    ),
    "person-key-upper-case": RowCase(
        "person_key,nick\n{p1_key_upper},x\n", SPEC3["not_found"], "person_key", "{p1_key_upper}"
    ),
    "invalid-person-id": RowCase(
        "person_id,nick\nabc,x\n", SPEC3["bad_person_id"], "person_id", "abc"
    ),
    "create-requires-key": RowCase("external_person_id,nick\n,x\n", SPEC3["no_key"]),
    "unique-external-id": RowCase(
        "person_id,external_person_id\n{p2_id},p1\n", SPEC3["unique"], "external_person_id", "p1"
    ),
    "permanent-lookup": RowCase(
        "external_person_id,mdn\np2,+12995550005\n",
        SPEC3["permanent"],
        "mdn",
        "+12995550005",
        carrier="offline",
    ),
    "row-field-count": RowCase(
        "external_person_id,nick\np1,x,extra\n", (ROW_FORMAT, "Expected 2 fields, found 3")
    ),
    "row-too-long": RowCase(
        "external_person_id,nick\np1," + "x" * 100 + "\n",
        (ROW_FORMAT, "Row exceeds 80 bytes"),
        extra={"max_row_bytes": 80},
    ),
    "row-invalid-utf8": RowCase("external_person_id,nick\np1,caf\udce9\n", SPEC3["encoding"]),
}


def encode(text: str) -> bytes:
    # Lone surrogate escapes stand for raw (invalid UTF-8) bytes.
    return text.encode("utf-8", errors="surrogateescape")


def prepared(tmp_path: Path, db_url: str, carrier_url: str = "") -> Site:
    """A site whose tenant `acme` has FIELDS and PRIOR's persons; lookup `http` given a URL."""
    carrier = "http" if carrier_url else "none"
    site = make_site(tmp_path / "site", db_url, carrier=carrier, carrier_url=carrier_url)
    site.add_tenant("acme", FIELDS)
    # PRIOR's MDN is well-formed and valid, so every carrier mode lets it through.
    first = site.import_bytes("prior.persons", PRIOR)
    assert {"total": 2, "succeeded": 2, "failed": 0, "created": 2, "updated": 0} == (
        first.summary["rows"]
    )
    return site


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    """One prepared site per database for the cases that must leave it unchanged.

    Sound to share: every case asserts that the export is the same after it.
    """
    home = tmp_path_factory.mktemp(f"catalogue-{request.param}")
    with shared_database(request.param, home) as url:
        yield prepared(home, url)


@pytest.mark.parametrize("case", ROW_CASES.values(), ids=ROW_CASES.keys())
def test_row_error_is_reported_and_changes_nothing(shared: Site, case: RowCase) -> None:
    """SPEC 3/4: each row error with its exact class, message, field and value; row not applied."""
    site = shared.variant(carrier=case.carrier, extra_import=case.extra)
    persons = site.by_external_id()
    filled = {
        "p1_id": persons["p1"]["person_id"],
        "p2_id": persons["p2"]["person_id"],
        "p1_key_upper": persons["p1"]["person_key"].upper(),
    }
    body = case.body.format(**filled)
    before = site.export_text()

    done = site.import_bytes("case.persons", encode(body))

    assert 0 == done.exit_code
    assert "completed" == done.summary["status"]
    assert {"total": 1, "succeeded": 0, "failed": 1, "created": 0, "updated": 0} == (
        done.summary["rows"]
    )
    assert {case.error[0]: 1} == done.summary["errors"]
    header = body.split("\n", 1)[0].split(",")
    assert [*FIXED_COLUMNS, *header] == done.errors_header
    expected = ("2", "1", *case.error, case.field, case.value.format(**filled))
    assert [expected] == done.errors_at()
    assert before == site.export_text()


def test_all_value_errors_of_a_row_are_reported(tmp_path: Path, db_url: str) -> None:
    """SPEC 2 step 1: every value error of a row is reported, one line each, row counted once."""
    site = prepared(tmp_path, db_url)
    before = site.export_text()

    done = site.import_bytes("two.persons", "external_person_id,mdn,score,color\np2,12,abc,green\n")

    assert [
        ("2", "1", *SPEC3["mdn_format"], "mdn", "12"),
        ("2", "1", *SPEC3["bad_value"], "score", "abc"),
        ("2", "1", *SPEC3["bad_select"], "color", "green"),
    ] == done.errors_at()
    assert {
        SPEC3["mdn_format"][0]: 1,
        SPEC3["bad_value"][0]: 1,
        SPEC3["bad_select"][0]: 1,
    } == done.summary["errors"]
    assert {"total": 1, "succeeded": 0, "failed": 1, "created": 0, "updated": 0} == (
        done.summary["rows"]
    )
    assert before == site.export_text()


def test_failed_row_leaves_earlier_and_later_rows_applied(tmp_path: Path, db_url: str) -> None:
    """SPEC 2: a row applies completely or not at all; its neighbours are unaffected."""
    site = prepared(tmp_path, db_url)

    done = site.import_bytes(
        "mix.persons",
        "external_person_id,mdn,nick\np3,,three\np1,+12295559999,changed\np1,,again\n",
    )

    assert [("3", "2", *SPEC3["mdn_change"], "mdn", "+12295559999")] == done.errors_at()
    assert {"total": 3, "succeeded": 2, "failed": 1, "created": 1, "updated": 1} == (
        done.summary["rows"]
    )
    persons = site.by_external_id()
    assert ("+12295551234", "again") == (persons["p1"]["mdn"], persons["p1"]["nick"])
    assert "three" == persons["p3"]["nick"]


SEQUENCE = (
    "external_person_id,mdn,vibes_device_id,nick\n"
    "n1,+12295550101,dn1,a\n"
    "n2,229.555.0101,,b\n"
    "n3,,dn1,c\n"
    ",+12295550101,,d\n"
    "n1,+12295550199,,e\n"
    "n2,,dn2,f\n"
    "n4,,dn2,g\n"
)


@pytest.mark.parametrize("chunk_rows", [1, 2, 5000])
def test_rows_see_the_rows_before_them_whatever_the_chunks(shared: Site, chunk_rows: int) -> None:
    """SPEC 2: each row meets the database as the rows before it left it, across chunks."""
    tenant = f"seq{chunk_rows}"
    shared.add_tenant(tenant, [("nick", "string")])
    site = shared.variant(extra_import={"chunk_rows": chunk_rows})

    done = site.import_bytes("seq.persons", SEQUENCE, tenant)

    assert [
        ("3", "2", *SPEC3["phone_taken"], "mdn", "229.555.0101"),
        ("4", "3", *SPEC3["unique"], "vibes_device_id", "dn1"),
        ("6", "5", *SPEC3["mdn_change"], "mdn", "+12295550199"),
        ("8", "7", *SPEC3["unique"], "vibes_device_id", "dn2"),
    ] == done.errors_at()
    assert {"total": 7, "succeeded": 3, "failed": 4, "created": 2, "updated": 1} == (
        done.summary["rows"]
    )
    assert {"n1": ("+12295550101", "dn1", "d"), "n2": ("", "dn2", "f")} == {
        k: (p["mdn"], p["vibes_device_id"], p["nick"])
        for k, p in site.by_external_id(tenant).items()
    }


# -- file-level errors -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileCase:
    """A file rejected as a whole: its class, exact message (or a word it must name), line."""

    name: str
    data: bytes
    error_class: str
    message: str
    line: str
    exact: bool = True


AFTER_HEADER = b"\n\nexternal_person_id\np9\n"  # end of the header line, blank line, body
ENCODING = SPEC3["encoding"]
FILE_CASES = {
    "name-not-persons": FileCase(
        "customer.csv",
        b"external_person_id\np9\n",
        FILE_FORMAT,
        "File name must end with .persons",
        "",
    ),
    "empty": FileCase("empty.persons", b"", FILE_FORMAT, "File is empty", ""),
    "unknown-header": FileCase(
        "h.persons", b"Delimeter: ;" + AFTER_HEADER, FILE_FORMAT, "Unknown header 'Delimeter'", "1"
    ),
    "repeated-header": FileCase(
        "h.persons",
        b"Delimiter: ;\ndelimiter: ;" + AFTER_HEADER,
        FILE_FORMAT,
        "Repeated header",
        "2",
        exact=False,
    ),
    "long-delimiter": FileCase(
        "h.persons", b"Delimiter: ;;" + AFTER_HEADER, FILE_FORMAT, "Delimiter", "1", exact=False
    ),
    "quote-delimiter": FileCase(
        "h.persons",
        b'Multi-Select-Delimiter: "' + AFTER_HEADER,
        FILE_FORMAT,
        "Multi-Select-Delimiter",
        "1",
        exact=False,
    ),
    "unclosed-headers": FileCase(
        "h.persons", b"Fields: external_person_id\n", FILE_FORMAT, "not closed", "1", exact=False
    ),
    "repeated-field": FileCase(
        "f.persons",
        b"external_person_id,nick,nick\np9,a,b\n",
        FILE_FORMAT,
        "nick",
        "1",
        exact=False,
    ),
    "no-identifier": FileCase("f.persons", b"nick,color\nx,red\n", FILE_FORMAT, NO_IDENTIFIER, "1"),
    "upper-case-identifier": FileCase(
        "f.persons", b"MDN,nick\n+12295550001,x\n", FILE_FORMAT, NO_IDENTIFIER, "1"
    ),
    "bom-only": FileCase("empty.persons", b"\xef\xbb\xbf", FILE_FORMAT, "File is empty", ""),
    "blank-lines-only": FileCase("empty.persons", b"\n \r\n\n", FILE_FORMAT, "File is empty", ""),
    "invalid-utf8-field-names": FileCase(
        "f.persons", b"external_person_id,caf\xe9\np9,x\n", *ENCODING, "1"
    ),
    "no-identifier-in-fields-header": FileCase(
        "f.persons", b"Fields: nick\n\nx\n", FILE_FORMAT, NO_IDENTIFIER, "1"
    ),
    "utf-16": FileCase("u.persons", "external_person_id\np9\n".encode("utf-16"), *ENCODING, ""),
    "utf-16-be": FileCase(
        "u.persons", b"\xfe\xff" + "external_person_id\np9\n".encode("utf-16-be"), *ENCODING, ""
    ),
    "utf-32": FileCase("u.persons", "external_person_id\np9\n".encode("utf-32"), *ENCODING, ""),
    "nul-in-first-64k": FileCase("n.persons", b"external_person_id\np\x009\np8\n", *ENCODING, ""),
}


@pytest.mark.parametrize("case", FILE_CASES.values(), ids=FILE_CASES.keys())
def test_file_error_rejects_the_file(shared: Site, case: FileCase) -> None:
    """SPEC 1/3/4: a file-level error exits 3, status rejected, one-line errors.csv, no row."""
    site = shared
    before = site.export_text()

    done = site.import_bytes(case.name, case.data, expect=3)

    summary = done.summary
    assert "rejected" == summary["status"]
    assert case.error_class == summary["file_error"]["class"]
    message = summary["file_error"]["message"]
    if case.exact:
        assert case.message == message
    else:
        assert case.message in message
    assert {"total": 0, "succeeded": 0, "failed": 0, "created": 0, "updated": 0} == (
        summary["rows"]
    )
    assert {"errors": f"{case.name}.{summary['import_id']}.errors.csv", "retry": None} == (
        summary["reports"]
    )
    assert FIXED_COLUMNS == done.errors_header
    assert [[case.line, "", case.error_class, message, "", ""]] == done.errors
    # SPEC 4: `errors` counts the report's error lines by class.
    assert {case.error_class: 1} == summary["errors"]
    assert before == site.export_text()
    listed = json.loads(site.cli("imports", "list", "--tenant", "acme", "--json").stdout)
    assert "rejected" == next(i for i in listed if i["import_id"] == summary["import_id"])["status"]


# -- the carrier lookup service ----------------------------------------------------------------


class CarrierService(CarrierStub):
    """A real HTTP carrier lookup on 127.0.0.1 (SPEC 2 `http`): GET ?mdn= -> {"valid": bool}."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = "valid"  # "valid", "invalid" or "error" (HTTP 500)

    def answer_request(self, request: BaseHTTPRequestHandler) -> None:
        if self.answer == "error":
            request.send_response(500)
            request.end_headers()
            return
        send_json(request, {"valid": self.answer == "valid"})


@pytest.fixture
def carrier_service() -> Iterator[CarrierService]:
    with CarrierService() as service:
        yield service


RETRY_CASES = {
    "default-delimiters": (
        "external_person_id,mdn,nick,tags\np2,+12295550001,changed,a|b\np3,,new,\n",
        "external_person_id,mdn,nick,tags\np2,+12295550001,changed,a|b\n",
        ("changed", "a|b"),
    ),
    "declared-delimiters": (
        "Delimiter: ;\nMulti-Select-Delimiter: /\n\n"
        "external_person_id;mdn;nick;tags\np2;+12295550001;changed;a/b\np3;;new;\n",
        "Delimiter: ;\nMulti-Select-Delimiter: /\n\n"
        "external_person_id;mdn;nick;tags\np2;+12295550001;changed;a/b\n",
        ("changed", "a|b"),
    ),
    # No field-name row in the original: the retry file gets one, and keeps the quoting.
    "fields-header-tab-quoted": (
        "Fields: external_person_id, mdn, nick, tags\nDelimiter: tab\n\n"
        'p2\t+12295550001\t"two\nlines, ""quoted"""\ta\np3\t\tnew\t\n',
        "Delimiter: tab\n\n"
        'external_person_id\tmdn\tnick\ttags\np2\t+12295550001\t"two\nlines, ""quoted"""\ta\n',
        ('two\nlines, "quoted"', "a"),
    ),
}


@pytest.mark.parametrize(
    ("body", "retry_body", "applied"), RETRY_CASES.values(), ids=RETRY_CASES.keys()
)
def test_transient_lookup_failure_writes_a_retry_file(
    tmp_path: Path,
    db_url: str,
    carrier_service: CarrierService,
    body: str,
    retry_body: str,
    applied: tuple[str, str],
) -> None:
    """SPEC 2/4: 5xx after retries -> TransientLookupFailureError, row in a re-droppable file."""
    site = prepared(tmp_path, db_url, carrier_service.url)
    p2_before = site.by_external_id()["p2"]
    carrier_service.answer = "error"

    done = site.import_bytes("night.persons", body)

    line = str(body.count("\n", 0, body.index("p2")) + 1)
    assert [(line, "1", *SPEC3["transient"], "mdn", "+12295550001")] == done.errors_at()
    assert {SPEC3["transient"][0]: 1} == done.summary["errors"]
    assert {"total": 2, "succeeded": 1, "failed": 1, "created": 1, "updated": 0} == (
        done.summary["rows"]
    )
    retry_name = f"night.persons.{done.summary['import_id']}.retry.persons"
    assert retry_name == done.summary["reports"]["retry"]
    retry_file = site.outbox("acme") / retry_name
    assert retry_body == retry_file.read_text(encoding="utf-8")
    assert "+12295550001" in carrier_service.asked
    after = site.by_external_id()
    assert p2_before == after["p2"]
    assert "new" == after["p3"]["nick"]

    carrier_service.answer = "valid"
    again = site.import_file(retry_file)

    assert "completed" == again.summary["status"]
    assert {"total": 1, "succeeded": 1, "failed": 0, "created": 0, "updated": 1} == (
        again.summary["rows"]
    )
    assert [] == again.errors
    assert None is again.summary["reports"]["retry"]
    p2 = site.by_external_id()["p2"]
    assert ("+12295550001", *applied) == (p2["mdn"], p2["nick"], p2["tags"])


def test_negative_http_answer_is_permanent(
    tmp_path: Path, db_url: str, carrier_service: CarrierService
) -> None:
    """SPEC 2: a negative answer of the http service -> PermanentLookupFailureError, no retry."""
    site = prepared(tmp_path, db_url, carrier_service.url)
    before = site.export_text()
    carrier_service.answer = "invalid"

    done = site.import_bytes("n.persons", "external_person_id,mdn\np2,229-555-0001\n")

    assert [("2", "1", *SPEC3["permanent"], "mdn", "229-555-0001")] == done.errors_at()
    assert None is done.summary["reports"]["retry"]
    assert ["+12295550001"] == carrier_service.asked[-1:]
    assert before == site.export_text()
