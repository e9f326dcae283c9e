"""Row semantics (SPEC 2) and the blank/[null] table (SPEC 1.5): rules.validate and rules.apply."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from personsd.errors import ErrorKind, RowError, row_format_error
from personsd.fieldtypes import CustomField, FieldType
from personsd.fileformat import Layout, RawRow
from personsd.phones import CarrierCheck, HttpCarrierLookup, no_lookup, offline_lookup
from personsd.rules import Applied, Person, PersonSet, RowChange, Schema, apply, validate

COLOR = CustomField(name="color", type=FieldType.SINGLE_SELECT, id=1, options=("red", "blue"))
SPORTS = CustomField(
    name="sports", type=FieldType.MULTI_SELECT, id=2, options=("soccer", "golf", "chess")
)
NICK = CustomField(name="nickname", type=FieldType.STRING, id=3, max_length=10)
SCORE = CustomField(name="score", type=FieldType.NUMBER, id=4)
BIRTHDAY = CustomField(name="birthday", type=FieldType.DATE, id=5)
ZIP = CustomField(name="zip", type=FieldType.POSTAL_CODE, id=6)
SCHEMA = Schema(fields=(COLOR, SPORTS, NICK, SCORE, BIRTHDAY, ZIP))

MDN_A = "+12025550101"
MDN_B = "+12025550123"
MDN_BAD_CARRIER = "+12995550005"  # well-formed, fails the offline lookup (SPEC 2 note)
LONG = "x" * 256


def raw_row(values: dict[str, str], *, row: int = 1) -> RawRow:
    return RawRow(
        line=row + 1, row=row, offset=0, end=0, next_line=row + 2, values=tuple(values.values())
    )


def check(
    values: dict[str, str], *, row: int = 1, multi_delimiter: str = "|"
) -> RowChange | tuple[RowError, ...]:
    layout = Layout(fields=tuple(values), multi_delimiter=multi_delimiter)
    return validate(raw_row(values, row=row), layout, SCHEMA)


def change(row: int = 1, **values: str) -> RowChange:
    result = check(values, row=row)
    assert isinstance(result, RowChange), result
    return result


def change_of(values: dict[str, str]) -> RowChange:
    result = check(values)
    assert isinstance(result, RowChange), result
    return result


def errors(**values: str) -> tuple[RowError, ...]:
    result = check(values)
    assert isinstance(result, tuple), result
    return result


def person(pid: int, **fields: Any) -> Person:
    return Person(person_id=pid, person_key=f"key-{pid}", **fields)


def keys() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"new-{next(counter)}"


def person_set(*persons: Person) -> PersonSet:
    return PersonSet(persons, new_ids=itertools.count(1000), new_key=keys())


def run(
    ps: PersonSet, carrier: CarrierCheck = no_lookup, **values: str
) -> Applied | tuple[RowError, ...]:
    return apply(ps, change_of(values), carrier)


def run_values(
    ps: PersonSet, values: dict[str, str], carrier: CarrierCheck = no_lookup
) -> Applied | tuple[RowError, ...]:
    return apply(ps, change_of(values), carrier)


def state(ps: PersonSet) -> tuple[object, ...]:
    """Everything a PersonSet shows, as plain values."""
    people = sorted(dataclasses.astuple(p) for p in ps)
    created = [dataclasses.astuple(p) for p in ps.created]
    updated = [(dataclasses.astuple(b), dataclasses.astuple(a)) for b, a in ps.updated()]
    return (people, created, updated)


def refusing_carrier(e164: str) -> RowError | None:
    """A carrier check that fails every number, to show when none is made."""
    return ErrorKind.PERMANENT_LOOKUP_FAILURE.at(field="mdn")


# ----------------------------------------------------------------------------- validate


def test_row_format_error_is_passed_through() -> None:
    """Step 1: a row already failed by the reader reports that error alone."""
    error = row_format_error("Expected 2 fields, found 3")
    raw = RawRow(line=3, row=2, offset=10, end=20, next_line=4, values=("a",), error=error)
    assert (error,) == validate(raw, Layout(fields=("mdn", "zip")), SCHEMA)


def test_value_count_mismatch_is_a_row_format_error() -> None:
    """Step 1: a row with fewer values than fields fails with InvalidImportRowFormat."""
    raw = RawRow(line=2, row=1, offset=0, end=5, next_line=3, values=("e1",))
    layout = Layout(fields=("external_person_id", "zip"))
    assert (row_format_error("Expected 2 fields, found 1"),) == validate(raw, layout, SCHEMA)


@pytest.mark.parametrize(
    "value", ["0", "000", "-1", "+5", "1.0", "1e3", "abc", "١٢", "[null]", "9223372036854775808"]
)
def test_invalid_person_id(value: str) -> None:
    """Step 1: person_id not a positive (64-bit) integer is InvalidPersonID with field and value."""
    assert (ErrorKind.INVALID_PERSON_ID.at("person_id", value),) == errors(person_id=value)


@pytest.mark.parametrize(
    ("value", "expected"), [("7", 7), ("007", 7), ("9223372036854775807", 2**63 - 1)]
)
def test_person_id_is_an_integer_key(value: str, expected: int) -> None:
    """Step 1: person_id accepts ASCII digits, leading zeros included, up to a bigint."""
    assert ("person_id", expected) == (
        change(person_id=value).key,
        change(person_id=value).key_value,
    )


@pytest.mark.parametrize("value", ["12ab", "555-0101", "+0123456789", "(229 555 1234"])
def test_invalid_mdn_format(value: str) -> None:
    """Step 1: a malformed mdn is InvalidMDNFormat on field mdn with the raw value."""
    assert (ErrorKind.INVALID_MDN_FORMAT.at("mdn", value),) == errors(mdn=value)


def test_mdn_is_normalised_to_e164() -> None:
    """Step 1: a US national mdn becomes E.164 for the key and the lookups."""
    result = change(mdn="(229) 555-1234")
    assert ("mdn", "+12295551234", (("mdn", "+12295551234"),)) == (
        result.key,
        result.key_value,
        result.lookups,
    )


@pytest.mark.parametrize("column", ["external_person_id", "vibes_device_id"])
def test_string_identifier_longer_than_255(column: str) -> None:
    """Step 1: an external_person_id/vibes_device_id over 255 chars is InvalidCustomFieldValue."""
    assert (ErrorKind.INVALID_CUSTOM_FIELD_VALUE.at(column, LONG),) == errors(**{column: LONG})
    assert "x" * 255 == change_of({column: "x" * 255}).key_value


@pytest.mark.parametrize("value", ["x", "[null]"])
def test_unknown_column_with_a_value(value: str) -> None:
    """Step 1: a non-blank value in a column that is no field is CustomFieldNotFound."""
    expected = (ErrorKind.CUSTOM_FIELD_NOT_FOUND.at("shoe_size", value),)
    assert expected == errors(external_person_id="e1", shoe_size=value)


def test_unknown_column_blank_is_fine() -> None:
    """Step 1: a blank value in an unknown column is no error."""
    assert () == change(external_person_id="e1", shoe_size="").custom


def test_custom_field_names_are_case_sensitive() -> None:
    """SPEC 1.3: column names match custom fields exactly, so Color is not color."""
    expected = (ErrorKind.CUSTOM_FIELD_NOT_FOUND.at("Color", "red"),)
    assert expected == errors(external_person_id="e1", Color="red")


@pytest.mark.parametrize(
    ("column", "value", "kind"),
    [
        ("score", "1e5", ErrorKind.INVALID_CUSTOM_FIELD_VALUE),
        ("birthday", "2024-13-01", ErrorKind.INVALID_CUSTOM_FIELD_VALUE),
        ("zip", "1234", ErrorKind.INVALID_CUSTOM_FIELD_VALUE),
        ("nickname", "much too long", ErrorKind.INVALID_CUSTOM_FIELD_VALUE),
        ("color", "Red", ErrorKind.INVALID_SELECT_VALUE),
        ("sports", "soccer|tennis", ErrorKind.INVALID_SELECT_VALUE),
    ],
)
def test_custom_field_type_errors(column: str, value: str, kind: ErrorKind) -> None:
    """Step 1: a custom value its type refuses is reported with the column and the raw value."""
    assert (kind.at(column, value),) == errors(external_person_id="e1", **{column: value})


def test_every_value_error_is_reported() -> None:
    """Step 1: all columns are checked and every error is reported, in column order."""
    expected = (
        ErrorKind.INVALID_PERSON_ID.at("person_id", "x"),
        ErrorKind.INVALID_MDN_FORMAT.at("mdn", "12"),
        ErrorKind.CUSTOM_FIELD_NOT_FOUND.at("hat", "1"),
        ErrorKind.INVALID_CUSTOM_FIELD_VALUE.at("score", "1."),
        ErrorKind.INVALID_CUSTOM_FIELD_VALUE.at("external_person_id", LONG),
    )
    actual = errors(person_id="x", mdn="12", hat="1", score="1.", external_person_id=LONG)
    assert expected == actual


# SPEC 1.5 by custom field: its attribute key, whether a blank cell clears it, a value and
# the form that value is stored in.
CUSTOM_CELLS = {
    "nickname": ("3", False, "Bob", "Bob"),
    "score": ("4", False, "007.50", "7.5"),
    "birthday": ("5", False, "2024-02-03", "2024-02-03T00:00:00Z"),
    "zip": ("6", False, "k1a0b1", "K1A 0B1"),
    "color": ("1", True, "red", "red"),
    "sports": ("2", True, "golf|soccer|golf", ("golf", "soccer")),
}


@pytest.mark.parametrize("given", ["blank", "null", "value"])
@pytest.mark.parametrize("column", CUSTOM_CELLS)
def test_custom_blank_and_null_table(column: str, given: str) -> None:
    """SPEC 1.5: selects clear on blank and [null]; other types keep on blank, clear on [null]."""
    key, blank_clears, value, stored = CUSTOM_CELLS[column]
    cell, expected = {
        "blank": ("", ((key, None),) if blank_clears else ()),
        "null": ("[null]", ((key, None),)),
        "value": (value, ((key, stored),)),
    }[given]
    assert expected == change_of({"external_person_id": "e1", column: cell}).custom


def test_multi_select_uses_the_layout_delimiter() -> None:
    """SPEC 1.2: multi-select values split on the file's Multi-Select-Delimiter."""
    values = {"external_person_id": "e1", "sports": "chess;golf"}
    result = check(values, multi_delimiter=";")
    assert isinstance(result, RowChange)
    assert (("2", ("chess", "golf")),) == result.custom


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"external_person_id": "", "mdn": "", "vibes_device_id": ""}, ()),
        ({"external_person_id": "[null]"}, (("external_person_id", None),)),
        ({"mdn": "[null]"}, (("mdn", None),)),
        ({"vibes_device_id": "[null]"}, (("vibes_device_id", None),)),
    ],
)
def test_identifier_blank_and_null_table(values: dict[str, str], expected: tuple[object]) -> None:
    """SPEC 1.5: blank identifiers are left out; [null] is a clear (None), never a key."""
    result = change_of({"person_id": "5", **values})
    assert ("person_id", expected) == (result.key, result.identifiers)


