"""Compressed files read as a stream (SPEC 1.1, 11): names, the rewindable reader, bad archives."""

from __future__ import annotations

import gzip
import io
import random
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from cli_helpers import Site, write_config
from engine_helpers import (
    import_summary,
)
from layer_helpers import gzip_bytes, zip_bytes
from personsd import fileformat, layers
from personsd.errors import FileRejected
from personsd.logging import Event

MiB = 1 << 20


@pytest.mark.parametrize(
    ("name", "plain", "found"),
    [
        ("x.persons", "x.persons", ()),
        ("x.persons.gz", "x.persons", ("gzip",)),
        ("x.persons.zip", "x.persons", ("zip",)),
        ("x.persons.pgp", "x.persons", ("pgp",)),
        ("x.persons.gpg", "x.persons", ("pgp",)),
        ("x.persons.asc", "x.persons", ("pgp",)),
        ("x.persons.gz.pgp", "x.persons", ("pgp", "gzip")),
        ("x.persons.zip.asc", "x.persons", ("pgp", "zip")),
        ("x.persons.pgp.gz", "x.persons.pgp", ("gzip",)),
        ("x.persons.gz.gz", "x.persons.gz", ("gzip",)),
        ("x.csv.gz", "x.csv", ("gzip",)),
    ],
)
def test_split_name_undoes_one_encryption_then_one_compression(
    name: str, plain: str, found: tuple[str, ...]
) -> None:
    """SPEC 1.1: at most one compression suffix, then at most one encryption suffix."""
    assert (plain, found) == layers.split_name(name)


def test_check_name_rejects_a_wrong_layer_order() -> None:
    """SPEC 1.1: `x.persons.pgp.gz` is not a `.persons` name."""
    with pytest.raises(FileRejected) as caught:
        fileformat.check_name("x.persons.pgp.gz")
    assert "File name must end with .persons" == caught.value.message
    fileformat.check_name("x.persons.gz.pgp")


def test_rewindable_serves_any_seek_and_read_like_the_bytes() -> None:
    """The rewindable view reads what the plain bytes hold after any seek, back or ahead."""
    rnd = random.Random(11)
    data = rnd.randbytes(3 * MiB)
    raw = layers.Rewindable(lambda: io.BytesIO(data), keep=layers.BLOCK)
    reader = io.BufferedReader(raw, buffer_size=64 * 1024)
    for _ in range(300):
        at = rnd.randrange(len(data))
        size = rnd.randrange(1, 200_000)
        reader.seek(at)
        assert data[at : at + size] == reader.read(size)
        assert min(at + size, len(data)) == reader.tell()
    assert 0 < raw.rewinds < 300, "far seeks back restart; near ones do not"


def test_rewindable_keeps_recent_bytes_without_restarting() -> None:
    """A seek back within `keep` bytes of the furthest read costs no new pass."""
    data = bytes(range(256)) * 8192  # 2 MiB
    raw = layers.Rewindable(lambda: io.BytesIO(data), keep=layers.BLOCK)
    reader = io.BufferedReader(raw, buffer_size=4096)
    reader.seek(1_500_000)
    reader.read(10)
    reader.seek(1_500_000 - 100_000)
    assert data[1_400_000:1_400_010] == reader.read(10)
    assert 0 == raw.rewinds


QUOTED = (
    b'external_person_id,nick\r\ne1,"a\nb"\n\ne2,"x""y"\ne3,"unterminated\ne4,plain\n'
    + b"e5,"
    + b"z" * 5000
    + b"\n"
    + b'e6,"'
    + b"q" * 3000
    + b'"\ne7,ok\n'
)


