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

Caps (:mod:`personsd.sftp.limits`): handles per session and per tenant, the
process's descriptors (both in :mod:`personsd.sftp.subsystem`), the inbox
quota (checked at open for files and at each write that extends an upload
for bytes; holes count), holes per upload, file size, request size.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Any

import paramiko

from personsd.fileformat import classify_name
from personsd.logging import Event, get_logger
from personsd.outbox import NEW_FILE
from personsd.sftp.handles import Download, Upload
from personsd.sftp.paths import (
    BOXES,
    MAX_NAME_BYTES,
    UPLOAD_BOXES,
    canonical,
    creatable_name,
    resolve,
    visible_name,
)
from personsd.sftp.quota import UPLOAD_TEMP
from personsd.sftp.replies import (
    SFTP_FAILURE,
    SFTP_NO_SUCH_FILE,
    SFTP_OK,
    SFTP_OP_UNSUPPORTED,
    SFTP_PERMISSION_DENIED,
    attributes,
    cosmetic,
    errno_code,
)
from personsd.sftp.session import SessionSource
from personsd.tenancy import BOX_MODE

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
DELIVERED_MEMORY_SECONDS = 60.0

log = get_logger()


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
            (tenant_dir / box).mkdir(mode=BOX_MODE, parents=True, exist_ok=True)
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
            log.error(
                Event.SFTP_ON_UPLOAD_FAILED, tenant=self.session.tenant, file=name, error=repr(exc)
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
            return errno_code(exc)
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
            return attributes(os.fstat(self._fds["inbox"]), "/")
        if len(where) == 1:
            return attributes(os.fstat(self._fds[where[0]]), where[0])
        found = self._file(path)
        if not isinstance(found, int):
            box, name = found
            try:
                return attributes(os.stat(name, dir_fd=self._fds[box], follow_symlinks=False), name)
            except FileNotFoundError:
                found = SFTP_NO_SUCH_FILE  # claimed by the daemon in between
        delivered = self._recently_delivered(where) if found == SFTP_NO_SUCH_FILE else None
        if delivered is not None:
            return attributes(delivered, where[1])  # delivered, then claimed by the daemon
        return found

    lstat = stat  # symlinks are invisible, so both are the same

    def canonicalize(self, path: str) -> str:
        return canonical(path)

    def list_folder(self, path: str) -> list[paramiko.SFTPAttributes] | int:
        where = resolve(path)
        if where == ():
            return [attributes(os.fstat(self._fds[box]), box) for box in BOXES]
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
                out.append(attributes(st, name))
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
        return SFTP_OK if cosmetic(attr, found.st_size) else SFTP_OP_UNSUPPORTED

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
            return errno_code(exc)
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device planted on disk
            os.close(fd)
            return SFTP_NO_SUCH_FILE
        return Download(fd, self.session.limits)

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
            fd = os.open(temp, NEW_FILE, 0o640, dir_fd=self._fds[box])
        except OSError as exc:
            return errno_code(exc)
        upload = Upload(self, box, fd, temp, name)
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
            return errno_code(exc)
        self.session.quota.changed(self.session.tenant)
        log.info(Event.SFTP_REMOVE, tenant=self.session.tenant, box=box, file=name)
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
            return errno_code(exc)
        with contextlib.suppress(OSError):
            self.remember((upload_box, new), os.stat(new, dir_fd=box, follow_symlinks=False))
        log.info(
            Event.SFTP_RENAME,
            tenant=self.session.tenant,
            box=upload_box,
            file=new,
            renamed_from=old,
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
        log.info(Event.SFTP_STALE_UPLOADS_REMOVED, count=removed)
    return removed
