"""Compression and encryption around a `.persons` file (SPEC 1.1, 4 and 11).

A name says what wraps the content, outermost last: ``x.persons.gz.pgp`` is
encrypted (``pgp``), and what decrypts is gzip. Undone in that order:
decrypt, then decompress, then read.

* PGP: ``gpg`` decrypts (and checks the signature of) the whole message to a
  work copy outside the tenant tree first (``pgp.decrypt``), because a
  signature can only be judged once every byte was read: nothing of an
  unsigned or forged file is ever applied. The copy is made once and reused
  when an import resumes; it is deleted when the import ends.
* gzip and zip are decompressed as a stream, in bounded blocks. A first pass
  reads the whole stream to its end and checks it (CRC, length, truncation)
  before any row is applied, so a corrupt archive is a rejected file, not a
  half-imported one; it also gives the plain size, for progress.

The reader seeks: a quoted row looks ahead up to ``max_row_bytes`` and comes
back, and a resumed import starts at a byte offset of the plain content. A
decompressed stream cannot go back, so :class:`Rewindable` keeps the most
recent plain bytes (two rows' worth) and serves seeks within them; a seek
further back (resuming, or a quoted row that ran into a line of gigabytes)
decompresses again from the start and discards up to the target. Resuming a
compressed import therefore re-reads the compressed prefix once.
"""

from __future__ import annotations

import gzip
import io
import os
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from personsd.errors import FileRejected, InternalError

Layer = Literal["pgp", "gzip", "zip"]
ENCRYPTION_SUFFIXES = (".pgp", ".gpg", ".asc")
COMPRESSION_SUFFIXES: dict[str, Layer] = {".gz": "gzip", ".zip": "zip"}

# A compressed file may expand to at most this many times its size as
# uploaded (and always to EXPANSION_FLOOR): files of person data compress
# 3-20 times; a stream of one repeated byte (a "bomb") about 1000 times.
MAX_EXPANSION = 200
EXPANSION_FLOOR = 64 << 20
# Decompressed blocks: a bounded read, whatever the ratio of the block.
BLOCK = 256 << 10
READ_BUFFER = 1 << 20

CORRUPT = "Compressed file is corrupt"
ZIP_COUNT = "Zip archive must hold exactly one file"
ZIP_METHOD = "Zip archive's file must be stored or deflated"
ZIP_ENCRYPTED = "Zip archive's file is password-protected: encrypt with PGP instead"
# Errors a damaged gzip or zip stream raises on read (BadGzipFile is an OSError).
_DAMAGED = (OSError, EOFError, zlib.error, zipfile.BadZipFile)


def split_name(name: str) -> tuple[str, tuple[Layer, ...]]:
    """The name without its layer suffixes, and the layers, outermost first.

    At most one encryption suffix, last, and before it at most one
    compression suffix (SPEC 1.1); anything else stays part of the name.
    """
    found: list[Layer] = []
    base = name
    for suffix in ENCRYPTION_SUFFIXES:
        if base.endswith(suffix):
            base, found = base[: -len(suffix)], ["pgp"]
            break
    for suffix, layer in COMPRESSION_SUFFIXES.items():
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            found.append(layer)
            break
    return base, tuple(found)


def expansion_limit(uploaded_bytes: int, max_expansion: int = MAX_EXPANSION) -> int | None:
    """Most plain bytes a file of ``uploaded_bytes`` may hold (None: no cap)."""
    if max_expansion <= 0:
        return None
    return max(uploaded_bytes * max_expansion, EXPANSION_FLOOR)


def expansion_error(max_expansion: int) -> FileRejected:
    return FileRejected.format(
        f"Compressed file expands to more than {max_expansion} times its size"
    )


# --------------------------------------------------------------------------- streams