@pytest.mark.parametrize(
    ("values", "key"),
    [
        (
            {"person_id": "1", "person_key": "k", "external_person_id": "e", "mdn": MDN_A},
            "person_id",
        ),
        ({"person_id": "", "person_key": "k", "external_person_id": "e"}, "person_key"),
        ({"person_key": "[null]", "external_person_id": "e", "mdn": MDN_A}, "external_person_id"),
        ({"external_person_id": "[null]", "mdn": MDN_A, "vibes_device_id": "d"}, "mdn"),
        ({"external_person_id": "", "mdn": "[null]", "vibes_device_id": "d"}, "vibes_device_id"),
        ({"external_person_id": "[null]", "mdn": "[null]", "vibes_device_id": ""}, None),
    ],
)
def test_key_precedence(values: dict[str, str], key: str | None) -> None:
    """Step 2: the key is the non-blank, non-[null] identifier of highest precedence."""
    assert key == change_of(values).key


def test_lookups_and_identifiers_of_a_full_row() -> None:
    """RowChange: lookups hold every non-blank identifier normalised; the key is not re-set."""
    result = change(
        person_id="01",
        person_key="k",
        external_person_id="e",
        mdn="2025550101",
        vibes_device_id="[null]",
    )
    expected_lookups = (
        ("person_id", 1),
        ("person_key", "k"),
        ("external_person_id", "e"),
        ("mdn", MDN_A),
    )
    expected_ids = (("external_person_id", "e"), ("mdn", MDN_A), ("vibes_device_id", None))
    assert (expected_lookups, expected_ids) == (result.lookups, result.identifiers)
    assert ("01", "") == (result.raw_value("person_id"), result.raw_value("nope"))


