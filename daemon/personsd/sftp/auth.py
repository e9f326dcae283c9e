"""Logins to the embedded SFTP server (SPEC 6 and 9), and the channels a connection may open.

Logins: paramiko calls ``check_auth_publickey`` both for the client's unsigned
"would this key do?" probe and for the signed request, and checks the
signature itself only after we said yes. So a yes from us is a candidate, not
a login: ``sftp.login`` is logged once the transport reports itself
authenticated (or a channel is opened, which paramiko allows only then). A
signature that fails verification shows as paramiko asking for the allowed
methods right after we accepted the key.

Throttling (:mod:`personsd.sftp.guard`): each wrong password counts as one
failure of the address; a connection that presented credentials and ended
without logging in (unknown user or key, bad signature, nothing usable)
counts once more unless a wrong password was already counted for it, so a
client that tries several keys is not banned for it. The methods offered are
the same for every user name, so they reveal nothing about a tenant.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import paramiko

from personsd import metrics
from personsd.logging import Event, get_logger
from personsd.passwords import burn_time, verify_password
from personsd.sftp.session import Session
from personsd.sftp.wire import open_channels

if TYPE_CHECKING:
    from personsd.sftp.server import SftpServer

# paramiko is untyped: give its constants a type once.
_AUTH_FAILED: int = paramiko.AUTH_FAILED
_AUTH_SUCCESSFUL: int = paramiko.AUTH_SUCCESSFUL
_OPEN_SUCCEEDED: int = paramiko.OPEN_SUCCEEDED
_OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED: int = paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
_OPEN_FAILED_RESOURCE_SHORTAGE: int = paramiko.OPEN_FAILED_RESOURCE_SHORTAGE
ALLOWED_AUTHS = "publickey,password"  # the same for every user name: reveals nothing

log = get_logger()


@dataclass(frozen=True, kw_only=True, slots=True)
class TenantAuth:
    """What the server needs to know about one tenant login."""

    name: str
    public_keys: tuple[tuple[str, str], ...] = ()  # (key type, base64 blob) as in authorized_keys
    password_hash: str | None = None

    def __post_init__(self) -> None:
        bad_name = (
            not self.name or self.name.startswith(".") or "/" in self.name or "\x00" in self.name
        )
        if bad_name:
            raise ValueError(f"tenant name {self.name!r} cannot name a directory")
        for key_type, blob in self.public_keys:
            try:
                raw = base64.b64decode(blob, validate=True)
                embedded = paramiko.Message(raw).get_text()
            except (binascii.Error, ValueError, UnicodeDecodeError):
                raise ValueError(f"tenant {self.name}: bad {key_type} key blob") from None
            if embedded != key_type:
                raise ValueError(f"tenant {self.name}: key says {embedded!r}, not {key_type!r}")

    def accepts(self, blob: bytes) -> bool:
        return any(base64.b64decode(b) == blob for _, b in self.public_keys)


def fingerprint(blob: bytes) -> str:
    """OpenSSH's ``SHA256:…`` fingerprint of a public key blob."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


@dataclass(frozen=True, kw_only=True, slots=True)
class _Grant:
    tenant: str
    method: str
    fingerprint: str | None


