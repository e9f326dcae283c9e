"""Small pure pieces of the importer."""

from __future__ import annotations

import functools
import operator
import time
import uuid

from personsd.store.keys import PersonKeys


def test_new_keys_are_lowercase_version_7_uuids() -> None:
    """SPEC 1.4: person_key is a lowercase UUID; ours are time-ordered (version 7, RFC 9562)."""
    new_key = PersonKeys()  # one maker across many batches of random bits
    keys = [new_key() for _ in range(20_000)]
    parsed = [uuid.UUID(k) for k in keys]
    assert keys == [str(u) for u in parsed]
    assert {7} == {u.version for u in parsed}
    assert {uuid.RFC_4122} == {u.variant for u in parsed}
    assert len(keys) == len(set(keys))


def test_new_keys_lead_with_the_time_in_milliseconds() -> None:
    """Keys made later sort after keys made earlier (by their millisecond), so inserts append."""
    before = time.time_ns() // 1_000_000
    new_key = PersonKeys()
    keys = []
    for _ in range(5):
        keys.append(new_key())
        time.sleep(0.002)
    after = time.time_ns() // 1_000_000
    stamps = [uuid.UUID(k).int >> 80 for k in keys]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == len(stamps)
    assert all(before <= s <= after for s in stamps)
    assert keys == sorted(keys)


def test_new_keys_differ_in_their_random_bits() -> None:
    """Keys of one millisecond still differ: every one of the 62 low random bits gets set."""
    new_key = PersonKeys()
    bits = [uuid.UUID(new_key()).int & ((1 << 62) - 1) for _ in range(2000)]
    assert len(set(bits)) == len(bits)
    assert (1 << 62) - 1 == functools.reduce(operator.or_, bits)
