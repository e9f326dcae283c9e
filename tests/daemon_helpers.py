"""Run the real daemon (`python -m personsd run`) as a subprocess for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko
from click.testing import CliRunner

from cli_helpers import CLEAN_ENV
from personsd.cli import main
from personsd.fieldtypes import CustomField
from personsd.passwords import hash_password
from personsd.store import db
from personsd.store import fields as store_fields
from personsd.store import tenants as store_tenants
from polling import wait_for

SEED_FIELDS = (
    ("first_name", "string", None),
    ("last_name", "string", None),
    ("sport_interests", "multi_select", "football,hockey,soccer,golf,basketball"),
)
SEED_FILE = (
    "mdn,first_name,last_name,sport_interests\n"
    "+12995550005,John,Doe,football|hockey\n"
    "+12995550006,Mary,Sue,soccer\n"
    "+12995550007,Dave,Doe,golf|basketball|hockey\n"
    "+12995550008,John,Smith,soccer|football\n"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Daemon:
    """A personsd home (config, tenants) and, when started, its daemon process."""

    home: Path
    db_url: str
    port: int
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    # Each daemon its own cluster.instance, kept across its restarts (SPEC 12).
    instance: str = field(default_factory=lambda: f"test-{uuid.uuid4().hex[:8]}")
    config: Path = field(init=False)
    root: Path = field(init=False)
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.config = self.home / "personsd.toml"
        self.root = self.home / "var"
        self.log_path = self.home / "daemon.log"

    def write_config(self) -> None:
        sections: dict[str, dict[str, Any]] = {
            "database": {"url": self.db_url},
            "paths": {"root": "var"},
            "sftp": {"listen": f"127.0.0.1:{self.port}"},
            "import": {
                "carrier_lookup": "none",
                "settle_seconds": 0.3,
                "rescan_seconds": 2,
                "workers": 2,
            },
            "log": {"format": "json", "level": "info"},
            "cluster": {"instance": self.instance},
        }
        for name, values in self.extra.items():
            sections.setdefault(name, {}).update(values)
        lines = []
        for name, values in sections.items():
            lines.append(f"[{name}]")
            lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
        self.config.write_text("\n".join(lines) + "\n")

    def cli(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "personsd", "--config", str(self.config), *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def admin(self, *args: str) -> str:
        """``personsd --config FILE ARGS`` run in this process; its stdout.

        The operator's commands a test only needs done (tenants, fields, an export):
        the same code as the command line without a Python start-up per call
        (about a second of CPU each). ``cli`` runs the real process.
        """
        result = CliRunner(env=dict(CLEAN_ENV)).invoke(
            main, ["--config", str(self.config), *args], catch_exceptions=False
        )
        assert 0 == result.exit_code, (args, result.output)
        return result.stdout

    def add_tenant(
        self,
        name: str,
        *,
        key_file: Path | None = None,
        fields: tuple[tuple[str, str, str | None], ...] = SEED_FIELDS,
    ) -> None:
        args = ["tenants", "add", name]
        if key_file is not None:
            args += ["--ssh-key", str(key_file)]
        self.admin(*args)
        for field_name, type_, options in fields:
            extra = ["--options", options] if options else []
            self.admin("fields", "add", "--tenant", name, field_name, "--type", type_, *extra)

    def inbox(self, tenant: str) -> Path:
        return self.root / "tenants" / tenant / "inbox"

    def outbox(self, tenant: str) -> Path:
        return self.root / "tenants" / tenant / "outbox"

    def start(self, env: dict[str, str] | None = None) -> None:
        self.write_config()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "personsd", "--config", str(self.config), "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        log.close()
        pid = self.proc.pid
        wait_for(lambda: self.has_event("daemon.started", pid=pid), what="daemon.started")
        if self.extra.get("sftp", {}).get("enabled", True):
            wait_for(self._listening, what="the SFTP port")

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def events(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    found.append(json.loads(line))
                except ValueError:
                    continue
        return found

    def has_event(self, name: str, **fields: Any) -> bool:
        return any(
            e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
            for e in self.events()
        )

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self.proc = None
        return code

    def kill(self) -> None:
        """kill -9: no chance to clean up."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def summary(self, tenant: str, file: str, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for the summary.json of ``file`` and return it."""

        def find() -> Path | None:
            found = sorted(self.outbox(tenant).glob(f"{file}.*.summary.json"))
            return found[-1] if found else None

        path = wait_for(find, timeout=timeout, what=f"summary of {file}")
        return dict(json.loads(path.read_text()))

    def export(self, tenant: str) -> str:
        return self.admin("persons", "export", "--tenant", tenant)


def ssh_key(folder: Path, name: str = "id_ed25519") -> Path:
    """A fresh ed25519 key pair from ssh-keygen; returns the private key path."""
    path = folder / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def drop_file(inbox: Path, name: str, text: str, *, staging: Path | None = None) -> None:
    """A complete file appears in ``inbox`` at once: written aside (in ``staging``,
    else as an upload in progress, a dot name in the inbox), then renamed in."""
    temp = (staging or inbox) / f".{name}.tmp"
    temp.write_text(text)
    os.replace(temp, inbox / name)


