"""store.persons: load, allocate_ids and write, the import hot path, on both databases."""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import IntegrityError

from personsd.errors import InternalError
from personsd.fieldtypes import StoredValue
from personsd.rules import Person
from personsd.store import db, persons, tenants


@pytest.fixture
def tenant(engine: Engine) -> int:
    with db.write_tx(engine) as conn:
        return tenants.add_tenant(conn, "acme")


def make(
    conn: Connection,
    n: int,
    *,
    external_person_id: str | None = None,
    mdn: str | None = None,
    vibes_device_id: str | None = None,
) -> list[Person]:
    """``n`` new persons with fresh ids; ``{i}`` in a value is replaced by the index."""

    def fill(value: str | None, i: int) -> str | None:
        return None if value is None else value.format(i=i)

    return [
        Person(
            person_id=pid,
            person_key=str(uuid.uuid4()),
            external_person_id=fill(external_person_id, i),
            mdn=fill(mdn, i),
            vibes_device_id=fill(vibes_device_id, i),
            attributes={"7": f"v{i}", "9": ("a", "b")},
        )
        for i, pid in enumerate(persons.allocate_ids(conn, n))
    ]


def test_write_then_load_round_trip(engine: Engine, tenant: int) -> None:
    """Created persons load back equal by every identifier column, deduplicated."""
    with db.write_tx(engine) as conn:
        created = make(
            conn, 3, external_person_id="e{i}", mdn="+1229555000{i}", vibes_device_id="d{i}"
        )
        persons.write(conn, tenant, created, [])
    a, _, c = created
    lookups = [
        ("person_id", a.person_id),
        ("person_key", a.person_key),
        ("external_person_id", "e1"),
        ("mdn", "+12295550001"),
        ("vibes_device_id", "d2"),
        ("external_person_id", "missing"),
        ("person_id", 2**70),
    ]
    with engine.connect() as conn:
        loaded = persons.load(conn, tenant, lookups)
        by_key = persons.find(conn, tenant, "person_key", c.person_key)
        none = persons.find(conn, tenant, "mdn", "+19999999999")
        total = persons.count(conn, tenant)
    assert created == loaded
    assert c == by_key
    assert None is none
    assert 3 == total


def test_load_is_scoped_to_the_tenant(engine: Engine, tenant: int) -> None:
    """Another tenant's persons never match, even with the same identifier values."""
    with db.write_tx(engine) as conn:
        other = tenants.add_tenant(conn, "beta")
        persons.write(conn, other, make(conn, 1, external_person_id="same"), [])
        mine = make(conn, 1, external_person_id="same")
        persons.write(conn, tenant, mine, [])
        theirs = persons.load(conn, other, [("person_id", mine[0].person_id)])
    with engine.connect() as conn:
        assert mine == persons.load(conn, tenant, [("external_person_id", "same")])
    assert [] == theirs


def test_load_beyond_sqlite_variable_limit(engine: Engine, tenant: int) -> None:
    """More lookups than SQLite allows variables in one statement still find everyone."""
    with db.write_tx(engine) as conn:
        created = make(conn, 2, vibes_device_id="d{i}")
        persons.write(conn, tenant, created, [])
    lookups = [("vibes_device_id", f"x{i}") for i in range(33_000)]
    lookups += [("vibes_device_id", "d0"), ("vibes_device_id", "d1")]
    with engine.connect() as conn:
        assert created == persons.load(conn, tenant, lookups)


def test_swap_and_hand_over_identifiers_in_one_chunk(engine: Engine, tenant: int) -> None:
    """Identifiers may swap or move between persons, and to a new person, within one write."""
    with db.write_tx(engine) as conn:
        a, b, c = make(conn, 3, external_person_id="e{i}", mdn="+1229555000{i}")
        persons.write(conn, tenant, [a, b, c], [])
    a2, b2, c2 = a.copy(), b.copy(), c.copy()
    a2.external_person_id, b2.external_person_id = "e1", "e0"  # swap
    c2.external_person_id, c2.mdn = None, None  # cleared, then given away
    b2.mdn = "+12295550002"  # c's old MDN goes to an existing person...
    a2.attributes["7"] = "changed"
    with db.write_tx(engine) as conn:
        # ...and c's old external id to a new one.
        [d] = make(conn, 1, external_person_id="e2", mdn="+12295550009")
        persons.write(conn, tenant, [d], [(a, a2), (b, b2), (c, c2)])
    with engine.connect() as conn:
        stored = list(persons.iter_all(conn, tenant))
    assert [a2, b2, c2, d] == stored


