"""The file tree one tenant sees over SFTP (SPEC sections 1.1 and 6).

A virtual root holds exactly ``/inbox`` and ``/validate`` (upload, list,
remove; the same rules, SPEC 11) and ``/outbox`` (list, download, remove).
"The inbox" below means either upload box. Client paths are normalised like inside a chroot
(``..`` stops at ``/``), so anything that is not ``/``, a box, or a plain name
directly inside a box resolves to nothing. Files are only ever reached by name
relative to the box's directory fd, with ``O_NOFOLLOW`` and ``lstat``, so a
symlink planted on disk leads nowhere.

Names (SPEC 1.1): in the inbox, names starting with ``.`` and names ending in
``.filepart``, ``.part``, … are a client's uploads in progress: it may create,
write, rename and remove them, and the daemon ignores them. Our own upload
temp files (``.<name>.<16 hex>.upload``) are invisible and no client may
create such a name. In the outbox every dot-name is ours and invisible. A
client creates no name longer than ``MAX_NAME_BYTES`` (UTF-8) or holding a
control character.

Uploads are written to a hidden temp name and renamed to their name when the
client closes the handle; a handle never closed (dropped connection) is
removed. Only the client's explicit CLOSE finishes an upload. Rules where
SPEC is silent:

* an upload with a failed write (a cap, a full disk) fails at CLOSE too and
  leaves nothing: a file with a part missing is never handed to the daemon;
* an upload onto a name still in the inbox (not yet claimed) replaces it
  atomically on close; reopening an existing file without truncating it
  (resume, append) is refused, since the watcher may already have seen it;
* ``on_upload`` is called for each file that becomes complete under a name
  the watcher does not ignore: on close, and on a rename such as
  ``.in.x.persons`` → ``x.persons``;
* rename works only within one upload box, from a file to a name that does not
  exist yet (never replaces; ``posix-rename`` likewise);
* the inbox is write-only (no download of one's own uploads); the outbox is
  read-only; setstat of times or permissions (and of the size the file
  already has, as lftp sends) on one's own file, also through an open handle
  and right after the daemon claimed the upload, answers OK and changes
  nothing; another size, an owner, symlink, readlink, mkdir and rmdir are
  refused.

Caps (:mod:`personsd.sftpbudget`): handles per session and per tenant, the
process's descriptors, the inbox quota (checked at open for files and at
each write that extends an upload for bytes; holes count), holes per upload,
file size, request size.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import paramiko
import structlog
from paramiko.sftp import CMD_CLOSE, CMD_EXTENDED, CMD_OPEN, CMD_OPENDIR

from personsd.fileformat import classify_name
from personsd.logging import Event
from personsd.sftpbudget import (
    UPLOAD_TEMP,
    FdBudget,
    InboxQuota,
    LimitLog,
    SftpLimits,
    TenantBudget,
)
from personsd.sftpwire import FencedSftpServer, Refusal

__all__ = [
    "BOXES",
    "MAX_NAME_BYTES",
    "UPLOAD_TEMP",
    "Session",
    "SftpLimits",
    "TenantFs",
    "TenantSftp",
    "sweep_stale_uploads",
]

# paramiko is untyped: give its status codes a type once.
SFTP_OK: int = paramiko.SFTP_OK
SFTP_FAILURE: int = paramiko.SFTP_FAILURE
SFTP_NO_SUCH_FILE: int = paramiko.SFTP_NO_SUCH_FILE
SFTP_PERMISSION_DENIED: int = paramiko.SFTP_PERMISSION_DENIED
SFTP_OP_UNSUPPORTED: int = paramiko.SFTP_OP_UNSUPPORTED

UPLOAD_BOXES = ("inbox", "validate")
BOXES = (*UPLOAD_BOXES, "outbox")
MAX_NAME_BYTES = 200  # SPEC 1.1: every name derived from it (reports, archive) still fits
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
DELIVERED_MEMORY_SECONDS = 60.0


@dataclass(frozen=True, kw_only=True, slots=True)
class Session:
    """What the file tree needs to know about the logged-in connection and the server."""

    tenant: str
    ip: str
    tenants_root: Path
    limits: SftpLimits
    on_upload: Callable[[str, Path], None]
    touch: Callable[[], None]  # marks the connection active (idle timeout)
    budget: TenantBudget
    fds: FdBudget
    quota: InboxQuota
    limit_log: LimitLog

    def limit(self, limit: str, message: str, code: int = SFTP_FAILURE, **extra: Any) -> Refusal:
        """Log that ``limit`` was hit; the refusal the client gets."""
        self.limit_log.hit(limit, tenant=self.tenant, ip=self.ip, **extra)
        return Refusal(code, message)


class SessionSource(Protocol):
    """The connection's auth object, as the SFTP subsystem sees it."""

    def sftp_session(self) -> Session: ...

    def subsystem_started(self, handler: threading.Thread) -> None: ...


