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


@dataclass(frozen=True, kw_only=True, slots=True)
class RowCase:
    """A one-row file that fails with one error, against the PRIOR state."""

    body: str  # field-name row and the failing row; {p1_id}, {p2_id}, {p1_key} filled in
    error: tuple[str, str]
    field: str
    value: str
    carrier: str = "none"
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


ROW_CASES = {
    "mdn-format": RowCase(
        body="external_person_id,mdn\np2,12345\n",
        error=SPEC3["mdn_format"],
        field="mdn",
        value="12345",
    ),
    "custom-field-not-found": RowCase(
        body="external_person_id,nosuch\np1,zzz\n",
        error=SPEC3["field_not_found"],
        field="nosuch",
        value="zzz",
    ),
    "charset": RowCase(
        body="external_person_id,nick\np1,café\n",
        error=SPEC3["charset"],
        field="nick",
        value="café",
    ),
    "single-select": RowCase(
        body="external_person_id,color\np1,green\n",
        error=SPEC3["bad_select"],
        field="color",
        value="green",
    ),
    "single-select-case": RowCase(
        body="external_person_id,color\np1,Red\n",
        error=SPEC3["bad_select"],
        field="color",
        value="Red",
    ),
    "multi-select": RowCase(
        body="external_person_id,tags\np1,a|zzz\n",
        error=SPEC3["bad_select"],
        field="tags",
        value="a|zzz",
    ),
    "number": RowCase(
        body="external_person_id,score\np1,1e5\n",
        error=SPEC3["bad_value"],
        field="score",
        value="1e5",
    ),
    "date": RowCase(
        body="external_person_id,born\np1,2020-13-01\n",
        error=SPEC3["bad_value"],
        field="born",
        value="2020-13-01",
    ),
    "postal-code": RowCase(
        body="external_person_id,zip\np1,1234\n",
        error=SPEC3["bad_value"],
        field="zip",
        value="1234",
    ),
    "string-too-long": RowCase(
        body="external_person_id,bio\np1,abcdef\n",
        error=SPEC3["bad_value"],
        field="bio",
        value="abcdef",
    ),
    "person-id-not-found": RowCase(
        body="person_id,nick\n999999,x\n",
        error=SPEC3["not_found"],
        field="person_id",
        value="999999",
    ),
    "person-key-upper-case": RowCase(
        body="person_key,nick\n{p1_key_upper},x\n",
        error=SPEC3["not_found"],
        field="person_key",
        value="{p1_key_upper}",
    ),
    "phone-already-assigned": RowCase(
        body="external_person_id,mdn\np2,(229) 555-1234\n",
        error=SPEC3["phone_taken"],
        field="mdn",
        value="(229) 555-1234",
    ),
    "invalid-person-id": RowCase(
        body="person_id,nick\nabc,x\n", error=SPEC3["bad_person_id"], field="person_id", value="abc"
    ),
    "mdn-change": RowCase(
        body="external_person_id,mdn\np1,+12295559999\n",
        error=SPEC3["mdn_change"],
        field="mdn",
        value="+12295559999",
    ),
    "mdn-null-clear": RowCase(
        body="external_person_id,mdn\np1,[null]\n",
        error=SPEC3["mdn_change"],
        field="mdn",
        value="[null]",
    ),
    "create-requires-key": RowCase(
        body="external_person_id,nick\n,x\n", error=SPEC3["no_key"], field="", value=""
    ),
    "unique-external-id": RowCase(
        body="person_id,external_person_id\n{p2_id},p1\n",
        error=SPEC3["unique"],
        field="external_person_id",
        value="p1",
    ),
    "unique-device-id": RowCase(
        body="external_person_id,vibes_device_id\np2,d1\n",
        error=SPEC3["unique"],
        field="vibes_device_id",
        value="d1",
    ),
    "permanent-lookup": RowCase(
        body="external_person_id,mdn\np2,+12995550005\n",
        error=SPEC3["permanent"],
        field="mdn",
        value="+12995550005",
        carrier="offline",
    ),
    "row-field-count": RowCase(
        body="external_person_id,nick\np1,x,extra\n",
        error=(ROW_FORMAT, "Expected 2 fields, found 3"),
        field="",
        value="",
    ),
    "row-too-long": RowCase(
        body="external_person_id,nick\np1," + "x" * 100 + "\n",
        error=(ROW_FORMAT, "Row exceeds 80 bytes"),
        field="",
        value="",
        extra={"max_row_bytes": 80},
    ),
    "row-invalid-utf8": RowCase(
        body="external_person_id,nick\np1,caf\udce9\n", error=SPEC3["encoding"], field="", value=""
    ),
}


def encode(text: str) -> bytes:
    # Lone surrogate escapes stand for raw (invalid UTF-8) bytes.
    return text.encode("utf-8", errors="surrogateescape")


def prepared(
    tmp_path: Path,
    db_url: str,
    *,
    carrier: str = "none",
    carrier_url: str = "",
    extra: dict[str, Any] | None = None,
) -> Site:
    """A site whose tenant `acme` has FIELDS and the persons of PRIOR."""
    site = make_site(
        tmp_path / "site", db_url, carrier=carrier, carrier_url=carrier_url, extra_import=extra
    )
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