def test_write_skips_unchanged_pairs_and_keeps_created_at(engine: Engine, tenant: int) -> None:
    """An update pair whose before equals after writes nothing (updated_at unchanged)."""
    with db.write_tx(engine) as conn:
        [a] = make(conn, 1, external_person_id="e")
        persons.write(conn, tenant, [a], [])
    with db.write_tx(engine) as conn:
        before = conn.exec_driver_sql("SELECT updated_at FROM persons").scalar()
        persons.write(conn, tenant, [], [(a, a.copy())])
        after = conn.exec_driver_sql("SELECT updated_at FROM persons").scalar()
    assert before == after


@pytest.mark.parametrize("column", ["external_person_id", "mdn", "vibes_device_id"])
def test_unique_identifiers_per_tenant(engine: Engine, tenant: int, column: str) -> None:
    """A second person of the tenant with the same identifier is an IntegrityError."""
    with db.write_tx(engine) as conn:
        [a, b] = make(conn, 2)
        setattr(a, column, "+12295550001")
        persons.write(conn, tenant, [a, b], [])
    b2 = b.copy()
    setattr(b2, column, "+12295550001")
    with pytest.raises(IntegrityError), db.write_tx(engine) as conn:
        persons.write(conn, tenant, [], [(b, b2)])
    with pytest.raises(IntegrityError), db.write_tx(engine) as conn:
        [c] = make(conn, 1)
        setattr(c, column, "+12295550001")
        persons.write(conn, tenant, [c], [])


def test_nulls_do_not_collide(engine: Engine, tenant: int) -> None:
    """Any number of persons may lack an external id, MDN or device id."""
    with db.write_tx(engine) as conn:
        persons.write(conn, tenant, make(conn, 5), [])
    with engine.connect() as conn:
        assert 5 == persons.count(conn, tenant)


def test_update_of_a_vanished_person_fails(engine: Engine, tenant: int) -> None:
    """Writing an update for a person that is not the tenant's raises instead of losing it."""
    with db.write_tx(engine) as conn:
        other = tenants.add_tenant(conn, "beta")
        [a] = make(conn, 1, external_person_id="e")
        persons.write(conn, other, [a], [])
    a2 = a.copy()
    a2.external_person_id = "f"
    with pytest.raises(InternalError, match="instead of 1"), db.write_tx(engine) as conn:
        persons.write(conn, tenant, [], [(a, a2)])


def test_allocated_ids_are_fresh_and_never_reused(engine: Engine, tenant: int) -> None:
    """allocate_ids never repeats an id, even after the persons holding the top ids are gone."""
    with db.write_tx(engine) as conn:
        first = persons.allocate_ids(conn, 3)
        second = persons.allocate_ids(conn, 2)
        created = make(conn, 4)
        persons.write(conn, tenant, created, [])
        used = persons.allocate_ids(conn, 0)
    with db.write_tx(engine) as conn:
        tenants.remove_tenant(conn, "acme")
        third = persons.allocate_ids(conn, 2)
    assert [] == used
    assert 3 == len(set(first)) and 2 == len(set(second))
    assert max(first) < min(second)
    assert min(third) > max(p.person_id for p in created) > max(second)


def test_iter_all_orders_by_id_in_keyset_batches(engine: Engine, tenant: int) -> None:
    """iter_all yields the tenant's persons by person_id, one query per batch."""
    with db.write_tx(engine) as conn:
        other = tenants.add_tenant(conn, "beta")
        mine: list[Person] = []
        for _ in range(5):
            batch = make(conn, 5)
            persons.write(conn, tenant, batch, [])
            persons.write(conn, other, make(conn, 2), [])
            mine += batch
    statements: list[str] = []
    with engine.connect() as conn:
        event.listen(conn, "before_cursor_execute", lambda *a: statements.append(a[2]))
        listed = list(persons.iter_all(conn, tenant, batch=7))
    assert sorted(mine, key=lambda p: p.person_id) == listed
    assert 4 == sum("FROM persons" in s for s in statements)  # 7 + 7 + 7 + 4


