"""MDN normalisation and carrier lookups (SPEC 1.4, SPEC 2 "Carrier lookup")."""

# House style is `assert expected == actual`, which SIM300 calls a Yoda condition.

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from http_helpers import serving
from personsd import phones
from personsd.errors import RowError
from personsd.phones import (
    HttpCarrierLookup,
    carrier_check,
    no_lookup,
    normalize_mdn,
    offline_lookup,
)

PERMANENT = RowError(
    error_class="CarrierLookupService::PermanentLookupFailureError",
    message="The MDN supplied is not a valid mobile phone active on a valid carrier.",
    field="mdn",
    value="",
)
TRANSIENT = RowError(
    error_class="CarrierLookupService::TransientLookupFailureError",
    message="A temporary issue with the carrier lookup service prevented the row from being "
    "processed. Please try again later.",
    field="mdn",
    value="",
)


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("+12295551234", "+12295551234"),
        ("2295551234", "+12295551234"),
        ("12295551234", "+12295551234"),
        ("229-555-1234", "+12295551234"),
        ("229.555.1234", "+12295551234"),
        ("229 555 1234", "+12295551234"),
        ("(229) 555-1234", "+12295551234"),
        ("(229)555-1234", "+12295551234"),
        ("1 (229) 555-1234", "+12295551234"),
        ("1-229-555-1234", "+12295551234"),
        ("+1 (229) 555-1234", "+12295551234"),
        ("+1 229 555 1234", "+12295551234"),
        ("+12995550005", "+12995550005"),
        ("2995550005", "+12995550005"),
        ("+447400123456", "+447400123456"),
        ("+44 7400 123456", "+447400123456"),
        ("+33 6 12 34 56 78", "+33612345678"),
        ("+12345678", "+12345678"),
        ("+123456789012345", "+123456789012345"),
    ],
)
def test_well_formed_mdns_normalise_to_e164(raw: str, e164: str) -> None:
    """E.164 and punctuated US national forms are stored in E.164."""
    assert e164 == normalize_mdn(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "+",
        "abc",
        "229555123a",
        "229-555-CALL",
        "2295551234x12",
        "229/555/1234",
        "229555123",
        "229555123456",
        "0295551234",
        "1295551234",
        "10295551234",
        "21295551234",
        "+0123456789",
        "+1234567",
        "+1234567890123456",
        "++12295551234",
        "1+2295551234",
        "0012295551234",
        "(229 555-1234",
        "229) 555-1234",
        "((229)) 555-1234",
        "(2)(29) 555-1234",
        "() 2295551234",
        "(22a) 555-1234",
        "２２９５５５１２３４",
        "+1２２９５５５１２３４",
        "+1\t2295551234",
        "+1 229 555 1234 #",
    ],
)
def test_malformed_mdns_are_refused(raw: str) -> None:
    """Letters, junk, wrong digit counts and non-NANP national forms are malformed."""
    assert None is normalize_mdn(raw)


AREA = st.integers(min_value=200, max_value=999).map(str)
SUBSCRIBER = st.integers(min_value=0, max_value=9_999_999).map(lambda n: f"{n:07d}")
STYLES = st.sampled_from(
    [
        "{a}{x}{s}",
        "1{a}{x}{s}",
        "{a}-{x}-{s}",
        "({a}) {x}-{s}",
        "1 ({a}) {x}-{s}",
        "{a}.{x}.{s}",
        "+1 {a} {x} {s}",
        "+1{a}{x}{s}",
        "1-{a}-{x}-{s}",
    ]
)


@given(AREA, SUBSCRIBER, STYLES)
def test_formatted_us_numbers_normalise(area: str, subscriber: str, style: str) -> None:
    """Every punctuated US form of a number normalises to the same +1 E.164 number."""
    raw = style.format(a=area, x=subscriber[:3], s=subscriber[3:])
    assert f"+1{area}{subscriber}" == normalize_mdn(raw)


