"""``personsd db copy --to URL`` (SPEC 7, 12): everything, ids and keys kept, resumable."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, insert, select, text

from cli_helpers import CLEAN_ENV, Site, assert_clean_exit, make_site
from conftest import database_url
from personsd.errors import OperatorError
from personsd.store import copy as store_copy
from personsd.store import db
from personsd.store.models import PersonRow, TenantRow

PERSONS = 10_000
FIELDS = (
    ("nickname", "string", "--charset", "gsm7", "--max-length", "20"),
    ("note", "string"),
    ("score", "number"),
    ("birthday", "date"),
    ("tier", "single_select", "--options", "gold,silver,bronze"),
    ("sports", "multi_select", "--options", "soccer,golf,hockey"),
    ("zip", "postal_code"),
    ("gone", "string"),  # removed after the imports: its id must never come back
)
COLUMNS = "external_person_id,mdn,vibes_device_id,nickname,note,score,birthday,tier,sports,zip"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl a@b"


def persons_file(count: int, start: int = 0) -> str:
    """``count`` persons using every field type, and one failing row per hundred."""
    lines = [COLUMNS]
    tiers = ("gold", "silver", "bronze", "")
    for i in range(start, start + count):
        mdn = f"+1229555{i % 10_000:04d}" if i % 3 == 0 else ""
        device = f"dev-{i}" if i % 5 == 0 else ""
        score = "oops" if i % 100 == 99 else f"{i % 1000}.{i % 7}"
        sports = ("soccer|golf", "hockey", "golf|soccer|hockey", "")[i % 4]
        lines.append(
            f'e{i},{mdn},{device},nick{i % 50},"Zoë, ✓ 東京 {i}",{score},'
            f"1990-01-{1 + i % 28:02d}T10:00:00+02:00,{tiers[i % 4]},{sports},"
            f"{('12345', 'K1A 0B1', '12345-6789')[i % 3]}"
        )
    return "\n".join(lines) + "\n"


def outputs(site: Site) -> dict[str, str]:
    """What the operator sees: tenants, fields, imports and every person, in every form."""
    seen = {
        "tenants": site.cli("tenants", "list").stdout,
        "tenants_json": site.cli("tenants", "list", "--json").stdout,
        "imports": site.cli("imports", "list").stdout,
        "imports_json": site.cli("imports", "list", "--json").stdout,
    }
    for tenant in ("acme", "beta"):
        seen[f"fields_{tenant}"] = site.cli("fields", "list", "--tenant", tenant).stdout
        seen[f"fields_json_{tenant}"] = site.cli(
            "fields", "list", "--tenant", tenant, "--json"
        ).stdout
        seen[f"export_{tenant}"] = site.export_text(tenant)
    return seen


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Site:
    """A SQLite installation: two tenants (keys, password), every field type, history."""
    home = tmp_path_factory.mktemp("source")
    site = make_site(home, f"sqlite:///{home / 'persons.db'}")
    key = home / "key.pub"
    key.write_text(SSH_KEY + "\n")
    site.cli("tenants", "add", "acme", "--ssh-key", str(key), "--password-stdin", input="pw\n")
    site.add_tenant("beta", [("color", "single_select", "--options", "red,blue")])
    for name, type_, *rest in FIELDS:
        site.cli("fields", "add", "--tenant", "acme", name, "--type", type_, *rest)
    site.import_bytes("big.persons", persons_file(PERSONS))
    site.import_bytes("again.persons", persons_file(300, start=PERSONS - 100))
    site.import_bytes("bad.persons", "Delimeter: ;\n\nexternal_person_id\n", expect=3)
    site.import_bytes("b.persons", "external_person_id,color\nb1,red\nb2,blue\n", tenant="beta")
    site.cli("fields", "remove", "--tenant", "acme", "gone")
    return site


def target_site(source: Site, home: Path, url: str) -> Site:
    """An installation of its own on the target database (init makes the tenants' boxes)."""
    return make_site(home, url)


def copy(source: Site, url: str, *extra: str, expect: int = 0) -> str:
    result = source.cli("db", "copy", "--to", url, *extra, expect=expect)
    return result.stdout if expect == 0 else result.stderr


@pytest.fixture(scope="module")
def source_outputs(source: Site) -> dict[str, str]:
    return outputs(source)


def test_sqlite_copied_to_postgresql_shows_the_same_everywhere(
    source: Site, source_outputs: dict[str, str], pg_url: str, tmp_path: Path
) -> None:
    """After db copy, persons export, tenants, fields and imports list are identical."""
    said = copy(source, pg_url)
    assert said.startswith("copied ")
    assert "password" not in said
    target = target_site(source, tmp_path / "pg", pg_url)
    assert source_outputs == outputs(target)
    assert PERSONS * 0.99 < len(source_outputs["export_acme"].splitlines())


def test_later_imports_and_fields_on_the_copy_get_higher_ids(
    source: Site, pg_url: str, tmp_path: Path
) -> None:
    """Sequences are past the copied ids, and past ids deleted at the top (a removed field)."""
    copy(source, pg_url)
    target = target_site(source, tmp_path / "pg", pg_url)
    engine = db.connect(source.db_url)
    with engine.connect() as conn:
        top_person = conn.execute(select(func.max(PersonRow.person_id))).scalar_one()
        top_field = conn.exec_driver_sql(
            "SELECT seq FROM sqlite_sequence WHERE name = 'custom_fields'"
        ).scalar_one()
        top_import = conn.exec_driver_sql("SELECT max(id) FROM imports").scalar_one()
    engine.dispose()
    imported = target.import_bytes("later.persons", "external_person_id,nickname\nnew1,x\n")
    assert top_import + 1 == imported.summary["import_id"]
    new = next(p for p in target.export("acme") if p["external_person_id"] == "new1")
    assert top_person < int(new["person_id"])
    target.cli("fields", "add", "--tenant", "acme", "later", "--type", "string")
    with db.connect(pg_url).connect() as conn:
        later = conn.exec_driver_sql("SELECT id FROM custom_fields WHERE name = 'later'").scalar()
    assert top_field + 1 == later


def test_a_non_empty_target_is_refused(source: Site, pg_url: str, tmp_path: Path) -> None:
    """A target holding data is refused (exit 1, says what it holds) and left as it was."""
    other = make_site(tmp_path / "other", pg_url)
    other.cli("tenants", "add", "somebody")
    result = source.cli("db", "copy", "--to", pg_url, expect=1)
    assert_clean_exit(result, 1)
    assert "not empty (tenants: 1 rows)" in result.stderr
    assert (
        "somebody\tkeys=0\tpassword=no\texpect=-\tnotify=-\n" == other.cli("tenants", "list").stdout
    )


def test_a_finished_copy_is_not_copied_again(source: Site, pg_url: str) -> None:
    """Running the same copy twice: the second refuses, naming the finished copy."""
    copy(source, pg_url)
    said = copy(source, pg_url, expect=1)
    assert "already holds a finished copy of sqlite:///" in said


def test_copying_the_database_onto_itself_is_refused(source: Site) -> None:
    """--to the configured database itself: refused before anything is written."""
    said = copy(source, source.db_url, expect=1)
    assert "personsd: the target is the configured database itself\n" == said


def test_an_interrupted_copy_resumes_to_the_same_result(
    source: Site, source_outputs: dict[str, str], pg_url: str, tmp_path: Path
) -> None:
    """kill -9 in the middle of the persons table; running it again finishes the same copy."""
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    argv = ["--config", str(source.config), "db", "copy", "--to", pg_url, "--batch-rows", "100"]
    child = subprocess.Popen(
        [sys.executable, "-m", "personsd", *argv],
        env=env,
        cwd=source.home,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    engine = db.connect(pg_url)
    try:
        deadline = time.monotonic() + 60
        copied = 0
        while time.monotonic() < deadline and child.poll() is None:
            try:
                with engine.connect() as conn:
                    copied = conn.execute(select(func.count()).select_from(PersonRow)).scalar_one()
            except Exception:  # noqa: BLE001 -- the schema is not there yet
                copied = 0
            if 0 < copied < PERSONS:
                child.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        child.wait(timeout=30)
        assert -signal.SIGKILL == child.returncode, child.stderr.read() if child.stderr else ""
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stderr:
            child.stderr.close()
        engine.dispose()
    assert 0 < copied < PERSONS
    said = copy(source, pg_url)
    assert said.startswith("resumed: copied ")
    assert source_outputs == outputs(target_site(source, tmp_path / "pg", pg_url))


def test_postgresql_copied_to_postgresql(
    source: Site, source_outputs: dict[str, str], pg_url: str, tmp_path: Path
) -> None:
    """PostgreSQL → PostgreSQL: the copy of a copy shows the same; its ids go on past them."""
    first = target_site(source, tmp_path / "pg1", pg_url)
    copy(source, pg_url)
    with database_url("postgresql", tmp_path) as second_url:
        said = first.cli("db", "copy", "--to", second_url).stdout
        assert said.startswith("copied ")
        second = target_site(source, tmp_path / "pg2", second_url)
        assert source_outputs == outputs(second)
        one = first.import_bytes("x.persons", "external_person_id\nx1\n").summary["import_id"]
        two = second.import_bytes("x.persons", "external_person_id\nx1\n").summary["import_id"]
        assert one == two


# -- the module, on both databases as targets -------------------------------------------------


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Engine]:
    """A small SQLite source: one tenant, persons 1..3, person 3 deleted (its id is spent)."""
    site = make_site(tmp_path / "small", f"sqlite:///{tmp_path / 'small.db'}")
    site.add_tenant("acme")
    site.import_bytes("a.persons", "external_person_id\na\nb\nc\n")
    engine = db.connect(site.db_url)
    with db.write_tx(engine) as conn:
        conn.execute(text("DELETE FROM persons WHERE external_person_id = 'c'"))
    yield engine
    engine.dispose()


def test_id_counters_continue_past_the_source_on_either_target(small: Engine, db_url: str) -> None:
    """On SQLite and PostgreSQL targets, the next person id is past the deleted one."""
    target = db.connect(db_url)
    try:
        report = store_copy.copy_database(small, target, batch_rows=1)
        assert ("persons", 2) in report.tables
        assert (False, report.rows) == (report.resumed, report.copied)
        from personsd.store import persons as store_persons

        with db.write_tx(target) as conn:
            assert [4] == store_persons.allocate_ids(conn, 1)
    finally:
        target.dispose()


def test_a_source_changing_during_the_copy_is_reported(small: Engine, db_url: str) -> None:
    """A tenant added to the source after its table was copied: the counts differ, refused."""
    target = db.connect(db_url)
    added: list[str] = []

    def meanwhile(table: str, rows: int) -> None:
        if table == "persons" and not added:
            added.append(table)
            with db.write_tx(small) as conn:
                conn.execute(insert(TenantRow).values(name="late", created_at=func.now()))

    try:
        with pytest.raises(OperatorError, match=r"source changed during the copy \(tenants: 2"):
            store_copy.copy_database(small, target, on_rows=meanwhile)
    finally:
        target.dispose()


def test_a_progress_bar_on_a_terminal(source: Site, pg_url: str) -> None:
    """On a terminal, db copy draws a bar naming the table and rows done of the total."""
    from test_cli_terminal import run_on_terminal

    argv = ["--config", str(source.config), "db", "copy", "--to", pg_url, "--batch-rows", "500"]
    code, stdout, terminal = run_on_terminal(
        [sys.executable, "-m", "personsd", *argv], cwd=source.home
    )
    assert 0 == code, terminal
    assert stdout.startswith("copied ")
    assert "copying persons" in terminal
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal)
    done = {int(n): int(total) for n, total in re.findall(r"(\d+)/(\d+) rows", plain)}
    assert 1 < len(done), plain[-600:]  # redrawn as it goes
    assert {max(done.values())} == set(done.values())  # one total, the source's rows


def test_the_same_sqlite_file_by_another_path_is_refused(source: Site) -> None:
    """--to the configured SQLite file spelled differently is still the database itself."""
    path = Path(source.db_url.removeprefix("sqlite:///"))
    other = f"sqlite:///{path.parent / '.' / '..' / path.parent.name / path.name}"
    said = copy(source, other, expect=1)
    assert "personsd: the target is the configured database itself\n" == said


def test_a_second_copy_into_the_same_schema_is_refused(small: Engine, pg_url: str) -> None:
    """One copy at a time into one target schema; copies into other schemas go on."""
    from sqlalchemy import text as sql

    target = db.connect(pg_url)
    other = db.connect(pg_url)
    try:
        with other.connect() as held:  # another copy into the same schema, running
            held.execute(sql(f"SELECT pg_advisory_lock({store_copy._LOCK_ARGS})"))
            held.commit()
            with pytest.raises(OperatorError, match="another db copy into the target"):
                store_copy.copy_database(small, target)
            held.execute(sql(f"SELECT pg_advisory_unlock({store_copy._LOCK_ARGS})"))
            held.commit()
        assert store_copy.copy_database(small, target).copied > 0
    finally:
        target.dispose()
        other.dispose()