def _log() -> Any:
    return structlog.get_logger()


def resolve(path: str) -> tuple[str, ...] | None:
    """``()`` for the root, ``(box,)`` or ``(box, name)``; None when nothing is there."""
    if "\x00" in path:
        return None
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    if not parts:
        return ()
    if parts[0] not in BOXES or len(parts) > 2:
        return None
    return tuple(parts)


def canonical(path: str) -> str:
    """The normalised virtual path (what REALPATH answers)."""
    parts: list[str] = []
    for part in path.replace("\x00", "").split("/"):
        if part == "..":
            if parts:
                parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return "/" + "/".join(parts)


def _plain(name: str) -> bool:
    return not any(ord(c) < 32 or ord(c) == 127 for c in name)


def visible_name(box: str, name: str) -> bool:
    """A name a client may see and reach in ``box``: ours (temp files) are not."""
    if box in UPLOAD_BOXES:
        return not UPLOAD_TEMP.match(name) and _plain(name)
    return not name.startswith(".") and _plain(name)


def name_bytes(name: str) -> int:
    return len(name.encode("utf-8", "surrogateescape"))


def creatable_name(name: str) -> bool:
    """A name a client may give an inbox file (open for writing, rename target)."""
    return visible_name("inbox", name) and name_bytes(name) <= MAX_NAME_BYTES


def _errno_code(exc: OSError) -> int:
    if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
        return SFTP_NO_SUCH_FILE
    if exc.errno in (errno.EACCES, errno.EPERM):
        return SFTP_PERMISSION_DENIED
    return SFTP_FAILURE


def _attrs(st: os.stat_result, name: str) -> paramiko.SFTPAttributes:
    attr = paramiko.SFTPAttributes.from_stat(st, name)
    attr.st_uid = attr.st_gid = 0  # the server's accounts are none of the client's business
    return attr


def _cosmetic(attr: paramiko.SFTPAttributes, size: int) -> bool:
    """Times, permissions, the size the file has (lftp): acknowledged, changing nothing."""
    return attr.st_size in (None, size) and attr.st_uid is None and attr.st_gid is None


class _Download(paramiko.SFTPHandle):  # type: ignore[misc]
    """A read-only outbox file; every READ is served up to ``max_read_bytes``."""

    def __init__(self, fd: int, limits: SftpLimits) -> None:
        super().__init__(os.O_RDONLY)
        self._fd: int | None = fd
        self._limits = limits

    def read(self, offset: int, length: int) -> bytes | int:
        if self._fd is None:
            return SFTP_FAILURE
        # The client chooses length (up to 4 GiB): never allocate it.
        try:
            return os.pread(self._fd, min(length, self._limits.max_read_bytes), offset)
        except (OSError, OverflowError):
            return SFTP_FAILURE

    def write(self, offset: int, data: bytes) -> int:
        return SFTP_PERMISSION_DENIED

    def stat(self) -> paramiko.SFTPAttributes | int:
        if self._fd is None:
            return SFTP_FAILURE
        return _attrs(os.fstat(self._fd), "")

    def chattr(self, attr: paramiko.SFTPAttributes) -> int:
        if self._fd is None:
            return SFTP_FAILURE
        return SFTP_OK if _cosmetic(attr, os.fstat(self._fd).st_size) else SFTP_OP_UNSUPPORTED

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def finish(self) -> int:
        self.close()
        return SFTP_OK


