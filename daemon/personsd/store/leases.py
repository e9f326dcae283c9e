"""Leases: an instance's fenced hold on a running import (SPEC 12).

Every write of a lease holder is fenced by the lease's generation and holder:
once another instance has taken the import over, the write changes no row
and raises :class:`LeaseLost`, and its transaction rolls back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select, update

from personsd.errors import LeaseLost
from personsd.store.models import ImportRow


@dataclass(frozen=True, kw_only=True, slots=True)
class Lease:
    """An instance's hold on a running import: the fencing token of its writes."""

    import_id: int
    holder: str
    generation: int
    seconds: float

    def __post_init__(self) -> None:
        if not self.holder:
            raise ValueError("a lease needs a holder")
        for name in ("import_id", "generation"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if not self.seconds > 0:
            raise ValueError(f"lease seconds must be positive, got {self.seconds!r}")


def fence(conn: Connection, lease: Lease) -> None:
    """Check (and renew) the lease in the caller's transaction; LeaseLost if it is gone.

    On PostgreSQL the row stays locked until the transaction ends, so no other
    instance can take the import over while this transaction writes for it.
    """
    fenced_update(
        conn, lease, {"lease_expires": datetime.now(UTC) + timedelta(seconds=lease.seconds)}
    )


def renew(conn: Connection, leases: list[Lease]) -> list[Lease]:
    """The heartbeat: extend each lease still held; returns those found lost.

    A row locked right now is skipped, not waited for: it is this instance's
    own chunk in progress (its checkpoint renews the lease) or a claim that
    ends in milliseconds; waiting would hold up the renewal of the others.
    """
    lost = []
    for lease in leases:
        row = conn.execute(
            select(ImportRow.lease_generation, ImportRow.lease_holder)
            .where(ImportRow.id == lease.import_id)
            .with_for_update(skip_locked=True)
        ).one_or_none()
        if row is None and conn.dialect.name == "postgresql":
            continue
        try:
            fence(conn, lease)
        except LeaseLost:
            lost.append(lease)
    return lost


def release(conn: Connection, lease: Lease) -> None:
    """Give the lease up (a clean stop): any instance may take the import over now.

    No expiry at all (rather than one in the past) tells the next claim that
    the run ended cleanly: it counts no abrupt end.
    """
    fenced_update(conn, lease, {"lease_expires": None})


def fenced_update(conn: Connection, lease: Lease, values: Mapping[str, Any]) -> None:
    """Update the leased import's row while ``lease`` is current; LeaseLost otherwise."""
    result = conn.execute(
        update(ImportRow)
        .where(
            ImportRow.id == lease.import_id,
            ImportRow.lease_generation == lease.generation,
            ImportRow.lease_holder == lease.holder,
        )
        .values(**values)
    )
    if result.rowcount != 1:
        raise LeaseLost(
            f"import {lease.import_id}: lease generation {lease.generation} of"
            f" {lease.holder} is no longer current"
        )
