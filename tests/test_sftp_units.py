"""The SFTP server's pure parts: paths, throttling, passwords, host key, tenant records."""

from __future__ import annotations

import base64
import errno
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from personsd.passwords import hash_password, verify_password
from personsd.sftp import SftpLimits, TenantAuth, load_or_create_host_key
from personsd.sftp.budget import FdBudget, TenantBudget
from personsd.sftp.guard import LoginGuard
from personsd.sftp.limits import LimitLog
from personsd.sftp.paths import canonical, creatable_name, resolve, visible_name
from personsd.sftp.quota import LocalInboxQuota
from polling import Clock

# -- virtual paths --------------------------------------------------------------------------

path_parts = st.sampled_from(
    [
        "",
        ".",
        "..",
        "inbox",
        "outbox",
        "etc",
        "passwd",
        "a.persons",
        ".hidden",
        "beta",
        "/",
        "//",
        "\x00",
    ]
)


@given(st.lists(path_parts, max_size=8).map("/".join))
def test_resolve_only_yields_the_two_boxes_and_plain_names(path: str) -> None:
    """Whatever the path, it resolves to /, a box, or one plain name inside a box."""
    where = resolve(path)
    if where is None:
        return
    assert len(where) <= 2
    if where:
        assert where[0] in ("inbox", "outbox")
    if len(where) == 2:
        assert where[1] not in ("", ".", "..") and "/" not in where[1] and "\x00" not in where[1]


@given(st.lists(path_parts, max_size=8).map("/".join))
def test_canonical_is_absolute_and_normalised(path: str) -> None:
    """REALPATH answers an absolute path with no ., .. or empty parts, and is idempotent."""
    result = canonical(path)
    assert result.startswith("/")
    parts = result.split("/")[1:]
    assert [] == [p for p in parts if p in (".", "..") or (p == "" and result != "/")]
    assert result == canonical(result)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", ()),
        ("..", ()),
        ("/inbox", ("inbox",)),
        ("inbox/a.persons", ("inbox", "a.persons")),
        ("/inbox/../outbox/r.csv", ("outbox", "r.csv")),
        ("/../../etc/passwd", None),
        ("/inbox/../../beta/inbox/a", None),
        ("/inbox/sub/a", None),
        ("/inbox/a\x00b", None),
    ],
)
def test_resolve_examples(path: str, expected: tuple[str, ...] | None) -> None:
    """.. stops at the virtual root, as in a chroot; deeper paths do not exist."""
    assert expected == resolve(path)


@pytest.mark.parametrize(
    ("box", "name", "expected"),
    [
        ("inbox", "a.persons", True),
        ("inbox", ".in.a.persons", True),
        ("inbox", ".a.persons.0123456789abcdef.upload", False),
        ("inbox", "a\nb", False),
        ("inbox", "a\x7fb", False),
        ("outbox", "r.csv", True),
        ("outbox", ".r.csv.tmp", False),
    ],
)
def test_visible_names(box: str, name: str, expected: bool) -> None:
    """Inbox dot-names are the client's uploads in progress; our temps and outbox dot-names not."""
    assert expected == visible_name(box, name)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.persons", True),
        (".in.a.persons", True),
        ("a.persons.filepart", True),
        ("x" * 200, True),
        ("x" * 201, False),
        ("ü" * 100, True),
        ("ü" * 100 + "x", False),
        (".a.persons.0123456789abcdef.upload", False),
        ("a\tb", False),
    ],
)
def test_creatable_names(name: str, expected: bool) -> None:
    """SPEC 1.1: at most 200 bytes of UTF-8, no control character, never one of our temps."""
    assert expected == creatable_name(name)


# -- throttling -----------------------------------------------------------------------------


def test_failures_within_the_window_ban_then_the_ban_expires() -> None:
    """max_failed_logins failures in the window ban the address for ban_seconds."""
    clock = Clock(1000.0)
    guard = LoginGuard(
        SftpLimits(max_failed_logins=3, failed_window_seconds=60, ban_seconds=300), clock
    )
    assert [False, False, True] == [guard.record_failure("10.0.0.1") for _ in range(3)]
    assert "banned" == guard.admit("10.0.0.1")
    assert None is guard.admit("10.0.0.2")
    clock.now += 301
    assert None is guard.admit("10.0.0.1")


def test_failures_outside_the_window_do_not_add_up() -> None:
    """Failures spread wider than the window never ban."""
    clock = Clock(1000.0)
    guard = LoginGuard(SftpLimits(max_failed_logins=2, failed_window_seconds=10), clock)
    results = []
    for _ in range(5):
        results.append(guard.record_failure("10.0.0.1"))
        clock.now += 11
    assert [False] * 5 == results
    assert not guard.banned("10.0.0.1")


