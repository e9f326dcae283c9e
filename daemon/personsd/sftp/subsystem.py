"""paramiko's SFTP subsystem for one session, with the caps and the CLOSE semantics we need.

Handles per session and per tenant, the process's descriptors and the size
of one request are checked before paramiko sees a request; an upload's
CLOSE is answered by :meth:`~personsd.sftp.handles.Upload.finish`.
"""

from __future__ import annotations

from typing import Any

import paramiko
from paramiko.sftp import CMD_CLOSE, CMD_EXTENDED, CMD_OPEN, CMD_OPENDIR

from personsd.sftp.filesystem import TenantFs
from personsd.sftp.handles import Download, Upload
from personsd.sftp.replies import SFTP_OP_UNSUPPORTED
from personsd.sftp.session import SessionSource
from personsd.sftp.wire import FencedSftpServer, Refusal


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
            if isinstance(item, Upload | Download):
                self.send_status(request_number, item.finish())
                return True
        elif t == CMD_EXTENDED and msg.get_text() != "posix-rename@openssh.com":
            self.send_status(request_number, SFTP_OP_UNSUPPORTED)
            return True
        return False

    def after_request(self, t: int) -> None:
        self._settle_handles()
