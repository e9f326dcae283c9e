"""The command line (SPEC section 7), command by command, and its configuration (SPEC 8)."""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine

from cli_helpers import (
    EXPORT_COLUMNS,
    Site,
    assert_clean_exit,
    make_site,
    write_config,
)
from personsd import config as config_mod
from personsd import importer
from personsd.passwords import verify_password
from personsd.store import db
from personsd.store import tenants as store_tenants


@pytest.fixture
def site(tmp_path: Path, db_url: str) -> Site:
    """An installation of its own (for commands whose output spans every tenant)."""
    return make_site(tmp_path / "site", db_url)


_numbers = itertools.count(1)


@pytest.fixture
def tenant(shared: Site) -> str:
    """A fresh tenant of the shared installation."""
    name = f"c{next(_numbers)}"
    shared.add_tenant(name)
    return name


@contextmanager
def engine_of(site: Site) -> Iterator[Engine]:
    engine = db.connect(site.db_url)
    try:
        yield engine
    finally:
        engine.dispose()


def ssh_public_key(directory: Path, name: str) -> Path:
    """A real OpenSSH ed25519 public key file, made by ssh-keygen."""
    private = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@test", "-f", str(private)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return directory / f"{name}.pub"


# -- init, db upgrade, configuration ----------------------------------------------------------


def test_init_is_idempotent(tmp_path: Path, db_url: str) -> None:
    """SPEC 7: `init` creates directories, schema and host key once; running it again is a no-op."""
    site = make_site(tmp_path / "site", db_url, init=False)

    first = site.cli("init")
    key = site.root / "host_key"
    key_bytes = key.read_bytes()
    site.cli("tenants", "add", "acme")
    (site.inbox("acme")).rmdir()
    second = site.cli("init")

    assert "initialised" in first.stdout
    assert 0 == second.exit_code
    for path in ("tenants", "state/work", "state/archive", "state/quarantine"):
        assert (site.root / path).is_dir(), path
    assert key_bytes == key.read_bytes()
    assert 0o600 == stat.S_IMODE(key.stat().st_mode)
    assert site.inbox("acme").is_dir()
    assert ["acme"] == [t["name"] for t in json.loads(site.cli("tenants", "list", "--json").stdout)]
    with engine_of(site) as engine:
        assert db.head_revision() == db.current_revision(engine)


def test_db_upgrade_reports_the_head_revision(site: Site) -> None:
    """SPEC 7: `db upgrade` applies migrations and says which revision the database is at."""
    done = site.cli("db", "upgrade")
    again = site.cli("db", "upgrade")

    assert f"database at revision {db.head_revision()}\n" == done.stdout
    assert done.stdout == again.stdout


def test_config_from_environment_variable(site: Site) -> None:
    """SPEC 7: without --config the file named by PERSONSD_CONFIG is used."""
    site.cli("tenants", "add", "acme")

    done = site.cli(
        "tenants", "list", "--json", config=False, env={"PERSONSD_CONFIG": str(site.config)}
    )

    assert ["acme"] == [t["name"] for t in json.loads(done.stdout)]


def test_database_url_environment_overrides_config(site: Site, tmp_path: Path) -> None:
    """SPEC 8: PERSONSD_DATABASE_URL overrides database.url."""
    site.cli("tenants", "add", "acme")
    other_home = tmp_path / "other"
    other_home.mkdir()
    other = Site(
        home=other_home,
        db_url=site.db_url,
        config=write_config(other_home, f"sqlite:///{other_home / 'other.db'}"),
    )

    overridden = other.cli("tenants", "list", "--json", env={"PERSONSD_DATABASE_URL": site.db_url})
    plain = other.cli("tenants", "list", "--json")

    assert ["acme"] == [t["name"] for t in json.loads(overridden.stdout)]
    assert [] == json.loads(plain.stdout)


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ("[import]\nchunk_size = 10\n", "chunk_size"),
        ("[imports]\nworkers = 2\n", "imports"),
        ("[import]\nworkers = 0\n", "workers"),
        ('[import]\ncarrier_lookup = "psychic"\n', "carrier_lookup"),
        ('[log]\nformat = "xml"\n', "format"),
    ],
    ids=["unknown-key", "unknown-section", "bad-workers", "bad-carrier", "bad-log-format"],
)
def test_bad_configuration_is_refused_naming_the_key(tmp_path: Path, toml: str, named: str) -> None:
    """SPEC 8: unknown keys and bad values are refused at start, the message naming them."""
    config = tmp_path / "bad.toml"
    config.write_text(f'[paths]\nroot = "var"\n{toml}')
    site = Site(home=tmp_path, config=config, db_url="")

    done = site.cli("tenants", "list", expect=1)

    assert named in done.stderr
    assert "Traceback" not in done.output
    assert not (tmp_path / "var").exists()


