"""`personsd tenants set` and `personsd status` (SPEC 7 and 10); durations."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cli_helpers import Site, make_site
from personsd import durations, status
from personsd.errors import OperatorError


@pytest.fixture
def site(tmp_path: Path, db_url: str) -> Site:
    return make_site(tmp_path / "site", db_url)


def listed(site: Site) -> dict[str, dict[str, object]]:
    return {t["name"]: t for t in json.loads(site.cli("tenants", "list", "--json").output)}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("24h", 86400), ("90m", 5400), ("7d", 604800), ("45s", 45), ("2w", 1209600)],
)
def test_durations_parse_operator_forms(text: str, seconds: int) -> None:
    """DURATION like 24h, 90m, 7d (SPEC 7)."""
    assert seconds == durations.parse(text)


@pytest.mark.parametrize("text", ["", "24", "h", "0h", "1.5h", "-1h", "24 hours", "1y"])
def test_durations_refuse_anything_else(text: str) -> None:
    """A duration is a positive whole number and one unit."""
    with pytest.raises(OperatorError):
        durations.parse(text)


@pytest.mark.parametrize(
    ("seconds", "text"), [(5, "5s"), (600, "10m"), (5400, "1h30m"), (86400, "1d"), (97200, "1d3h")]
)
def test_durations_render_short(seconds: int, text: str) -> None:
    """What status prints for an interval."""
    assert text == durations.render(seconds)


def test_tenants_set_stores_and_clears_the_cadence_and_the_url(site: Site) -> None:
    """--expect-every/--notify-url set; --no-expect/--no-notify-url clear; list shows them."""
    site.add_tenant("acme")
    site.cli(
        "tenants",
        "set",
        "acme",
        "--expect-every",
        "24h",
        "--notify-url",
        "https://u:p@h.example/x?k=v",
    )
    shown = listed(site)["acme"]
    assert 86400 == shown["expect_every_seconds"]
    assert "https://h.example/x?k=REDACTED" == shown["notify_url"]
    plain = site.cli("tenants", "list").output
    assert "expect=1d" in plain and "p@" not in plain
    site.cli("tenants", "set", "acme", "--no-expect")
    assert (None, "https://h.example/x?k=REDACTED") == (
        listed(site)["acme"]["expect_every_seconds"],
        listed(site)["acme"]["notify_url"],
    )
    site.cli("tenants", "set", "acme", "--no-notify-url")
    assert None is listed(site)["acme"]["notify_url"]


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("--expect-every", "soon"), 1),
        (("--notify-url", "ftp://x"), 1),
        (("--expect-every", "1h", "--no-expect"), 2),
        (("--notify-url", "http://x", "--no-notify-url"), 2),
        ((), 2),
    ],
)
def test_tenants_set_refuses_bad_values(site: Site, args: tuple[str, ...], code: int) -> None:
    """Bad duration or URL: exit 1; contradictory or no option: usage error, exit 2."""
    site.add_tenant("acme")
    site.cli("tenants", "set", "acme", *args, expect=code)


def test_tenants_set_on_an_unknown_tenant_exits_1(site: Site) -> None:
    """Like every tenant command, an unknown name is an error."""
    result = site.cli("tenants", "set", "ghost", "--expect-every", "1h", expect=1)
    assert "unknown tenant" in result.output


def test_status_json_shows_queue_last_finished_and_expectation(site: Site) -> None:
    """Per tenant: queued, last finished with rows and errors, time since completed, overdue."""
    site.add_tenant("acme", fields=[("nick", "string")])
    site.add_tenant("zed")
    site.cli("tenants", "set", "acme", "--expect-every", "24h")
    path = site.write("a.persons", "external_person_id,mdn\np1,+12995550005\np2,bad\n")
    site.import_file(path, "acme")
    data = json.loads(site.cli("status", "--json").output)
    assert data["database"]["up"] is True
    assert data["disk_free_bytes"] > 0
    tenants = {t["tenant"]: t for t in data["tenants"]}
    acme = tenants["acme"]
    assert 0 == acme["queued"]
    assert ("completed", 2, 1) == (
        acme["last_finished"]["status"],
        acme["last_finished"]["rows"],
        acme["last_finished"]["failed_rows"],
    )
    assert 0 <= acme["since_last_completed_seconds"] < 120
    assert (86400, False) == (acme["expect_every_seconds"], acme["overdue"])
    assert (None, None) == (tenants["zed"]["last_finished"], tenants["zed"]["last_completed_at"])


def test_status_on_a_terminal_prints_one_table(site: Site) -> None:
    """The rich table names each tenant, the database and the disk."""
    site.add_tenant("acme")
    out = site.cli("status").output
    assert "acme" in out and "database: up" in out and "disk:" in out


def test_status_with_the_database_down_says_so_and_exits_1(tmp_path: Path) -> None:
    """An unreachable database is shown, not a traceback."""
    site = make_site(
        tmp_path / "down",
        "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2",
        init=False,
    )
    result = site.cli("status", "--json", expect=1)
    data = json.loads(result.stdout)
    assert (False, []) == (data["database"]["up"], data["tenants"])


@pytest.mark.parametrize(("hours", "overdue"), [(20, False), (26, False), (27, True), (30, True)])
def test_a_tenant_is_overdue_after_1_1_times_its_interval(hours: int, overdue: bool) -> None:
    """status flags what the alert fires on: no completed import for 1.1 × the cadence."""
    now = datetime(2026, 1, 2, tzinfo=UTC)
    state = status.TenantState(
        name="acme", last_completed_at=now - timedelta(hours=hours), expect_every_seconds=86400
    )
    assert overdue == state.overdue(now)


def test_a_tenant_without_a_cadence_is_never_overdue() -> None:
    """No --expect-every, no expectation."""
    now = datetime(2026, 1, 2, tzinfo=UTC)
    state = status.TenantState(name="acme", last_completed_at=now - timedelta(days=300))
    assert not state.overdue(now)
