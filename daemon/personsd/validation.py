"""Chunks of validated rows, made in this process or, for big files, in a second one.

Reading and validating a row (``fileformat`` then ``rules.validate``) needs
nothing but the file and the tenant's fields, so it can run ahead of the
database work, on the machine's other core. The importer asks
:func:`open_chunks` for the chunks of an import from its checkpoint and
gets the same :class:`ValidatedChunk` values either way:

* inline, in the calling thread: for small files (a second interpreter costs
  about 0.2 s to start) and single-core machines;
* from a validator process (``python -m personsd.validation``): it reads,
  validates and, with ``carrier_lookup = "offline"``, checks the MDNs of the
  next chunk while this process applies and writes the current one. It
  sends length-prefixed frames on a pipe; a full pipe holds it back, so at
  most two chunks are in flight whatever the file's size. Its stdin carries
  the job, then the importer's advice: whether checking MDNs ahead is worth
  it (a delta load assigns no new MDN).

The chunks and their wire form (plain tuples, pure ``encode``/``decode``)
are ``personsd.chunk``'s; this module is the shell that makes them.

The validator process holds no state worth keeping: it ignores SIGINT and
SIGTERM (systemd signals the whole control group; the daemon decides when
work stops), is killed when its chunks are no longer wanted, and exits on a
broken pipe when its parent dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import pickle
import signal
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, BinaryIO, Literal

from personsd import fileformat, layers, rules
from personsd.chunk import (
    PICKLE_PROTOCOL,
    RowFailure,
    ValidatedChunk,
    ValidatedRow,
    decode,
    encode,
    iter_chunks,
    validate_chunk,
)
from personsd.errors import InternalError
from personsd.fieldtypes import CustomField
from personsd.fileformat import Layout, RawRow

# The chunk's names, where importer and tests always found them.
__all__ = [
    "RowFailure",
    "ValidatedChunk",
    "ValidatedRow",
    "decode",
    "encode",
    "iter_chunks",
    "validate_chunk",
]

Mode = Literal["auto", "inline", "process"]
MODES: tuple[Mode, ...] = ("auto", "inline", "process")

# Below this many bytes still to read, starting a validator process costs
# more than it saves (about 0.2 s against ~20 µs a row, ~55 bytes a row).
PROCESS_MIN_BYTES = 2 << 20
_FRAME = struct.Struct("!Q")


# An import allocates millions of short-lived containers (rows, persons,
# attribute dicts) and keeps a chunk's worth alive: with the default young
# generation of 700 objects, the cycle collector ran often enough over those
# to cost about a fifth of a delta load. None of them form cycles.
GC_THRESHOLDS = (50_000, 10, 10)
# glibc raises its mmap threshold each time a large block is freed, after
# which the chunk-sized buffers (frames of ~1 MB, lists of a chunk's rows)
# come from the heap and fragment it: the validator's RSS grew by ~20 MB per
# million rows. A fixed threshold keeps them in mmap, returned when freed.
MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def tune_memory() -> None:
    """Collector and allocator settings for import work (personsd's entry points call it)."""
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass  # not glibc: its allocator has its own policy


# --------------------------------------------------------------------------- the shell


@dataclass(frozen=True, kw_only=True, slots=True)
class Job:
    """What a validator process needs: the file from a position, the layout and fields."""

    path: str
    layout: Layout
    fields: tuple[CustomField, ...]
    offset: int | None
    line: int | None
    row: int
    chunk_rows: int
    max_row_bytes: int
    precheck: bool
    compression: layers.Layer | None = None  # `path` is read through it (SPEC 11)

    def open(self) -> BinaryIO:
        """The plain content of the job's file, seekable."""
        return layers.open_plain(
            Path(self.path), self.compression, max_row_bytes=self.max_row_bytes
        )

    def rows(self, fh: BinaryIO) -> Iterator[RawRow]:
        return fileformat.iter_rows(
            fh,
            self.layout,
            max_row_bytes=self.max_row_bytes,
            offset=self.offset,
            line=self.line,
            row=self.row,
        )

    def chunks(
        self, fh: BinaryIO, advice: bool | Callable[[], bool] = True
    ) -> Iterator[ValidatedChunk]:
        """The job's chunks; ``advice`` (the importer's) may turn the precheck off."""
        schema = rules.Schema(fields=self.fields)
        precheck: bool | Callable[[], bool] = advice if self.precheck else False
        return iter_chunks(self.rows(fh), self.layout, schema, self.chunk_rows, precheck=precheck)


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux, or the call filtered out
        return os.cpu_count() or 1


def choose(mode: Mode, *, remaining_bytes: int) -> Literal["inline", "process"]:
    """Where to validate: ``auto`` takes a process for big files on a multi-core machine."""
    if mode == "auto":
        big = remaining_bytes >= PROCESS_MIN_BYTES
        return "process" if big and usable_cpus() > 1 else "inline"
    if mode not in MODES:
        raise ValueError(f"unknown validation mode {mode!r}: one of {', '.join(MODES)}")
    return mode


class Chunks:
    """The validated chunks of a job, inline or from a validator process; close when done."""

    def __init__(self, job: Job, mode: Literal["inline", "process"]) -> None:
        self.job = job
        self.mode = mode
        self._fh: BinaryIO | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._advised = True
        if mode == "process":
            try:
                self._proc = _start(job)
            except OSError as exc:
                # Only an optimisation: a machine out of processes or memory
                # still imports, inline. (Logging is imported here: the
                # validator process itself must start light.)
                from personsd.logging import Event, get_logger

                get_logger("personsd.validation").warning(
                    Event.IMPORT_VALIDATOR_UNAVAILABLE, file=job.path, error=repr(exc)[:300]
                )
                self.mode = mode = "inline"
        if mode == "inline":
            self._fh = job.open()

    def __iter__(self) -> Iterator[ValidatedChunk]:
        if self._fh is not None:
            # Inline, a check ahead would only repeat the importer's own (and
            # check MDNs it never needs): the importer checks as it applies.
            yield from self.job.chunks(self._fh, advice=False)
            return
        assert self._proc is not None and self._proc.stdout is not None
        stream = self._proc.stdout
        while True:
            kind, payload = _read_frame(stream, self._proc)
            if kind == "end":
                return
            if kind == "error":
                raise InternalError(f"validator process failed: {payload.decode(errors='replace')}")
            if kind != "chunk":
                raise InternalError(f"validator process sent a {kind} frame")
            yield decode(payload, self.job.layout)

    def advise(self, *, precheck: bool) -> None:
        """Whether checking MDNs ahead is worth it, as the last chunk applied showed.

        A delta load assigns no new MDN, so the validator's offline checks
        would be wasted there; chunks validated after this say whether they
        were checked ahead, so results never depend on the advice.
        """
        proc = self._proc
        if proc is None or proc.stdin is None or precheck == self._advised:
            return
        self._advised = precheck
        try:
            proc.stdin.write(b"1" if precheck else b"0")
            proc.stdin.flush()
        except OSError:
            pass  # gone: the next frame read says so

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        proc, self._proc = self._proc, None
        if proc is not None:
            # Nothing in it is worth waiting for: its chunks are no longer wanted.
            if proc.poll() is None:
                proc.kill()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
            proc.wait()

    def __enter__(self) -> Chunks:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_chunks(job: Job, mode: Mode = "auto", *, file_bytes: int) -> Chunks:
    """The chunks of ``job`` (a context manager); ``file_bytes`` is the file's size."""
    start = job.layout.body_offset if job.offset is None else job.offset
    return Chunks(job, choose(mode, remaining_bytes=file_bytes - start))


def _start(job: Job) -> subprocess.Popen[bytes]:
    """The validator process, its job sent; OSError when it cannot be started."""
    # -P: the working directory must not shadow personsd's modules.
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "personsd.validation"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        close_fds=True,
    )
    assert proc.stdin is not None
    try:
        # Stdin stays open after the job: the importer's advice follows on it.
        _write_frame(proc.stdin, b"j", pickle.dumps(job, protocol=PICKLE_PROTOCOL))
    except OSError:
        proc.kill()
        proc.wait()
        raise
    return proc