def test_bad_configuration_through_the_console_script(tmp_path: Path) -> None:
    """SPEC 7/8: the real process exits 1 with a one-line message naming the unknown key."""
    config = tmp_path / "bad.toml"
    config.write_text('[paths]\nroot = "var"\n[import]\nchunk_size = 10\n')
    site = Site(home=tmp_path, config=config, db_url="")

    done = site.subprocess("init")

    assert 1 == done.returncode
    stderr = done.stderr.decode()
    assert "chunk_size" in stderr
    assert "Traceback" not in stderr
    assert b"" == done.stdout


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    """SPEC 8: relative paths (root, a SQLite URL) resolve next to the config, not the cwd."""
    home = tmp_path / "etc"
    home.mkdir()
    site = Site(home=home, config=write_config(home, "sqlite:///data/persons.db"), db_url="")

    site.cli("init")
    site.cli("tenants", "add", "acme")

    assert (home / "data" / "persons.db").is_file()
    assert (home / "var" / "tenants" / "acme" / "inbox").is_dir()


def test_unreachable_database_is_a_clean_error(tmp_path: Path) -> None:
    """SPEC 7: a database that cannot be reached stops a command with exit 1 and a message."""
    url = "postgresql+psycopg://personsd@127.0.0.1:1/nowhere?connect_timeout=2"
    site = Site(home=tmp_path, config=write_config(tmp_path, url), db_url=url)

    done = site.cli("tenants", "list", expect=None, catch=True)

    assert_clean_exit(done, 1)


def test_missing_config_file_exits_1(tmp_path: Path) -> None:
    """SPEC 7: a config file that does not exist is an error (exit 1), not the defaults."""
    site = Site(home=tmp_path, config=tmp_path / "nope.toml", db_url="")

    done = site.cli("tenants", "list", expect=1)

    assert "nope.toml" in done.stderr


# -- tenants ----------------------------------------------------------------------------------


def test_tenants_add_with_keys_and_password(site: Site, tmp_path: Path) -> None:
    """SPEC 7: `tenants add` stores every --ssh-key and a hashed --password-stdin; makes dirs."""
    keys = [ssh_public_key(tmp_path, "k1"), ssh_public_key(tmp_path, "k2")]

    done = site.cli(
        "tenants",
        "add",
        "acme",
        "--ssh-key",
        str(keys[0]),
        "--ssh-key",
        str(keys[1]),
        "--password-stdin",
        input="s3cret pass\n",
    )

    assert "acme" in done.stdout
    assert "s3cret" not in done.output
    assert site.inbox("acme").is_dir()
    assert site.outbox("acme").is_dir()
    assert [
        {
            "name": "acme",
            "keys": 2,
            "password": True,
            "expect_every_seconds": None,
            "notify_url": None,
        }
    ] == json.loads(site.cli("tenants", "list", "--json").stdout)
    with engine_of(site) as engine, engine.connect() as conn:
        stored = store_tenants.get_tenant(conn, "acme")
    assert stored is not None
    assert [tuple(k.read_text().split()[:2]) for k in keys] == list(stored.keys)
    assert stored.password_hash is not None
    assert "s3cret" not in stored.password_hash
    assert verify_password("s3cret pass", stored.password_hash)


