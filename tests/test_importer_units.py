"""Small pure pieces of the importer."""

from __future__ import annotations

import uuid

from personsd.importer import _new_key


def test_new_keys_are_lowercase_version_4_uuids() -> None:
    """SPEC 1.4: person_key is a lowercase UUID; ours are random (version 4, RFC 4122)."""
    keys = [_new_key() for _ in range(20_000)]
    parsed = [uuid.UUID(k) for k in keys]
    assert keys == [str(u) for u in parsed]
    assert {4} == {u.version for u in parsed}
    assert {uuid.RFC_4122} == {u.variant for u in parsed}
    assert len(keys) == len(set(keys))
