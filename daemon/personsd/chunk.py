"""A chunk of validated rows, how it is made, and its wire form.

What ``validation`` hands the importer, whether made inline or in the
validator process: :class:`ValidatedChunk` (rows as ``rules.RowChange`` or
:class:`RowFailure`, where the next chunk starts, and the MDNs the offline
carrier check refuses when checked ahead).

The wire form is plain tuples of str and int, not the value objects: pickle
spends several microseconds on a frozen dataclass and about one on a tuple,
and per-row costs are what the validator process exists to cut.
:func:`encode`/:func:`decode` are pure and round-trip exactly
(tests/test_validation.py).
"""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from personsd import rules
from personsd.errors import RowError
from personsd.fileformat import Layout, RawRow
from personsd.phones import CarrierCheck, offline_lookup
from personsd.rules import MDN

PICKLE_PROTOCOL = pickle.HIGHEST_PROTOCOL


@dataclass(frozen=True, kw_only=True, slots=True)
class RowFailure:
    """A row that failed validation: where it is, what it held, every value error."""

    line: int
    row: int
    values: tuple[str, ...]
    errors: tuple[RowError, ...]

    def __post_init__(self) -> None:
        if not self.errors:
            raise ValueError("a failed row needs at least one error")


ValidatedRow = rules.RowChange | RowFailure


@dataclass(frozen=True, kw_only=True, slots=True)
class ValidatedChunk:
    """Consecutive rows of a file, validated, and where the next chunk starts.

    ``carrier_failures``, when not None, holds every MDN of the chunk's
    changes that ``phones.offline_lookup`` rejects (checked ahead, in the
    validator process): the importer then needs the check only for those.
    """

    rows: tuple[ValidatedRow, ...]
    end: int  # byte offset just past the last row
    next_line: int  # physical line number at `end`
    last_row: int  # data row number of the last row
    carrier_failures: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if not self.rows:
            raise ValueError("a chunk holds at least one row")

    def carrier(self, check: CarrierCheck) -> CarrierCheck:
        """The carrier check for this chunk's rows: ``check``, or its answers known ahead."""
        failures = self.carrier_failures
        if failures is None:
            return check
        if check is not offline_lookup:
            raise ValueError("carrier answers known ahead are the offline check's only")

        def known(e164: str) -> RowError | None:
            return offline_lookup(e164) if e164 in failures else None

        return known


def validate_chunk(
    raws: Sequence[RawRow], layout: Layout, schema: rules.Schema, *, precheck: bool = False
) -> ValidatedChunk:
    """``rules.validate`` of every row; with ``precheck``, the offline carrier check too."""
    validated: list[ValidatedRow] = []
    for raw in raws:
        change = rules.validate(raw, layout, schema)
        if isinstance(change, tuple):
            validated.append(
                RowFailure(line=raw.line, row=raw.row, values=raw.values, errors=change)
            )
        else:
            validated.append(change)
    failures = _offline_failures(validated) if precheck else None
    last = raws[-1]
    return ValidatedChunk(
        rows=tuple(validated),
        end=last.end,
        next_line=last.next_line,
        last_row=last.row,
        carrier_failures=failures,
    )


def _offline_failures(rows: Sequence[ValidatedRow]) -> frozenset[str]:
    # Past the cache: a file's MDNs are distinct, so it would only miss and evict.
    check = offline_lookup.__wrapped__
    failing = set()
    for change in rows:
        if isinstance(change, RowFailure):
            continue
        # Every MDN a row can assign is among its lookups (identifiers'
        # non-null values all are), so they alone need checking.
        for column, value in change.lookups:
            if column == MDN:
                assert isinstance(value, str)
                if check(value) is not None:
                    failing.add(value)
    return frozenset(failing)


def iter_chunks(
    rows: Iterator[RawRow],
    layout: Layout,
    schema: rules.Schema,
    size: int,
    *,
    precheck: bool | Callable[[], bool] = False,
) -> Iterator[ValidatedChunk]:
    """The rows ``size`` at a time, validated; ``precheck`` may be asked before each chunk."""
    if size < 1:
        raise ValueError("chunk size must be at least 1")
    while raws := list(itertools.islice(rows, size)):
        ahead = precheck() if callable(precheck) else precheck
        chunk = validate_chunk(raws, layout, schema, precheck=ahead)
        # Not held while the consumer works and the next chunk is read: one
        # chunk of raw rows alive at a time, not two.
        del raws
        yield chunk
        del chunk


def encode(chunk: ValidatedChunk) -> bytes:
    """The chunk as bytes for :func:`decode` (plain tuples; see the module docstring)."""
    rows = [
        (c.line, c.row, c.values, c.errors)
        if isinstance(c, RowFailure)
        else (c.line, c.row, c.values, c.key, c.key_value, c.identifiers, c.custom, c.lookups)
        for c in chunk.rows
    ]
    return pickle.dumps(
        (rows, chunk.end, chunk.next_line, chunk.last_row, chunk.carrier_failures),
        protocol=PICKLE_PROTOCOL,
    )


def decode(data: bytes, layout: Layout) -> ValidatedChunk:
    """The chunk :func:`encode` made; ``layout`` is the file's (its columns are not sent)."""
    rows, end, next_line, last_row, failures = pickle.loads(data)
    columns = layout.fields
    change, failure = rules.RowChange, RowFailure
    validated: list[ValidatedRow] = []
    append = validated.append
    for item in rows:
        if len(item) == 4:
            append(failure(line=item[0], row=item[1], values=item[2], errors=item[3]))
        else:
            line, row, values, key, key_value, identifiers, custom, lookups = item
            append(
                change(
                    line=line,
                    row=row,
                    key=key,
                    key_value=key_value,
                    identifiers=identifiers,
                    custom=custom,
                    lookups=lookups,
                    columns=columns,
                    values=values,
                )
            )
    return ValidatedChunk(
        rows=tuple(validated),
        end=end,
        next_line=next_line,
        last_row=last_row,
        carrier_failures=failures,
    )
