"""`import --validate`, `imports list`, `tenants add` for validate-only drops (SPEC 7, 11)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import Site, make_site


@pytest.fixture
def site(tmp_path: Path, db_url: str) -> Site:
    return make_site(tmp_path / "site", db_url)


def test_import_validate_writes_nothing_and_says_validate(site: Site) -> None:
    """`personsd import --validate`: the import's reports with mode validate, no person written."""
    site.add_tenant("acme")
    site.import_bytes("seed.persons", "external_person_id\ne1\n")
    before = site.export_text()
    source = site.write("check.persons", "external_person_id,mdn\ne1,\ne2,\ne3,12\n")

    checked = site.imported(
        0, site.cli("import", str(source), "--tenant", "acme", "--validate").stdout, "acme"
    )

    assert before == site.export_text()
    assert "validate" == checked.summary["mode"]
    assert {"total": 3, "succeeded": 2, "failed": 1, "created": 1, "updated": 1} == (
        checked.summary["rows"]
    )
    imported = site.import_file(source)
    assert (imported.errors, imported.summary["rows"]) == (checked.errors, checked.summary["rows"])
    assert "import" == imported.summary["mode"]


def test_imports_list_shows_the_mode(site: Site) -> None:
    """`imports list` says which runs were validations (JSON `mode`, text `(validate)`)."""
    site.add_tenant("acme")
    source = site.write("a.persons", "external_person_id\ne1\n")
    site.cli("import", str(source), "--tenant", "acme", "--validate")
    site.import_file(source)

    listed = json.loads(site.cli("imports", "list", "--json").stdout)
    text = site.cli("imports", "list").stdout.splitlines()

    assert ["validate", "import"] == [i["mode"] for i in listed]
    assert ["completed (validate)", "completed"] == [line.split("\t")[2] for line in text]


def test_tenants_add_creates_the_validate_directory(site: Site) -> None:
    """SPEC 7: `tenants add` creates inbox, validate and outbox at once."""
    site.cli("tenants", "add", "acme")
    tenant_dir = site.root / "tenants" / "acme"
    assert ["inbox", "outbox", "validate"] == sorted(p.name for p in tenant_dir.iterdir())