# ----------------------------------------------------------------------------- apply


def test_no_key_requires_a_device_or_external_id() -> None:
    """Step 2: a row without a key fails with PersonCreateRequiresDeviceOrExternalPersonId."""
    ps = person_set()
    expected = (ErrorKind.CREATE_REQUIRES_KEY.at("", ""),)
    assert expected == run(ps, external_person_id="[null]", nickname="x")
    assert [] == ps.created


@pytest.mark.parametrize(
    ("column", "value"), [("person_id", "007"), ("person_key", "KEY-1"), ("person_key", "nope")]
)
def test_person_id_and_key_never_create(column: str, value: str) -> None:
    """Step 3: an unknown person_id/person_key (upper case included) is PersonNotFound."""
    ps = person_set(person(1))
    expected = (ErrorKind.PERSON_NOT_FOUND.at(column, value),)
    assert expected == run_values(ps, {column: value, "external_person_id": "e1"})
    assert ([], [person(1)]) == (ps.created, list(ps))


def test_person_id_finds_and_updates() -> None:
    """Step 3-4: person_id finds the person; other identifiers are set on it."""
    ps = person_set(person(1), person(2))
    result = run(ps, person_id="1", person_key="key-2", external_person_id="e1", mdn=MDN_A)
    after = person(1, external_person_id="e1", mdn=MDN_A)
    assert (Applied.UPDATED, [(person(1), after)]) == (result, ps.updated())


