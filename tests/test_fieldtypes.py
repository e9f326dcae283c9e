"""Custom field definitions and value parsing (SPEC 1.5, error catalogue of SPEC 3)."""

# House style is `assert expected == actual`, which SIM300 calls a Yoda condition.

from __future__ import annotations

import re
import string
from datetime import UTC, datetime, timedelta, timezone
from decimal import Context, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from personsd.errors import ErrorKind, RowError
from personsd.fieldtypes import (
    CLEAR_TOKEN,
    GSM7_BASIC,
    GSM7_CHARS,
    GSM7_EXTENSION,
    Charset,
    CustomField,
    FieldType,
    StoredValue,
    format_value,
)

OPTIONS = ("soccer", "golf", "Golf", "tennis.pro", "x-1_y")


def string_field(charset: Charset = Charset.UNICODE, max_length: int = 255) -> CustomField:
    return CustomField(name="s", type=FieldType.STRING, charset=charset, max_length=max_length)


NUMBER = CustomField(name="n", type=FieldType.NUMBER)
DATE = CustomField(name="d", type=FieldType.DATE)
SINGLE = CustomField(name="one", type=FieldType.SINGLE_SELECT, options=OPTIONS)
MULTI = CustomField(name="many", type=FieldType.MULTI_SELECT, options=OPTIONS)
POSTAL = CustomField(name="zip", type=FieldType.POSTAL_CODE)


def parse(field: CustomField, raw: str, multi_delimiter: str = "|") -> StoredValue | RowError:
    return field.parse(raw, multi_delimiter=multi_delimiter)


def invalid(field: CustomField, raw: str) -> RowError:
    return ErrorKind.INVALID_CUSTOM_FIELD_VALUE.at(field=field.name, value=raw)


def bad_select(field: CustomField, raw: str) -> RowError:
    return ErrorKind.INVALID_SELECT_VALUE.at(field=field.name, value=raw)


def charset_mismatch(field: CustomField, raw: str) -> RowError:
    return ErrorKind.CHARSET_MISMATCH.at(field=field.name, value=raw)


# --- definitions -----------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "age", "loyalty_tier_2", "a" * 64, "z_", "x9"])
def test_valid_field_names_are_accepted(name: str) -> None:
    """A field name matches [a-z][a-z0-9_]{0,63}."""
    assert name == CustomField(name=name, type=FieldType.STRING).name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Age",
        "1abc",
        "_a",
        "a-b",
        "a b",
        "a" * 65,
        "abc\n",
        "é",
        "ａ",
        "person_id",
        "person_key",
        "external_person_id",
        "mdn",
        "vibes_device_id",
    ],
)
def test_invalid_or_built_in_field_names_are_refused(name: str) -> None:
    """A name outside [a-z][a-z0-9_]{0,63} or equal to a built-in field is refused."""
    with pytest.raises(ValueError, match="field name"):
        CustomField(name=name, type=FieldType.STRING)


@pytest.mark.parametrize("kind", [FieldType.SINGLE_SELECT, FieldType.MULTI_SELECT])
def test_select_fields_need_options(kind: FieldType) -> None:
    """A select field needs at least one option."""
    with pytest.raises(ValueError, match="at least one option"):
        CustomField(name="f", type=kind)


@pytest.mark.parametrize(
    "kind", [FieldType.STRING, FieldType.NUMBER, FieldType.DATE, FieldType.POSTAL_CODE]
)
def test_options_only_for_select_fields(kind: FieldType) -> None:
    """Options apply to single_select and multi_select only."""
    with pytest.raises(ValueError, match="options apply"):
        CustomField(name="f", type=kind, options=("a",))


@pytest.mark.parametrize("key", ["", "a" * 65, "a b", "a/b", "a|b", "é", "a,b", "a\n"])
def test_invalid_option_keys_are_refused(key: str) -> None:
    """Option keys are 1-64 letters, digits, '_', '-' or '.'."""
    with pytest.raises(ValueError, match="invalid option key"):
        CustomField(name="f", type=FieldType.SINGLE_SELECT, options=("ok", key))


