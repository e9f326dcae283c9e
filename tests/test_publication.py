"""SPEC 4/6: nothing planted in an outbox redirects, blocks or loops the publication of reports.

Reports are written in personsd's own directories (``O_CREAT|O_EXCL|O_NOFOLLOW``),
fsynced and renamed into the outbox. Each test plants what a tenant (or anyone)
could: a file, an empty or full directory, a symlink to a file or a directory
outside, a dangling symlink, a FIFO, a hard link, at the final names and at
every temp name, and checks that the reports still appear with the right bytes,
in bounded time, and that nothing outside the outbox changed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from cli_helpers import make_site
from personsd import outbox as outbox_module
from personsd.reports import Reports, Summary, publish, publish_all, report_names

NAME = "customer_test.persons"
PLANTS = (
    "file",
    "empty-dir",
    "full-dir",
    "symlink-file",
    "symlink-dir",
    "dangling",
    "fifo",
    "hardlink",
)
DIRECTORIES = ("empty-dir", "full-dir")
# Where main wrote its temp files: predictable names inside the outbox.
OLD_TEMPS = tuple(f".{name}.tmp" for name in report_names(NAME, 17))


def plant(path: Path, kind: str, outside: Path) -> None:
    """Put a ``kind`` thing at ``path``; links point into ``outside``."""
    if kind == "file":
        path.write_bytes(b"planted")
    elif kind in DIRECTORIES:
        path.mkdir()
        if kind == "full-dir":
            (path / "inner.txt").write_bytes(b"inner")
    elif kind == "symlink-file":
        path.symlink_to(outside / "victim.txt")
    elif kind == "symlink-dir":
        path.symlink_to(outside)
    elif kind == "dangling":
        path.symlink_to(outside / "nothing-here")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "hardlink":
        os.link(outside / "victim.txt", path)
    else:
        raise ValueError(kind)


def kind_of(path: Path) -> str:
    """What sits at ``path``, without following it."""
    mode = os.lstat(path).st_mode
    for test, name in (
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISDIR, "dir"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISREG, "file"),
    ):
        if test(mode):
            return name
    return "other"


def snapshot(folder: Path) -> dict[str, tuple[str, bytes]]:
    """Every entry under ``folder`` with its kind and (for files) bytes, links not followed."""
    found = {}
    for path in sorted(folder.rglob("*")):
        kind = kind_of(path)
        found[str(path.relative_to(folder))] = (
            kind,
            path.read_bytes()
            if kind == "file"
            else os.readlink(path).encode()
            if kind == "symlink"
            else b"",
        )
    return found


@dataclass(frozen=True, kw_only=True, slots=True)
class Box:
    """A tenant's outbox, personsd's work area and an outside directory to guard."""

    outbox: Path
    work: Path
    displaced: Path
    outside: Path


@pytest.fixture
def box(tmp_path: Path) -> Box:
    outbox = tmp_path / "tenants" / "acme" / "outbox"
    work = tmp_path / "state" / "work" / "17"
    outside = tmp_path / "elsewhere"
    for folder in (outbox, work, outside):
        folder.mkdir(parents=True)
    (outside / "victim.txt").write_bytes(b"victim")
    return Box(outbox=outbox, work=work, displaced=work / "displaced", outside=outside)


def summary_with_retry() -> Summary:
    moment = datetime(2026, 11, 23, 2, 15, tzinfo=UTC)
    return Summary(
        import_id=17,
        tenant="acme",
        file=NAME,
        sha256="ab" * 32,
        bytes=212,
        status="completed",
        received_at=moment,
        started_at=moment,
        finished_at=moment,
        reports=Reports.of(NAME, 17, retry=True),
    )


def publish_reports(box: Box) -> tuple[Path, ...]:
    errors, retry = box.work / "errors.csv", box.work / "retry.persons"
    errors.write_bytes(b"line,row\r\n3,2\r\n")
    retry.write_bytes(b"external_person_id\ne1\n")
    # Default places: temp files next to errors.csv, directories to its displaced/.
    return publish_all(box.outbox, NAME, 17, errors, retry, summary_with_retry())


def expected_reports() -> dict[str, bytes]:
    names = report_names(NAME, 17)
    return {
        names.errors: b"line,row\r\n3,2\r\n",
        names.retry: b"external_person_id\ne1\n",
        names.summary: (summary_with_retry().to_json() + "\n").encode(),
    }


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", PLANTS)
def test_planted_at_final_and_old_temp_names(box: Box, kind: str) -> None:
    """SPEC 6: a thing at every report name and old temp name neither redirects nor blocks."""
    for name in [*report_names(NAME, 17), *OLD_TEMPS]:
        plant(box.outbox / name, kind, box.outside)
    outside = snapshot(box.outside)

    started = time.monotonic()
    with capture_logs() as logs:
        publish_reports(box)

    assert time.monotonic() - started < 10
    expected = expected_reports()
    assert {name: ("file", data) for name, data in expected.items()} == {
        name: (kind_of(box.outbox / name), (box.outbox / name).read_bytes()) for name in expected
    }
    assert outside == snapshot(box.outside)  # nothing followed, nothing written outside
    assert {temp: kind_of(box.outbox / temp) for temp in OLD_TEMPS} == {
        temp: {
            "empty-dir": "dir",
            "full-dir": "dir",
            "hardlink": "file",
            "dangling": "symlink",
            "symlink-file": "symlink",
            "symlink-dir": "symlink",
        }.get(kind, kind)
        for temp in OLD_TEMPS
    }
    moved = [e for e in logs if e["event"] == "outbox.displaced"]
    if kind in DIRECTORIES:
        assert sorted(report_names(NAME, 17)) == sorted(e["name"] for e in moved)
        assert 3 == len(os.listdir(box.displaced))
        if kind == "full-dir":
            assert [b"inner"] * 3 == [
                (box.displaced / d / "inner.txt").read_bytes() for d in os.listdir(box.displaced)
            ]
    else:
        assert [] == moved
    assert {"errors.csv", "retry.persons"} == set(os.listdir(box.work)) - {"displaced"}


@pytest.mark.timeout(30)
def test_planted_at_the_temp_names_of_the_work_area(
    box: Box, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Temp files are created O_EXCL|O_NOFOLLOW: whatever holds a temp name is passed by."""
    tokens = iter(["t0", "t1", "t2", "t3", "t4", "t5"])
    monkeypatch.setattr(outbox_module, "_token", lambda: next(tokens))
    for token, kind in zip(
        ("t0", "t1", "t2", "t3"), ("symlink-file", "full-dir", "fifo", "hardlink"), strict=True
    ):
        plant(box.work / f".{token}.publish", kind, box.outside)
    planted = snapshot(box.work)
    outside = snapshot(box.outside)

    publish(box.outbox, "x.csv", b"data", scratch=box.work)

    assert b"data" == (box.outbox / "x.csv").read_bytes()
    assert outside == snapshot(box.outside)
    assert planted == snapshot(box.work)