def test_person_key_finds_and_updates() -> None:
    """Step 3: person_key finds the person when person_id is blank."""
    ps = person_set(person(1), person(2))
    assert Applied.UPDATED == run(ps, person_id="", person_key="key-2", vibes_device_id="d")
    assert [(person(2), person(2, vibes_device_id="d"))] == ps.updated()


@pytest.mark.parametrize("column", ["external_person_id", "vibes_device_id"])
def test_string_key_creates_when_not_found(column: str) -> None:
    """Step 3: an unknown ext/device key creates a person with a new id and key."""
    ps = person_set(person(1, **{column: "taken"}))
    assert Applied.CREATED == run_values(ps, {column: "fresh", "score": "5", "color": "red"})
    expected = Person(
        person_id=1000, person_key="new-1", attributes={"4": "5", "1": "red"}, **{column: "fresh"}
    )
    assert ([expected], []) == (ps.created, ps.updated())


def test_mdn_key_creates_after_carrier_lookup() -> None:
    """Step 3-4: a new person keyed by mdn passes the carrier lookup first."""
    ps = person_set()
    assert Applied.CREATED == run(ps, offline_lookup, mdn="(202) 555-0101")
    assert [Person(person_id=1000, person_key="new-1", mdn=MDN_A)] == ps.created


def test_mdn_key_carrier_failure_reports_the_raw_value() -> None:
    """Step 4: a carrier failure names field mdn and the value as in the file; nothing created."""
    ps = person_set()
    expected = (ErrorKind.PERMANENT_LOOKUP_FAILURE.at("mdn", "(299) 555-0005"),)
    assert expected == run(ps, offline_lookup, mdn="(299) 555-0005")
    assert [] == ps.created


def test_transient_carrier_failure() -> None:
    """Step 4: an unreachable carrier service is TransientLookupFailureError on the raw mdn."""
    carrier = HttpCarrierLookup("http://127.0.0.1:9/", timeout=1, retries=0, backoff=0.001)
    ps = person_set(person(1))
    expected = (ErrorKind.TRANSIENT_LOOKUP_FAILURE.at("mdn", "2025550101"),)
    assert expected == run(ps, carrier, person_id="1", mdn="2025550101")
    assert [person(1)] == list(ps)


