"""The embedded SFTP server (SPEC sections 6 and 9), on paramiko: the listener and its connections.

Logins and bans are in :mod:`personsd.sftp.auth` and :mod:`personsd.sftp.guard`;
what a logged-in tenant can do with files in :mod:`personsd.sftp.filesystem`.
The server knows nothing of the database: ``lookup`` gives a login's keys and
password hash, ``on_upload`` is told of every file that became complete in an
inbox.

Resource caps (:mod:`personsd.sftp.limits`, docs/security.md): connections per
address and per tenant, pre-login time and banner, SSH packet size, channels
per connection and their receive windows (:mod:`personsd.sftp.wire`), the
process's descriptors. Key exchange: curve25519, ML-KEM hybrid and the fixed
DH groups 14/16 with SHA-2; no NIST curves, no group exchange (paramiko's
server side needs a moduli file for it and resets the connection without one).
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paramiko

from personsd.logging import Event, get_logger
from personsd.sftp.auth import Connection, TenantAuth
from personsd.sftp.bans import LoginBans
from personsd.sftp.budget import FdBudget, TenantBudget, raise_fd_limit
from personsd.sftp.filesystem import TenantFs, sweep_stale_uploads
from personsd.sftp.guard import LoginGuard
from personsd.sftp.limits import LimitLog, SftpLimits
from personsd.sftp.quota import LocalInboxQuota
from personsd.sftp.subsystem import TenantSftp
from personsd.sftp.wire import BoundedPacketizer, check, guard_channels

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

log = get_logger()


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
        self.guard = LoginGuard(self.limits, bans=bans)
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
        log.info(
            Event.SFTP_LISTENING,
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
        log.info(Event.SFTP_STOPPED)

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

    def _transport(self, sock: socket.socket, conn: Connection) -> paramiko.Transport:
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
        conn = Connection(self, ip)
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
            log.info(Event.SFTP_CONNECTION_ERROR, ip=ip, error=repr(exc))
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

    def _await_login(self, transport: paramiko.Transport, conn: Connection) -> None:
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

    def _await_end(self, transport: paramiko.Transport, conn: Connection) -> None:
        while transport.is_active() and not self._stopping.wait(0.5):
            if time.monotonic() - conn.last_activity > self.limits.idle_timeout_seconds:
                log.info(Event.SFTP_IDLE_TIMEOUT, ip=conn.ip)
                return