def test_every_temp_name_taken_fails_at_once(box: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounded: when no temp name can be had the publication raises, it never loops."""
    monkeypatch.setattr(outbox_module, "_token", lambda: "same")
    plant(box.work / ".same.publish", "symlink-file", box.outside)
    with pytest.raises(FileExistsError):
        publish(box.outbox, "x.csv", b"data", scratch=box.work)
    assert [] == os.listdir(box.outbox)
    assert b"victim" == (box.outside / "victim.txt").read_bytes()


def test_symlinked_outbox_is_refused(box: Box) -> None:
    """An outbox that is a symlink is not published through, with an error that says why."""
    shutil.rmtree(box.outbox)
    box.outbox.symlink_to(box.outside)
    with pytest.raises(OSError, match="symbolic link") as caught:
        publish(box.outbox, "x.csv", b"data", scratch=box.work)
    assert errno.ELOOP == caught.value.errno
    assert ["victim.txt"] == os.listdir(box.outside)
    assert [] == os.listdir(box.work)


def test_directory_reappearing_at_the_name_is_bounded(
    box: Box, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory that comes back after each move ends the attempt with an error, no loop."""
    moves: list[str] = []
    monkeypatch.setattr(
        outbox_module, "_displace", lambda outbox, fd, name, aside: moves.append(name)
    )
    (box.outbox / "x.csv").mkdir()
    with pytest.raises(IsADirectoryError):
        publish(box.outbox, "x.csv", b"data", scratch=box.work)
    assert ["x.csv"] * 3 == moves
    assert [] == os.listdir(box.work)


SETPRIV_CHILD = """
import sys
from pathlib import Path
from personsd.reports import publish
outbox, work = Path(sys.argv[1]), Path(sys.argv[2])
publish(outbox, "x.csv", b"data", scratch=work, displaced=work.parent / "displaced")
"""


def test_directory_personsd_cannot_move_out_is_renamed_aside_in_the_outbox(box: Box) -> None:
    """A directory personsd may not write (so not move to another parent) is renamed in place."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to drop CAP_DAC_OVERRIDE from a child")
    foreign = box.outbox / "x.csv"
    foreign.mkdir(mode=0o700)
    (foreign / "inner.txt").write_bytes(b"inner")
    os.chown(foreign / "inner.txt", 65534, 65534)
    os.chown(foreign, 65534, 65534)
    child = subprocess.run(
        [
            setpriv,
            "--bounding-set=-dac_override,-dac_read_search,-fowner",
            sys.executable,
            "-c",
            SETPRIV_CHILD,
            str(box.outbox),
            str(box.work),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert 0 == child.returncode, child.stderr
    assert b"data" == (box.outbox / "x.csv").read_bytes()
    aside = [n for n in os.listdir(box.outbox) if n != "x.csv"]
    assert 1 == len(aside) and aside[0].startswith(".displaced.")
    assert b"inner" == (box.outbox / aside[0] / "inner.txt").read_bytes()


@pytest.fixture
def umask_077() -> Iterator[None]:
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("umask_077")
def test_reports_are_readable_whatever_the_umask(box: Box) -> None:
    """A report renamed into an OpenSSH outbox keeps personsd's group: it must be 0644."""
    publish(box.outbox, "x.csv", b"data", scratch=box.work)
    assert 0o644 == stat.S_IMODE(os.stat(box.outbox / "x.csv").st_mode)


def test_publishing_again_gives_the_same_bytes(box: Box) -> None:
    """Idempotent: a re-publish after a crash replaces each report with identical bytes."""
    publish_reports(box)
    first = snapshot(box.outbox)
    publish_reports(box)
    assert first == snapshot(box.outbox)
    assert sorted(expected_reports()) == sorted(os.listdir(box.outbox))


# --------------------------------------------------------------------------- end to end


@pytest.mark.timeout(120)
def test_import_publishes_past_whatever_is_planted(db_url: str, tmp_path: Path) -> None:
    """SPEC 6 through `personsd import`: planted names cost nothing; the reports are right."""
    site = make_site(tmp_path / "site", db_url)
    site.add_tenant("acme")
    site.add_tenant("clean")
    outbox = site.outbox("acme")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "victim.txt").write_bytes(b"victim")
    probe = site.import_bytes("probe.persons", "external_person_id\np0\n", "acme")
    next_id = probe.summary["import_id"] + 1
    names = report_names(NAME, next_id)
    for name, kind in zip(names, ("full-dir", "symlink-file", "fifo"), strict=True):
        plant(outbox / name, kind, outside)
        plant(outbox / f".{name}.tmp", {"fifo": "symlink-file"}.get(kind, kind), outside)
    before = snapshot(outside)
    data = "external_person_id,mdn\ng1,\nb1,12\ng2,\n"

    started = time.monotonic()
    result = site.subprocess("import", str(site.write(NAME, data)), "--tenant", "acme")

    assert 0 == result.returncode, result.stderr.decode()
    assert time.monotonic() - started < 60
    summary = json.loads(result.stdout)
    assert (next_id, "completed", 3, 1) == (
        summary["import_id"],
        summary["status"],
        summary["rows"]["total"],
        summary["rows"]["failed"],
    )
    assert summary == json.loads((outbox / names.summary).read_bytes())
    clean = site.import_bytes(NAME, data, "clean")
    assert (site.outbox("clean") / clean.summary["reports"]["errors"]).read_bytes() == (
        outbox / names.errors
    ).read_bytes()
    assert ["file", "file"] == [kind_of(outbox / names.errors), kind_of(outbox / names.summary)]
    assert "symlink" == kind_of(outbox / names.retry)  # no retry report: left alone
    assert before == snapshot(outside)
    displaced = site.root / "state" / "displaced" / "acme"
    assert [b"inner"] == [(d / "inner.txt").read_bytes() for d in displaced.iterdir()]