@given(st.text(max_size=20))
def test_normalised_mdn_is_e164_or_none(raw: str) -> None:
    """Whatever the input, the result is None or + and 8-15 ASCII digits."""
    result = normalize_mdn(raw)
    assert result is None or (
        result[0] == "+"
        and result[1:].isascii()
        and result[1:].isdigit()
        and 8 <= len(result) - 1 <= 15
        and result[1] != "0"
    )


def test_spec_example_number_fails_offline_and_passes_none() -> None:
    """Area code 299 is well-formed but not valid: offline fails it, none passes it."""
    e164 = normalize_mdn("+12995550005")
    assert "+12995550005" == e164
    assert PERMANENT == offline_lookup("+12995550005")
    assert None is no_lookup("+12995550005")


@pytest.mark.parametrize(
    "e164",
    ["+12295551234", "+12025550123", "+14155552671", "+447400123456", "+33612345678"],
)
def test_offline_lookup_passes_mobile_capable_numbers(e164: str) -> None:
    """Offline: valid numbers of type mobile or fixed-line-or-mobile pass."""
    assert None is offline_lookup(e164)


@pytest.mark.parametrize(
    "e164",
    [
        "+442071838750",
        "+18005551234",
        "+19005550199",
        "+12995550005",
        "+10995551234",
        "+999123456789",
    ],
)
def test_offline_lookup_fails_other_numbers(e164: str) -> None:
    """Offline: fixed line, toll free, premium and invalid numbers fail permanently."""
    assert PERMANENT == offline_lookup(e164)


def test_carrier_check_picks_the_configured_mode() -> None:
    """carrier_check maps none/offline/http to their checks; anything else is refused."""
    assert no_lookup is carrier_check("none")
    assert offline_lookup is carrier_check("offline")
    http = carrier_check("http", "http://127.0.0.1:9/lookup")
    assert isinstance(http, HttpCarrierLookup)
    with pytest.raises(ValueError, match="unknown carrier lookup"):
        carrier_check("online")
    with pytest.raises(ValueError, match="must be http"):
        carrier_check("http", "")


# --- http: a real local service -------------------------------------------

VALID, INVALID, BROKEN, SLOW, FLAKY, MISSING, GARBLED = (f"+1202555000{n}" for n in range(1, 8))