@dataclass(frozen=True, kw_only=True, slots=True)
class FileCase:
    """A file rejected as a whole: its class, exact message (or a word it must name), line."""

    name: str
    data: bytes
    error_class: str
    message: str
    line: str
    exact: bool = True


FILE_CASES = {
    "name-not-persons": FileCase(
        name="customer.csv",
        data=b"external_person_id\np9\n",
        error_class=FILE_FORMAT,
        message="File name must end with .persons",
        line="",
    ),
    "empty": FileCase(
        name="empty.persons", data=b"", error_class=FILE_FORMAT, message="File is empty", line=""
    ),
    "unknown-header": FileCase(
        name="h.persons",
        data=b"Delimeter: ;\n\nexternal_person_id\np9\n",
        error_class=FILE_FORMAT,
        message="Unknown header 'Delimeter'",
        line="1",
    ),
    "repeated-header": FileCase(
        name="h.persons",
        data=b"Delimiter: ;\ndelimiter: ;\n\nexternal_person_id\np9\n",
        error_class=FILE_FORMAT,
        message="Repeated header",
        line="2",
        exact=False,
    ),
    "long-delimiter": FileCase(
        name="h.persons",
        data=b"Delimiter: ;;\n\nexternal_person_id\np9\n",
        error_class=FILE_FORMAT,
        message="Delimiter",
        line="1",
        exact=False,
    ),
    "quote-delimiter": FileCase(
        name="h.persons",
        data=b'Multi-Select-Delimiter: "\n\nexternal_person_id\np9\n',
        error_class=FILE_FORMAT,
        message="Multi-Select-Delimiter",
        line="1",
        exact=False,
    ),
    "unclosed-headers": FileCase(
        name="h.persons",
        data=b"Fields: external_person_id\n",
        error_class=FILE_FORMAT,
        message="not closed",
        line="1",
        exact=False,
    ),
    "repeated-field": FileCase(
        name="f.persons",
        data=b"external_person_id,nick,nick\np9,a,b\n",
        error_class=FILE_FORMAT,
        message="nick",
        line="1",
        exact=False,
    ),
    "no-identifier": FileCase(
        name="f.persons",
        data=b"nick,color\nx,red\n",
        error_class=FILE_FORMAT,
        message=NO_IDENTIFIER,
        line="1",
    ),
    "upper-case-identifier": FileCase(
        name="f.persons",
        data=b"MDN,nick\n+12295550001,x\n",
        error_class=FILE_FORMAT,
        message=NO_IDENTIFIER,
        line="1",
    ),
    "bom-only": FileCase(
        name="empty.persons",
        data=b"\xef\xbb\xbf",
        error_class=FILE_FORMAT,
        message="File is empty",
        line="",
    ),
    "blank-lines-only": FileCase(
        name="empty.persons",
        data=b"\n \r\n\n",
        error_class=FILE_FORMAT,
        message="File is empty",
        line="",
    ),
    "invalid-utf8-field-names": FileCase(
        name="f.persons",
        data=b"external_person_id,caf\xe9\np9,x\n",
        error_class=SPEC3["encoding"][0],
        message=SPEC3["encoding"][1],
        line="1",
    ),
    "no-identifier-in-fields-header": FileCase(
        name="f.persons",
        data=b"Fields: nick\n\nx\n",
        error_class=FILE_FORMAT,
        message=NO_IDENTIFIER,
        line="1",
    ),
    "utf-16": FileCase(
        name="u.persons",
        data="external_person_id\np9\n".encode("utf-16"),
        error_class=SPEC3["encoding"][0],
        message=SPEC3["encoding"][1],
        line="",
    ),
    "utf-16-be": FileCase(
        name="u.persons",
        data=b"\xfe\xff" + "external_person_id\np9\n".encode("utf-16-be"),
        error_class=SPEC3["encoding"][0],
        message=SPEC3["encoding"][1],
        line="",
    ),
    "utf-32": FileCase(
        name="u.persons",
        data="external_person_id\np9\n".encode("utf-32"),
        error_class=SPEC3["encoding"][0],
        message=SPEC3["encoding"][1],
        line="",
    ),
    "nul-in-first-64k": FileCase(
        name="n.persons",
        data=b"external_person_id\np\x009\np8\n",
        error_class=SPEC3["encoding"][0],
        message=SPEC3["encoding"][1],
        line="",
    ),
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
    site = prepared(tmp_path, db_url, carrier="http", carrier_url=carrier_service.url)
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
    site = prepared(tmp_path, db_url, carrier="http", carrier_url=carrier_service.url)
    before = site.export_text()
    carrier_service.answer = "invalid"

    done = site.import_bytes("n.persons", "external_person_id,mdn\np2,229-555-0001\n")

    assert [("2", "1", *SPEC3["permanent"], "mdn", "229-555-0001")] == done.errors_at()
    assert None is done.summary["reports"]["retry"]
    assert ["+12295550001"] == carrier_service.asked[-1:]
    assert before == site.export_text()