@pytest.mark.parametrize(
    "wrap", [gzip_bytes, zip_bytes, lambda d: gzip_bytes(d[:40]) + gzip_bytes(d[40:])]
)
def test_rows_through_a_compression_layer_equal_the_plain_rows(
    tmp_path: Path, wrap: Callable[[bytes], bytes]
) -> None:
    """SPEC 11: quoted, over-long, unterminated rows read the same decompressed."""
    path = tmp_path / "f"
    path.write_bytes(wrap(QUOTED))
    kind = "zip" if zipfile.is_zipfile(path) else "gzip"
    cap = 1024
    with io.BytesIO(QUOTED) as plain:
        layout = fileformat.read_layout(plain, max_row_bytes=cap)
        expected = list(fileformat.iter_rows(plain, layout, max_row_bytes=cap))
    with layers.open_plain(path, kind, max_row_bytes=cap) as fh:
        assert layout == fileformat.read_layout(fh, max_row_bytes=cap)
        assert expected == list(fileformat.iter_rows(fh, layout, max_row_bytes=cap))
        resumed = expected[3]
        again = fileformat.iter_rows(
            fh,
            layout,
            max_row_bytes=cap,
            offset=resumed.end,
            line=resumed.next_line,
            row=resumed.row,
        )
        assert expected[4:] == list(again)
    assert len(QUOTED) == layers.check_stream(path, kind, limit=None)


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


GOOD = b"external_person_id\ne1\ne2\n"


def _bad_crc() -> bytes:
    data = bytearray(gzip_bytes(GOOD))
    data[-8] ^= 0xFF  # the CRC32 of the trailer
    return bytes(data)


@pytest.mark.parametrize(
    ("suffix", "content", "message"),
    [
        (".gz", gzip_bytes(GOOD)[:-5], layers.CORRUPT),
        (".gz", _bad_crc(), layers.CORRUPT),
        (".gz", b"not gzip at all\n", layers.CORRUPT),
        (".gz", gzip_bytes(GOOD) + b"trailing junk", layers.CORRUPT),
        (".zip", zip_bytes(GOOD)[:-30], layers.CORRUPT),
        (".zip", b"PK\x03\x04 but nothing else", layers.CORRUPT),
        (".zip", _zip({}), layers.ZIP_COUNT),
        (".zip", _zip({"a.persons": GOOD, "b.persons": GOOD}), layers.ZIP_COUNT),
        (".zip", _zip({"a.persons": GOOD}, zipfile.ZIP_BZIP2), layers.ZIP_METHOD),
    ],
    ids=[
        "truncated",
        "crc",
        "garbage",
        "trailing",
        "zip-truncated",
        "zip-garbage",
        "zip-empty",
        "zip-two",
        "zip-bzip2",
    ],
)
def test_bad_archives_are_rejected_before_any_row(
    db_url: str, tmp_path: Path, suffix: str, content: bytes, message: str
) -> None:
    """SPEC 11: a corrupt, truncated or wrongly filled archive is rejected, no row applied."""
    path = tmp_path / f"nightly.persons{suffix}"
    path.write_bytes(content)
    summary = import_summary(db_url, tmp_path / "root", path, chunk_rows=1)
    assert "rejected" == summary["status"]
    assert {"class": "PersonErrors::InvalidImportFileFormat", "message": message} == summary[
        "file_error"
    ]
    assert [layers.split_name(path.name)[1][0]] == summary["layers"]
    assert 0 == summary["rows"]["total"]


def test_a_zip_with_a_directory_entry_and_one_file_is_read(db_url: str, tmp_path: Path) -> None:
    """SPEC 11: a folder entry or macOS's __MACOSX/ forks are not files of the archive."""
    path = tmp_path / "nightly.persons.zip"
    path.write_bytes(
        _zip({"out/": b"", "out/x.persons": GOOD, "__MACOSX/out/._x.persons": b"\0\5"})
    )
    summary = import_summary(db_url, tmp_path / "root", path, chunk_rows=1)
    assert ("completed", 2, ["zip"]) == (
        summary["status"],
        summary["rows"]["created"],
        summary["layers"],
    )


def test_a_bomb_is_rejected_at_the_expansion_cap(sqlite_url: str, tmp_path: Path) -> None:
    """SPEC 11: a file expanding past MAX_EXPANSION times its size is rejected, and logged."""
    path = tmp_path / "bomb.persons.gz"
    block = gzip.compress(b"\n" * MiB, compresslevel=9)
    path.write_bytes(gzip_bytes(b"external_person_id\n") + block * 100)  # 100 MiB of blank lines
    with capture_logs() as logs:
        summary = import_summary(sqlite_url, tmp_path / "root", path, chunk_rows=1000)
    message = f"Compressed file expands to more than {layers.MAX_EXPANSION} times its size"
    assert message == summary["file_error"]["message"]
    capped = [e for e in logs if e["event"] == Event.IMPORT_EXPANSION_CAPPED]
    assert [("gzip", path.stat().st_size)] == [(e["layer"], e["bytes"]) for e in capped]