class Service(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: Counter[str] = Counter()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/lookup"


class Handler(BaseHTTPRequestHandler):
    server: Service

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        mdn = query["mdn"][0]
        with self.server.lock:
            self.server.requests[mdn] += 1
            seen = self.server.requests[mdn]
        if mdn == SLOW:
            time.sleep(0.5)
        if mdn == BROKEN or (mdn == FLAKY and seen == 1):
            self.reply(500, b"oops")
        elif mdn == MISSING:
            self.reply(404, b"not here")
        elif mdn == GARBLED:
            self.reply(200, b"{valid")
        else:
            self.reply(200, json.dumps({"valid": mdn != INVALID}).encode())

    def reply(self, status: int, body: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client gave up (timeout test)


@pytest.fixture
def service() -> Iterator[Service]:
    with serving(Service()) as server:
        yield server


def lookup(service: Service, **options: float) -> HttpCarrierLookup:
    # A millisecond's backoff: every retry still pauses, too briefly to slow the test.
    settings: dict[str, float] = {"timeout": 2.0, "retries": 2, "backoff": 0.001} | options
    return HttpCarrierLookup(
        service.url,
        timeout=settings["timeout"],
        retries=int(settings["retries"]),
        backoff=settings["backoff"],
        breaker_failures=int(settings.get("breaker_failures", 20)),
    )


def test_http_positive_answer_passes(service: Service) -> None:
    """http: {"valid": true} passes, with the E.164 number sent as ?mdn=."""
    assert None is lookup(service)(VALID)
    assert Counter({VALID: 1}) == service.requests


def test_http_negative_answer_is_permanent(service: Service) -> None:
    """http: {"valid": false} is PermanentLookupFailureError."""
    assert PERMANENT == lookup(service)(INVALID)


def test_http_5xx_after_retries_is_transient(service: Service) -> None:
    """http: 5xx after every retry is TransientLookupFailureError."""
    assert TRANSIENT == lookup(service, retries=2)(BROKEN)
    assert 3 == service.requests[BROKEN]


def test_http_retry_recovers_from_one_5xx(service: Service) -> None:
    """http: a 5xx followed by an answer counts the answer."""
    assert None is lookup(service, retries=1)(FLAKY)
    assert 2 == service.requests[FLAKY]


def test_http_timeout_is_transient(service: Service) -> None:
    """http: a service slower than the timeout is TransientLookupFailureError."""
    started = time.monotonic()
    assert TRANSIENT == lookup(service, timeout=0.05, retries=1)(SLOW)
    assert time.monotonic() - started < 0.45
    assert 2 == service.requests[SLOW]


def test_http_unusable_answers_are_transient_without_retry(service: Service) -> None:
    """http: 4xx or a body that is not {"valid": bool} is transient, not retried."""
    check = lookup(service, retries=2)
    assert (TRANSIENT, TRANSIENT) == (check(MISSING), check(GARBLED))
    assert Counter({MISSING: 1, GARBLED: 1}) == service.requests


def test_http_unreachable_service_is_transient() -> None:
    """http: a refused connection is TransientLookupFailureError."""
    server = Service()
    url = server.url
    server.server_close()
    assert TRANSIENT == HttpCarrierLookup(url, retries=1, backoff=0.001)(VALID)


def test_http_breaker_fails_fast_after_repeated_failures(service: Service) -> None:
    """http: after breaker_failures transient rows in a row, lookups fail without asking."""
    check = lookup(service, retries=0, breaker_failures=2)
    assert [TRANSIENT] * 3 == [check(BROKEN), check(BROKEN), check(VALID)]
    assert Counter({BROKEN: 2}) == service.requests


@given(st.integers(min_value=2_000_000_000, max_value=9_999_999_999))
@settings(max_examples=2000)
def test_offline_fast_path_agrees_with_phonenumbers(national: int) -> None:
    """The NANP fast path of offline_lookup decides exactly as phonenumbers does."""
    e164 = f"+1{national}"
    expected = phones._reference_lookup(e164)
    phones.offline_lookup.cache_clear()
    assert expected == phones.offline_lookup(e164)


@pytest.mark.parametrize(
    "e164",
    [
        "+12125550123",
        "+12125551234",
        "+14165550123",
        "+18095550123",
        "+16715550123",
        "+18005550123",
        "+19005550123",
        "+12995550005",
        "+15147001234",
    ],
)
def test_offline_fast_path_examples(e164: str) -> None:
    """US, Canada, Caribbean, Guam, toll-free, premium and invalid numbers agree."""
    phones.offline_lookup.cache_clear()
    assert phones._reference_lookup(e164) == phones.offline_lookup(e164)


def test_nanp_type_matches_phonenumbers_for_every_area_code() -> None:
    """The combined type pattern names the type phonenumbers finds, area code by area code."""
    mismatches = []
    for area in range(200, 1000):
        for exchange in ("201", "555", "987"):
            nsn = f"{area}{exchange}1234"
            expected = phonenumbers.number_type(phonenumbers.parse(f"+1{nsn}", None))
            actual = phones._nanp_type(nsn)
            if expected != actual:
                mismatches.append((nsn, expected, actual))
    assert [] == mismatches


@given(st.integers(min_value=2_000_000_000, max_value=9_999_999_999))
@settings(max_examples=500)
def test_nanp_type_matches_phonenumbers(national: int) -> None:
    """Any ten-digit NANP number gets the type phonenumbers gives it."""
    expected = phonenumbers.number_type(phonenumbers.parse(f"+1{national}", None))
    assert expected == phones._nanp_type(str(national))


@pytest.mark.parametrize("backoff", [0.0, -0.2])
def test_http_lookup_refuses_retries_without_a_pause(backoff: float) -> None:
    """http: a backoff of 0 or less is refused (no retry without a pause)."""
    with pytest.raises(ValueError, match="backoff > 0"):
        HttpCarrierLookup("http://127.0.0.1:9/", backoff=backoff)
