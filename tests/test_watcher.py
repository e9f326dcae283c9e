"""The inbox watcher (SPEC 1.1, 5): settle rule (pure) and the inotify shell (real files)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from personsd.watcher import InboxWatcher, ReadyFile, Seen, SettleTracker, Stamp

# --------------------------------------------------------------------------- pure

K = Path("/t/a/inbox/x.persons")
S1 = Stamp(size=10, mtime_ns=1)
S2 = Stamp(size=20, mtime_ns=2)


def keys(tracker: SettleTracker, now: float) -> list[Path]:
    return [s.key for s in tracker.due(now)]


def observed(*seen: tuple[Stamp, float, Seen], settle: float = 1.0) -> SettleTracker:
    """A tracker that has seen K as each ``(stamp, now, seen)`` in turn."""
    tracker = SettleTracker(settle)
    for stamp, now, how in seen:
        tracker.observe(K, stamp, now=now, seen=how)
    return tracker


def test_ready_only_after_settle() -> None:
    """A closed file is due once it has not changed for settle_seconds, not before."""
    tracker = observed((S1, 10.0, Seen.CLOSED))
    assert [] == keys(tracker, 10.99)
    assert [K] == keys(tracker, 11.0)


@pytest.mark.parametrize("seen", [Seen.CLOSED, Seen.TOUCHED], ids=["closed", "touched"])
def test_change_restarts_clock_and_keeps_close(seen: Seen) -> None:
    """A change after a close restarts the settle clock; a touch (put -p) keeps the close."""
    tracker = observed((S1, 10.0, Seen.CLOSED), (S2, 10.5, seen))
    assert [] == keys(tracker, 11.2)
    assert [K] == keys(tracker, 11.5)


def test_same_stamp_does_not_restart_clock() -> None:
    """Seeing the same version again (a scan, a second close) keeps the clock running."""
    tracker = observed((S1, 10.0, Seen.CLOSED), (S1, 10.8, Seen.CLOSED))
    assert [K] == keys(tracker, 11.0)


def test_inode_is_part_of_the_version() -> None:
    """A file replaced by another of equal size and mtime is a new version."""
    tracker = observed((S1, 10.0, Seen.CLOSED))
    assert [K] == keys(tracker, 11.0)
    tracker.observe(K, Stamp(size=10, mtime_ns=1, inode=7), now=12.0, seen=Seen.CLOSED)
    assert [K] == keys(tracker, 13.0)


def test_written_file_waits_for_close() -> None:
    """A file only seen being written is never due until a close, move or scan."""
    tracker = observed((S1, 10.0, Seen.WRITTEN))
    assert [] == keys(tracker, 100.0)
    tracker.observe(K, S1, now=100.0, seen=Seen.CLOSED)
    assert [K] == keys(tracker, 100.0)


def test_write_after_close_disarms() -> None:
    """A write after a close (or a scan) means the writer is back: wait for its next close."""
    tracker = observed((S1, 10.0, Seen.CLOSED), (S2, 10.5, Seen.WRITTEN))
    assert [] == keys(tracker, 100.0)


def test_trusted_is_immediate() -> None:
    """The embedded SFTP server's word makes a file due at once, whatever came before."""
    tracker = observed((S1, 10.0, Seen.WRITTEN), settle=30.0)
    tracker.trusted(K, S1, now=10.1)
    assert [K] == keys(tracker, 10.1)


def test_trusted_then_same_version_not_reported_again() -> None:
    """A close event or scan arriving after the trusted report does not report it twice."""
    tracker = SettleTracker(1.0)
    tracker.trusted(K, S1, now=10.0)
    assert [K] == keys(tracker, 10.0)
    tracker.observe(K, S1, now=10.1, seen=Seen.CLOSED)
    assert [] == keys(tracker, 50.0)