_KINDS = {b"c": "chunk", b"e": "end", b"x": "error", b"j": "job"}


def _read_frame(
    stream: IO[bytes] | _Exactly, proc: subprocess.Popen[bytes] | None
) -> tuple[str, bytes]:
    head = stream.read(1 + _FRAME.size)
    if len(head) != 1 + _FRAME.size or head[:1] not in _KINDS:
        raise _ended(proc)
    (size,) = _FRAME.unpack(head[1:])
    payload = stream.read(size)
    if len(payload) != size:
        raise _ended(proc)
    return _KINDS[head[:1]], payload


def _ended(proc: subprocess.Popen[bytes] | None) -> InternalError:
    if proc is None:
        return InternalError("the validator's parent ended its input early")
    return InternalError(f"validator process ended unexpectedly (exit code {proc.wait()})")


class _Exactly:
    """Reads of exactly the size asked (or up to the end) from an unbuffered stream."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def read(self, size: int) -> bytes:
        parts, left = [], size
        while left:
            part = self._raw.read(left)
            if not part:
                break
            parts.append(part)
            left -= len(part)
        return b"".join(parts)


class _Advice:
    """The importer's latest advice on checking MDNs ahead, read without waiting."""

    def __init__(self, stream: Any) -> None:
        self._fd = stream.fileno()
        self._open = True
        self.precheck = True
        os.set_blocking(self._fd, False)

    def __call__(self) -> bool:
        while self._open:
            try:
                data = os.read(self._fd, 64)
            except BlockingIOError:
                break
            if not data:
                self._open = False  # the parent closed it (or is gone): keep the last word
                break
            self.precheck = data[-1:] == b"1"
        return self.precheck


def _write_frame(out: IO[bytes], kind: bytes, payload: bytes) -> None:
    out.write(kind + _FRAME.pack(len(payload)))
    out.write(payload)
    out.flush()


def main() -> int:
    """The validator process: a :class:`Job` frame then advice bytes on stdin, frames on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    tune_memory()
    # Frames own the real stdout; a stray print must not corrupt them.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    try:
        # Unbuffered: advice bytes after the job must not vanish into a buffer.
        stdin = sys.stdin.buffer.raw  # type: ignore[union-attr]
        kind, payload = _read_frame(_Exactly(stdin), None)
        if kind != "job":
            raise InternalError(f"expected a job, got a {kind} frame")
        job: Job = pickle.loads(payload)
        with job.open() as fh:
            for chunk in job.chunks(fh, _Advice(stdin)):
                frame = encode(chunk)
                del chunk  # the frame is all that is needed while the pipe is full
                _write_frame(out, b"c", frame)
                del frame
        _write_frame(out, b"e", b"")
    except BrokenPipeError:
        return 0  # the parent no longer wants the chunks (stopped, or gone)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which logs and retries
        with contextlib.suppress(BrokenPipeError):
            _write_frame(out, b"x", f"{type(exc).__name__}: {exc}".encode())
        return 1
    return 0


if __name__ == "__main__":
    # Run as `python -m`, this file is `__main__`; the job and the chunks it
    # makes are of the module imported under its own name, so its main runs.
    from personsd import validation

    sys.exit(validation.main())
