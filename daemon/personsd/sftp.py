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
``failed_window_seconds`` ban the address for ``ban_seconds``.
"""

from __future__ import annotations

import base64
import binascii
import collections
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

from personsd.passwords import burn_time, verify_password
from personsd.sftpfs import (
    MAX_SUBSYSTEMS,
    Session,
    SftpLimits,
    TenantFs,
    TenantSftp,
    sweep_stale_uploads,
)

__all__ = ["SftpLimits", "SftpServer", "TenantAuth", "load_or_create_host_key"]

VERSION_STRING = "SSH-2.0-personsd"
DISABLED_ALGORITHMS = {
    "ciphers": ["3des-cbc", "aes128-cbc", "aes192-cbc", "aes256-cbc", "blowfish-cbc"],
    "macs": ["hmac-sha1", "hmac-sha1-96", "hmac-md5", "hmac-md5-96",
             "hmac-sha1-etm@openssh.com", "hmac-md5-etm@openssh.com"],
    "kex": ["diffie-hellman-group1-sha1", "diffie-hellman-group14-sha1",
            "diffie-hellman-group-exchange-sha1"],
    "keys": ["ssh-rsa", "ssh-dss"],
    "pubkeys": ["ssh-rsa", "ssh-dss"],
}
_POLL = 0.05
# paramiko is untyped: give its constants a type once.
_AUTH_FAILED: int = paramiko.AUTH_FAILED
_AUTH_SUCCESSFUL: int = paramiko.AUTH_SUCCESSFUL
_OPEN_SUCCEEDED: int = paramiko.OPEN_SUCCEEDED
_OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED: int = paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


def _log() -> Any:
    return structlog.get_logger()


@dataclass(frozen=True, kw_only=True, slots=True)
class TenantAuth:
    """What the server needs to know about one tenant login."""

    name: str
    public_keys: tuple[tuple[str, str], ...] = ()  # (key type, base64 blob) as in authorized_keys
    password_hash: str | None = None

    def __post_init__(self) -> None:
        bad_name = (not self.name or self.name.startswith(".") or "/" in self.name
                    or "\x00" in self.name)
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
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption())
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
    """Per-address connection counts, failed-login windows and bans."""

    def __init__(self, limits: SftpLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._active: collections.Counter[str] = collections.Counter()
        self._failures: dict[str, collections.deque[float]] = {}
        self._banned_until: dict[str, float] = {}

    def banned(self, ip: str) -> bool:
        with self._lock:
            return self._banned(ip)

    def _banned(self, ip: str) -> bool:
        until = self._banned_until.get(ip)
        if until is not None and until <= self._clock():
            del self._banned_until[ip]
            return False
        return until is not None

    def admit(self, ip: str) -> str | None:
        """Take a connection slot for ``ip``; or the reason it is refused."""
        with self._lock:
            if self._banned(ip):
                return "banned"
            if self._active[ip] >= self._limits.max_connections_per_ip:
                return "too_many_connections"
            self._active[ip] += 1
            return None

    def release(self, ip: str) -> None:
        with self._lock:
            self._active[ip] -= 1
            if self._active[ip] <= 0:
                del self._active[ip]

    def record_failure(self, ip: str) -> bool:
        """Count a failed login; True when it starts a ban."""
        with self._lock:
            now = self._clock()
            window = self._failures.setdefault(ip, collections.deque())
            window.append(now)
            while window and window[0] <= now - self._limits.failed_window_seconds:
                window.popleft()
            if len(window) < self._limits.max_failed_logins:
                return False
            del self._failures[ip]
            self._banned_until[ip] = now + self._limits.ban_seconds
            return True


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
        self.logged_in = False
        self.lookup_error = False
        self._tenants: dict[str, TenantAuth | None] = {}
        self._grant: _Grant | None = None
        self._key_pending: tuple[str, str] | None = None  # accepted key awaiting its signature
        self._lock = threading.Lock()
        self.subsystems: list[threading.Thread] = []

    def touch(self) -> None:
        self.last_activity = time.monotonic()

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
        _log().warning("sftp.login_failed", ip=self.ip, user=username[:100], method=method,
                       reason=reason, **extra)

    def _attempt(self) -> bool:
        """Start a new credential attempt; False when the address is banned."""
        self.touch()
        self.tried = True
        self._grant = None
        self._key_pending = None
        return not self._server.guard.banned(self.ip)

    def _why(self, tenant: TenantAuth | None, known_user_reason: str) -> str:
        if tenant is not None:
            return known_user_reason
        return "lookup_failed" if self.lookup_error else "unknown_user"

    def count_failure(self) -> None:
        if self.lookup_error:
            return
        if self._server.guard.record_failure(self.ip):
            lim = self._server.limits
            _log().warning("sftp.banned", ip=self.ip, seconds=lim.ban_seconds,
                           failures=lim.max_failed_logins)

    def get_allowed_auths(self, username: str) -> str:
        # paramiko asks this after every rejected attempt; right after we accepted a
        # key it means the signature did not verify.
        pending, self._key_pending = self._key_pending, None
        if pending is not None:
            self._grant = None
            self._failed(pending[0], "publickey", "bad_signature", fingerprint=pending[1])
        tenant = self._tenant(username)
        return "publickey,password" if tenant and tenant.password_hash else "publickey"

    def check_auth_none(self, username: str) -> int:
        self._grant = None
        self._key_pending = None
        return _AUTH_FAILED

    def check_auth_interactive(self, username: str, submethods: str) -> int:
        return self.check_auth_none(username)

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        blob = key.asbytes()
        fp = fingerprint(blob)
        if not self._attempt():
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
        if not self._attempt():
            self._failed(username, "password", "banned")
            return _AUTH_FAILED
        text = password if isinstance(password, str) else password.decode("utf-8", "replace")
        tenant = self._tenant(username)
        if tenant is None or tenant.password_hash is None:
            burn_time(text)  # same time as a wrong password: no user enumeration
            ok, reason = False, self._why(tenant, "no_password")
        else:
            ok, reason = verify_password(text, tenant.password_hash), "wrong_password"
        if ok and tenant is not None:
            self._grant = _Grant(tenant=tenant.name, method="password", fingerprint=None)
            return _AUTH_SUCCESSFUL
        self._failed(username, "password", reason)
        self.password_failures += 1
        self.count_failure()
        return _AUTH_FAILED

    def confirm_login(self) -> None:
        """Log ``sftp.login`` once the transport is authenticated (idempotent)."""
        with self._lock:
            grant = self._grant
            if self.logged_in or grant is None:
                return
            self.logged_in = True
        fields: dict[str, Any] = {"tenant": grant.tenant, "ip": self.ip, "method": grant.method}
        if grant.fingerprint is not None:
            fields["fingerprint"] = grant.fingerprint
        _log().info("sftp.login", **fields)

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind != "session":
            return _OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        self.confirm_login()  # paramiko opens channels only after authentication
        return _OPEN_SUCCEEDED

    def check_channel_subsystem_request(self, channel: paramiko.Channel, name: str) -> bool:
        # Requests of one connection arrive one at a time on its transport thread.
        self.subsystems = [t for t in self.subsystems if t.is_alive()]
        if name != "sftp" or len(self.subsystems) >= MAX_SUBSYSTEMS:
            return False
        return bool(super().check_channel_subsystem_request(channel, name))

    def subsystem_started(self, handler: threading.Thread) -> None:
        self.subsystems.append(handler)

    def sftp_session(self) -> Session:
        grant = self._grant
        if grant is None or not self.logged_in:
            raise RuntimeError("sftp subsystem before login")
        srv = self._server
        return Session(tenant=grant.tenant, ip=self.ip, tenants_root=srv.tenants_root,
                       limits=srv.limits, on_upload=srv.on_upload, touch=self.touch)


def _authenticated(transport: paramiko.Transport) -> bool:
    handler = transport.auth_handler
    return handler is not None and bool(handler.is_authenticated())


class SftpServer:
    """Listens on ``host:port`` and serves each tenant its inbox and outbox."""

    def __init__(self, *, host: str, port: int, host_key: paramiko.PKey, tenants_root: Path,
                 lookup: Callable[[str], TenantAuth | None],
                 on_upload: Callable[[str, Path], None],
                 limits: SftpLimits | None = None) -> None:
        self.host = host
        self.tenants_root = tenants_root
        self.lookup = lookup
        self.on_upload = on_upload
        self.limits = limits or SftpLimits()
        self.guard = _Guard(self.limits)
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

    def start(self) -> None:
        sweep_stale_uploads(self.tenants_root)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._listener = socket.create_server((self.host, self._requested_port), family=family,
                                              backlog=64)
        self._listener.settimeout(0.25)  # lets the acceptor notice stop()
        self._acceptor = threading.Thread(target=self._accept_loop, name="sftp-accept",
                                          daemon=True)
        self._acceptor.start()
        _log().info("sftp.listening", host=self.host, port=self.port)

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
        _log().info("sftp.stopped")

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.1)  # e.g. out of file descriptors: don't spin
                continue
            ip = str(addr[0])
            refused = self.guard.admit(ip)
            if refused is not None:
                _log().warning("sftp.refused", ip=ip, reason=refused)
                sock.close()
                continue
            thread = threading.Thread(target=self._serve, args=(sock, ip), daemon=True,
                                      name=f"sftp-{ip}")
            with self._lock:
                self._live[thread] = None
            thread.start()

    def _serve(self, sock: socket.socket, ip: str) -> None:
        me = threading.current_thread()
        conn = _Connection(self, ip)
        transport: paramiko.Transport | None = None
        try:
            transport = paramiko.Transport(sock, disabled_algorithms=DISABLED_ALGORITHMS)
            transport.local_version = VERSION_STRING
            transport.add_server_key(self._host_key)
            transport.set_subsystem_handler("sftp", TenantSftp, TenantFs)
            with self._lock:
                self._live[me] = transport
            if self._stopping.is_set():
                return
            transport.start_server(event=threading.Event(), server=conn)
            self._await_login(transport, conn)
            if conn.logged_in:
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
            self.guard.release(ip)
            with self._lock:
                self._live.pop(me, None)

    def _await_login(self, transport: paramiko.Transport, conn: _Connection) -> None:
        deadline = time.monotonic() + self.limits.login_grace_seconds
        while transport.is_active() and not self._stopping.is_set():
            if _authenticated(transport):
                break
            if time.monotonic() > deadline:
                _log().info("sftp.login_timeout", ip=conn.ip)
                return
            self._stopping.wait(_POLL)
        if _authenticated(transport):  # also when the client left right after logging in
            conn.confirm_login()

    def _await_end(self, transport: paramiko.Transport, conn: _Connection) -> None:
        while transport.is_active() and not self._stopping.wait(0.5):
            if time.monotonic() - conn.last_activity > self.limits.idle_timeout_seconds:
                _log().info("sftp.idle_timeout", ip=conn.ip)
                return