def test_repeated_option_keys_are_refused_but_case_differs() -> None:
    """Option keys are unique and case-sensitive."""
    with pytest.raises(ValueError, match="repeated option key"):
        CustomField(name="f", type=FieldType.MULTI_SELECT, options=("a", "b", "a"))
    assert ("a", "A", "a" * 64) == CustomField(
        name="f", type=FieldType.MULTI_SELECT, options=("a", "A", "a" * 64)
    ).options


def test_max_length_must_be_at_least_one() -> None:
    """max_length >= 1."""
    with pytest.raises(ValueError, match="at least 1"):
        string_field(max_length=0)
    assert 1 == string_field(max_length=1).max_length


def test_max_length_and_charset_only_for_strings() -> None:
    """A non-default max_length or charset on a non-string field is refused."""
    with pytest.raises(ValueError, match="max_length applies"):
        CustomField(name="f", type=FieldType.NUMBER, max_length=10)
    with pytest.raises(ValueError, match="charset applies"):
        CustomField(name="f", type=FieldType.DATE, charset=Charset.ASCII)


def test_plain_strings_from_storage_become_enums() -> None:
    """Type and charset given as text (database, command line) are read as enums."""
    field = CustomField(
        name="s",
        type="string",  # type: ignore[arg-type]
        charset="gsm7",  # type: ignore[arg-type]
        options=[],  # type: ignore[arg-type]
    )
    assert (FieldType.STRING, Charset.GSM7, ()) == (field.type, field.charset, field.options)
    assert string_field(Charset.GSM7) == field
    with pytest.raises(ValueError, match="invalid type 'text'"):
        CustomField(name="f", type="text")  # type: ignore[arg-type]


def test_clear_token() -> None:
    """The clearing value is the literal [null]."""
    assert "[null]" == CLEAR_TOKEN


# --- errors (SPEC 3) -------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "raw", "error_class", "message"),
    [
        pytest.param(
            string_field(max_length=2),
            "abc",
            "PersonErrors::InvalidCustomFieldValue",
            "Invalid custom field value",
            id="too-long-string",
        ),
        pytest.param(
            string_field(Charset.ASCII),
            "é",
            "PersonErrors::InvalidSelectCustomFieldValue",
            "Custom field value is incompatible with the field’s character set",
            id="outside-the-charset",
        ),
        pytest.param(
            MULTI,
            "golf|chess",
            "PersonErrors::InvalidSelectCustomFieldValue",
            "Invalid custom field value",
            id="bad-select-value",
        ),
    ],
)
def test_errors_have_exact_class_and_message(
    field: CustomField, raw: str, error_class: str, message: str
) -> None:
    """A bad value's error carries the catalogue's exact class and message, its field and value."""
    expected = RowError(error_class=error_class, message=message, field=field.name, value=raw)
    assert expected == parse(field, raw)


# --- string ----------------------------------------------------------------


def test_string_is_stored_as_given_up_to_max_length() -> None:
    """A string of at most max_length code points is stored as given."""
    field = string_field(max_length=3)
    assert "a b" == parse(field, "a b")
    assert "😀é字" == parse(field, "😀é字")
    assert invalid(field, "abcd") == parse(field, "abcd")
    assert "x" * 255 == parse(string_field(), "x" * 255)
    assert invalid(string_field(), "x" * 256) == parse(string_field(), "x" * 256)


