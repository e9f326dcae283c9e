"""Row semantics (SPEC section 2) and the blank/`[null]` table (SPEC 1.5), pure.

A row goes through two steps:

* :func:`validate` turns a :class:`RawRow` into a :class:`RowChange` (or every
  value error of the row). It needs only the file layout and the tenant's
  fields, so it runs before the database is asked anything; its
  ``RowChange.lookups`` tell the importer which persons to prefetch.
* :func:`apply` plays a :class:`RowChange` against a :class:`PersonSet` (the
  persons a chunk may touch) in file order, all-or-nothing, without I/O.

Decisions where SPEC is silent (also in docs/decisions.md):

* ``person_id`` accepts leading zeros (``007`` is 7); above the 64-bit range
  it is ``InvalidPersonID`` (no such person can exist).
* ``[null]`` in ``person_id`` is ``InvalidPersonID`` (it is not a positive
  integer); in ``person_key`` it is ignored like a blank: neither can be
  cleared, and ``person_key`` has no format error of its own.
* ``external_person_id``/``vibes_device_id`` longer than 255 characters:
  ``PersonErrors::InvalidCustomFieldValue`` with the column as field.
* Step 4 checks all identifier columns first (in precedence order) and runs
  the carrier lookup last, so a row with another error never costs a lookup
  nor lands in the retry file.
* ``PersonSet.updated()`` lists only persons whose data actually changed;
  ``apply`` still answers ``UPDATED`` for a found person left unchanged.

Over 400 lines on purpose: ``validate`` and ``apply`` are the two halves of one
row's semantics (SPEC 2) over the same ``Person``, ``Schema`` and ``RowChange``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from personsd.errors import ErrorKind, RowError, row_format_error
from personsd.fieldtypes import CLEAR_TOKEN, SELECT_TYPES, CustomField, StoredValue
from personsd.fileformat import IDENTIFIERS, Layout, RawRow
from personsd.phones import CarrierCheck, normalize_mdn

NULL = CLEAR_TOKEN
MAX_IDENTIFIER_LENGTH = 255
_MAX_PERSON_ID = 2**63 - 1  # a PostgreSQL bigint

PERSON_ID, PERSON_KEY, EXTERNAL_PERSON_ID, MDN, VIBES_DEVICE_ID = IDENTIFIERS
_FIND_ONLY = (PERSON_ID, PERSON_KEY)
_CREATE_REQUIRES_KEY = ErrorKind.CREATE_REQUIRES_KEY.at()

IdentifierValue = int | str


@dataclass(slots=True, kw_only=True)
class Person:
    """A person as the rules see it: a mutable working copy of a database row."""

    person_id: int
    person_key: str
    external_person_id: str | None = None
    mdn: str | None = None
    vibes_device_id: str | None = None
    attributes: dict[str, StoredValue] = field(default_factory=dict)  # by str(CustomField.id)

    def copy(self) -> Person:
        """An independent copy (stored values are immutable, so the dict is copied flat)."""
        return Person(
            person_id=self.person_id,
            person_key=self.person_key,
            external_person_id=self.external_person_id,
            mdn=self.mdn,
            vibes_device_id=self.vibes_device_id,
            attributes=dict(self.attributes),
        )


# Column kinds. Plain ints, not an Enum: member access on an Enum class costs
# a descriptor call, and validate compares kinds for every cell of every row.
_PERSON_ID, _PERSON_KEY, _STRING_ID, _MDN, _CUSTOM, _UNKNOWN = range(6)


# One column of a layout, resolved against a schema: (index, name, kind, field, attribute key).
_Column = tuple[int, str, int, CustomField | None, str]


@dataclass(frozen=True, kw_only=True, slots=True)
class Schema:
    """A tenant's custom fields, by exact (case-sensitive) name."""

    fields: Sequence[CustomField]
    by_name: Mapping[str, CustomField] = field(init=False, repr=False, compare=False)
    # Resolved layouts, so that per-row validation does no name look-ups.
    _plans: dict[Layout, tuple[_Column, ...]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        fields = tuple(self.fields)
        by_name = {f.name: f for f in fields}
        if len(by_name) != len(fields):
            raise ValueError("custom field names must be unique")
        if len({f.id for f in fields}) != len(fields):
            raise ValueError("custom field ids must be unique")
        if by_name.keys() & set(IDENTIFIERS):
            raise ValueError("a custom field cannot take a built-in field's name")
        object.__setattr__(self, "fields", fields)
        object.__setattr__(self, "by_name", by_name)

    def _plan(self, layout: Layout) -> tuple[_Column, ...]:
        plan = self._plans.get(layout)
        if plan is None:
            if len(self._plans) > 16:  # one schema rarely sees more than one layout
                self._plans.clear()
            plan = tuple(self._column(i, name) for i, name in enumerate(layout.fields))
            self._plans[layout] = plan
        return plan

    def _column(self, index: int, name: str) -> _Column:
        if name == PERSON_ID:
            return (index, name, _PERSON_ID, None, "")
        if name == PERSON_KEY:
            return (index, name, _PERSON_KEY, None, "")
        if name == MDN:
            return (index, name, _MDN, None, "")
        if name in (EXTERNAL_PERSON_ID, VIBES_DEVICE_ID):
            return (index, name, _STRING_ID, None, "")
        custom = self.by_name.get(name)
        if custom is None:
            return (index, name, _UNKNOWN, None, "")
        return (index, name, _CUSTOM, custom, str(custom.id))


@dataclass(frozen=True, kw_only=True, slots=True)
class RowChange:
    """A validated row: what it asks of the person it designates.

    Identifier values are normalised (``person_id`` an int, ``mdn`` E.164);
    ``None`` as a value means ``[null]`` (clear). Blank columns are absent.
    """

    line: int
    row: int
    key: str | None  # the identifier column that designates the person
    key_value: IdentifierValue | None
    identifiers: tuple[tuple[str, str | None], ...]  # ext/mdn/device columns other than the key
    custom: tuple[tuple[str, StoredValue | None], ...]  # by str(CustomField.id)
    lookups: tuple[tuple[str, IdentifierValue], ...]  # what the importer prefetches
    columns: tuple[str, ...]  # the file's columns ...
    values: tuple[str, ...]  # ... and this row's values as read, for error reports

    def __post_init__(self) -> None:
        if (self.key is None) != (self.key_value is None):
            raise ValueError("a key column needs a key value and vice versa")
        if len(self.columns) != len(self.values):
            raise ValueError("one value per column")

    def raw_value(self, column: str) -> str:
        """The value of ``column`` as it stands in the file ("" when no such column)."""
        try:
            return self.values[self.columns.index(column)]
        except ValueError:
            return ""


def validate(raw: RawRow, layout: Layout, schema: Schema) -> RowChange | tuple[RowError, ...]:
    """SPEC 2 step 1: every value error of the row, or the change it asks for."""
    if raw.error is not None:
        return (raw.error,)
    plan = schema._plan(layout)
    values = raw.values
    if len(values) != len(plan):
        return (row_format_error(f"Expected {len(plan)} fields, found {len(values)}"),)
    errors: list[RowError] = []
    # Identifier values by precedence; absent when blank, None for [null].
    found: dict[str, IdentifierValue | None] = {}
    custom: list[tuple[str, StoredValue | None]] = []
    for index, name, kind, custom_field, attribute in plan:
        value = values[index]  # already trimmed by fileformat, so blank is ""
        if kind == _CUSTOM:
            assert custom_field is not None
            if not value:
                if custom_field.type in SELECT_TYPES:
                    custom.append((attribute, None))
            elif value == NULL:
                custom.append((attribute, None))
            else:
                parsed = custom_field.parse(value, multi_delimiter=layout.multi_delimiter)
                if isinstance(parsed, RowError):
                    errors.append(dataclasses.replace(parsed, field=name, value=value))
                else:
                    custom.append((attribute, parsed))
        elif not value:
            continue
        elif kind == _STRING_ID:
            if value == NULL:
                found[name] = None
            elif len(value) > MAX_IDENTIFIER_LENGTH:
                errors.append(ErrorKind.INVALID_CUSTOM_FIELD_VALUE.at(name, value))
            else:
                found[name] = value
        elif kind == _MDN:
            if value == NULL:
                found[name] = None
            else:
                e164 = normalize_mdn(value)
                if e164 is None:
                    errors.append(ErrorKind.INVALID_MDN_FORMAT.at(name, value))
                else:
                    found[name] = e164
        elif kind == _PERSON_ID:
            person_id = _person_id(value)
            if person_id is None:
                errors.append(ErrorKind.INVALID_PERSON_ID.at(name, value))
            else:
                found[name] = person_id
        elif kind == _PERSON_KEY:
            if value != NULL:
                found[name] = value
        else:
            errors.append(ErrorKind.CUSTOM_FIELD_NOT_FOUND.at(name, value))
    if errors:
        return tuple(errors)
    return _change(raw, layout, found, tuple(custom))


def _person_id(value: str) -> int | None:
    """A positive 64-bit integer written in ASCII digits, else None."""
    if not (value.isascii() and value.isdigit()):
        return None
    digits = value.lstrip("0")
    if not digits or len(digits) > 19:
        return None
    number = int(digits)
    return number if number <= _MAX_PERSON_ID else None


def _change(
    raw: RawRow,
    layout: Layout,
    found: dict[str, IdentifierValue | None],
    custom: tuple[tuple[str, StoredValue | None], ...],
) -> RowChange:
    key: str | None = None
    key_value: IdentifierValue | None = None
    identifiers: list[tuple[str, str | None]] = []
    lookups: list[tuple[str, IdentifierValue]] = []
    for column in IDENTIFIERS:
        if column not in found:
            continue
        value = found[column]
        if value is not None:
            lookups.append((column, value))
            if key is None:
                key, key_value = column, value
                continue
        if column not in _FIND_ONLY:
            assert not isinstance(value, int)
            identifiers.append((column, value))
    return RowChange(
        line=raw.line,
        row=raw.row,
        key=key,
        key_value=key_value,
        identifiers=tuple(identifiers),
        custom=custom,
        lookups=tuple(lookups),
        columns=layout.fields,
        values=raw.values,
    )


class Applied(enum.Enum):
    """What a successful row did to its person."""

    CREATED = "created"
    UPDATED = "updated"


class PersonSet:
    """The persons a chunk may touch, indexed by every identifier.

    Built from the persons the importer prefetched for the chunk's
    ``RowChange.lookups``; every identifier value a row can name is then
    either here or held by nobody, so uniqueness is decided in memory.
    """

    __slots__ = ("_before", "_index", "_loaded", "_new_ids", "_new_key", "created")

    def __init__(
        self,
        persons: Iterable[Person],
        *,
        new_ids: Iterator[int],
        new_key: Callable[[], str],
    ) -> None:
        self._index: dict[str, dict[IdentifierValue, Person]] = {c: {} for c in IDENTIFIERS}
        for person in persons:
            self._add(person)
        self._loaded = frozenset(self._index[PERSON_ID])
        self._new_ids = new_ids
        self._new_key = new_key
        # Pre-existing persons as loaded, taken when a row first changes them.
        self._before: dict[int, Person] = {}
        self.created: list[Person] = []

    def find(self, column: str, value: IdentifierValue) -> Person | None:
        """The person holding ``value`` (normalised) in identifier ``column``."""
        return self._index[column].get(value)

    def __iter__(self) -> Iterator[Person]:
        return iter(list(self._index[PERSON_ID].values()))

    def __len__(self) -> int:
        return len(self._index[PERSON_ID])

    def updated(self) -> list[tuple[Person, Person]]:
        """``(as loaded, now)`` for every pre-existing person whose data changed."""
        by_id = self._index[PERSON_ID]
        pairs = []
        for person_id, before in self._before.items():
            after = by_id[person_id]
            if before != after:
                pairs.append((before, after))
        return pairs

    def _add(self, person: Person) -> None:
        # Once per person of every chunk: spelt out rather than zipped.
        held: list[tuple[str, IdentifierValue]] = [
            (PERSON_ID, person.person_id),
            (PERSON_KEY, person.person_key),
        ]
        if person.external_person_id is not None:
            held.append((EXTERNAL_PERSON_ID, person.external_person_id))
        if person.mdn is not None:
            held.append((MDN, person.mdn))
        if person.vibes_device_id is not None:
            held.append((VIBES_DEVICE_ID, person.vibes_device_id))
        index = self._index
        for column, value in held:
            if value in index[column]:
                raise ValueError(f"two persons share {column} {value!r}")
        for column, value in held:
            index[column][value] = person

    def _create(self, key: str, key_value: IdentifierValue) -> Person:
        try:
            person_id = next(self._new_ids)
        except StopIteration:
            raise RuntimeError("PersonSet ran out of new person ids") from None
        person = Person(person_id=person_id, person_key=self._new_key())
        setattr(person, key, key_value)
        return person

    def _remember(self, person: Person) -> None:
        if person.person_id in self._loaded and person.person_id not in self._before:
            self._before[person.person_id] = person.copy()

    def _set(self, person: Person, column: str, value: str | None) -> None:
        index = self._index[column]
        old = getattr(person, column)
        if old is not None:
            del index[old]
        if value is not None:
            index[value] = person
        setattr(person, column, value)


def carrier_candidates(rows: Iterable[object]) -> set[str]:
    """Every MDN the rows could newly assign: the most a chunk may ask the carrier.

    Each MDN a row can assign is among its ``lookups`` (identifier values
    are), so a remote lookup can be asked ahead of the write transaction.
    """
    return {
        value
        for row in rows
        if isinstance(row, RowChange)
        for column, value in row.lookups
        if column == MDN and isinstance(value, str)
    }


def apply(
    persons: PersonSet, change: RowChange, carrier: CarrierCheck
) -> Applied | tuple[RowError, ...]:
    """SPEC 2 steps 2-5 for one validated row: all-or-nothing, first error stops it."""
    key, key_value = change.key, change.key_value
    if key is None or key_value is None:
        return (_CREATE_REQUIRES_KEY,)
    index = persons._index
    person = index[key].get(key_value)
    if person is None and key in _FIND_ONLY:
        return (ErrorKind.PERSON_NOT_FOUND.at(key, change.raw_value(key)),)
    # Decide everything before touching anything.
    lookup: str | None = None  # the MDN newly assigned, if any
    if person is None and key == MDN:
        assert isinstance(key_value, str)
        lookup = key_value
    sets: list[tuple[str, str | None]] = []
    for column, value in change.identifiers:
        current = None if person is None else getattr(person, column)
        if value == current:
            continue
        if column == MDN:
            if current is not None:
                return (ErrorKind.MDN_CHANGE_NOT_ALLOWED.at(MDN, change.raw_value(MDN)),)
            if value is None:
                continue
            if value in index[MDN]:
                return (ErrorKind.MOBILE_PHONE_ALREADY_ASSIGNED.at(MDN, change.raw_value(MDN)),)
            lookup = value
        elif value is not None and value in index[column]:
            # Not this person's own value (that was equal to `current`).
            return (ErrorKind.UNIQUE_VIOLATION.at(column, change.raw_value(column)),)
        sets.append((column, value))
    if lookup is not None:
        failure = carrier(lookup)
        if failure is not None:
            return (dataclasses.replace(failure, field=MDN, value=change.raw_value(MDN)),)

    if person is None:
        person = persons._create(key, key_value)
        for column, value in sets:
            setattr(person, column, value)
        attributes = person.attributes
        for attribute, stored in change.custom:
            if stored is not None:
                attributes[attribute] = stored
        persons._add(person)
        persons.created.append(person)
        return Applied.CREATED

    attributes = person.attributes
    changed = bool(sets)
    if not changed:
        for attribute, stored in change.custom:
            if attributes.get(attribute) != stored:
                changed = True
                break
    if changed:
        persons._remember(person)
        for column, value in sets:
            persons._set(person, column, value)
        for attribute, stored in change.custom:
            if stored is None:
                attributes.pop(attribute, None)
            else:
                attributes[attribute] = stored
    return Applied.UPDATED