def test_found_key_does_not_run_the_carrier_lookup() -> None:
    """Step 4: the carrier lookup runs only for an MDN being newly assigned."""
    ps = person_set(person(1, mdn=MDN_BAD_CARRIER))
    assert Applied.UPDATED == run(ps, refusing_carrier, mdn=MDN_BAD_CARRIER, nickname="n")
    assert Applied.UPDATED == run(ps, refusing_carrier, person_id="1", mdn="(299) 555-0005")


@pytest.mark.parametrize("column", ["external_person_id", "vibes_device_id"])
def test_identifier_held_by_another_person(column: str) -> None:
    """Step 4: a new ext/device value held by another person is PG::UniqueViolation."""
    ps = person_set(person(1), person(2, **{column: "v2"}))
    expected = (ErrorKind.UNIQUE_VIOLATION.at(column, "v2"),)
    assert expected == run_values(ps, {"person_id": "1", column: "v2"})
    assert [] == ps.updated()


@pytest.mark.parametrize("column", ["external_person_id", "vibes_device_id"])
def test_identifier_null_clears(column: str) -> None:
    """SPEC 1.5: [null] clears external_person_id/vibes_device_id; the value is free again."""
    ps = person_set(person(1, **{column: "v1"}))
    assert Applied.UPDATED == run_values(ps, {"person_id": "1", column: "[null]"})
    assert ([(person(1, **{column: "v1"}), person(1))], None) == (
        ps.updated(),
        ps.find(column, "v1"),
    )


def test_identifier_blank_keeps() -> None:
    """SPEC 1.5: blank ext/mdn/device leave the person's values unchanged."""
    kept = person(1, external_person_id="e", mdn=MDN_A, vibes_device_id="d")
    ps = person_set(kept.copy())
    assert Applied.UPDATED == run(
        ps, person_id="1", external_person_id="", mdn="", vibes_device_id=""
    )
    assert ([kept], []) == (list(ps), ps.updated())


def test_mdn_equal_is_nothing() -> None:
    """Step 4: an mdn equal to the person's own (any spelling) changes nothing."""
    ps = person_set(person(1, mdn=MDN_A))
    assert Applied.UPDATED == run(ps, refusing_carrier, person_id="1", mdn="202.555.0101")
    assert [] == ps.updated()


def test_mdn_change_not_allowed() -> None:
    """Step 4: a person with another MDN cannot get a new one: MdnChangeNotAllowed."""
    ps = person_set(person(1, mdn=MDN_A))
    expected = (ErrorKind.MDN_CHANGE_NOT_ALLOWED.at("mdn", "2025550123"),)
    assert expected == run(ps, person_id="1", mdn="2025550123")


def test_mdn_null_with_an_mdn_is_not_allowed() -> None:
    """SPEC 1.5: mdn [null] on a person with an MDN is MdnChangeNotAllowed."""
    ps = person_set(person(1, mdn=MDN_A))
    expected = (ErrorKind.MDN_CHANGE_NOT_ALLOWED.at("mdn", "[null]"),)
    assert expected == run(ps, person_id="1", mdn="[null]")


def test_mdn_null_without_an_mdn_is_unchanged() -> None:
    """SPEC 1.5: mdn [null] on a person without an MDN leaves it unchanged."""
    ps = person_set(person(1))
    assert Applied.UPDATED == run(ps, person_id="1", mdn="[null]")
    assert Applied.CREATED == run(ps, external_person_id="e", mdn="[null]")
    assert ([], [Person(person_id=1000, person_key="new-1", external_person_id="e")]) == (
        ps.updated(),
        ps.created,
    )


def test_mdn_held_by_another_person() -> None:
    """Step 4: an mdn held by another person is MobilePhoneAlreadyAssigned on field mdn."""
    ps = person_set(person(1), person(2, mdn=MDN_A))
    expected = (ErrorKind.MOBILE_PHONE_ALREADY_ASSIGNED.at("mdn", "(202) 555-0101"),)
    assert expected == run(ps, person_id="1", mdn="(202) 555-0101")