def test_tenants_add_existing_name_exits_1(site: Site) -> None:
    """SPEC 7: adding a tenant whose name exists exits 1 and changes nothing."""
    site.cli("tenants", "add", "acme")

    done = site.cli("tenants", "add", "acme", expect=1)

    assert "already exists" in done.stderr
    assert 1 == len(json.loads(site.cli("tenants", "list", "--json").stdout))


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["Acme"], None, "invalid tenant name"),
        (["acme", "--ssh-key", "/nonexistent/key.pub"], None, "cannot read SSH key"),
        (["acme", "--password-stdin"], "\n", "empty password"),
    ],
    ids=["bad-name", "missing-key-file", "empty-password"],
)
def test_tenants_add_refuses_bad_input(
    site: Site, args: list[str], stdin: str | None, message: str
) -> None:
    """SPEC 7: a bad tenant name, key file or empty password exits 1 and creates nothing."""
    done = site.cli("tenants", "add", *args, input=stdin, expect=1)

    assert message in done.stderr
    assert [] == json.loads(site.cli("tenants", "list", "--json").stdout)


def test_tenants_add_refuses_a_file_that_is_not_a_public_key(site: Site, tmp_path: Path) -> None:
    """SPEC 6/7: a key file holding no OpenSSH public key is refused (exit 1)."""
    junk = tmp_path / "junk.pub"
    junk.write_text("ssh-ed25519 not*base64 me@host\n")

    done = site.cli("tenants", "add", "acme", "--ssh-key", str(junk), expect=1)

    assert "base64" in done.stderr
    assert [] == json.loads(site.cli("tenants", "list", "--json").stdout)


def test_tenants_add_refuses_a_private_key_without_echoing_it(site: Site, tmp_path: Path) -> None:
    """SPEC 6/7: a private key given as --ssh-key is refused (exit 1) and never printed."""
    ssh_public_key(tmp_path, "mine")
    private = tmp_path / "mine"
    secret_lines = private.read_text().splitlines()[1:-1]

    done = site.cli("tenants", "add", "acme", "--ssh-key", str(private), expect=1)

    assert all(line not in done.output for line in secret_lines)
    assert [] == json.loads(site.cli("tenants", "list", "--json").stdout)


def test_tenants_list_text_and_json(site: Site, tmp_path: Path) -> None:
    """SPEC 7: `tenants list` prints one tenant a line; --json the same as a JSON array."""
    site.cli("tenants", "add", "beta", "--ssh-key", str(ssh_public_key(tmp_path, "k")))
    site.cli("tenants", "add", "acme")

    text = site.cli("tenants", "list").stdout
    listed = json.loads(site.cli("tenants", "list", "--json").stdout)

    assert ["acme", "beta"] == sorted(t["name"] for t in listed)
    assert {"acme": (0, False), "beta": (1, False)} == {
        t["name"]: (t["keys"], t["password"]) for t in listed
    }
    assert ["acme", "beta"] == sorted(line.split("\t")[0] for line in text.splitlines())


def test_tenants_remove(site: Site) -> None:
    """SPEC 7: `tenants remove` drops the tenant; its files are kept aside; unknown exits 1."""
    site.add_tenant("acme", [("nick", "string")])
    site.add_tenant("beta")
    site.import_bytes("a.persons", "external_person_id,nick\ne1,x\n")

    site.cli("tenants", "remove", "acme")

    assert ["beta"] == [t["name"] for t in json.loads(site.cli("tenants", "list", "--json").stdout)]
    assert not (site.root / "tenants" / "acme").exists()
    kept = list((site.root / "state" / "removed").glob("acme*/outbox/a.persons.*.summary.json"))
    assert 1 == len(kept)
    assert "unknown tenant" in site.cli("persons", "export", "--tenant", "acme", expect=1).stderr
    assert "unknown tenant" in site.cli("tenants", "remove", "acme", expect=1).stderr
    site.cli("tenants", "add", "acme")
    assert "" == site.export_text("acme").split("\n", 1)[1]


# -- fields -----------------------------------------------------------------------------------