def ssh_connect(port: int, user: str, key: Path) -> paramiko.SSHClient:
    """A paramiko SSH client logged in to 127.0.0.1 with ``key`` only (raises on refusal)."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect(
            "127.0.0.1",
            port=port,
            username=user,
            key_filename=str(key),
            allow_agent=False,
            look_for_keys=False,
            timeout=10,
        )
    except BaseException:
        client.close()
        raise
    return client


@contextmanager
def sftp_session(port: int, user: str, key: Path) -> Iterator[paramiko.SFTPClient]:
    """A paramiko SFTP client logged in to 127.0.0.1 as ``user`` with the ed25519 ``key``."""
    transport = paramiko.Transport(("127.0.0.1", port))
    try:
        transport.connect(username=user, pkey=paramiko.Ed25519Key(filename=str(key)))
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        yield sftp
    finally:
        transport.close()


def sftp_put(port: int, user: str, key: Path, local: Path) -> None:
    """Upload ``local`` into the partner's inbox under its own name over SFTP."""
    client = ssh_connect(port, user, key)
    try:
        sftp = client.open_sftp()
        # No stat afterwards (confirm): the daemon may have claimed the file already.
        sftp.put(str(local), f"/inbox/{local.name}", confirm=False)
        sftp.close()
    finally:
        client.close()


def sftp_batch(
    key: Path, port: int, user: str, commands: str, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """:func:`openssh_sftp` with the key first."""
    return openssh_sftp(port, user, key, commands, cwd)


def openssh_sftp(
    port: int, user: str, key: Path, batch: str, cwd: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    """Run OpenSSH's ``sftp`` binary in batch mode against 127.0.0.1; ``extra`` are
    more options. The caller's ssh config, agent and known hosts play no part."""
    batchfile = cwd / "batch.sftp"
    batchfile.write_text(batch)
    return subprocess.run(
        [
            "sftp",
            "-b",
            str(batchfile),
            "-i",
            str(key),
            "-P",
            str(port),
            "-F",
            "/dev/null",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            *extra,
            f"{user}@127.0.0.1",
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SSH_AUTH_SOCK": ""},
    )


Fields = tuple[tuple[str, str, str | None], ...]


def add_tenants(
    daemon: Daemon,
    names: tuple[str, ...],
    key: Path,
    *,
    password: str | None = None,
    fields: Fields = SEED_FIELDS,
) -> None:
    """Tenants with custom fields, in process (the CLI costs seconds per call)."""
    public = key.with_name(key.name + ".pub").read_text().split()
    engine = db.connect(daemon.db_url)
    try:
        db.upgrade(engine)
        with db.write_tx(engine) as conn:
            for name in names:
                tenant_id = store_tenants.add_tenant(
                    conn,
                    name,
                    keys=[(public[0], public[1])],
                    password_hash=hash_password(password) if password else None,
                )
                for field_name, type_, options in fields:
                    store_fields.add_field(
                        conn,
                        tenant_id,
                        CustomField(
                            name=field_name,
                            type=type_,  # type: ignore[arg-type]
                            options=tuple(options.split(",")) if options else (),
                        ),
                    )
    finally:
        engine.dispose()
    for name in names:
        daemon.inbox(name).mkdir(parents=True, exist_ok=True)
        daemon.outbox(name).mkdir(parents=True, exist_ok=True)


def start(daemon: Daemon, tenants: tuple[str, ...]) -> None:
    """Start the daemon and wait until its SFTP server knows ``tenants``.

    The server listens (and `daemon.started` is logged) before the tenants are read
    from the database, so a login in between fails as `unknown_user`; the tenant
    snapshot the daemon writes after that read is the only sign it is done.
    """
    daemon.start()
    snapshot = daemon.root / "state" / "tenants.json"

    def loaded() -> bool:
        try:
            names = {t["name"] for t in json.loads(snapshot.read_text())}
        except (FileNotFoundError, ValueError):
            return False
        return set(tenants) <= names

    wait_for(loaded, what="the daemon to load its tenants")


@contextmanager
def sftp_site(
    home: Path,
    db_url: str,
    tenants: tuple[str, ...],
    *,
    imports: dict[str, Any],
    files: dict[str, str] | None = None,
) -> Iterator[tuple[Daemon, Path, Path]]:
    """A started daemon serving ``tenants`` (one fresh key for all), its key and a
    client directory holding ``files``; the daemon is stopped afterwards."""
    daemon = Daemon(home=home, db_url=db_url, port=free_port(), extra={"import": imports})
    work = home / "client"
    work.mkdir()
    key = ssh_key(home)
    add_tenants(daemon, tenants, key)
    for name, text in (files or {}).items():
        (work / name).write_text(text)
    start(daemon, tenants)
    try:
        yield daemon, key, work
    finally:
        daemon.stop()


@dataclass(frozen=True, kw_only=True, slots=True)
class SftpSite:
    """A daemon serving tenants, their key and the SFTP client's local directory."""

    daemon: Daemon
    key: Path
    work: Path  # the client's local directory

    def put(self, tenant: str, commands: str) -> None:
        """Run an OpenSSH `sftp` batch as ``tenant`` from ``work``; it must succeed."""
        result = sftp_batch(self.key, self.daemon.port, tenant, commands, self.work)
        assert 0 == result.returncode, result.stderr
