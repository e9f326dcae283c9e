"""A tenant's place on disk and its SSH keys: set up, parsed, moved aside on removal."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from sqlalchemy import Engine

from personsd.config import Config
from personsd.errors import OperatorError
from personsd.store import db
from personsd.store import tenants as store_tenants

# A tenant's boxes are the daemon's and its group's (an OpenSSH chroot set-up reads
# them through the group), never the world's; an SFTP login makes them so too.
BOX_MODE = 0o750


def init_paths(cfg: Config) -> None:
    """personsd's own directories (tenants, work, archive, quarantine); the daemon's too."""
    for path in (cfg.tenants_dir, cfg.work_dir, cfg.archive_dir, cfg.quarantine_dir):
        path.mkdir(parents=True, exist_ok=True)


def tenant_dirs(cfg: Config, name: str) -> None:
    """A tenant's inbox, validate and outbox directories (idempotent).

    The one place that decides them: ``personsd init``, ``personsd tenants add``
    and the daemon (for every tenant it serves, at start, reload and housekeeping).
    """
    for box in (cfg.inbox(name), cfg.validate_box(name), cfg.outbox(name)):
        # As an SFTP login makes them; an existing box keeps its mode (the OpenSSH
        # set-up gives inboxes 2770, deploy/openssh-tenant.sh).
        box.mkdir(mode=BOX_MODE, parents=True, exist_ok=True)


def read_keys(files: tuple[Path, ...]) -> list[tuple[str, str, str]]:
    """The ``(type, base64, comment)`` of every OpenSSH public key line in ``files``."""
    keys = []
    for path in files:
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise OperatorError(f"cannot read SSH key {path}: {exc.strerror}") from None
        for line in lines:
            parts = line.strip().split(None, 2)
            if not parts or parts[0].startswith("#"):
                continue
            if len(parts) < 2:
                raise OperatorError(f"{path}: not an OpenSSH public key line: {line[:40]!r}")
            keys.append((parts[0], parts[1], parts[2] if len(parts) > 2 else ""))
        if not lines:
            raise OperatorError(f"{path}: no public key in it")
    return keys


def remove(engine: Engine, cfg: Config, name: str) -> None:
    """Remove tenant ``name``; its files are moved aside under state/removed, not deleted."""
    with db.write_tx(engine) as conn:
        if not store_tenants.remove_tenant(conn, name):
            raise OperatorError(f"unknown tenant {name!r}")
    tree = cfg.tenants_dir / name
    if tree.exists():
        aside = cfg.state_dir / "removed" / f"{name}.{int(time.time())}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tree), aside)