def test_fields_add_list_remove(shared: Site, tenant: str) -> None:
    """SPEC 7: `fields add|list|remove` with types, options, charset and max length."""
    site = shared
    site.cli(
        "fields",
        "add",
        "--tenant",
        tenant,
        "sport",
        "--type",
        "multi_select",
        "--options",
        "football, hockey",
    )
    site.cli(
        "fields",
        "add",
        "--tenant",
        tenant,
        "code",
        "--type",
        "string",
        "--charset",
        "gsm7",
        "--max-length",
        "10",
    )
    site.cli("fields", "add", "--tenant", tenant, "amount", "--type", "number")

    listed = json.loads(site.cli("fields", "list", "--tenant", tenant, "--json").stdout)
    text = site.cli("fields", "list", "--tenant", tenant).stdout

    assert [
        {
            "name": "amount",
            "type": "number",
            "options": [],
            "charset": "unicode",
            "max_length": 255,
        },
        {"name": "code", "type": "string", "options": [], "charset": "gsm7", "max_length": 10},
        {
            "name": "sport",
            "type": "multi_select",
            "options": ["football", "hockey"],
            "charset": "unicode",
            "max_length": 255,
        },
    ] == listed
    assert ["amount", "code", "sport"] == [line.split("\t")[0] for line in text.splitlines()]

    site.cli("fields", "remove", "--tenant", tenant, "code")
    assert ["amount", "sport"] == [
        f["name"]
        for f in json.loads(site.cli("fields", "list", "--tenant", tenant, "--json").stdout)
    ]
    assert "no field" in site.cli("fields", "remove", "--tenant", tenant, "code", expect=1).stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["x", "--type", "text"], 2, "text"),
        (["First", "--type", "string"], 1, "invalid field name"),
        (["mdn", "--type", "string"], 1, "built-in"),
        (["a" * 65, "--type", "string"], 1, "invalid field name"),
        (["color", "--type", "single_select"], 1, "option"),
        (["color", "--type", "single_select", "--options", "red,bad key"], 1, "option key"),
        (["n", "--type", "number", "--max-length", "5"], 1, "max_length"),
        (["s", "--type", "string", "--charset", "ebcdic"], 2, "ebcdic"),
    ],
    ids=[
        "bad-type",
        "upper-case-name",
        "builtin-name",
        "long-name",
        "select-no-options",
        "bad-option-key",
        "max-length-on-number",
        "bad-charset",
    ],
)
def test_fields_add_refuses_bad_definitions(
    shared: Site, tenant: str, args: list[str], code: int, message: str
) -> None:
    """SPEC 1.5/7: a bad type is a usage error (2); a bad name or option exits 1 with a message."""
    done = shared.cli("fields", "add", "--tenant", tenant, *args, expect=code)

    assert message in done.stderr
    assert [] == json.loads(shared.cli("fields", "list", "--tenant", tenant, "--json").stdout)


def test_fields_add_duplicate_and_unknown_tenant_exit_1(shared: Site, tenant: str) -> None:
    """SPEC 7: a field name defined twice, or a tenant that does not exist, exits 1."""
    shared.cli("fields", "add", "--tenant", tenant, "nick", "--type", "string")

    duplicate = shared.cli(
        "fields", "add", "--tenant", tenant, "nick", "--type", "number", expect=1
    )
    unknown = shared.cli(
        "fields", "add", "--tenant", "nosuch", "nick", "--type", "string", expect=1
    )

    assert "already exists" in duplicate.stderr
    assert "unknown tenant" in unknown.stderr
    assert [("nick", "string")] == [
        (f["name"], f["type"])
        for f in json.loads(shared.cli("fields", "list", "--tenant", tenant, "--json").stdout)
    ]


# -- persons export / show --------------------------------------------------------------------

# One custom field of each type (`fields add` type and options, by name), added out of
# the name order the export sorts them into.
EXPORT_FIELDS = {
    "zip": ["postal_code"],
    "amount": ["number"],
    "born": ["date"],
    "tags": ["multi_select", "--options", "a,b,c"],
    "color": ["single_select", "--options", "red,blue"],
    "nick": ["string"],
}
EXPORT_SOURCE = (
    "external_person_id,mdn,vibes_device_id,zip,amount,born,tags,color,nick\n"
    'e1,(229) 555-1234,d1,k1a0b1,007.50,2020-01-02T03:04:05+0200,a|b|a,red,"x, y"\n'
    "e2,2295551235,,12345-6789,100.00,2020-01-02,c,,plain\n"
    "e3,,d3,K1A 0B1,-0.0,2021-06-30T23:59:59-05:30,,blue,\n"
)


