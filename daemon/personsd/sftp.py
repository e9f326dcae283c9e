"""The embedded SFTP server (SPEC sections 6 and 9), on paramiko.

Connections, logins and bans live here; what a logged-in tenant can do with
files lives in :mod:`personsd.sftpfs`. The server knows nothing of the
database: ``lookup`` gives a login's keys and password hash, ``on_upload`` is
told of every file that became complete in an inbox.

Logins: paramiko calls ``check_auth_publickey`` both for the client's unsigned
"would this key do?" probe and for the signed request, and checks the
signature itself only after we said yes. So a yes from us is a candidate, not
a login: ``sftp.login`` is logged once the transport reports itself
authenticated (or a channel is opened, which paramiko allows only then). A
signature that fails verification shows as paramiko asking for the allowed
methods right after we accepted the key.

Throttling: each wrong password counts as one failure of the address; a
connection that presented credentials and ended without logging in (unknown
user or key, bad signature, nothing usable) counts once more unless a wrong
password was already counted for it, so a client that tries several keys is
not banned for it. ``max_failed_logins`` failures within
``failed_window_seconds`` ban the address for ``ban_seconds``. A password is
verified only after the guess was booked (failures plus guesses being
verified stay below the cap), so parallel connections never get more than
``max_failed_logins`` guesses checked per window. The methods offered are the
same for every user name, so they reveal nothing about a tenant.

Resource caps (:mod:`personsd.sftpbudget`, docs/security.md): connections per
address and per tenant, pre-login time and banner, SSH packet size, channels
per connection and their receive windows (:mod:`personsd.sftpwire`), the
process's descriptors. Key exchange: curve25519, ML-KEM hybrid and the fixed
DH groups 14/16 with SHA-2; no NIST curves, no group exchange (paramiko's
server side needs a moduli file for it and resets the connection without one).
"""

from __future__ import annotations

import base64
import binascii
import collections
import errno
import hashlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from personsd import metrics
from personsd.logging import Event
from personsd.passwords import burn_time, verify_password
from personsd.sftpbudget import (
    FdBudget,
    LimitLog,
    LocalInboxQuota,
    LocalLoginBans,
    LoginBans,
    SftpLimits,
    TenantBudget,
    raise_fd_limit,
)
from personsd.sftpfs import Session, TenantFs, TenantSftp, sweep_stale_uploads
from personsd.sftpwire import BoundedPacketizer, check, guard_channels, open_channels

__all__ = ["SftpLimits", "SftpServer", "TenantAuth", "load_or_create_host_key"]

VERSION_STRING = "SSH-2.0-personsd"
DISABLED_ALGORITHMS = {
    "ciphers": ["3des-cbc", "aes128-cbc", "aes192-cbc", "aes256-cbc", "blowfish-cbc"],
    "macs": [
        "hmac-sha1",
        "hmac-sha1-96",
        "hmac-md5",
        "hmac-md5-96",
        "hmac-sha1-etm@openssh.com",
        "hmac-md5-etm@openssh.com",
    ],
    # NIST curves: ssh-audit's "weak elliptic curves"; group exchange: see the module doc.
    "kex": [
        "diffie-hellman-group1-sha1",
        "diffie-hellman-group14-sha1",
        "diffie-hellman-group-exchange-sha1",
        "diffie-hellman-group-exchange-sha256",
        "ecdh-sha2-nistp256",
        "ecdh-sha2-nistp384",
        "ecdh-sha2-nistp521",
    ],
    "keys": ["ssh-rsa", "ssh-dss"],
    "pubkeys": ["ssh-rsa", "ssh-dss"],
}
_POLL = 0.05
# paramiko is untyped: give its constants a type once.
_AUTH_FAILED: int = paramiko.AUTH_FAILED
_AUTH_SUCCESSFUL: int = paramiko.AUTH_SUCCESSFUL
_OPEN_SUCCEEDED: int = paramiko.OPEN_SUCCEEDED
_OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED: int = paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
_OPEN_FAILED_RESOURCE_SHORTAGE: int = paramiko.OPEN_FAILED_RESOURCE_SHORTAGE
ALLOWED_AUTHS = "publickey,password"  # the same for every user name: reveals nothing


def _log() -> Any:
    return structlog.get_logger()


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


def load_or_create_host_key(path: Path) -> paramiko.Ed25519Key:
    """The server's host key: generated once (mode 0600), then always the same."""
    if not path.exists():
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, path)  # never replaces a key another process made meanwhile
            _log().info("sftp.host_key_created", path=str(path))
        except FileExistsError:
            pass
        finally:
            os.unlink(temp)
    return paramiko.Ed25519Key(filename=str(path))