def _zip_member(path: Path) -> tuple[zipfile.ZipFile, zipfile.ZipInfo]:
    """The archive and its one file; FileRejected for another count or kind."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        raise FileRejected.format(CORRUPT) from None
    # Directory entries and macOS's resource forks (Finder's "Compress") are
    # not the partner's file.
    files = [
        info
        for info in archive.infolist()
        if not info.is_dir() and not info.filename.startswith("__MACOSX/")
    ]
    if len(files) != 1:
        archive.close()
        raise FileRejected.format(ZIP_COUNT)
    info = files[0]
    if info.flag_bits & 0x1:
        archive.close()
        raise FileRejected.format(ZIP_ENCRYPTED)
    # bzip2 and lzma members are decompressed by zipfile without a bound on
    # the output of one read: a bomb would take all memory.
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        archive.close()
        raise FileRejected.format(ZIP_METHOD)
    return archive, info


class _ZipStream(io.RawIOBase):
    """The one file of a zip archive, closing the archive with it."""

    def __init__(self, path: Path) -> None:
        self._archive, info = _zip_member(path)
        self._member = self._archive.open(info)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._member.read(size)

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self._member.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._member.close()
            self._archive.close()
        super().close()


def open_decompressed(path: Path, layer: Layer) -> BinaryIO:
    """A forward-only stream of the decompressed content; reads are bounded by their size."""
    if layer == "gzip":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if layer == "zip":
        return _ZipStream(path)  # type: ignore[return-value]
    raise ValueError(f"not a compression layer: {layer!r}")


class Rewindable(io.RawIOBase):
    """A seekable view of a forward-only stream (see the module docstring).

    ``keep`` bytes before the furthest point read are kept for seeks back
    (up to twice that, trimmed in one move); ``rewinds`` counts the seeks
    further back, each a new pass over the stream from its start.
    """

    def __init__(self, opener: Callable[[], BinaryIO], *, keep: int) -> None:
        if keep < BLOCK:
            raise ValueError(f"keep must be at least {BLOCK} bytes")
        self._opener = opener
        self._keep = keep
        self._source = opener()
        self._window = bytearray()
        self._start = 0  # plain offset of _window[0]
        self._pos = 0
        self.rewinds = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("a decompressed stream has no known end")
        if offset < 0:
            raise ValueError(f"negative seek position {offset}")
        if offset < self._start:
            self._source.close()
            self._source = self._opener()
            self._window = bytearray()
            self._start = 0
            self.rewinds += 1
        self._pos = offset
        return offset

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        while self._pos >= self._start + len(self._window):
            if not self._fill():
                return 0
        at = self._pos - self._start
        size = min(len(buffer), len(self._window) - at)
        buffer[:size] = self._window[at : at + size]
        self._pos += size
        return size

    def _fill(self) -> bool:
        block = self._source.read(BLOCK)
        if not block:
            return False
        self._window += block
        if len(self._window) > 2 * self._keep:
            excess = len(self._window) - self._keep
            del self._window[:excess]
            self._start += excess
        return True

    def close(self) -> None:
        if not self.closed:
            self._source.close()
            self._window = bytearray()
        super().close()


def open_plain(path: Path, compression: Layer | None, *, max_row_bytes: int) -> BinaryIO:
    """The plain content of ``path`` (decrypted already), buffered and seekable."""
    if compression is None:
        return open(path, "rb", buffering=READ_BUFFER)
    # A quoted row looks ahead up to max_row_bytes plus one line of as much.
    keep = max(2 * max_row_bytes + READ_BUFFER, BLOCK)
    raw = Rewindable(lambda: open_decompressed(path, compression), keep=keep)
    return io.BufferedReader(raw, buffer_size=READ_BUFFER)


def check_stream(path: Path, compression: Layer, *, limit: int | None) -> int:
    """Read the decompressed stream to its end; its size, or FileRejected.

    Raises ``FileRejected`` with :data:`CORRUPT` for a damaged or truncated
    archive and ``OverflowError`` once more than ``limit`` bytes came out.
    """
    size = 0
    try:
        with open_decompressed(path, compression) as stream:
            while block := stream.read(READ_BUFFER):
                size += len(block)
                if limit is not None and size > limit:
                    raise OverflowError(size)
    except FileRejected:
        raise
    except _DAMAGED:
        raise FileRejected.format(CORRUPT) from None
    return size


@dataclass(frozen=True, kw_only=True, slots=True)
class Source:
    """What the reader reads: a file (the upload or its decrypted copy) and its compression."""

    path: Path
    layers: tuple[Layer, ...]  # as the summary lists them, outermost first
    plain_bytes: int

    def __post_init__(self) -> None:
        if self.plain_bytes < 0:
            raise ValueError("plain_bytes must be >= 0")
        if self.layers.count("pgp") > 1 or len(self.layers) > 2:
            raise ValueError(f"at most one encryption and one compression layer: {self.layers}")

    @property
    def compression(self) -> Layer | None:
        inner = [layer for layer in self.layers if layer != "pgp"]
        return inner[0] if inner else None

    def open(self, *, max_row_bytes: int) -> BinaryIO:
        return open_plain(self.path, self.compression, max_row_bytes=max_row_bytes)


# --------------------------------------------------------------------------- the shell


def decrypted_copy(work: Path) -> Path:
    """Where an import's decrypted copy lives (complete and verified when present)."""
    return work / "decrypted"