def export_tenant(site: Site, tenant: str) -> None:
    for name, (type_, *rest) in EXPORT_FIELDS.items():
        site.cli("fields", "add", "--tenant", tenant, name, "--type", type_, *rest)
    done = site.import_bytes("src.persons", EXPORT_SOURCE, tenant)
    assert [] == done.errors


def test_persons_export_values_as_stored(shared: Site, tenant: str) -> None:
    """SPEC 1.5/7: export header (built-ins, then custom by name), rows by id, canonical values."""
    export_tenant(shared, tenant)

    text = shared.export_text(tenant)

    lines = text.split("\n")
    assert (
        ",".join([*EXPORT_COLUMNS, "amount", "born", "color", "nick", "tags", "zip"]) == (lines[0])
    )
    rows = list(csv.reader(io.StringIO(text, newline="")))[1:]
    ids = [int(r[0]) for r in rows]
    assert sorted(ids) == ids
    assert 3 == len(set(ids))
    assert all(len(r[1]) == 36 and r[1] == r[1].lower() for r in rows)
    assert [
        [
            "e1",
            "+12295551234",
            "d1",
            "7.5",
            "2020-01-02T01:04:05Z",
            "red",
            "x, y",
            "a|b",
            "K1A 0B1",
        ],
        ["e2", "+12295551235", "", "100", "2020-01-02T00:00:00Z", "", "plain", "c", "12345-6789"],
        ["e3", "", "d3", "0", "2021-07-01T05:29:59Z", "blue", "", "", "K1A 0B1"],
    ] == [r[2:] for r in rows]


def test_persons_export_to_file_round_trips(shared: Site, tenant: str, tmp_path: Path) -> None:
    """SPEC 7: --output writes the same .persons file; importing it again changes nothing."""
    export_tenant(shared, tenant)
    target = tmp_path / "all.persons"

    written = shared.cli("persons", "export", "--tenant", tenant, "--output", str(target))
    again = shared.import_file(target, tenant)

    assert "" == written.stdout
    assert shared.export_text(tenant) == target.read_text(encoding="utf-8")
    assert {"total": 3, "succeeded": 3, "failed": 0, "created": 0, "updated": 3} == (
        again.summary["rows"]
    )
    assert target.read_text(encoding="utf-8") == shared.export_text(tenant)


@pytest.mark.parametrize(
    "target", ["missing-dir/all.persons", "."], ids=["missing-directory", "a-directory"]
)
def test_persons_export_to_unwritable_output_exits_1(
    shared: Site, tenant: str, tmp_path: Path, target: str
) -> None:
    """SPEC 7: an --output that cannot be written is an error (exit 1, message), no traceback."""
    done = shared.cli(
        "persons",
        "export",
        "--tenant",
        tenant,
        "--output",
        str(tmp_path / target),
        expect=None,
        catch=True,
    )

    assert_clean_exit(done, 1)


def test_persons_show_by_each_selector(shared: Site, tenant: str) -> None:
    """SPEC 7: `persons show` finds one person by id, key, external id or MDN (any format)."""
    export_tenant(shared, tenant)
    e1 = shared.by_external_id(tenant)["e1"]
    expected = {
        "person_id": int(e1["person_id"]),
        "person_key": e1["person_key"],
        "external_person_id": "e1",
        "mdn": "+12295551234",
        "vibes_device_id": "d1",
        "fields": {
            "amount": "7.5",
            "born": "2020-01-02T01:04:05Z",
            "color": "red",
            "nick": "x, y",
            "tags": "a|b",
            "zip": "K1A 0B1",
        },
    }

    for selector in (
        ["--person-id", e1["person_id"]],
        ["--person-key", e1["person_key"]],
        ["--external-person-id", "e1"],
        ["--mdn", "+12295551234"],
        ["--mdn", "229-555-1234"],
    ):
        done = shared.cli("persons", "show", "--tenant", tenant, *selector)
        assert expected == json.loads(done.stdout), selector