MEMORY_PROBE = r"""
import sys
from pathlib import Path
from personsd import fileformat, layers
from personsd.errors import FileRejected
path, kind, cap = Path(sys.argv[1]), sys.argv[2], 1 << 20
with layers.open_plain(path, kind, max_row_bytes=cap) as fh:
    try:
        layout = fileformat.read_layout(fh, max_row_bytes=cap)
        rows = sum(1 for _ in fileformat.iter_rows(fh, layout, max_row_bytes=cap))
        outcome = f"rows {rows}"
    except FileRejected as rejected:
        outcome = rejected.message
size = layers.check_stream(path, kind, limit=None)
# VmHWM, not getrusage's ru_maxrss: Linux keeps the latter across fork and exec,
# so it would hold the peak of the (large) test process that started this one.
with open("/proc/self/status") as status:
    peak = next(int(l.split()[1]) for l in status if l.startswith("VmHWM:"))
print(outcome, size, peak * 1024)
"""


def _probe(path: Path, kind: str) -> tuple[str, int, int]:
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(path), kind],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    *words, size, rss = proc.stdout.split()
    return " ".join(words), int(size), int(rss)


# The probe peaks at ~30 MiB (Python, personsd's modules, a 3 MiB look-back, a
# 1 MiB row cap); reading the 1 GiB line or 512 MiB member whole would not fit.
MEMORY_BOUND = 64 * MiB


@pytest.mark.slow
def test_a_gzip_of_a_1_gb_single_line_reads_in_bounded_memory(tmp_path: Path) -> None:
    """SPEC 11: a 1 GiB line decompressed (no expansion cap) fails its row cap in bounded memory."""
    member = gzip.compress(b"a" * MiB, compresslevel=9)
    path = tmp_path / "line.persons.gz"
    with path.open("wb") as out:  # multi-member: 1024 copies of one compressed MiB
        out.write(gzip_bytes(b"external_person_id\ne1\n"))
        for _ in range(1024):
            out.write(member)
        out.write(gzip_bytes(b"\ne2\n"))
    outcome, size, rss = _probe(path, "gzip")
    assert ("rows 3", 1024 * MiB + 26) == (outcome, size)
    assert rss < MEMORY_BOUND, f"peak RSS {rss / MiB:.0f} MiB"


@pytest.mark.slow
def test_a_zip_bomb_reads_in_bounded_memory(tmp_path: Path) -> None:
    """SPEC 11: a deflate bomb (a 512 MiB row of one byte, ~0.5 MiB) streams in bounded memory."""
    path = tmp_path / "bomb.persons.zip"
    chunk = b"a" * MiB
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive,
        archive.open("x.persons", "w", force_zip64=True) as member,
    ):
        member.write(b"external_person_id\n")
        for _ in range(512):
            member.write(chunk)
    assert path.stat().st_size < 4 * MiB
    outcome, size, rss = _probe(path, "zip")
    assert ("rows 1", 512 * MiB + 19) == (outcome, size)
    assert rss < MEMORY_BOUND, f"peak RSS {rss / MiB:.0f} MiB"


def test_personsd_import_reads_a_gz_and_rejects_a_truncated_one(
    tmp_path: Path, sqlite_url: str
) -> None:
    """SPEC 7/11: `personsd import x.persons.gz` imports (exit 0); a truncated one exits 3."""
    home = tmp_path / "site"
    home.mkdir()
    site = Site(home=home, config=write_config(home, sqlite_url), db_url=sqlite_url)
    site.add_tenant("acme")
    done = site.import_bytes("a.persons.gz", gzip_bytes(GOOD))
    assert (0, ["gzip"], 2) == (
        done.exit_code,
        done.summary["layers"],
        done.summary["rows"]["created"],
    )
    bad = site.import_bytes("b.persons.gz", gzip_bytes(GOOD)[:-5], expect=3)
    fixed = ("", "", "PersonErrors::InvalidImportFileFormat", layers.CORRUPT, "", "")
    assert [fixed] == bad.errors_at()