def test_connection_slots_per_address() -> None:
    """At most connections_per_address at once; a released slot can be taken again."""
    guard = LoginGuard(SftpLimits(connections_per_address=2))
    assert [None, None, "connections_per_address"] == [guard.admit("h") for _ in range(3)]
    guard.release("h")
    assert None is guard.admit("h")


def test_password_guesses_are_booked_before_they_are_verified() -> None:
    """Failures plus guesses in flight never pass max_failed_logins: parallel guesses wait."""
    clock = Clock(1000.0)
    guard = LoginGuard(SftpLimits(max_failed_logins=3, failed_window_seconds=60), clock)
    assert [None, None, None, "throttled"] == [guard.begin_guess("h") for _ in range(4)]
    assert False is guard.end_guess("h", failed=False)  # a right password frees its booking
    assert None is guard.begin_guess("h")
    assert [False, False, True] == [guard.end_guess("h", failed=True) for _ in range(3)]
    assert "banned" == guard.begin_guess("h")
    assert None is guard.begin_guess("other")


def test_limit_events_repeat_at_most_every_interval() -> None:
    """sftp.limit for one cap and client is logged once per interval, then with a count."""
    clock = Clock(1000.0)
    limit_log = LimitLog(interval=10, clock=clock)
    with capture_logs() as logs:
        for _ in range(5):
            limit_log.hit("handles_per_tenant", tenant="acme", ip="h")
        limit_log.hit("handles_per_tenant", tenant="beta", ip="h")
        clock.now += 11
        limit_log.hit("handles_per_tenant", tenant="acme", ip="h")
    assert [("acme", None), ("beta", None), ("acme", 4)] == [
        (e["tenant"], e.get("suppressed")) for e in logs
    ]
    assert {"sftp.limit"} == {e["event"] for e in logs}
    assert {"warning"} == {e["log_level"] for e in logs}


def test_fd_budget_keeps_a_reserve() -> None:
    """New descriptors are refused once the process is within its reserve of the limit."""
    used = [0]
    budget = FdBudget(256, soft_limit=lambda: 1024, count=lambda: used[0])
    assert 256 == budget.headroom()
    used[0] = 767
    assert budget.available()
    used[0] = 768
    assert not budget.available()
    small = FdBudget(256, soft_limit=lambda: 200, count=lambda: 149)
    assert (50, True) == (small.headroom(), small.available())

    def fails(code: int) -> Callable[[], int]:
        def count() -> int:
            raise OSError(code, os.strerror(code))

        return count

    assert not FdBudget(256, soft_limit=lambda: 1024, count=fails(errno.EMFILE)).available()
    assert FdBudget(256, soft_limit=lambda: 1024, count=fails(errno.ENOENT)).available()


def test_tenant_budget_counts_connections_and_handles_per_tenant() -> None:
    """Each tenant has its own connection and handle slots."""
    budget = TenantBudget(SftpLimits(connections_per_tenant=2, max_handles_per_tenant=3))
    assert [True, True, False] == [budget.take_connection("acme") for _ in range(3)]
    assert budget.take_connection("beta")
    budget.release_connection("acme")
    assert budget.take_connection("acme")
    assert [True, True, True, False] == [budget.take_handle("acme") for _ in range(4)]
    budget.release_handle("acme")
    assert (2, True) == (budget.handles("acme"), budget.take_handle("acme"))


TEMP1 = ".x.persons.0123456789abcdef.upload"
TEMP2 = ".x.persons.fedcba9876543210.upload"


def quota(tmp_path: Path, *, inbox_bytes: int = 1000, inbox_files: int = 3) -> LocalInboxQuota:
    for box in ("inbox", "validate"):
        (tmp_path / "acme" / box).mkdir(parents=True)
    return LocalInboxQuota(tenants_root=tmp_path, inbox_bytes=inbox_bytes, inbox_files=inbox_files)


def test_quota_counts_files_waiting_and_uploads_in_progress(tmp_path: Path) -> None:
    """inbox_files: files in /inbox and /validate plus uploads in progress; ours not twice."""
    q = quota(tmp_path)
    (tmp_path / "acme" / "inbox" / "a.persons").write_bytes(b"x")
    (tmp_path / "acme" / "validate" / "b.persons").write_bytes(b"x")
    (tmp_path / "acme" / "inbox" / TEMP1).write_bytes(b"x")
    assert None is q.open_upload("acme", "u1", TEMP1)
    assert "inbox_files" == q.open_upload("acme", "u2", TEMP2)
    (tmp_path / "acme" / "inbox" / TEMP1).unlink()  # the upload was abandoned
    q.end_upload("acme", "u1")
    assert None is q.open_upload("acme", "u2", TEMP2)
    assert None is q.open_upload("beta", "u3", TEMP1)  # another tenant, an empty inbox