def test_reported_once_until_changed() -> None:
    """A version is reported once; a later change is reported again after settling."""
    tracker = observed((S1, 10.0, Seen.CLOSED))
    assert [K] == keys(tracker, 11.0)
    tracker.observe(K, S1, now=20.0, seen=Seen.CLOSED)
    assert [] == keys(tracker, 30.0)
    tracker.observe(K, S2, now=30.0, seen=Seen.CLOSED)
    assert [K] == keys(tracker, 31.0)


def test_forget() -> None:
    """A forgotten file is not due; seen again it is a new arrival, reported again."""
    tracker = observed((S1, 10.0, Seen.CLOSED))
    tracker.forget(K)
    assert [] == keys(tracker, 20.0)
    assert [] == tracker.tracked()
    tracker.observe(K, S1, now=20.0, seen=Seen.CLOSED)
    assert [K] == keys(tracker, 21.0)
    tracker.forget(K)
    tracker.observe(K, S1, now=22.0, seen=Seen.CLOSED)
    assert [K] == keys(tracker, 23.0)


def test_next_deadline() -> None:
    """next_deadline is the earliest settle end of an unreported closed file, or None."""
    tracker = SettleTracker(1.0)
    assert None is tracker.next_deadline()
    tracker.observe(K, S1, now=10.0, seen=Seen.WRITTEN)
    assert None is tracker.next_deadline()
    tracker.observe(Path("/t/a/inbox/y.persons"), S1, now=12.0, seen=Seen.CLOSED)
    tracker.observe(K, S2, now=10.5, seen=Seen.CLOSED)
    assert 11.5 == tracker.next_deadline()
    tracker.due(11.5)
    assert 13.0 == tracker.next_deadline()
    tracker.trusted(K, S1, now=12.5)
    assert 12.5 == tracker.next_deadline()


def test_due_in_completion_order_ties_by_name() -> None:
    """due() lists files by completed_at, then by name, and carries stamp and completed_at."""
    tracker = SettleTracker(1.0)
    b, a, c = (Path(f"/t/a/inbox/{n}.persons") for n in "bac")
    tracker.observe(c, S1, now=10.0, seen=Seen.CLOSED, completed_at=500.0)
    tracker.observe(b, S2, now=10.0, seen=Seen.CLOSED, completed_at=100.0)
    tracker.observe(a, S1, now=10.0, seen=Seen.CLOSED, completed_at=100.0)
    due = tracker.due(11.0)
    assert [a, b, c] == [s.key for s in due]
    assert [100.0, 100.0, 500.0] == [s.completed_at for s in due]
    assert S2 == due[1].stamp


SETTLE = 2
STAMPS = [Stamp(size=s, mtime_ns=m) for s in (0, 1) for m in (0, 1)]
KEYS = [Path("/t/a/inbox/a.persons"), Path("/t/a/inbox/b.persons")]
_dt = st.integers(0, 3)
_op = st.one_of(
    st.tuples(
        st.just("observe"),
        st.sampled_from(KEYS),
        st.sampled_from(STAMPS),
        _dt,
        st.sampled_from(list(Seen)),
    ),
    st.tuples(st.just("trusted"), st.sampled_from(KEYS), st.sampled_from(STAMPS), _dt),
    st.tuples(st.just("forget"), st.sampled_from(KEYS)),
    st.tuples(st.just("due"), _dt),
)


def _model_due(
    history: list[tuple[int, Stamp, str]], reported_runs: set[int], now: int, settle: int
) -> int | None:
    """The run (index of its first observation) due at ``now`` per the rules, or None."""
    if not history:
        return None
    last = history[-1][1]
    start = len(history) - 1
    while start > 0 and history[start - 1][1] == last:
        start -= 1
    armed = False
    for i, (_, stamp, kind) in enumerate(history):
        changed = i == 0 or history[i - 1][1] != stamp
        if kind in ("closed", "trusted"):
            armed = True
        elif changed:
            armed = kind == "touched" and armed
    trusted = any(kind == "trusted" for _, _, kind in history[start:])
    settled = now - history[start][0] >= settle
    if armed and (trusted or settled) and start not in reported_runs:
        return start
    return None