@pytest.mark.parametrize(
    ("selector", "code"),
    [
        (["--person-id", "999999"], 1),
        (["--person-key", "00000000-0000-0000-0000-000000000000"], 1),
        (["--external-person-id", "nobody"], 1),
        (["--mdn", "+12295559999"], 1),
        ([], 2),
        (["--person-id", "1", "--external-person-id", "e1"], 2),
    ],
    ids=["id", "key", "external-id", "mdn", "no-selector", "two-selectors"],
)
def test_persons_show_not_found_or_misused(
    shared: Site, tenant: str, selector: list[str], code: int
) -> None:
    """SPEC 7: no such person exits 1; no selector or two selectors is a usage error (2)."""
    export_tenant(shared, tenant)

    done = shared.cli("persons", "show", "--tenant", tenant, *selector, expect=code)

    assert "" == done.stdout


# -- import -----------------------------------------------------------------------------------


def test_import_exit_codes(shared: Site, tenant: str) -> None:
    """SPEC 7: import exits 0 even with failed rows, 3 when rejected, 1 missing file/tenant."""
    site = shared
    with_errors = site.import_bytes("e.persons", "external_person_id,mdn\ne1,12\ne2,\n", tenant)
    rejected = site.import_bytes("r.persons", "nick\nx\n", tenant, expect=3)
    missing = site.cli("import", str(site.home / "nope.persons"), "--tenant", tenant, expect=1)
    source = site.write("ok.persons", "external_person_id\ne3\n")
    unknown = site.cli("import", str(source), "--tenant", "nosuch", expect=1)

    assert (0, "completed", 1) == (
        with_errors.exit_code,
        with_errors.summary["status"],
        with_errors.summary["rows"]["failed"],
    )
    assert "rejected" == rejected.summary["status"]
    assert "nope.persons" in missing.stderr
    assert "" == missing.stdout
    assert "nosuch" in unknown.stderr
    assert "" == unknown.stdout
    assert ["e2"] == list(site.by_external_id(tenant))