def test_new_mdn_passes_the_carrier_lookup() -> None:
    """Step 4: a newly assigned (non-key) mdn runs the carrier lookup; failure stops the row."""
    ps = person_set(person(1))
    expected = (ErrorKind.PERMANENT_LOOKUP_FAILURE.at("mdn", "299-555-0005"),)
    assert expected == run(ps, offline_lookup, person_id="1", mdn="299-555-0005", nickname="n")
    assert ([person(1)], []) == (list(ps), ps.updated())
    assert Applied.UPDATED == run(ps, offline_lookup, person_id="1", mdn="2025550123")
    assert [(person(1), person(1, mdn=MDN_B))] == ps.updated()


def test_carrier_lookup_comes_after_identifier_checks() -> None:
    """Decision: a row failing uniqueness reports that, not a carrier failure."""
    ps = person_set(person(1), person(2, vibes_device_id="d2"))
    expected = (ErrorKind.UNIQUE_VIOLATION.at("vibes_device_id", "d2"),)
    assert expected == run(
        ps, refusing_carrier, person_id="1", mdn=MDN_BAD_CARRIER, vibes_device_id="d2"
    )


def test_create_checks_other_identifiers_first() -> None:
    """Step 3-4: a person to be created is not created when another column of the row fails."""
    ps = person_set(person(1, vibes_device_id="d1", mdn=MDN_A))
    before = state(ps)
    assert (ErrorKind.UNIQUE_VIOLATION.at("vibes_device_id", "d1"),) == run(
        ps, external_person_id="e", vibes_device_id="d1"
    )
    assert (ErrorKind.MOBILE_PHONE_ALREADY_ASSIGNED.at("mdn", MDN_A),) == run(
        ps, external_person_id="e", mdn=MDN_A
    )
    assert before == state(ps)
    assert Applied.CREATED == run(ps, external_person_id="e")
    assert [Person(person_id=1000, person_key="new-1", external_person_id="e")] == ps.created


def test_new_person_with_all_identifiers_and_fields() -> None:
    """Step 3-5: a created person carries every identifier and custom value of its row."""
    ps = person_set()
    result = run(
        ps,
        external_person_id="e",
        mdn="2025550101",
        vibes_device_id="d",
        nickname="[null]",
        color="",
        zip="12345",
    )
    expected = Person(
        person_id=1000,
        person_key="new-1",
        external_person_id="e",
        mdn=MDN_A,
        vibes_device_id="d",
        attributes={"6": "12345"},
    )
    assert (Applied.CREATED, [expected]) == (result, ps.created)
    assert (expected, expected, expected) == (
        ps.find("mdn", MDN_A),
        ps.find("vibes_device_id", "d"),
        ps.find("person_key", "new-1"),
    )


def test_custom_fields_set_and_clear() -> None:
    """Step 5: custom values are set, [null] clears, a blank select clears, blank others keep."""
    loaded = person(1, attributes={"1": "red", "3": "Al", "4": "2", "5": "2020-01-01T00:00:00Z"})
    ps = person_set(loaded.copy())
    result = run(ps, person_id="1", color="", nickname="[null]", score="3", birthday="")
    after = person(1, attributes={"4": "3", "5": "2020-01-01T00:00:00Z"})
    assert (Applied.UPDATED, [(loaded, after)]) == (result, ps.updated())


def test_unchanged_row_is_updated_but_not_listed() -> None:
    """Decision: a found person left as it was counts as updated but is not written."""
    ps = person_set(person(1, attributes={"1": "red"}))
    assert Applied.UPDATED == run(ps, person_id="1", color="red", nickname="")
    assert [] == ps.updated()


def test_updated_keeps_the_state_as_loaded() -> None:
    """PersonSet.updated: the before side is the person as loaded, across several rows."""
    ps = person_set(person(1))
    run(ps, person_id="1", nickname="a")
    run(ps, person_id="1", nickname="b", vibes_device_id="d")
    assert [(person(1), person(1, vibes_device_id="d", attributes={"3": "b"}))] == ps.updated()


def test_change_back_to_loaded_state_is_not_listed() -> None:
    """PersonSet.updated: a person changed and changed back needs no write."""
    ps = person_set(person(1, external_person_id="e"))
    run(ps, person_id="1", external_person_id="[null]")
    run(ps, person_id="1", external_person_id="e")
    assert [] == ps.updated()


