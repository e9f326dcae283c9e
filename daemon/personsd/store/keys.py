"""New person keys: lowercase, time-ordered UUIDs (version 7, RFC 9562)."""

from __future__ import annotations

import os
import time

_VARIANT = "89ab"


class PersonKeys:
    """A maker of new person keys: lowercase, time-ordered UUIDs (version 7, RFC 9562).

    Random keys (version 4) land all over the person_key index, so once the
    index outgrows the cache every chunk of an initial load dirties (and
    writes, at its commit) a page per new person. Keys led by the time in
    milliseconds go to the end of the index. 74 random bits remain: keys are
    no easier to guess, and a key tells only when its person was created.
    The random bits of 256 keys come from one call to urandom; one instance
    per chunk, so threads never share a buffer.
    """

    __slots__ = ("_at", "_random")
    _BATCH = 256

    def __init__(self) -> None:
        self._random = ""
        self._at = 0

    def __call__(self) -> str:
        at = self._at
        if at >= len(self._random):
            self._random, at = os.urandom(10 * self._BATCH).hex(), 0
        self._at = at + 20
        h = self._random[at : at + 20]
        stamp = f"{time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF:012x}"
        # Version nibble 7; variant bits 10xx in the first nibble of the 4th group.
        return f"{stamp[:8]}-{stamp[8:]}-7{h[:3]}-{_VARIANT[int(h[3], 16) & 3]}{h[4:7]}-{h[7:19]}"
