"""What the SFTP server answers: status codes, an OS error's code, a file's attributes."""

from __future__ import annotations

import errno
import os

import paramiko

# paramiko is untyped: give its status codes a type once.
SFTP_OK: int = paramiko.SFTP_OK
SFTP_FAILURE: int = paramiko.SFTP_FAILURE
SFTP_NO_SUCH_FILE: int = paramiko.SFTP_NO_SUCH_FILE
SFTP_PERMISSION_DENIED: int = paramiko.SFTP_PERMISSION_DENIED
SFTP_OP_UNSUPPORTED: int = paramiko.SFTP_OP_UNSUPPORTED


def errno_code(exc: OSError) -> int:
    if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
        return SFTP_NO_SUCH_FILE
    if exc.errno in (errno.EACCES, errno.EPERM):
        return SFTP_PERMISSION_DENIED
    return SFTP_FAILURE


def attributes(st: os.stat_result, name: str) -> paramiko.SFTPAttributes:
    attr = paramiko.SFTPAttributes.from_stat(st, name)
    attr.st_uid = attr.st_gid = 0  # the server's accounts are none of the client's business
    return attr


def cosmetic(attr: paramiko.SFTPAttributes, size: int) -> bool:
    """Times, permissions, the size the file has (lftp): acknowledged, changing nothing."""
    return attr.st_size in (None, size) and attr.st_uid is None and attr.st_gid is None