class _Guard:
    """Per-address connection counts and guesses being verified; failures and bans in ``bans``."""

    def __init__(
        self,
        limits: SftpLimits,
        clock: Callable[[], float] = time.monotonic,
        bans: LoginBans | None = None,
    ) -> None:
        self._limits = limits
        self.bans: LoginBans = bans if bans is not None else LocalLoginBans(limits, clock)
        self._lock = threading.Lock()
        self._active: collections.Counter[str] = collections.Counter()
        self._guessing: collections.Counter[str] = collections.Counter()

    def banned(self, ip: str) -> bool:
        return self.bans.banned(ip)

    def admit(self, ip: str) -> str | None:
        """Take a connection slot for ``ip``; or the reason it is refused (from memory only)."""
        with self._lock:
            if self.bans.banned(ip):
                return "banned"
            if self._active[ip] >= self._limits.connections_per_address:
                return "connections_per_address"
            self._active[ip] += 1
            return None

    def release(self, ip: str) -> None:
        with self._lock:
            self._active[ip] -= 1
            if self._active[ip] <= 0:
                del self._active[ip]

    def begin_guess(self, ip: str) -> str | None:
        """Book one password verification for ``ip``; or why it may not be made."""
        with self._lock:
            if self.bans.banned(ip):
                return "banned"
            if self.bans.failures(ip) + self._guessing[ip] >= self._limits.max_failed_logins:
                return "throttled"  # the guesses in flight could reach the ban already
            self._guessing[ip] += 1
            return None

    def end_guess(self, ip: str, *, failed: bool) -> bool:
        """The booked verification is done; True when its failure starts a ban."""
        # The failure is counted before the booking is given back, so that no
        # other guess slips in between (the store may write: not under our lock).
        banned = self.bans.record_failure(ip) if failed else False
        with self._lock:
            self._guessing[ip] -= 1
            if self._guessing[ip] <= 0:
                del self._guessing[ip]
        return banned

    def record_failure(self, ip: str) -> bool:
        """Count a failed login; True when it starts a ban."""
        return self.bans.record_failure(ip)


@dataclass(frozen=True, kw_only=True, slots=True)
class _Grant:
    tenant: str
    method: str
    fingerprint: str | None