@given(st.lists(_op, max_size=40))
def test_due_matches_model(ops: list[tuple[object, ...]]) -> None:
    """Due only if the last (size, mtime) is unchanged for settle (or trusted), closed, once."""
    tracker = SettleTracker(SETTLE)
    history: dict[Path, list[tuple[int, Stamp, str]]] = {k: [] for k in KEYS}
    reported: dict[Path, set[int]] = {k: set() for k in KEYS}
    now = 0
    for op in ops:
        if op[0] == "observe":
            _, key, stamp, dt, seen = op
            assert isinstance(key, Path) and isinstance(stamp, Stamp)
            assert isinstance(dt, int) and isinstance(seen, Seen)
            now += dt
            tracker.observe(key, stamp, now=now, seen=seen)
            history[key].append((now, stamp, seen.value))
        elif op[0] == "trusted":
            _, key, stamp, dt = op
            assert isinstance(key, Path) and isinstance(stamp, Stamp) and isinstance(dt, int)
            now += dt
            tracker.trusted(key, stamp, now=now)
            history[key].append((now, stamp, "trusted"))
        elif op[0] == "forget":
            key = op[1]
            assert isinstance(key, Path)
            tracker.forget(key)
            history[key] = []
            reported[key] = set()
        else:
            dt = op[1]
            assert isinstance(dt, int)
            now += dt
            expected = set()
            for key in KEYS:
                run = _model_due(history[key], reported[key], now, SETTLE)
                if run is not None:
                    expected.add(key)
                    reported[key].add(run)
                    first_seen = history[key][run][0]
                    trusted = any(k == "trusted" for _, _, k in history[key][run:])
                    assert trusted or now - first_seen >= SETTLE
            assert expected == {s.key for s in tracker.due(now)}


def test_ready_file_validates() -> None:
    """ReadyFile refuses a relative path, an empty tenant and a negative size."""
    with pytest.raises(ValueError):
        ReadyFile(tenant="a", path=Path("x.persons"), completed_at=0, size=0, mtime_ns=0)
    with pytest.raises(ValueError):
        ReadyFile(tenant="", path=Path("/x.persons"), completed_at=0, size=0, mtime_ns=0)
    with pytest.raises(ValueError):
        ReadyFile(tenant="a", path=Path("/x.persons"), completed_at=0, size=-1, mtime_ns=0)


# --------------------------------------------------------------------------- shell

FAST = 0.2  # settle seconds in the shell tests


class Sink:
    """on_ready callback recording what was reported and when (monotonic)."""

    def __init__(self, fail_first: int = 0) -> None:
        self.files: list[ReadyFile] = []
        self.times: list[float] = []
        self.calls = 0
        self._fail_first = fail_first
        self._cond = threading.Condition()

    def __call__(self, ready: ReadyFile) -> None:
        with self._cond:
            self.calls += 1
            if self.calls <= self._fail_first:
                raise RuntimeError("consumer hiccup")
            self.files.append(ready)
            self.times.append(time.monotonic())
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = 5.0) -> list[ReadyFile]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.files) >= n, timeout)
            return list(self.files)

    def names(self) -> list[str]:
        with self._cond:
            return [f.path.name for f in self.files]


Make = Callable[..., tuple[InboxWatcher, Sink]]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "tenants"


@pytest.fixture
def make(root: Path) -> Iterator[Make]:
    watchers: list[InboxWatcher] = []

    def make(
        *,
        settle: float = FAST,
        rescan: float = 3600.0,
        use_events: bool = True,
        sink: Sink | None = None,
    ) -> tuple[InboxWatcher, Sink]:
        sink = Sink() if sink is None else sink
        watcher = InboxWatcher(
            tenants_root=root,
            settle_seconds=settle,
            rescan_seconds=rescan,
            on_ready=sink,
            use_events=use_events,
        )
        watchers.append(watcher)
        watcher.start()
        return watcher, sink

    yield make
    for watcher in watchers:
        watcher.stop()


