"""A chunk's carrier check, with what can be known ahead asked before its transaction."""

from __future__ import annotations

from sqlalchemy import Engine

from personsd import rules
from personsd.chunk import ValidatedChunk
from personsd.config import Config
from personsd.errors import RowError
from personsd.phones import CarrierCheck, HttpCarrierLookup, ask_all, carrier_check
from personsd.store import persons as store_persons
from personsd.store.imports import ImportRecord


def carrier_for(cfg: Config) -> CarrierCheck:
    """The carrier check ``import.carrier_lookup`` names."""
    return carrier_check(cfg.imports.carrier_lookup, cfg.imports.carrier_lookup_url)


def ahead(
    engine: Engine, record: ImportRecord, chunk: ValidatedChunk, carrier: CarrierCheck
) -> CarrierCheck:
    """The chunk's carrier check; a remote service is asked now, before the write transaction.

    Only MDNs nobody in the tenant holds can be newly assigned, so only those
    are asked (each once). An MDN a row frees and a later row of the same
    chunk assigns is the rare one not asked ahead: asked when applied.
    """
    if not isinstance(carrier, HttpCarrierLookup):
        return chunk.carrier(carrier)
    candidates = rules.carrier_candidates(chunk.rows)
    if not candidates:
        return carrier
    with engine.connect() as conn:
        held = store_persons.load(conn, record.tenant_id, [(rules.MDN, m) for m in candidates])
    answers = ask_all(carrier, sorted(candidates - {person.mdn for person in held}))

    def known(e164: str) -> RowError | None:
        return answers[e164] if e164 in answers else carrier(e164)

    return known


class CountingCheck:
    """A carrier check that counts its calls: did the chunk assign new MDNs?"""

    __slots__ = ("calls", "check")

    def __init__(self, check: CarrierCheck) -> None:
        self.check = check
        self.calls = 0

    def __call__(self, e164: str) -> RowError | None:
        self.calls += 1
        return self.check(e164)