class _Connection(paramiko.ServerInterface):  # type: ignore[misc]
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
                _log().error("sftp.lookup_failed", user=username[:100], error=repr(exc))
                self.lookup_error = True  # nobody is banned for our outage
                return None
        return self._tenants[username]

    def _failed(self, username: str, method: str, reason: str, **extra: Any) -> None:
        metrics.sftp_login(success=False)
        _log().warning(
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
        _log().warning(
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
        _log().info(Event.SFTP_LOGIN, **fields)
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


def _authenticated(transport: paramiko.Transport) -> bool:
    handler = transport.auth_handler
    return handler is not None and bool(handler.is_authenticated())


class SftpServer:
    """Listens on ``host:port`` and serves each tenant its inbox and outbox."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        host_key: paramiko.PKey,
        tenants_root: Path,
        lookup: Callable[[str], TenantAuth | None],
        on_upload: Callable[[str, Path], None],
        limits: SftpLimits | None = None,
        bans: LoginBans | None = None,
        stale_upload_seconds: float = 0.0,
    ) -> None:
        self.host = host
        self.tenants_root = tenants_root
        self.lookup = lookup
        self.on_upload = on_upload
        self.limits = limits or SftpLimits()
        self.guard = _Guard(self.limits, bans=bans)
        # Temp files of uploads cut short, removed at start once this old: with
        # several instances on one tree, younger ones may be another's in progress.
        self._stale_upload_seconds = stale_upload_seconds
        self.tenant_budget = TenantBudget(self.limits)
        self.fds = FdBudget(self.limits.fd_reserve)
        self.quota = LocalInboxQuota(
            tenants_root=tenants_root,
            inbox_bytes=self.limits.inbox_bytes,
            inbox_files=self.limits.inbox_files,
            stale_upload_seconds=self.limits.stale_upload_seconds,
        )
        self.limit_log = LimitLog()
        self._requested_port = port
        self._host_key = host_key
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._acceptor: threading.Thread | None = None
        self._lock = threading.Lock()
        self._live: dict[threading.Thread, paramiko.Transport | None] = {}

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("the SFTP server is not started")
        return int(self._listener.getsockname()[1])

    def banned_count(self) -> int:
        """Addresses banned now, on every instance when the bans are shared (for metrics)."""
        return self.guard.bans.banned_count()

    def start(self) -> None:
        check()  # paramiko still has what our caps override
        soft, hard = raise_fd_limit()
        sweep_stale_uploads(self.tenants_root, older_than=self._stale_upload_seconds)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._listener = socket.create_server(
            (self.host, self._requested_port), family=family, backlog=64
        )
        self._listener.settimeout(0.25)  # lets the acceptor notice stop()
        self._acceptor = threading.Thread(target=self._accept_loop, name="sftp-accept", daemon=True)
        self._acceptor.start()
        _log().info(
            "sftp.listening",
            host=self.host,
            port=self.port,
            fd_limit=soft,
            fd_hard_limit=hard,
            fd_reserved=self.fds.headroom(),
        )

    def stop(self) -> None:
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            live = list(self._live.items())
        for _, transport in live:
            if transport is not None:
                transport.close()
        for thread, _ in live:
            thread.join(timeout=10)
        self.guard.bans.close()
        _log().info("sftp.stopped")

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stopping.is_set():
                    return
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    self.limit_log.hit("descriptors", ip="unknown")
                time.sleep(0.1)  # e.g. out of file descriptors: don't spin
                continue
            ip = str(addr[0])
            refused = self.guard.admit(ip)
            if refused is None and not self.fds.available():
                self.guard.release(ip)
                refused = "descriptors"
            if refused is not None:
                if refused == "banned":
                    self.limit_log.throttled(Event.SFTP_REFUSED, ip, ip=ip, reason=refused)
                else:
                    self.limit_log.hit(refused, ip=ip)
                sock.close()
                continue
            thread = threading.Thread(
                target=self._serve, args=(sock, ip), daemon=True, name=f"sftp-{ip}"
            )
            with self._lock:
                self._live[thread] = None
            thread.start()

    def _transport(self, sock: socket.socket, conn: _Connection) -> paramiko.Transport:
        lim = self.limits
        transport = paramiko.Transport(
            sock,
            disabled_algorithms=DISABLED_ALGORITHMS,
            default_window_size=lim.channel_window_bytes,
            default_max_packet_size=lim.channel_packet_bytes,
            packetizer_class=BoundedPacketizer,
        )
        transport.packetizer.bound(
            max_packet_bytes=lim.max_packet_bytes,
            max_banner_bytes=lim.max_banner_bytes,
            on_limit=conn.hit,
        )
        guard_channels(transport, conn.hit)
        transport.local_version = VERSION_STRING
        transport.add_server_key(self._host_key)
        transport.set_subsystem_handler("sftp", TenantSftp, TenantFs)
        conn.transport = transport
        return transport

    def _serve(self, sock: socket.socket, ip: str) -> None:
        me = threading.current_thread()
        conn = _Connection(self, ip)
        transport: paramiko.Transport | None = None
        try:
            # One read of the shared bans per connection, here rather than in the
            # accept loop: a slow database delays this client only.
            if self.guard.bans.refresh(ip):
                self.limit_log.throttled(Event.SFTP_REFUSED, ip, ip=ip, reason="banned")
                return
            transport = self._transport(sock, conn)
            with self._lock:
                self._live[me] = transport
            if self._stopping.is_set():
                return
            transport.start_server(event=threading.Event(), server=conn)
            self._await_login(transport, conn)
            if conn.admitted:
                self._await_end(transport, conn)
        except Exception as exc:  # noqa: BLE001 -- a broken client must not take the server down
            _log().info("sftp.connection_error", ip=ip, error=repr(exc))
        finally:
            if transport is not None:
                transport.close()
            else:
                sock.close()
            for handler in conn.subsystems:  # they remove abandoned uploads on their way out
                handler.join(timeout=10)
            if not conn.logged_in and conn.tried and conn.password_failures == 0:
                conn.count_failure()
            if conn.admitted and conn.tenant is not None:
                self.tenant_budget.release_connection(conn.tenant)
            self.guard.release(ip)
            with self._lock:
                self._live.pop(me, None)

    def _await_login(self, transport: paramiko.Transport, conn: _Connection) -> None:
        deadline = time.monotonic() + self.limits.login_grace_seconds
        while transport.is_active() and not self._stopping.is_set():
            if _authenticated(transport):
                break
            if time.monotonic() > deadline:
                conn.hit("login_grace")
                return
            self._stopping.wait(_POLL)
        if _authenticated(transport):  # also when the client left right after logging in
            conn.confirm_login()

    def _await_end(self, transport: paramiko.Transport, conn: _Connection) -> None:
        while transport.is_active() and not self._stopping.wait(0.5):
            if time.monotonic() - conn.last_activity > self.limits.idle_timeout_seconds:
                _log().info("sftp.idle_timeout", ip=conn.ip)
                return