def prepare(
    path: Path,
    name: str,
    *,
    work: Path,
    pgp_home: Path,
    signer: tuple[str, str] | None,
    max_expansion: int = MAX_EXPANSION,
) -> Source:
    """Undo the encryption of ``path`` (named ``name``) and check its compression.

    ``work`` is the import's own directory outside the tenant tree; the
    decrypted copy made there is kept for a resumed run until
    :func:`discard` removes it. ``signer``: the public key (armoured) and
    fingerprint the tenant's files must be signed with. Raises
    ``FileRejected`` for a bad layer.
    """
    from personsd import pgp  # the validator process never decrypts

    _, layers = split_name(name)
    uploaded = path.stat().st_size
    limit = expansion_limit(uploaded, max_expansion)
    readable = path
    if layers[:1] == ("pgp",):
        readable = decrypted_copy(work)
        if not readable.exists():
            work.mkdir(parents=True, exist_ok=True, mode=0o700)
            partial = work / "decrypted.part"
            fingerprint = None
            if signer is not None:
                # gpg judges a signature only by a key it holds; which key it
                # must be is checked by fingerprint, so one keyring serves all.
                fingerprint = pgp.import_key(pgp_home, signer[0])
                if fingerprint != signer[1]:
                    raise InternalError(f"stored verify key is {fingerprint}, not {signer[1]}")
            try:
                pgp.decrypt(pgp_home, path, partial, signer=fingerprint, limit=limit)
            except pgp.Overflow:
                partial.unlink(missing_ok=True)
                raise _expansion(max_expansion, uploaded, "pgp") from None
            os.replace(partial, readable)
    compression = next((layer for layer in layers if layer != "pgp"), None)
    if compression is None:
        plain = readable.stat().st_size
    else:
        try:
            plain = check_stream(readable, compression, limit=limit)
        except OverflowError:
            raise _expansion(max_expansion, uploaded, compression) from None
    return Source(path=readable, layers=layers, plain_bytes=plain)


def _expansion(max_expansion: int, uploaded: int, layer: Layer) -> FileRejected:
    from personsd.logging import Event, get_logger

    get_logger("personsd.layers").warning(
        Event.IMPORT_EXPANSION_CAPPED, layer=layer, bytes=uploaded, max_expansion=max_expansion
    )
    return expansion_error(max_expansion)


def discard(work: Path) -> None:
    """Delete an import's decrypted copy (the import ended, whatever its status)."""
    for leftover in (decrypted_copy(work), work / "decrypted.part"):
        leftover.unlink(missing_ok=True)