def inbox(root: Path, tenant: str = "acme") -> Path:
    path = root / tenant / "inbox"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write(path: Path, data: str = "external_person_id\nx1\n") -> None:
    with open(path, "w") as fh:
        fh.write(data)


def test_written_file_reported_once_after_settle(root: Path, make: Make) -> None:
    """A file written and closed is reported once, settle_seconds after the close."""
    box = inbox(root)
    _, sink = make()
    before = time.monotonic()
    write(box / "a.persons")
    [ready] = sink.wait_for(1)
    assert sink.times[0] >= before + FAST
    assert ("acme", box / "a.persons", 22) == (ready.tenant, ready.path, ready.size)
    time.sleep(3 * FAST)
    assert ["a.persons"] == sink.names()


def test_slow_writer_reported_once_after_last_write(root: Path, make: Make) -> None:
    """Appends with pauses shorter than settle give one report, after the last write."""
    box = inbox(root)
    _, sink = make(settle=0.3)
    for i in range(4):
        last = time.monotonic()
        with open(box / "slow.persons", "a") as fh:
            fh.write(f"line {i}\n")
        time.sleep(0.1)
    [ready] = sink.wait_for(1)
    assert sink.times[0] >= last + 0.3
    assert 28 == ready.size
    time.sleep(0.6)
    assert 1 == len(sink.names())


def test_filepart_ignored_until_renamed(root: Path, make: Make) -> None:
    """An upload in progress (x.filepart) is not reported; renamed to x.persons it is, once."""
    box = inbox(root)
    _, sink = make()
    write(box / "x.filepart")
    time.sleep(3 * FAST)
    assert [] == sink.names()
    os.rename(box / "x.filepart", box / "x.persons")
    sink.wait_for(1)
    time.sleep(3 * FAST)
    assert ["x.persons"] == sink.names()


def test_file_moved_in_from_outside_reported(root: Path, tmp_path: Path, make: Make) -> None:
    """A complete file moved into the inbox from elsewhere (mv) is reported without a rescan."""
    box = inbox(root)
    _, sink = make(rescan=3600.0)
    write(tmp_path / "staged.persons")
    os.rename(tmp_path / "staged.persons", box / "moved.persons")
    assert ["moved.persons"] == [f.path.name for f in sink.wait_for(1, timeout=3.0)]


def test_ignored_and_odd_entries_not_reported(root: Path, make: Make) -> None:
    """Hidden and in-progress names, directories and symlinks are never reported."""
    box = inbox(root)
    _, sink = make()
    for name in (".x.persons", "a.part", "b.partial", "c.tmp", "d.uploading"):
        write(box / name)
    (box / "dir.persons").mkdir()
    (box / "link.persons").symlink_to(box / ".x.persons")
    write(box / "sentinel.persons")
    sink.wait_for(1)
    time.sleep(2 * FAST)
    assert ["sentinel.persons"] == sink.names()


def test_other_names_reported_for_rejection(root: Path, make: Make) -> None:
    """A file not ending in .persons (report.csv) is reported so the queue can reject it."""
    box = inbox(root)
    _, sink = make()
    write(box / "report.csv")
    assert [box / "report.csv"] == [f.path for f in sink.wait_for(1)]


def test_backlog_reported_by_initial_scan_with_mtime(root: Path, make: Make) -> None:
    """Files present before start are reported, completed_at being their mtime, in that order."""
    box = inbox(root)
    write(box / "a.persons")
    write(box / "b.persons")
    os.utime(box / "a.persons", (1_700_000_200, 1_700_000_200))
    os.utime(box / "b.persons", (1_700_000_100, 1_700_000_100))
    _, sink = make()
    files = sink.wait_for(2)
    assert [("b.persons", 1_700_000_100.0), ("a.persons", 1_700_000_200.0)] == [
        (f.path.name, f.completed_at) for f in files
    ]