class _Upload(paramiko.SFTPHandle):  # type: ignore[misc]
    """An inbox upload: written under a hidden temp name, renamed on the client's CLOSE."""

    def __init__(self, fs: TenantFs, box: str, fd: int, temp: str, name: str) -> None:
        super().__init__(os.O_WRONLY)
        self._fs = fs
        self._box = box
        self._fd: int | None = fd
        self._temp = temp
        self._name = name
        self._end = 0  # apparent size: the highest offset written
        self._received = 0  # bytes the client sent; end - received bounds the holes
        self._refused: Refusal | None = None  # a write failed: every later one and CLOSE too

    def read(self, offset: int, length: int) -> int:
        return SFTP_PERMISSION_DENIED

    def _check(self, offset: int, size: int) -> Refusal | None:
        session = self._fs.session
        limits = session.limits
        end = offset + size
        if end > limits.max_file_bytes:
            return session.limit("file_bytes", "File too large", file=self._name)
        holes = max(end, self._end) - (self._received + size)
        if holes > limits.max_write_gap_bytes:
            return session.limit(
                "write_gap_bytes", "Write far beyond the data written", file=self._name
            )
        if end > self._end and session.quota.grow(session.tenant, self, end) is not None:
            return session.limit("inbox_bytes", "Inbox quota exceeded (bytes)", file=self._name)
        return None

    def write(self, offset: int, data: bytes) -> int:
        if self._fd is None:
            return SFTP_FAILURE
        if self._refused is None:
            self._refused = self._check(offset, len(data))
        if self._refused is not None:
            return self._refused
        try:
            os.pwrite(self._fd, data, offset)
        except OSError as exc:
            self._refused = Refusal(_errno_code(exc), exc.strerror or "Write failed")
            return self._refused
        self._end = max(self._end, offset + len(data))
        self._received += len(data)
        return SFTP_OK

    def stat(self) -> paramiko.SFTPAttributes | int:
        if self._fd is None:
            return SFTP_FAILURE
        return _attrs(os.fstat(self._fd), self._name)

    def chattr(self, attr: paramiko.SFTPAttributes) -> int:
        if self._fd is None:
            return SFTP_FAILURE
        return SFTP_OK if _cosmetic(attr, os.fstat(self._fd).st_size) else SFTP_OP_UNSUPPORTED

    def close(self) -> None:
        """Abandon the upload (paramiko calls this for handles left open at session end)."""
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        self._fs.unlink_quietly(self._box, self._temp)
        self._fs.session.quota.end_upload(self._fs.session.tenant, self)

    def finish(self) -> int:
        """The client's CLOSE: make the upload visible under its name, if it is whole."""
        if self._fd is None:
            return SFTP_FAILURE
        if self._refused is not None:  # a part is missing: never hand it to the daemon
            self.close()
            _log().info("sftp.upload_incomplete", tenant=self._fs.session.tenant, file=self._name)
            return Refusal(SFTP_FAILURE, "Upload incomplete: a write failed")
        fd, self._fd = self._fd, None
        box = self._fs.box_fd(self._box)
        session = self._fs.session
        try:
            try:
                os.fsync(fd)  # the client takes a successful close as "delivered"
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            os.rename(self._temp, self._name, src_dir_fd=box, dst_dir_fd=box)
        except OSError as exc:
            self._fs.unlink_quietly(self._box, self._temp)
            _log().error(
                "sftp.upload_failed", tenant=session.tenant, file=self._name, error=exc.strerror
            )
            return _errno_code(exc)
        finally:
            session.quota.end_upload(session.tenant, self)
        with contextlib.suppress(OSError):
            os.fsync(box)  # the rename itself survives a crash too
            self._fs.remember(
                (self._box, self._name), os.stat(self._name, dir_fd=box, follow_symlinks=False)
            )
        _log().info(
            Event.SFTP_UPLOAD,
            tenant=session.tenant,
            file=self._name,
            bytes=size,
            ip=session.ip,
            box=self._box,
        )
        self._fs.notify(self._box, self._name)
        return SFTP_OK