class Connection(paramiko.ServerInterface):  # type: ignore[misc]
    """Authentication and channel policy of one client connection."""

    def __init__(self, server: SftpServer, ip: str) -> None:
        self._server = server
        self.ip = ip
        self.last_activity = time.monotonic()
        self.tried = False
        self.password_failures = 0
        self.logged_in = False  # authenticated
        self.admitted = False  # authenticated and within its tenant's connection cap
        self.lookup_error = False
        self.transport: paramiko.Transport | None = None
        self.channel_opens = 0
        self._tenants: dict[str, TenantAuth | None] = {}
        self._grant: _Grant | None = None
        self._key_pending: tuple[str, str] | None = None  # accepted key awaiting its signature
        self._lock = threading.Lock()
        self.subsystems: list[threading.Thread] = []

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    @property
    def tenant(self) -> str | None:
        grant = self._grant
        return grant.tenant if grant is not None and self.logged_in else None

    def hit(self, limit: str) -> None:
        """Log that this connection ran into ``limit``."""
        who = {"tenant": self.tenant} if self.tenant is not None else {}
        self._server.limit_log.hit(limit, ip=self.ip, **who)

    def _tenant(self, username: str) -> TenantAuth | None:
        if username not in self._tenants:
            try:
                self._tenants[username] = self._server.lookup(username)
            except Exception as exc:  # noqa: BLE001 -- a database hiccup must not kill the transport
                log.error(Event.SFTP_LOOKUP_FAILED, user=username[:100], error=repr(exc))
                self.lookup_error = True  # nobody is banned for our outage
                return None
        return self._tenants[username]

    def _failed(self, username: str, method: str, reason: str, **extra: Any) -> None:
        metrics.sftp_login(success=False)
        log.warning(
            Event.SFTP_LOGIN_FAILED,
            ip=self.ip,
            user=username[:100],
            method=method,
            reason=reason,
            **extra,
        )

    def _attempt(self) -> None:
        """Start a new credential attempt."""
        self.touch()
        self.tried = True
        self._grant = None
        self._key_pending = None

    def _why(self, tenant: TenantAuth | None, known_user_reason: str) -> str:
        if tenant is not None:
            return known_user_reason
        return "lookup_failed" if self.lookup_error else "unknown_user"

    def _banned(self) -> None:
        lim = self._server.limits
        log.warning(
            Event.SFTP_BANNED, ip=self.ip, seconds=lim.ban_seconds, failures=lim.max_failed_logins
        )

    def count_failure(self) -> None:
        if self.lookup_error:
            return
        if self._server.guard.record_failure(self.ip):
            self._banned()

    def get_allowed_auths(self, username: str) -> str:
        # paramiko asks this after every rejected attempt; right after we accepted a
        # key it means the signature did not verify.
        pending, self._key_pending = self._key_pending, None
        if pending is not None:
            self._grant = None
            self._failed(pending[0], "publickey", "bad_signature", fingerprint=pending[1])
        return ALLOWED_AUTHS

    def check_auth_none(self, username: str) -> int:
        self._grant = None
        self._key_pending = None
        return _AUTH_FAILED

    def check_auth_interactive(self, username: str, submethods: str) -> int:
        return self.check_auth_none(username)

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        blob = key.asbytes()
        fp = fingerprint(blob)
        self._attempt()
        if self._server.guard.banned(self.ip):
            self._failed(username, "publickey", "banned", fingerprint=fp)
            return _AUTH_FAILED
        tenant = self._tenant(username)
        if tenant is None or not tenant.accepts(blob):
            reason = self._why(tenant, "unknown_key")
            self._failed(username, "publickey", reason, fingerprint=fp)
            return _AUTH_FAILED
        # Only a candidate: this may be the unsigned probe, or the signature may fail.
        self._key_pending = (username, fp)
        self._grant = _Grant(tenant=tenant.name, method="publickey", fingerprint=fp)
        return _AUTH_SUCCESSFUL

    def check_auth_password(self, username: str, password: str | bytes) -> int:
        self._attempt()
        guard = self._server.guard
        refused = guard.begin_guess(self.ip)  # booked before verifying: parallel guesses too
        if refused is not None:
            self._failed(username, "password", refused)
            return _AUTH_FAILED
        ok = False
        try:
            text = password if isinstance(password, str) else password.decode("utf-8", "replace")
            tenant = self._tenant(username)
            if tenant is None or tenant.password_hash is None:
                burn_time(text)  # same time as a wrong password: no user enumeration
                reason = self._why(tenant, "no_password")
            else:
                ok, reason = verify_password(text, tenant.password_hash), "wrong_password"
        finally:
            if guard.end_guess(self.ip, failed=not ok and not self.lookup_error):
                self._banned()
        if ok and tenant is not None:
            self._grant = _Grant(tenant=tenant.name, method="password", fingerprint=None)
            return _AUTH_SUCCESSFUL
        self._failed(username, "password", reason)
        self.password_failures += 1
        return _AUTH_FAILED

    def confirm_login(self) -> bool:
        """Once authenticated: take a slot of the tenant, log ``sftp.login``; whether admitted."""
        with self._lock:
            grant = self._grant
            if self.logged_in or grant is None:
                return self.admitted
            self.logged_in = True
            self.admitted = self._server.tenant_budget.take_connection(grant.tenant)
        if not self.admitted:
            self.hit("connections_per_tenant")
            return False
        fields: dict[str, Any] = {"tenant": grant.tenant, "ip": self.ip, "method": grant.method}
        if grant.fingerprint is not None:
            fields["fingerprint"] = grant.fingerprint
        log.info(Event.SFTP_LOGIN, **fields)
        metrics.sftp_login(success=True)
        return True

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind != "session":
            return _OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        # paramiko opens channels only after authentication.
        if not self.confirm_login():
            return _OPEN_FAILED_RESOURCE_SHORTAGE
        lim = self._server.limits
        self.channel_opens += 1
        refused = None
        if self.channel_opens > lim.max_channel_opens_per_connection:
            refused = "channel_opens"
        elif self.transport is not None and (
            open_channels(self.transport) >= lim.max_channels_per_connection
        ):
            refused = "channels_per_connection"
        elif not self._server.fds.available():
            refused = "descriptors"
        if refused is not None:
            self.hit(refused)
            return _OPEN_FAILED_RESOURCE_SHORTAGE
        return _OPEN_SUCCEEDED

    def check_channel_subsystem_request(self, channel: paramiko.Channel, name: str) -> bool:
        # Requests of one connection arrive one at a time on its transport thread.
        self.subsystems = [t for t in self.subsystems if t.is_alive()]
        if name != "sftp":
            return False
        if len(self.subsystems) >= self._server.limits.max_channels_per_connection:
            self.hit("channels_per_connection")  # sessions whose channel closed, still ending
            return False
        return bool(super().check_channel_subsystem_request(channel, name))

    def subsystem_started(self, handler: threading.Thread) -> None:
        self.subsystems.append(handler)

    def sftp_session(self) -> Session:
        grant = self._grant
        if grant is None or not self.admitted:
            raise RuntimeError("sftp subsystem before login")
        srv = self._server
        return Session(
            tenant=grant.tenant,
            ip=self.ip,
            tenants_root=srv.tenants_root,
            limits=srv.limits,
            on_upload=srv.on_upload,
            touch=self.touch,
            budget=srv.tenant_budget,
            fds=srv.fds,
            quota=srv.quota,
            limit_log=srv.limit_log,
        )