def test_long_name_is_rejected_and_reports_use_its_first_200_bytes(
    db_url: str, tmp_path: Path
) -> None:
    """SPEC 1.1: a 250-byte name is rejected at file level; reports are named by 200 bytes."""
    site = make_site(tmp_path / "site", db_url)
    site.add_tenant("acme")
    name = "é" * 121 + ".persons"
    assert 250 == len(name.encode())
    path = site.write(name, "external_person_id\np1\n")

    result = site.cli("import", str(path), "--tenant", "acme", expect=3)

    summary = json.loads(result.stdout)
    import_id = summary["import_id"]
    stem = "é" * 100 + f".{import_id}"
    assert (name, "rejected") == (summary["file"], summary["status"])
    assert {
        "class": "PersonErrors::InvalidImportFileFormat",
        "message": "File name is longer than 200 bytes",
    } == summary["file_error"]
    assert {"errors": f"{stem}.errors.csv", "retry": None} == summary["reports"]
    outbox = site.outbox("acme")
    assert [f"{stem}.errors.csv", f"{stem}.summary.json"] == sorted(os.listdir(outbox))
    assert summary == json.loads((outbox / f"{stem}.summary.json").read_bytes())
    assert (
        b"line,row,error_class,error_message,field,value\r\n"
        b",,PersonErrors::InvalidImportFileFormat,File name is longer than 200 bytes,,\r\n"
    ) == (outbox / f"{stem}.errors.csv").read_bytes()
    assert [] == site.export("acme")
