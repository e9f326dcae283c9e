"""Failed SFTP logins and bans per client address (table ``sftp_bans``), for every instance.

One row per address. Its ``failures`` count from ``window_started_at``: a
failure after the window has passed starts a new window at 1. Reaching the
cap bans the address until ``banned_until`` and starts the count again.
Reads are one primary-key lookup; only failures write.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, case, delete, func, literal, or_, select, update

from personsd.store.db import dialect_insert
from personsd.store.models import SftpBanRow


@dataclass(frozen=True, kw_only=True, slots=True)
class BanState:
    """One address's row: failures since ``window_started_at``, and its ban, if any."""

    address: str
    failures: int
    window_started_at: datetime
    banned_until: datetime | None

    def __post_init__(self) -> None:
        if self.failures < 0:
            raise ValueError(f"failures must be >= 0, got {self.failures}")
        if self.window_started_at.tzinfo is None:
            raise ValueError("window_started_at must be an aware datetime")

    def banned(self, now: datetime) -> bool:
        return self.banned_until is not None and self.banned_until > now

    def failures_within(self, now: datetime, window: timedelta) -> int:
        return self.failures if self.window_started_at > now - window else 0


def _state(row: Any) -> BanState:  # a Row of _COLUMNS
    return BanState(
        address=row.address,
        failures=row.failures,
        window_started_at=row.window_started_at,
        banned_until=row.banned_until,
    )


_COLUMNS = (
    SftpBanRow.address,
    SftpBanRow.failures,
    SftpBanRow.window_started_at,
    SftpBanRow.banned_until,
)


def read(conn: Connection, address: str) -> BanState | None:
    """The address's row, None when it never failed (or was swept)."""
    row = conn.execute(select(*_COLUMNS).where(SftpBanRow.address == address)).one_or_none()
    return None if row is None else _state(row)


def record_failure(
    conn: Connection,
    address: str,
    *,
    now: datetime,
    window: timedelta,
    max_failures: int,
    ban: timedelta,
) -> tuple[BanState, bool]:
    """Count one failure of ``address``; its new state, and whether this failure banned it.

    Call inside ``db.write_tx``: on PostgreSQL the upsert locks the row, so
    instances failing the same address at once count one after the other.
    """
    expired = SftpBanRow.window_started_at <= now - window
    started = literal(now, SftpBanRow.window_started_at.type)
    stmt = (
        dialect_insert(conn, SftpBanRow)
        .values(address=address, failures=1, window_started_at=now, banned_until=None)
        .on_conflict_do_update(
            index_elements=["address"],
            set_={
                "failures": case((expired, 1), else_=SftpBanRow.failures + 1),
                "window_started_at": case((expired, started), else_=SftpBanRow.window_started_at),
            },
        )
        .returning(*_COLUMNS)
    )
    state = _state(conn.execute(stmt).one())
    if state.failures < max_failures or state.banned(now):
        return state, False
    until = now + ban
    conn.execute(
        update(SftpBanRow)
        .where(SftpBanRow.address == address)
        .values(failures=0, window_started_at=now, banned_until=until)
    )
    return BanState(address=address, failures=0, window_started_at=now, banned_until=until), True


def banned_count(conn: Connection, now: datetime) -> int:
    """Addresses banned at ``now`` (an index range scan)."""
    stmt = select(func.count()).select_from(SftpBanRow).where(SftpBanRow.banned_until > now)
    return int(conn.execute(stmt).scalar_one())


def sweep(conn: Connection, *, now: datetime, window: timedelta) -> int:
    """Forget addresses whose window and ban have both passed; how many."""
    stmt = delete(SftpBanRow).where(
        SftpBanRow.window_started_at <= now - window,
        or_(SftpBanRow.banned_until.is_(None), SftpBanRow.banned_until <= now),
    )
    return int(conn.execute(stmt).rowcount)