@pytest.mark.parametrize(
    ("charset", "accepted", "rejected"),
    [
        (Charset.UNICODE, ["é€😀\x00", "字"], []),
        (Charset.ASCII, ["hello ~\x7f", "\x00"], ["é", "€", "\x80"]),
        (Charset.LATIN1, ["héllo ÿ\xa0", "\xff"], ["€", "Ā", "😀"]),
        (
            Charset.GSM7,
            ["Hello @£$¥ ÄÖÑÜ§¿äöñüà", "ΔΦΓΛΩΠΨΣΘΞ", "^{}\\[~]|€", "\f\n\r", "ÆæßÉÇØøÅå¡¤"],
            ["ç", "`", "á", "Ā", "\t", "\x1b", "😀", "ê"],
        ),
    ],
)
def test_charsets(charset: Charset, accepted: list[str], rejected: list[str]) -> None:
    """Each charset accepts exactly its characters."""
    field = string_field(charset)
    for text in accepted:
        assert text == parse(field, text)
    for text in rejected:
        assert charset_mismatch(field, "a" + text) == parse(field, "a" + text)


def test_gsm7_tables_are_complete() -> None:
    """GSM 03.38: 127 basic characters (0x1B is the escape) plus 10 extension characters."""
    assert 127 == len(GSM7_BASIC) == len(set(GSM7_BASIC))
    assert "\f^{}\\[~]|€" == GSM7_EXTENSION
    assert 137 == len(GSM7_CHARS)
    assert set(string.ascii_letters + string.digits) <= GSM7_CHARS


def test_charset_error_wins_over_length() -> None:
    """A string both too long and outside its charset reports the charset error only."""
    field = string_field(Charset.ASCII, max_length=2)
    assert charset_mismatch(field, "ééé") == parse(field, "ééé")


# --- number, date and postal code forms ------------------------------------

# What a valid value is stored as, by type (SPEC 1.5).
STORED_AS = {
    # Without leading zeros or trailing fractional zeros.
    NUMBER: [
        ("007.50", "7.5"),
        ("100.00", "100"),
        ("-0.0", "0"),
        ("-0.50", "-0.5"),
        ("0", "0"),
        ("-0", "0"),
        ("000", "0"),
        ("42", "42"),
        ("-42", "-42"),
        ("3.14159", "3.14159"),
        ("0.001", "0.001"),
        ("10", "10"),
        ("1.0", "1"),
        ("12345678901234567890.12345678901234567890", "12345678901234567890.1234567890123456789"),
        ("9" * 64, "9" * 64),
    ],
    # Dates in the four accepted forms, in UTC as YYYY-MM-DDTHH:MM:SSZ.
    DATE: [
        ("2025-01-31T12:34:56Z", "2025-01-31T12:34:56Z"),
        ("2025-01-31T12:34:56+0200", "2025-01-31T10:34:56Z"),
        ("2025-01-31T12:34:56+02:00", "2025-01-31T10:34:56Z"),
        ("2025-01-31T23:30:00-05:00", "2025-02-01T04:30:00Z"),
        ("2025-01-01T00:30:00+0100", "2024-12-31T23:30:00Z"),
        ("2025-06-15T08:00:00+0530", "2025-06-15T02:30:00Z"),
        ("2025-06-15T08:00:00-0000", "2025-06-15T08:00:00Z"),
        ("2025-03-01", "2025-03-01T00:00:00Z"),
        ("2024-02-29", "2024-02-29T00:00:00Z"),
        ("0001-01-01", "0001-01-01T00:00:00Z"),
        ("0999-01-01T05:00:00+0100", "0999-01-01T04:00:00Z"),
        ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59Z"),
    ],
    # A US ZIP as given; a Canadian code upper case with one space.
    POSTAL: [
        ("12345", "12345"),
        ("00501", "00501"),
        ("12345-6789", "12345-6789"),
        ("K1A 0B1", "K1A 0B1"),
        ("k1a 0b1", "K1A 0B1"),
        ("K1A0B1", "K1A 0B1"),
        ("h2x1y4", "H2X 1Y4"),
    ],
}
# Values not of their type's form, by type.
MALFORMED = {
    # Numbers are -?digits(.digits)? in ASCII, at most 64 characters.
    NUMBER: [
        "+5",
        ".5",
        "1.",
        "1e5",
        "1E5",
        "--1",
        "-",
        "1.2.3",
        "1,5",
        "0x10",
        "1 000",
        "٣",
        "１",
        "²",
        "NaN",
        "Infinity",
        "1_000",
        "9" * 65,
        "-" + "9" * 64,
    ],
    # Wrong shapes, impossible calendar dates and times.
    DATE: [
        "2025-02-30",
        "2025-02-29",
        "2025-13-01",
        "2025-00-10",
        "2025-04-31",
        "0000-01-01",
        "2025-01-01T24:00:00Z",
        "2025-01-01T12:60:00Z",
        "2025-01-01T12:00:60Z",
        "2025-01-01T12:00:00",
        "2025-01-01 12:00:00Z",
        "2025-01-01t12:00:00z",
        "2025-01-01T12:00Z",
        "2025-01-01T12:00:00.5Z",
        "2025-01-01T12:00:00+2",
        "2025-01-01T12:00:00+02",
        "2025-01-01T12:00:00+24:00",
        "2025-01-01T12:00:00+0160",
        "2025-01-01T12:00:00+02:0",
        "25-01-01",
        "2025-1-1",
        "20250101",
        "２０２５-01-01",
        "2025-01-01Z",
        "0001-01-01T00:00:00+0100",
        "9999-12-31T23:00:00-0200",
        "tomorrow",
    ],
    # Anything but a US ZIP or a Canadian postal code.
    POSTAL: [
        "1234",
        "123456",
        "12345-678",
        "12345 6789",
        "123456789",
        "K1A  0B1",
        "K1A-0B1",
        "KKA 0B1",
        "K1A 0B",
        "１２３４５",
        "SW1A 1AA",
        "ABCDE",
    ],
}