def test_quota_counts_other_processes_uploads_in_progress(tmp_path: Path) -> None:
    """Another instance's upload temp file on a shared tree counts: its apparent size, one file."""
    q = quota(tmp_path, inbox_bytes=1000, inbox_files=2)
    with (tmp_path / "acme" / "inbox" / TEMP2).open("wb") as other:
        other.truncate(700)  # holes count: the apparent size
    assert None is q.open_upload("acme", "u1", TEMP1)
    assert "inbox_bytes" == q.grow("acme", "u1", 301)
    assert None is q.grow("acme", "u1", 300)
    assert "inbox_files" == q.open_upload("acme", "u2", ".y.persons.1111111111111111.upload")


def test_quota_removes_dead_uploads_temp_files(tmp_path: Path) -> None:
    """A foreign temp file untouched for stale_upload_seconds is removed, not counted."""
    q = LocalInboxQuota(
        tenants_root=tmp_path, inbox_bytes=1000, inbox_files=1, stale_upload_seconds=60
    )
    dead = tmp_path / "acme" / "inbox" / TEMP2
    dead.parent.mkdir(parents=True)
    dead.write_bytes(b"x" * 900)
    old = time.time() - 61
    os.utime(dead, (old, old))
    assert None is q.open_upload("acme", "u1", TEMP1)
    assert None is q.grow("acme", "u1", 1000)
    assert not dead.exists()


def test_quota_counts_apparent_sizes_across_uploads(tmp_path: Path) -> None:
    """inbox_bytes: the highest offset of each upload (holes count) plus the files waiting."""
    q = quota(tmp_path)
    (tmp_path / "acme" / "inbox" / "a.persons").write_bytes(b"x" * 100)
    for key, temp in (("u1", TEMP1), ("u2", TEMP2)):
        assert None is q.open_upload("acme", key, temp)
    assert None is q.grow("acme", "u1", 500)
    assert None is q.grow("acme", "u2", 400)
    assert "inbox_bytes" == q.grow("acme", "u2", 401)
    assert None is q.grow("acme", "u1", 200)  # never shrinks
    q.end_upload("acme", "u1")
    assert None is q.grow("acme", "u2", 900)


def test_limits_must_be_positive() -> None:
    """A zero or negative cap is a configuration mistake, refused at once."""
    with pytest.raises(ValueError, match="max_handles"):
        SftpLimits(max_handles=0)


# -- passwords ------------------------------------------------------------------------------


@settings(max_examples=5)
@given(st.text(max_size=40), st.text(max_size=40))
def test_password_round_trip(password: str, other: str) -> None:
    """A hash verifies its own password and no other."""
    stored = hash_password(password)
    assert verify_password(password, stored)
    assert (other == password) == verify_password(other, stored)


def test_hashes_are_salted_and_self_describing() -> None:
    """Two hashes of one password differ and say scrypt$n$r$p$salt$hash."""
    first, second = hash_password("pw"), hash_password("pw")
    assert first != second
    assert ["scrypt", "16384", "8", "1"] == first.split("$")[:4]
    assert "pw" not in first


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "pw",
        "scrypt$16384$8$1$salt",
        "bcrypt$16384$8$1$c2FsdA$aGFzaA",
        "scrypt$1000$8$1$c2FsdHNhbHQ$" + "A" * 43,  # n not a power of two
        "scrypt$1073741824$8$1$c2FsdHNhbHQ$" + "A" * 43,  # absurd cost
        "scrypt$16384$8$1$!!!$" + "A" * 43,
    ],
)
def test_malformed_hashes_never_verify(stored: str) -> None:
    """A corrupt or hostile stored hash verifies nothing and costs nothing."""
    assert not verify_password("pw", stored)


# -- host key and tenant records ------------------------------------------------------------


def test_host_key_is_created_once_and_kept(tmp_path: Path) -> None:
    """The first call creates the key (0600, parent made); later calls load the same key."""
    path = tmp_path / "state" / "ssh_host_ed25519_key"
    first = load_or_create_host_key(path)
    second = load_or_create_host_key(path)
    assert first.get_fingerprint() == second.get_fingerprint()
    assert 0o600 == stat.S_IMODE(path.stat().st_mode)
    assert ["ssh_host_ed25519_key"] == [p.name for p in path.parent.iterdir()]


def test_tenant_records_are_validated() -> None:
    """Names that cannot be one directory and key blobs that lie about their type are refused."""
    key = ("ssh-ed25519", base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519" + b"\x00" * 36).decode())
    assert TenantAuth(name="acme", public_keys=(key,)).accepts(base64.b64decode(key[1]))
    for name in ("", "..", ".x", "a/b"):
        with pytest.raises(ValueError):
            TenantAuth(name=name)
    with pytest.raises(ValueError, match="not 'ssh-rsa'"):
        TenantAuth(name="acme", public_keys=(("ssh-rsa", key[1]),))
    with pytest.raises(ValueError, match="bad"):
        TenantAuth(name="acme", public_keys=(("ssh-ed25519", "not base64!"),))
