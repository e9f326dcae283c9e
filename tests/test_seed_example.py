"""The example file of the seed documents (SPEC 2, note on area code 299), end to end."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from cli_helpers import FIXED_COLUMNS, Site, make_site

SEED_NAME = "customer_test.persons"
SEED = (
    "mdn,first_name,last_name,sport_interests\n"
    "+12995550005,John,Doe,football|hockey\n"
    "+12995550006,Mary,Sue,soccer\n"
    "+12995550007,Dave,Doe,golf|basketball|hockey\n"
    "+12995550008,John,Smith,soccer|football\n"
)
SEED_FIELDS = [
    ("first_name", "string"),
    ("last_name", "string"),
    ("sport_interests", "multi_select", "--options", "football,hockey,soccer,golf,basketball"),
]
EXPORT_HEADER = (
    "person_id,person_key,external_person_id,mdn,vibes_device_id,"
    "first_name,last_name,sport_interests"
)
EXPECTED_PERSONS = [
    ("+12995550005", "John", "Doe", "football|hockey"),
    ("+12995550006", "Mary", "Sue", "soccer"),
    ("+12995550007", "Dave", "Doe", "golf|basketball|hockey"),
    ("+12995550008", "John", "Smith", "soccer|football"),
]
PERMANENT = (
    "CarrierLookupService::PermanentLookupFailureError",
    "The MDN supplied is not a valid mobile phone active on a valid carrier.",
)


def seed_site(tmp_path: Path, db_url: str, carrier: str) -> Site:
    site = make_site(tmp_path / "site", db_url, carrier=carrier)
    site.add_tenant("acme", SEED_FIELDS)
    return site


def test_seed_fields_are_defined_as_the_example_needs(tmp_path: Path, db_url: str) -> None:
    """SPEC 1.5/7: `fields add` defines the example's fields; `fields list --json` shows them."""
    site = seed_site(tmp_path, db_url, "none")
    listed = json.loads(site.cli("fields", "list", "--tenant", "acme", "--json").stdout)
    assert [
        {
            "name": "first_name",
            "type": "string",
            "options": [],
            "charset": "unicode",
            "max_length": 255,
        },
        {
            "name": "last_name",
            "type": "string",
            "options": [],
            "charset": "unicode",
            "max_length": 255,
        },
        {
            "name": "sport_interests",
            "type": "multi_select",
            "options": ["football", "hockey", "soccer", "golf", "basketball"],
            "charset": "unicode",
            "max_length": 255,
        },
    ] == listed


def test_seed_example_without_carrier_lookup_creates_four(tmp_path: Path, db_url: str) -> None:
    """SPEC 2 note: under carrier_lookup = "none" the example's 4 persons are created."""
    site = seed_site(tmp_path, db_url, "none")
    done = site.import_bytes(SEED_NAME, SEED)

    assert 0 == done.exit_code
    summary = done.summary
    assert [
        "import_id",
        "tenant",
        "file",
        "sha256",
        "bytes",
        "status",
        "received_at",
        "started_at",
        "finished_at",
        "rows",
        "errors",
        "file_error",
        "reports",
        "duplicate_of",
        "mode",
        "layers",
    ] == list(summary)
    for moment in ("received_at", "started_at", "finished_at"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", summary[moment]), moment
    assert hashlib.sha256(SEED.encode()).hexdigest() == summary["sha256"]
    assert ("completed", "acme", SEED_NAME, len(SEED)) == (
        summary["status"],
        summary["tenant"],
        summary["file"],
        summary["bytes"],
    )
    assert {"total": 4, "succeeded": 4, "failed": 0, "created": 4, "updated": 0} == summary["rows"]
    assert {} == summary["errors"]
    assert None is summary["file_error"]
    assert {"errors": f"{SEED_NAME}.{summary['import_id']}.errors.csv", "retry": None} == (
        summary["reports"]
    )
    assert [*FIXED_COLUMNS, "mdn", "first_name", "last_name", "sport_interests"] == (
        done.errors_header
    )
    assert [] == done.errors

    text = site.export_text()
    assert EXPORT_HEADER == text.splitlines()[0]
    exported = site.export()
    assert EXPECTED_PERSONS == [
        (p["mdn"], p["first_name"], p["last_name"], p["sport_interests"]) for p in exported
    ]
    assert [("", "")] * 4 == [(p["external_person_id"], p["vibes_device_id"]) for p in exported]
    ids = [int(p["person_id"]) for p in exported]
    assert sorted(ids) == ids


def test_seed_example_offline_fails_every_row(tmp_path: Path, db_url: str) -> None:
    """SPEC 2 note: under "offline" the 299 numbers fail with PermanentLookupFailureError."""
    site = seed_site(tmp_path, db_url, "offline")
    done = site.import_bytes(SEED_NAME, SEED)

    assert 0 == done.exit_code
    assert "completed" == done.summary["status"]
    assert {"total": 4, "succeeded": 0, "failed": 4, "created": 0, "updated": 0} == (
        done.summary["rows"]
    )
    assert {PERMANENT[0]: 4} == done.summary["errors"]
    assert [
        [str(n + 2), str(n + 1), *PERMANENT, "mdn", mdn, mdn, first, last, sports]
        for n, (mdn, first, last, sports) in enumerate(EXPECTED_PERSONS)
    ] == done.errors
    assert [] == site.export()


def test_seed_example_through_the_console_script(tmp_path: Path, db_url: str) -> None:
    """SPEC 7: `python -m personsd import` prints the summary, exits 0, leaves the source."""
    site = seed_site(tmp_path, db_url, "none")
    source = site.write(SEED_NAME, SEED)

    done = site.subprocess("import", str(source), "--tenant", "acme")

    assert 0 == done.returncode, done.stderr.decode()
    summary = json.loads(done.stdout)
    assert {"total": 4, "succeeded": 4, "failed": 0, "created": 4, "updated": 0} == summary["rows"]
    assert SEED.encode() == source.read_bytes()
    published = site.outbox("acme") / f"{SEED_NAME}.{summary['import_id']}.summary.json"
    assert summary == json.loads(published.read_text())
    logged = [json.loads(line) for line in done.stderr.decode().splitlines() if line.strip()]
    assert "import.completed" in [entry["event"] for entry in logged]

    assert EXPECTED_PERSONS == [
        (p["mdn"], p["first_name"], p["last_name"], p["sport_interests"]) for p in site.export()
    ]