@pytest.mark.parametrize(
    ("field", "raw", "stored"),
    [
        pytest.param(field, raw, stored, id=f"{field.type}:{raw}")
        for field, cases in STORED_AS.items()
        for raw, stored in cases
    ],
)
def test_valid_values_are_stored_in_canonical_form(
    field: CustomField, raw: str, stored: str
) -> None:
    """A valid number, date or postal code is stored in its type's canonical form."""
    assert stored == parse(field, raw)


@pytest.mark.parametrize(
    ("field", "raw"),
    [
        pytest.param(field, raw, id=f"{field.type}:{raw}")
        for field, values in MALFORMED.items()
        for raw in values
    ],
)
def test_malformed_values_are_invalid(field: CustomField, raw: str) -> None:
    """A number, date or postal code not of its type's form is InvalidCustomFieldValue."""
    assert invalid(field, raw) == parse(field, raw)


# --- number ----------------------------------------------------------------


NUMBERS = st.from_regex(re.compile(r"-?[0-9]{1,20}(\.[0-9]{1,20})?", re.ASCII), fullmatch=True)


@given(NUMBERS)
def test_number_canonical_form_equals_decimal_normalisation(raw: str) -> None:
    """The canonical number is the Decimal value normalised, without exponent or -0."""
    exact = Context(prec=100)
    expected = format(exact.normalize(Decimal(raw)), "f")
    expected = "0" if expected == "-0" else expected
    assert expected == parse(NUMBER, raw)


# --- date ------------------------------------------------------------------


MOMENTS = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 12, 31))
OFFSETS = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59)
UTC_FORM = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", re.ASCII)


def offset_text(minutes: int, colon: bool) -> str:
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}{':' if colon else ''}{mins:02d}"


@given(MOMENTS, OFFSETS, st.booleans())
def test_date_with_offset_equals_python_utc_conversion(
    moment: datetime, minutes: int, colon: bool
) -> None:
    """A date with an offset is stored as the same instant in UTC."""
    raw = moment.strftime("%Y-%m-%dT%H:%M:%S") + offset_text(minutes, colon)
    local = moment.replace(microsecond=0, tzinfo=timezone(timedelta(minutes=minutes)))
    expected = local.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    stored = parse(DATE, raw)
    assert expected == stored
    assert isinstance(stored, str)
    assert UTC_FORM.fullmatch(stored)


# --- selects ---------------------------------------------------------------


