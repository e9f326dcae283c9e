"""The daemon's latency: an SFTP upload's close to its ``summary.json`` in the outbox.

Starts the real daemon (``python -m personsd run``: SQLite, a free port,
default ``settle_seconds`` and carrier lookup), adds a tenant with a fresh
ed25519 key, and uploads small files with paramiko's ``SFTPClient.put``,
which returns once the server has acknowledged the close. The clock runs
from there until the summary appears (outbox polled every 5 ms). One
unmeasured upload first warms the daemon's lazy imports.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import generate
from common import CLEAN_ENV, TENANT, Spawned, measure, spawn

POLL_SECONDS = 0.005
# Far past any size the files use, so these rows are new persons.
FIRST_ROW = 50_000_000


@dataclass(frozen=True, kw_only=True, slots=True)
class Latency:
    samples: tuple[float, ...]
    warmup: float
    daemon_peak_rss_mb: float

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def worst(self) -> float:
        return max(self.samples)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_key(folder: Path) -> tuple[Path, Path]:
    """A fresh ed25519 key pair in OpenSSH format: (private, public)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = folder / "id_ed25519"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public = folder / "id_ed25519.pub"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + b" bench\n"
    )
    return private, public


def measure_latency(home: Path, *, repeats: int, rows: int = 10) -> Latency:
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = home / "personsd.toml"
    config.write_text(
        "[database]\n"
        f"url = {json.dumps('sqlite:///' + str(home / 'var' / 'persons.db'))}\n"
        '[paths]\nroot = "var"\n'
        f'[sftp]\nlisten = "127.0.0.1:{port}"\nhost_key = "var/host_key"\n'
        '[log]\nformat = "json"\nlevel = "info"\n'
    )
    private, public = write_key(home)

    def cli(*args: str) -> None:
        measure(
            [sys.executable, "-m", "personsd", "--config", str(config), *args], env=CLEAN_ENV
        ).check("personsd " + " ".join(args[:2]))

    cli("tenants", "add", TENANT, "--ssh-key", str(public))
    for name, type_, options in generate.CUSTOM_FIELDS:
        cli(
            "fields",
            "add",
            "--tenant",
            TENANT,
            name,
            "--type",
            type_,
            *(["--options", options] if options else []),
        )
    outbox = home / "var" / "tenants" / TENANT / "outbox"
    with (home / "daemon.log").open("ab") as log:
        daemon = spawn(
            [sys.executable, "-m", "personsd", "--config", str(config), "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=CLEAN_ENV,
        )
    try:
        _wait_listening(port, daemon.proc)
        times = _uploads(home, port, private, outbox, repeats + 1, rows)
    finally:
        rss_mb = _stop(daemon)
    return Latency(samples=tuple(times[1:]), warmup=times[0], daemon_peak_rss_mb=rss_mb)


def _stop(daemon: Spawned, timeout: float = 30.0) -> float:
    """SIGTERM (the launcher passes it on), SIGKILL after ``timeout``; peak RSS MB."""
    daemon.proc.send_signal(signal.SIGTERM)
    try:
        return daemon.finish(timeout)[2]
    except subprocess.TimeoutExpired:
        children = Path(f"/proc/{daemon.proc.pid}/task/{daemon.proc.pid}/children")
        for pid in children.read_text().split():
            os.kill(int(pid), signal.SIGKILL)
        return daemon.finish(timeout)[2]


def _wait_listening(port: int, daemon: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited {daemon.returncode}: see its daemon.log")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the daemon's SFTP port did not open within 60 s")


def _uploads(
    home: Path, port: int, private: Path, outbox: Path, count: int, rows: int
) -> list[float]:
    import paramiko

    key = paramiko.Ed25519Key.from_private_key_file(str(private))
    transport = paramiko.Transport(("127.0.0.1", port))
    times = []
    try:
        transport.connect(username=TENANT, pkey=key)
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        for k in range(count):
            name = f"latency-{k:02d}.persons"
            local = home / name
            generate.write(local, rows, start=FIRST_ROW + k * rows)
            sftp.put(str(local), f"/inbox/{name}", confirm=False)
            closed = time.perf_counter()
            summary = _wait_summary(outbox, name)
            times.append(time.perf_counter() - closed)
            document = json.loads(summary.read_text())
            if document["status"] != "completed" or document["rows"]["succeeded"] != rows:
                raise RuntimeError(f"latency upload {name} did not import cleanly: {document}")
        sftp.close()
    finally:
        transport.close()
    return times


def _wait_summary(outbox: Path, name: str, timeout: float = 60.0) -> Path:
    deadline = time.monotonic() + timeout
    prefix, suffix = name + ".", ".summary.json"
    while time.monotonic() < deadline:
        with os.scandir(outbox) as entries:
            for entry in entries:
                if entry.name.startswith(prefix) and entry.name.endswith(suffix):
                    return Path(entry.path)
        time.sleep(POLL_SECONDS)
    raise RuntimeError(f"no summary for {name} within {timeout} s")