@pytest.mark.parametrize(
    "args",
    [
        ["import", "x.persons"],
        ["import", "--tenant", "acme"],
        ["import", "a", "b", "--tenant", "acme"],
        ["frobnicate"],
    ],
    ids=["no-tenant", "no-file", "two-files", "unknown-command"],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    """SPEC 7: a malformed command line exits 2."""
    site = Site(
        home=tmp_path, config=write_config(tmp_path, f"sqlite:///{tmp_path}/p.db"), db_url=""
    )

    site.cli(*args, expect=2)


def test_rejected_import_through_the_console_script(site: Site) -> None:
    """SPEC 7: the real `personsd import` exits 3 for a rejected file, summary on stdout."""
    site.cli("tenants", "add", "acme")
    source = site.write("notes.txt", "external_person_id\ne1\n")

    done = site.subprocess("import", str(source), "--tenant", "acme")

    assert 3 == done.returncode, done.stderr.decode()
    summary = json.loads(done.stdout)
    assert {
        "class": "PersonErrors::InvalidImportFileFormat",
        "message": "File name must end with .persons",
    } == summary["file_error"]
    assert (site.outbox("acme") / f"notes.txt.{summary['import_id']}.errors.csv").is_file()


def test_duplicate_file_names_the_earlier_import(shared: Site, tenant: str) -> None:
    """SPEC 5: the same content imported again is imported, its summary `duplicate_of` the first."""
    shared.cli("fields", "add", "--tenant", tenant, "nick", "--type", "string")
    content = "external_person_id,nick\ne1,x\n"
    first = shared.import_bytes("a.persons", content, tenant)
    shared.cli("persons", "export", "--tenant", tenant)
    second = shared.import_bytes("b.persons", content, tenant)

    assert None is first.summary["duplicate_of"]
    assert first.summary["import_id"] == second.summary["duplicate_of"]
    assert first.summary["sha256"] == second.summary["sha256"]
    assert {"total": 1, "succeeded": 1, "failed": 0, "created": 0, "updated": 1} == (
        second.summary["rows"]
    )


# -- imports list / retry ---------------------------------------------------------------------


def test_imports_list(site: Site) -> None:
    """SPEC 7: `imports list [--tenant] [--json]` shows every import with status and counts."""
    site.add_tenant("acme")
    site.add_tenant("beta")
    ok = site.import_bytes("a.persons", "external_person_id,mdn\ne1,\ne2,12\n", "acme")
    bad = site.import_bytes("b.persons", "", "beta", expect=3)

    everything = json.loads(site.cli("imports", "list", "--json").stdout)
    only_beta = json.loads(site.cli("imports", "list", "--tenant", "beta", "--json").stdout)
    text = site.cli("imports", "list").stdout

    assert [
        (
            ok.summary["import_id"],
            "acme",
            "a.persons",
            "completed",
            {"total": 2, "succeeded": 1, "failed": 1, "created": 1, "updated": 0},
        ),
        (
            bad.summary["import_id"],
            "beta",
            "b.persons",
            "rejected",
            {"total": 0, "succeeded": 0, "failed": 0, "created": 0, "updated": 0},
        ),
    ] == [(i["import_id"], i["tenant"], i["file"], i["status"], i["rows"]) for i in everything]
    assert [bad.summary["import_id"]] == [i["import_id"] for i in only_beta]
    assert 2 == len(text.splitlines())
    assert "completed" in text.splitlines()[0]
    assert "unknown tenant" in site.cli("imports", "list", "--tenant", "nosuch", expect=1).stderr


def failed_import(
    site: Site, name: str, text: str, error: str
) -> tuple[config_mod.Config, Path, int]:
    """An import of ``name`` for acme, failed with ``error`` as after its last attempt."""
    source = site.write(name, text)
    cfg = config_mod.load(site.config, env={})
    with engine_of(site) as engine:
        import_id = importer.create(
            engine, tenant="acme", path=source, source="cli", claimed_by="cli:test"
        )
        importer.fail(engine, cfg, import_id, error)
    return cfg, source, import_id


def test_imports_retry_queues_a_failed_import_only(site: Site) -> None:
    """SPEC 5/7: `imports retry ID` queues a failed import again; any other status exits 1."""
    site.cli("tenants", "add", "acme")
    done = site.import_bytes("done.persons", "external_person_id\ne1\n")
    _, _, failed_id = failed_import(
        site, "poison.persons", "external_person_id\ne2\n", "RuntimeError('boom')"
    )
    summary = json.loads(
        (site.outbox("acme") / f"poison.persons.{failed_id}.summary.json").read_text()
    )

    retried = site.cli("imports", "retry", str(failed_id))

    assert "failed" == summary["status"]
    assert f"import {failed_id} queued again\n" == retried.stdout
    statuses = {
        i["import_id"]: (i["status"], i["attempts"])
        for i in json.loads(site.cli("imports", "list", "--json").stdout)
    }
    assert ("queued", 0) == statuses[failed_id]
    assert "completed" == statuses[done.summary["import_id"]][0]
    assert "not failed" in site.cli("imports", "retry", str(failed_id), expect=1).stderr
    assert (
        "not failed"
        in site.cli("imports", "retry", str(done.summary["import_id"]), expect=1).stderr
    )
    assert "does not exist" in site.cli("imports", "retry", "424242", expect=1).stderr


@pytest.mark.parametrize(
    "import_id", ["424242", str(2**63), str(10**30)], ids=["unknown", "past-bigint", "huge"]
)
def test_imports_retry_of_unknown_id_exits_1(site: Site, import_id: str) -> None:
    """SPEC 7: `imports retry` of an id that does not exist exits 1 with a message."""
    done = site.cli("imports", "retry", import_id, expect=None, catch=True)

    assert_clean_exit(done, 1)
    assert "does not exist" in done.stderr


def test_imports_retry_then_the_import_completes(site: Site) -> None:
    """SPEC 5: a retried import runs again from its checkpoint and completes."""
    site.cli("tenants", "add", "acme")
    cfg, source, import_id = failed_import(
        site, "later.persons", "external_person_id\ne1\ne2\n", "OSError('disk')"
    )
    with engine_of(site) as engine:
        site.cli("imports", "retry", str(import_id))
        outcome = importer.run(engine, cfg, import_id)

    assert "completed" == outcome.summary.status
    assert 2 == outcome.summary.rows.created
    assert ["e1", "e2"] == sorted(site.by_external_id())
    assert os.path.exists(source)
