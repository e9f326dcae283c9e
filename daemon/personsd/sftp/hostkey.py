"""The SFTP server's host key."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from personsd.logging import Event, get_logger

log = get_logger()


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
            log.info(Event.SFTP_HOST_KEY_CREATED, path=str(path))
        except FileExistsError:
            pass
        finally:
            os.unlink(temp)
    return paramiko.Ed25519Key(filename=str(path))