def test_single_select_takes_one_key_case_sensitively() -> None:
    """single_select: exactly one option key, case-sensitive."""
    assert "golf" == parse(SINGLE, "golf")
    assert "Golf" == parse(SINGLE, "Golf")
    assert "tennis.pro" == parse(SINGLE, "tennis.pro")
    for raw in ["GOLF", "chess", "golf|soccer", "golf,soccer", "golf "]:
        assert bad_select(SINGLE, raw) == parse(SINGLE, raw)


@pytest.mark.parametrize(
    ("raw", "delimiter", "stored"),
    [
        ("golf", "|", ("golf",)),
        ("golf|soccer", "|", ("golf", "soccer")),
        ("soccer|golf", "|", ("soccer", "golf")),
        (" soccer | golf\t", "|", ("soccer", "golf")),
        ("golf|soccer|golf|Golf", "|", ("golf", "soccer", "Golf")),
        ("golf;x-1_y", ";", ("golf", "x-1_y")),
        ("golf|soccer", ",", None),
        ("golf,soccer", ",", ("golf", "soccer")),
    ],
)
def test_multi_select_keeps_order_and_drops_duplicates(
    raw: str, delimiter: str, stored: tuple[str, ...] | None
) -> None:
    """multi_select: keys split on the multi-select delimiter, in order, duplicates dropped."""
    expected = bad_select(MULTI, raw) if stored is None else stored
    assert expected == parse(MULTI, raw, delimiter)


@pytest.mark.parametrize(
    "raw", ["golf||soccer", "golf|", "|golf", "golf| |soccer", "GOLF", "chess"]
)
def test_multi_select_rejects_empty_and_unknown_keys(raw: str) -> None:
    """multi_select: an empty element or an unknown key makes the value invalid."""
    assert bad_select(MULTI, raw) == parse(MULTI, raw)


# --- export and round trips -----------------------------------------------


def test_format_value_joins_multi_select_with_pipe() -> None:
    """Export form: multi-select keys joined by |, other values as stored."""
    assert "golf|soccer" == format_value(("golf", "soccer"))
    assert "7.5" == format_value("7.5")


LETTER = st.sampled_from(string.ascii_letters)
DIGIT = st.sampled_from(string.digits)
CANADIAN = st.tuples(LETTER, DIGIT, LETTER, st.sampled_from(["", " "]), DIGIT, LETTER, DIGIT).map(
    "".join
)
ZIPS = st.from_regex(re.compile(r"[0-9]{5}(-[0-9]{4})?", re.ASCII), fullmatch=True)
DATES = st.tuples(MOMENTS, OFFSETS, st.sampled_from(["Z", "colon", "plain", "day"])).map(
    lambda t: (
        t[0].strftime("%Y-%m-%d")
        if t[2] == "day"
        else t[0].strftime("%Y-%m-%dT%H:%M:%S")
        + ("Z" if t[2] == "Z" else offset_text(t[1], t[2] == "colon"))
    )
)
CASES = st.one_of(
    st.tuples(st.just(string_field()), st.text(min_size=1, max_size=255)),
    st.tuples(
        st.just(string_field(Charset.GSM7, 20)),
        st.text(alphabet=sorted(GSM7_CHARS), min_size=1, max_size=20),
    ),
    st.tuples(st.just(NUMBER), NUMBERS),
    st.tuples(st.just(DATE), DATES),
    st.tuples(st.just(SINGLE), st.sampled_from(OPTIONS)),
    st.tuples(st.just(MULTI), st.lists(st.sampled_from(OPTIONS), min_size=1).map("|".join)),
    st.tuples(st.just(POSTAL), st.one_of(ZIPS, CANADIAN)),
)


@given(CASES)
def test_parse_of_exported_value_is_idempotent(case: tuple[CustomField, str]) -> None:
    """parse(format(parse(x))) == parse(x) for every type: exports can be re-imported."""
    field, raw = case
    stored = parse(field, raw)
    assert not isinstance(stored, RowError)
    assert stored == parse(field, format_value(stored))
