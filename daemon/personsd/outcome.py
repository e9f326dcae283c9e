"""How one run of an import ends: its :class:`Outcome`, or :class:`Interrupted`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from personsd import reports
from personsd.errors import Interrupted
from personsd.store.imports import ImportRecord

__all__ = ["Interrupted", "Outcome", "now"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Outcome:
    """What one run of an import ended with."""

    record: ImportRecord
    summary: reports.Summary


def now() -> datetime:
    """The time an import records: UTC, whole seconds (as the summary shows them)."""
    return datetime.now(UTC).replace(microsecond=0)
