"""What one logged-in SFTP session knows about its connection and the server."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from personsd.sftp.budget import FdBudget, TenantBudget
from personsd.sftp.limits import LimitLog, SftpLimits
from personsd.sftp.quota import InboxQuota
from personsd.sftp.replies import SFTP_FAILURE
from personsd.sftp.wire import Refusal


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
