"""The open files of an SFTP session: outbox downloads and inbox uploads.

Uploads are written to a hidden temp name and renamed to their name when the
client closes the handle (:meth:`Upload.finish`); a handle never closed
(dropped connection) is removed (:meth:`Upload.close`). An upload with a
failed write fails at CLOSE too and leaves nothing (see
:mod:`personsd.sftp.filesystem` for the rules).
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

import paramiko

from personsd.logging import Event, get_logger
from personsd.sftp.limits import SftpLimits
from personsd.sftp.replies import (
    SFTP_FAILURE,
    SFTP_OK,
    SFTP_OP_UNSUPPORTED,
    SFTP_PERMISSION_DENIED,
    attributes,
    cosmetic,
    errno_code,
)
from personsd.sftp.wire import Refusal

if TYPE_CHECKING:
    from personsd.sftp.filesystem import TenantFs

log = get_logger()


class Download(paramiko.SFTPHandle):  # type: ignore[misc]
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
        return attributes(os.fstat(self._fd), "")

    def chattr(self, attr: paramiko.SFTPAttributes) -> int:
        if self._fd is None:
            return SFTP_FAILURE
        return SFTP_OK if cosmetic(attr, os.fstat(self._fd).st_size) else SFTP_OP_UNSUPPORTED

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def finish(self) -> int:
        self.close()
        return SFTP_OK


class Upload(paramiko.SFTPHandle):  # type: ignore[misc]
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
            self._refused = Refusal(errno_code(exc), exc.strerror or "Write failed")
            return self._refused
        self._end = max(self._end, offset + len(data))
        self._received += len(data)
        return SFTP_OK

    def stat(self) -> paramiko.SFTPAttributes | int:
        if self._fd is None:
            return SFTP_FAILURE
        return attributes(os.fstat(self._fd), self._name)

    def chattr(self, attr: paramiko.SFTPAttributes) -> int:
        if self._fd is None:
            return SFTP_FAILURE
        return SFTP_OK if cosmetic(attr, os.fstat(self._fd).st_size) else SFTP_OP_UNSUPPORTED

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
            log.info(Event.SFTP_UPLOAD_INCOMPLETE, tenant=self._fs.session.tenant, file=self._name)
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
            log.error(
                Event.SFTP_UPLOAD_FAILED, tenant=session.tenant, file=self._name, error=exc.strerror
            )
            return errno_code(exc)
        finally:
            session.quota.end_upload(session.tenant, self)
        with contextlib.suppress(OSError):
            os.fsync(box)  # the rename itself survives a crash too
            self._fs.remember(
                (self._box, self._name), os.stat(self._name, dir_fd=box, follow_symlinks=False)
            )
        log.info(
            Event.SFTP_UPLOAD,
            tenant=session.tenant,
            file=self._name,
            bytes=size,
            ip=session.ip,
            box=self._box,
        )
        self._fs.notify(self._box, self._name)
        return SFTP_OK
