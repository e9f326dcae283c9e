"""Safe publication into a tenant's outbox (SPEC 4 and 6): a file appears whole or not at all.

Whatever a tenant plants in its outbox (a symlink, a FIFO, a directory at a
report's name, files at temp names) cannot redirect, block or loop the
publication: see :func:`publish`. A full disk is :class:`DiskFull`, an
environment fault the import waits out.
"""

from __future__ import annotations

import errno
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

from personsd.errors import TransientError
from personsd.logging import Event, get_logger

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

log = get_logger("personsd.outbox")

# Report files are readable by all: a file renamed into the outbox keeps
# personsd's group, so an OpenSSH tenant reads it as "other"; the outbox
# (personsd:<tenant> 2750, inside root:personsd 0750) keeps it to the tenant.
REPORT_MODE = 0o644
_TEMP_TRIES = 16  # fresh random temp names before giving up (each try is O_EXCL)
_RENAME_TRIES = 3  # directories moved off the final name before giving up
_NOT_MOVABLE = (errno.EACCES, errno.EPERM, errno.EXDEV)
# Opens a file created by this very call: never one already there, nor the
# target of a symlink planted at its name. For temp names in tenant-facing places.
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class DiskFull(TransientError, OSError):
    """No room to publish a report: an environment fault, told by its errno too.

    A :class:`TransientError` (the import waits and retries) that is also the
    ``OSError`` it was (``errno`` ``ENOSPC`` or ``EDQUOT``), so a classifier
    going by error codes judges it the same way.
    """


def _token() -> str:
    return secrets.token_hex(8)


def _open_dir(directory: Path, what: str) -> int:
    """A descriptor of ``directory`` itself: a symlink there is refused, never followed."""
    try:
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except NotADirectoryError:
        if directory.is_symlink():
            raise OSError(
                errno.ELOOP, f"{what} is a symbolic link; not publishing through it", str(directory)
            ) from None
        raise


def _write_temp(scratch_fd: int, source: Path | bytes) -> str:
    """A new file in the scratch directory with ``source``'s content, fsynced; its name."""
    for _ in range(_TEMP_TRIES):
        temp = f".{_token()}.publish"
        try:
            fd = os.open(temp, NEW_FILE, 0o600, dir_fd=scratch_fd)
        except FileExistsError:
            continue
        try:
            os.fchmod(fd, REPORT_MODE)  # not subject to the umask
            with os.fdopen(fd, "wb") as out:
                if isinstance(source, bytes):
                    out.write(source)
                else:
                    with source.open("rb") as src:
                        while chunk := src.read(1 << 20):
                            out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            os.unlink(temp, dir_fd=scratch_fd)
            raise
        return temp
    raise FileExistsError(errno.EEXIST, f"no free temp name after {_TEMP_TRIES} tries")


def _displace(outbox: Path, outbox_fd: int, name: str, displaced: Path) -> None:
    """Move a directory found at a report's name out of the way, logged, never deleted."""
    aside = f"{datetime.now(UTC):%Y%m%dT%H%M%S}.{_token()}"
    try:
        displaced.mkdir(parents=True, exist_ok=True)
        os.rename(name, displaced / aside, src_dir_fd=outbox_fd)
        moved_to = str(displaced / aside)
    except OSError as exc:
        if exc.errno not in _NOT_MOVABLE:
            raise
        # Moving a directory to another parent needs write permission on it
        # (its `..` changes) and the same filesystem; renaming it within the
        # outbox needs neither. Dot-named, it is hidden from listings.
        moved_to = f".displaced.{aside}"
        os.rename(name, moved_to, src_dir_fd=outbox_fd, dst_dir_fd=outbox_fd)
    log.warning(Event.OUTBOX_DISPLACED, outbox=str(outbox), name=name, moved_to=moved_to)


def publish(
    outbox: Path,
    name: str,
    source: Path | bytes,
    *,
    scratch: Path | None = None,
    displaced: Path | None = None,
) -> Path:
    """Make ``outbox/name`` appear atomically with the content of ``source``.

    The file is written in ``scratch`` (personsd's own directory, on the
    outbox's filesystem, where tenants cannot write; default: the directory
    of ``source``), created ``O_EXCL|O_NOFOLLOW`` under a fresh name, fsynced,
    and renamed into the outbox, which is opened ``O_NOFOLLOW`` (a symlinked
    outbox is refused). Whatever sits at ``name`` cannot redirect or block
    it: a file, symlink or FIFO is replaced by the rename, never opened or
    followed; a directory is moved to ``displaced`` (default:
    ``scratch/displaced``) and logged (``outbox.displaced``).

    Always a copy, never a link or rename of ``source``: the partial report stays
    in the work area until the import is recorded as finished, so a crash after
    publishing can publish again (same bytes), and the outbox file never shares
    an inode with a file personsd may still truncate. ENOSPC leaves no trace in
    the outbox and raises :class:`DiskFull` (a ``TransientError`` and an
    ``OSError`` with its errno); other ``OSError``s propagate as they are.
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"not a publishable name: {name!r}")
    if scratch is None:
        if isinstance(source, bytes):
            raise ValueError("publishing bytes needs a scratch directory")
        scratch = source.parent
    final = outbox / name
    outbox_fd = _open_dir(outbox, "the outbox")
    try:
        scratch_fd = _open_dir(scratch, "the scratch directory")
        try:
            temp = _write_temp(scratch_fd, source)
            try:
                _rename_in(
                    outbox,
                    outbox_fd,
                    name,
                    scratch_fd,
                    temp,
                    displaced if displaced is not None else scratch / "displaced",
                )
            except BaseException:
                os.unlink(temp, dir_fd=scratch_fd)
                raise
        finally:
            os.close(scratch_fd)
        os.fsync(outbox_fd)
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise DiskFull(
                exc.errno, f"disk full while publishing a report: {exc.strerror}", str(final)
            ) from exc
        raise
    finally:
        os.close(outbox_fd)
    return final


def _rename_in(
    outbox: Path, outbox_fd: int, name: str, scratch_fd: int, temp: str, displaced: Path
) -> None:
    for _ in range(_RENAME_TRIES):
        try:
            os.rename(temp, name, src_dir_fd=scratch_fd, dst_dir_fd=outbox_fd)
            return
        except IsADirectoryError:
            _displace(outbox, outbox_fd, name, displaced)
    raise IsADirectoryError(
        errno.EISDIR, f"a directory keeps reappearing at {name}", str(outbox / name)
    )