class TenantFs(paramiko.SFTPServerInterface):  # type: ignore[misc]
    """The SFTP requests of one logged-in tenant, confined to its three boxes."""

    def __init__(self, server: SessionSource, *args: Any, **kwargs: Any) -> None:
        super().__init__(server, *args, **kwargs)
        self._source = server
        self.session = server.sftp_session()
        self._fds: dict[str, int] = {}
        # Uploads this session delivered, by name: clients stat (paramiko's put) or
        # setstat (rclone, WinSCP) a file right after it is complete, by when the
        # daemon may have claimed it.
        self._delivered: dict[tuple[str, str], tuple[float, os.stat_result]] = {}

    # -- lifecycle ---------------------------------------------------------------------

    def session_started(self) -> None:
        tenant_dir = self.session.tenants_root / self.session.tenant
        for box in BOXES:
            (tenant_dir / box).mkdir(mode=0o750, parents=True, exist_ok=True)
        tenant_fd = os.open(tenant_dir, _DIR)
        try:
            for box in BOXES:
                self._fds[box] = os.open(box, _DIR, dir_fd=tenant_fd)
        finally:
            os.close(tenant_fd)

    def session_ended(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def box_fd(self, box: str) -> int:
        return self._fds[box]

    def unlink_quietly(self, box: str, name: str) -> None:
        with contextlib.suppress(OSError, KeyError):
            os.unlink(name, dir_fd=self._fds[box])

    def notify(self, box: str, name: str) -> None:
        """Hand a file that became complete in an upload box to the daemon."""
        self.session.quota.changed(self.session.tenant)
        if classify_name(name) == "ignore":
            return
        path = self.session.tenants_root / self.session.tenant / box / name
        try:
            self.session.on_upload(self.session.tenant, path)
        except Exception as exc:  # noqa: BLE001 -- the watcher's rescan still finds the file
            _log().error(
                "sftp.on_upload_failed", tenant=self.session.tenant, file=name, error=repr(exc)
            )

    # -- lookups -----------------------------------------------------------------------

    def _file(self, path: str) -> tuple[str, str] | int:
        """(box, name) of a visible regular file, else an SFTP status code."""
        where = resolve(path)
        if where is None or len(where) != 2 or not visible_name(*where):
            return SFTP_NO_SUCH_FILE
        box, name = where
        try:
            st = os.stat(name, dir_fd=self._fds[box], follow_symlinks=False)
        except OSError as exc:
            return _errno_code(exc)
        if not stat.S_ISREG(st.st_mode):
            return SFTP_NO_SUCH_FILE
        return box, name

    def _exists(self, box: str, name: str) -> bool:
        try:
            os.stat(name, dir_fd=self._fds[box], follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def remember(self, name: tuple[str, str], st: os.stat_result) -> None:
        now = time.monotonic()
        self._delivered = {
            n: v for n, v in self._delivered.items() if now - v[0] < DELIVERED_MEMORY_SECONDS
        }
        self._delivered[name] = (now, st)

    def _recently_delivered(self, where: tuple[str, ...]) -> os.stat_result | None:
        if len(where) != 2 or (where[0], where[1]) not in self._delivered:
            return None
        when, st = self._delivered[(where[0], where[1])]
        return st if time.monotonic() - when < DELIVERED_MEMORY_SECONDS else None

    def stat(self, path: str) -> paramiko.SFTPAttributes | int:
        where = resolve(path)
        if where is None:
            return SFTP_NO_SUCH_FILE
        if where == ():
            return _attrs(os.fstat(self._fds["inbox"]), "/")
        if len(where) == 1:
            return _attrs(os.fstat(self._fds[where[0]]), where[0])
        found = self._file(path)
        if not isinstance(found, int):
            box, name = found
            try:
                return _attrs(os.stat(name, dir_fd=self._fds[box], follow_symlinks=False), name)
            except FileNotFoundError:
                found = SFTP_NO_SUCH_FILE  # claimed by the daemon in between
        delivered = self._recently_delivered(where) if found == SFTP_NO_SUCH_FILE else None
        if delivered is not None:
            return _attrs(delivered, where[1])  # delivered, then claimed by the daemon
        return found

    lstat = stat  # symlinks are invisible, so both are the same

    def canonicalize(self, path: str) -> str:
        return canonical(path)

    def list_folder(self, path: str) -> list[paramiko.SFTPAttributes] | int:
        where = resolve(path)
        if where == ():
            return [_attrs(os.fstat(self._fds[box]), box) for box in BOXES]
        if where is None or len(where) != 1:
            return SFTP_NO_SUCH_FILE
        box = where[0]
        box_fd = self._fds[box]
        listing_fd = os.open(".", _DIR, dir_fd=box_fd)  # own fd: listdir consumes its offset
        try:
            names = os.listdir(listing_fd)
        finally:
            os.close(listing_fd)
        out = []
        for name in sorted(names):
            if not visible_name(box, name):
                continue
            try:
                st = os.stat(name, dir_fd=box_fd, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                out.append(_attrs(st, name))
        return out

    def chattr(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        """Times and permissions on one's own file: OK, nothing changes; the rest: refused."""
        where = resolve(path)
        if where is None:
            return SFTP_NO_SUCH_FILE
        if len(where) != 2:
            return SFTP_PERMISSION_DENIED  # the root and the boxes are not the tenant's to change
        found = self.stat(path)  # also a file this session delivered and the daemon claimed
        if isinstance(found, int):
            return found
        return SFTP_OK if _cosmetic(attr, found.st_size) else SFTP_OP_UNSUPPORTED

    # -- files -------------------------------------------------------------------------

    def open(self, path: str, flags: int, attr: paramiko.SFTPAttributes) -> Any:
        self.session.touch()
        where = resolve(path)
        if where is None or len(where) != 2:
            return SFTP_NO_SUCH_FILE if where is None else SFTP_PERMISSION_DENIED
        box, name = where
        if box == "outbox":
            if not visible_name(box, name):
                return SFTP_NO_SUCH_FILE
            return self._open_download(name, flags)
        if not creatable_name(name):  # ours, a control character, or too long
            if visible_name(box, name):
                return self.session.limit(
                    "name_bytes", f"Name longer than {MAX_NAME_BYTES} bytes", SFTP_PERMISSION_DENIED
                )
            return SFTP_PERMISSION_DENIED
        return self._open_upload(box, name, flags)

    def _open_download(self, name: str, flags: int) -> Any:
        writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
        if flags & writing:
            return SFTP_PERMISSION_DENIED
        try:
            fd = os.open(
                name,
                os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                dir_fd=self._fds["outbox"],
            )
        except OSError as exc:
            return _errno_code(exc)
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device planted on disk
            os.close(fd)
            return SFTP_NO_SUCH_FILE
        return _Download(fd, self.session.limits)

    def _open_upload(self, box: str, name: str, flags: int) -> Any:
        if flags & (os.O_RDWR | os.O_WRONLY) != os.O_WRONLY:
            return SFTP_PERMISSION_DENIED  # the inbox is write-only
        exists = self._exists(box, name)
        if exists and flags & os.O_EXCL:
            return SFTP_FAILURE
        if exists and not flags & os.O_TRUNC:
            return SFTP_FAILURE  # resuming would edit a file the watcher may have seen
        if not exists and not flags & os.O_CREAT:
            return SFTP_NO_SUCH_FILE
        # A dot-name of our own, distinct from any a client can create (UPLOAD_TEMP).
        temp = f".{name[:40]}.{secrets.token_hex(8)}.upload"
        try:
            fd = os.open(
                temp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o640,
                dir_fd=self._fds[box],
            )
        except OSError as exc:
            return _errno_code(exc)
        upload = _Upload(self, box, fd, temp, name)
        if self.session.quota.open_upload(self.session.tenant, upload, temp) is not None:
            os.close(fd)
            self.unlink_quietly(box, temp)
            return self.session.limit("inbox_files", "Inbox quota exceeded (files)", file=name)
        return upload

    def remove(self, path: str) -> int:
        found = self._file(path)
        if isinstance(found, int):
            return found
        box, name = found
        try:
            os.unlink(name, dir_fd=self._fds[box])
        except OSError as exc:
            return _errno_code(exc)
        self.session.quota.changed(self.session.tenant)
        _log().info("sftp.remove", tenant=self.session.tenant, box=box, file=name)
        return SFTP_OK

    def rename(self, oldpath: str, newpath: str) -> int:
        """Within one upload box, never onto an existing name (``x.filepart`` → ``x.persons``)."""
        found = self._file(oldpath)
        if isinstance(found, int):
            return found
        target = resolve(newpath)
        upload_box = found[0]
        if (
            upload_box not in UPLOAD_BOXES
            or target is None
            or len(target) != 2
            or target[0] != upload_box
        ):
            return SFTP_PERMISSION_DENIED  # no move between boxes: a file's box is its mode
        old, new = found[1], target[1]
        if not creatable_name(new):
            if visible_name(upload_box, new):
                return self.session.limit(
                    "name_bytes", f"Name longer than {MAX_NAME_BYTES} bytes", SFTP_PERMISSION_DENIED
                )
            return SFTP_PERMISSION_DENIED
        box = self._fds[upload_box]
        try:
            # link + unlink: atomic "fail if the new name exists", unlike rename(2).
            os.link(old, new, src_dir_fd=box, dst_dir_fd=box, follow_symlinks=False)
            os.unlink(old, dir_fd=box)
        except FileExistsError:
            return SFTP_FAILURE
        except OSError as exc:
            return _errno_code(exc)
        with contextlib.suppress(OSError):
            self.remember((upload_box, new), os.stat(new, dir_fd=box, follow_symlinks=False))
        _log().info(
            "sftp.rename", tenant=self.session.tenant, box=upload_box, file=new, renamed_from=old
        )
        self.notify(upload_box, new)
        return SFTP_OK

    posix_rename = rename  # same rule: never replace

    def mkdir(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        return SFTP_PERMISSION_DENIED

    def rmdir(self, path: str) -> int:
        return SFTP_PERMISSION_DENIED

    def symlink(self, target_path: str, path: str) -> int:
        return SFTP_OP_UNSUPPORTED

    def readlink(self, path: str) -> int:
        return SFTP_OP_UNSUPPORTED


class TenantSftp(FencedSftpServer):
    """paramiko's SFTP subsystem with the caps and the CLOSE semantics we need."""

    server: TenantFs
    file_table: dict[bytes, Any]
    folder_table: dict[bytes, Any]

    def __init__(
        self, channel: paramiko.Channel, name: str, server: SessionSource, *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(channel, name, server, *args, **kwargs)
        self.max_request_bytes = self.server.session.limits.max_request_bytes
        self._held = 0  # handle slots taken from the tenant's budget
        server.subsystem_started(self)  # so the connection can join it on the way out

    def _open_handles(self) -> int:
        return len(self.file_table) + len(self.folder_table)

    def _settle_handles(self) -> None:
        """Give back the tenant's slots this session no longer uses."""
        session = self.server.session
        while self._held > self._open_handles():
            self._held -= 1
            session.budget.release_handle(session.tenant)

    def finish_subsystem(self) -> None:
        # paramiko ends the session (our directory fds) before closing the handles left
        # open; abandoned uploads need the inbox fd to remove their temp files.
        for handle in list(self.file_table.values()):
            handle.close()
        self.file_table = {}
        super().finish_subsystem()
        self._settle_handles()

    def request_too_large(self, size: int) -> None:
        session = self.server.session
        session.limit_log.hit("request_bytes", tenant=session.tenant, ip=session.ip, bytes=size)

    def _refuse_open(self) -> Refusal | None:
        session = self.server.session
        if self._open_handles() >= session.limits.max_handles:
            return session.limit("handles_per_session", "Too many open handles")
        if not session.fds.available():
            return session.limit("descriptors", "Too many open files on the server")
        if not session.budget.take_handle(session.tenant):
            return session.limit("handles_per_tenant", "Too many open handles for this account")
        self._held += 1
        return None

    def before_request(self, t: int, request_number: int, msg: paramiko.Message) -> bool:
        self.server.session.touch()
        if t in (CMD_OPEN, CMD_OPENDIR):
            refusal = self._refuse_open()
            if refusal is not None:
                self.send_status(request_number, refusal)
                return True
        elif t == CMD_CLOSE:
            item = self.file_table.pop(msg.get_binary(), None)
            if isinstance(item, _Upload | _Download):
                self.send_status(request_number, item.finish())
                return True
        elif t == CMD_EXTENDED and msg.get_text() != "posix-rename@openssh.com":
            self.send_status(request_number, SFTP_OP_UNSUPPORTED)
            return True
        return False

    def after_request(self, t: int) -> None:
        self._settle_handles()


def sweep_stale_uploads(tenants_root: Path, *, older_than: float = 0.0) -> int:
    """Remove the temp files of uploads cut short by a previous run; how many.

    Only those not modified for ``older_than`` seconds: on a tree shared by
    several instances, a younger one may be another instance's upload in progress.
    """
    removed = 0
    cutoff = time.time() - older_than
    if not tenants_root.is_dir():
        return 0
    for tenant_dir in tenants_root.iterdir():
        for name in UPLOAD_BOXES:
            inbox = tenant_dir / name
            if tenant_dir.is_symlink() or inbox.is_symlink() or not inbox.is_dir():
                continue
            for entry in os.scandir(inbox):
                if UPLOAD_TEMP.match(entry.name) and entry.is_file(follow_symlinks=False):
                    try:
                        if older_than and entry.stat(follow_symlinks=False).st_mtime > cutoff:
                            continue
                        os.unlink(entry.path)
                        removed += 1
                    except FileNotFoundError:
                        pass
    if removed:
        _log().info("sftp.stale_uploads_removed", count=removed)
    return removed