def test_new_tenant_found_by_watch(root: Path, make: Make) -> None:
    """A tenant directory created while running is watched: its files are reported."""
    _, sink = make(rescan=3600.0)
    (root / "newco").mkdir()
    time.sleep(0.05)
    box = inbox(root, "newco")
    write(box / "n.persons")
    [ready] = sink.wait_for(1, timeout=3.0)
    assert ("newco", "n.persons") == (ready.tenant, ready.path.name)


def test_new_tenant_found_by_rescan(root: Path, make: Make) -> None:
    """Without events, the periodic rescan finds a tenant created while running."""
    root.mkdir()
    _, sink = make(rescan=0.2, use_events=False)
    write(inbox(root, "later") / "n.persons")
    [ready] = sink.wait_for(1, timeout=3.0)
    assert ("later", "n.persons") == (ready.tenant, ready.path.name)


def test_missed_events_found_by_rescan(root: Path, make: Make) -> None:
    """A file no event announced is found by rescan() (events are a wake-up, the scan the truth)."""
    box = inbox(root)
    watcher, sink = make(settle=0.1, rescan=3600.0, use_events=False)
    write(box / "lost.persons")
    time.sleep(0.5)
    assert [] == sink.names()
    watcher.rescan()
    assert ["lost.persons"] == [f.path.name for f in sink.wait_for(1)]


def test_unchanged_file_not_reported_again_by_rescans(root: Path, make: Make) -> None:
    """A reported file left in the inbox is not reported again by later rescans."""
    box = inbox(root)
    _, sink = make(settle=0.1, rescan=0.1)
    write(box / "a.persons")
    sink.wait_for(1)
    time.sleep(0.6)
    assert ["a.persons"] == sink.names()


def test_claimed_then_new_upload_same_name(root: Path, tmp_path: Path, make: Make) -> None:
    """After the consumer claims a file, a new upload under the same name is reported too."""
    box = inbox(root)
    _, sink = make()
    write(box / "daily.persons")
    first = sink.wait_for(1)[0]
    os.rename(first.path, tmp_path / "claimed")
    write(box / "daily.persons", "external_person_id\nx2\nx3\n")
    files = sink.wait_for(2)
    assert [22, 25] == [f.size for f in files]


def test_callback_failure_retried_at_rescan(root: Path, make: Make) -> None:
    """If on_ready raises, the file is offered again by the next rescan."""
    box = inbox(root)
    sink = Sink(fail_first=1)
    _, sink = make(settle=0.1, rescan=0.3, sink=sink)
    write(box / "a.persons")
    assert ["a.persons"] == [f.path.name for f in sink.wait_for(1)]
    assert 2 == sink.calls


def test_notify_complete_skips_settle(root: Path, make: Make) -> None:
    """notify_complete (embedded SFTP close) reports the file without the settle wait."""
    box = inbox(root)
    watcher, sink = make(settle=30.0)
    write(box / "up.persons")
    start = time.monotonic()
    watcher.notify_complete("acme", box / "up.persons")
    [ready] = sink.wait_for(1, timeout=3.0)
    assert sink.times[0] - start < 3.0
    assert "up.persons" == ready.path.name


def test_notify_complete_outside_inbox_refused(root: Path, make: Make) -> None:
    """notify_complete refuses a path that is not in that tenant's inbox."""
    box = inbox(root)
    watcher, _ = make()
    with pytest.raises(ValueError):
        watcher.notify_complete("other", box / "up.persons")


def test_completed_at_follows_write_order(root: Path, make: Make) -> None:
    """Files written one after the other get increasing completed_at and are reported so."""
    box = inbox(root)
    _, sink = make()
    for name in ("c.persons", "b.persons", "a.persons"):
        write(box / name)
        time.sleep(0.01)
    files = sink.wait_for(3)
    assert ["c.persons", "b.persons", "a.persons"] == [f.path.name for f in files]
    assert files[0].completed_at < files[1].completed_at < files[2].completed_at