# ----------------------------------------------------------------------------- in-file sequences


def test_person_created_early_is_found_later() -> None:
    """SPEC 2: a person created at row 2 is found by row 9, by its new identifiers too."""
    ps = person_set()
    assert Applied.CREATED == apply(ps, change(row=2, external_person_id="e", mdn=MDN_A), no_lookup)
    assert Applied.UPDATED == apply(ps, change(row=9, mdn="2025550101", nickname="n"), no_lookup)
    assert Applied.UPDATED == apply(ps, change(row=10, person_key="new-1", zip="12345"), no_lookup)
    assert Applied.UPDATED == apply(ps, change(row=11, person_id="1000", color="blue"), no_lookup)
    expected = Person(
        person_id=1000,
        person_key="new-1",
        external_person_id="e",
        mdn=MDN_A,
        attributes={"3": "n", "6": "12345", "1": "blue"},
    )
    assert ([expected], []) == (ps.created, ps.updated())


def test_two_rows_claiming_one_mdn() -> None:
    """SPEC 2: the second row claiming an mdn gets MobilePhoneAlreadyAssigned."""
    ps = person_set()
    assert Applied.CREATED == run(ps, external_person_id="e1", mdn=MDN_A)
    expected = (ErrorKind.MOBILE_PHONE_ALREADY_ASSIGNED.at("mdn", MDN_A),)
    assert expected == run(ps, external_person_id="e2", mdn=MDN_A)
    assert 1 == len(ps.created)


def test_external_id_swap_via_clear_then_set() -> None:
    """SPEC 2: a value freed by one row can be taken by another person in a later row."""
    ps = person_set(person(1, external_person_id="a"), person(2, external_person_id="b"))
    assert Applied.UPDATED == run(ps, person_id="1", external_person_id="[null]")
    assert Applied.UPDATED == run(ps, person_id="2", external_person_id="a")
    assert Applied.UPDATED == run(ps, person_id="1", external_person_id="b")
    expected = [
        (person(1, external_person_id="a"), person(1, external_person_id="b")),
        (person(2, external_person_id="b"), person(2, external_person_id="a")),
    ]
    assert expected == ps.updated()
    assert (1, 2) == (
        ps.find("external_person_id", "b").person_id,  # type: ignore[union-attr]
        ps.find("external_person_id", "a").person_id,  # type: ignore[union-attr]
    )


def test_failed_row_changes_nothing() -> None:
    """SPEC 2: a row applies completely or not at all, even after earlier columns passed."""
    ps = person_set(person(1, attributes={"3": "x"}), person(2, mdn=MDN_A))
    before = state(ps)
    result = run(
        ps, person_id="1", external_person_id="new", nickname="y", mdn=MDN_A, vibes_device_id="d"
    )
    assert (ErrorKind.MOBILE_PHONE_ALREADY_ASSIGNED.at("mdn", MDN_A),) == result
    assert before == state(ps)
    assert None is ps.find("external_person_id", "new")


def test_new_ids_are_drawn_only_for_created_persons() -> None:
    """PersonSet: failed and updating rows consume no new person id."""
    ps = person_set(person(1, external_person_id="a"))
    run(ps, external_person_id="b", vibes_device_id="d", mdn="[null]")
    run(ps, external_person_id="a", nickname="n")
    run(ps, vibes_device_id="d", external_person_id="a")  # UniqueViolation
    run(ps, vibes_device_id="e")
    assert [(1000, "new-1"), (1001, "new-2")] == [(p.person_id, p.person_key) for p in ps.created]


# ----------------------------------------------------------------------------- values


def test_person_set_refuses_shared_identifiers() -> None:
    """PersonSet: loaded persons sharing an identifier (or an id) are a bug, refused."""
    with pytest.raises(ValueError, match="mdn"):
        person_set(person(1, mdn=MDN_A), person(2, mdn=MDN_A))
    with pytest.raises(ValueError, match="person_id"):
        person_set(person(1), Person(person_id=1, person_key="other"))