def _chunk_statements(engine: Engine, tenant: int, n: int) -> tuple[int, int]:
    """Statements for a creating chunk and an updating chunk of ``n`` persons."""
    counted: list[str] = []

    def count(*args: object) -> None:
        counted.append(str(args[2]))

    with db.write_tx(engine) as conn:
        event.listen(conn, "before_cursor_execute", count)
        keys = [("external_person_id", f"{tenant}-{i}") for i in range(n)]
        assert [] == persons.load(conn, tenant, keys)
        ids = persons.allocate_ids(conn, n)
        created = [
            Person(person_id=pid, person_key=str(uuid.uuid4()), external_person_id=value)
            for pid, (_, value) in zip(ids, keys, strict=True)
        ]
        persons.write(conn, tenant, created, [])
        event.remove(conn, "before_cursor_execute", count)
    creating = len(counted)
    counted.clear()
    with db.write_tx(engine) as conn:
        event.listen(conn, "before_cursor_execute", count)
        loaded = persons.load(conn, tenant, keys)
        pairs = []
        for before, partner in zip(loaded, loaded[1:] + loaded[:1], strict=True):
            after = before.copy()
            after.external_person_id = partner.external_person_id  # rotate: all move
            after.attributes["1"] = "x"
            pairs.append((before, after))
        persons.write(conn, tenant, [], pairs)
        event.remove(conn, "before_cursor_execute", count)
    with engine.connect() as conn:
        assert n == persons.count(conn, tenant)
    return creating, len(counted)


def test_chunk_statement_count_is_independent_of_size(engine: Engine) -> None:
    """load + allocate_ids + write cost the same statements for 10 and for 2,000 persons."""
    with db.write_tx(engine) as conn:
        small, large = tenants.add_tenant(conn, "small"), tenants.add_tenant(conn, "large")
    small_counts = _chunk_statements(engine, small, 10)
    large_counts = _chunk_statements(engine, large, 2000)
    assert small_counts == large_counts
    assert (3, 3) == small_counts


_values = st.text(min_size=0, max_size=8)
_attributes = st.dictionaries(
    st.integers(min_value=1, max_value=10**6).map(str),
    st.one_of(_values, st.lists(_values, max_size=4).map(tuple)),
    max_size=6,
)


@given(_attributes)
def test_attributes_encoding_round_trips(attributes: dict[str, StoredValue]) -> None:
    """Stored custom values (text or tuple of keys) survive the JSON column unchanged."""
    assert attributes == persons._decode(persons._encode(attributes))


@given(_attributes)
def test_attributes_are_stored_as_before(attributes: dict[str, StoredValue]) -> None:
    """The stored JSON text is exactly what earlier releases wrote (json.dumps, compact, sorted)."""
    expected = json.dumps(attributes, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    assert expected == persons._encode(attributes)


def test_update_without_handover_is_one_statement(engine: Engine, tenant: int) -> None:
    """Updates that hand no identifier to another person skip the NULL phase."""
    with db.write_tx(engine) as conn:
        created = make(conn, 3, external_person_id="e{i}")
        persons.write(conn, tenant, created, [])
    pairs = []
    for before in created:
        after = before.copy()
        after.vibes_device_id = f"new-{before.person_id}"
        after.external_person_id = f"x{before.person_id}"
        pairs.append((before, after))
    statements: list[str] = []
    with db.write_tx(engine) as conn:
        event.listen(conn, "before_cursor_execute", lambda *a: statements.append(a[2]))
        persons.write(conn, tenant, [], pairs)
    with engine.connect() as conn:
        stored = list(persons.iter_all(conn, tenant))
    assert 1 == len(statements)
    assert [after for _, after in pairs] == stored