def test_person_set_reports_exhausted_ids() -> None:
    """PersonSet: running out of allocated ids is an internal error, not a row error."""
    ps = PersonSet([], new_ids=iter(()), new_key=keys())
    with pytest.raises(RuntimeError, match="ids"):
        run(ps, external_person_id="e")


def test_person_copy_is_independent() -> None:
    """Person.copy: changing the copy's attributes leaves the original alone."""
    original = person(1, attributes={"1": "red"})
    duplicate = original.copy()
    duplicate.attributes["1"] = "blue"
    assert ({"1": "red"}, original) == (original.attributes, person(1, attributes={"1": "red"}))


def test_schema_refuses_duplicate_names_and_ids() -> None:
    """Schema: field names and ids are unique."""
    with pytest.raises(ValueError, match="names"):
        Schema(fields=(COLOR, dataclasses.replace(SCORE, name="color")))
    with pytest.raises(ValueError, match="ids"):
        Schema(fields=(COLOR, dataclasses.replace(SCORE, id=1)))
    assert SCORE == Schema(fields=[SCORE]).by_name["score"]


# ----------------------------------------------------------------------------- property

COLUMNS = ("person_id", "person_key", "external_person_id", "mdn", "vibes_device_id", "color")
EXTS = ("e1", "e2")
DEVICES = ("d1", "d2")
MDNS = (MDN_A, MDN_B, MDN_BAD_CARRIER)
CELLS = {
    "person_id": ("", "", "", "1", "2", "1000", "9"),
    "person_key": ("", "", "", "key-1", "new-1", "KEY-1"),
    "external_person_id": ("", "[null]", *EXTS),
    "mdn": ("", "[null]", "(202) 555-0101", *MDNS),
    "vibes_device_id": ("", "[null]", *DEVICES),
    "color": ("", "[null]", "red", "blue", "green"),
}


@st.composite
def loaded_persons(draw: st.DrawFn) -> list[Person]:
    """Up to three persons with distinct identifiers drawn from small pools."""
    people = []
    taken: set[tuple[str, str]] = set()
    for pid in range(1, draw(st.integers(0, 3)) + 1):
        fields: dict[str, str | None] = {}
        for column, pool in (
            ("external_person_id", EXTS),
            ("mdn", MDNS),
            ("vibes_device_id", DEVICES),
        ):
            value = draw(st.sampled_from((None, None, *pool)))
            if value is not None and (column, value) not in taken:
                taken.add((column, value))
                fields[column] = value
        people.append(person(pid, **fields))
    return people


rows = st.lists(st.fixed_dictionaries({c: st.sampled_from(CELLS[c]) for c in COLUMNS}), max_size=16)


def assert_consistent(ps: PersonSet) -> None:
    """Every non-null identifier is held by one person, and the indexes say so."""
    people = list(ps)
    for column in ("person_id", "person_key", "external_person_id", "mdn", "vibes_device_id"):
        held = [getattr(p, column) for p in people if getattr(p, column) is not None]
        assert len(set(held)) == len(held)
        for p in people:
            value = getattr(p, column)
            if value is not None:
                assert p is ps.find(column, value)
    for column, pool in (("external_person_id", EXTS), ("mdn", MDNS), ("vibes_device_id", DEVICES)):
        for value in pool:
            holder = ps.find(column, value)
            assert holder is None or value == getattr(holder, column)


@given(loaded_persons(), rows, st.sampled_from([no_lookup, offline_lookup]))
def test_apply_is_atomic_and_keeps_indexes_consistent(
    people: list[Person], cells: list[dict[str, str]], carrier: Callable[[str], RowError | None]
) -> None:
    """SPEC 2: a failed row leaves the PersonSet as it was; a good one keeps identifiers unique."""
    ps = person_set(*people)
    loaded = {p.person_id: p.copy() for p in people}
    for number, values in enumerate(cells, start=1):
        validated = check(values, row=number)
        if isinstance(validated, tuple):
            continue
        before = state(ps)
        result = apply(ps, validated, carrier)
        if isinstance(result, tuple):
            assert 1 == len(result)
            assert before == state(ps)
        assert_consistent(ps)
    for as_loaded, now in ps.updated():
        assert loaded[as_loaded.person_id] == as_loaded != now
    assert not {p.person_id for p in ps.created} & loaded.keys()
