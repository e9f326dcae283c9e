"""MDN normalisation and carrier lookups (SPEC 1.4, SPEC 2 "Carrier lookup").

``normalize_mdn`` and ``offline_lookup`` are pure. ``HttpCarrierLookup`` is the
one piece of I/O here, kept in its own class as the seam for a real service.

Decisions where SPEC is silent (also in docs/decisions.md):

* Accepted shapes: ``+`` then 8-15 digits, the first non-zero (E.164); or a US
  national number of 10 digits, or 11 with a leading ``1``. Spaces, ``-``,
  ``.`` and one pair of ``(`` ``)`` may punctuate either; ``+`` only first.
  Anything else (letters, ``/``, ``#``, extensions, ``00`` prefixes) is
  malformed.
* A national (10/11-digit) form must have a NANP area code starting 2-9, so a
  stray leading ``0`` or ``1`` is not silently read as US. The E.164 form is
  only checked for shape: ``+12995550005`` is well-formed (SPEC's example)
  and left to the carrier lookup.
* Carrier errors carry ``field="mdn"`` and ``value=""``: a check sees only the
  E.164 form, so the caller (rules) puts the value as in the file in with
  ``dataclasses.replace``.
* http: retries on timeouts, connection errors, 5xx and 429; any other
  answer that is not ``{"valid": true|false}`` is transient without retry
  (the row is worth retrying later, not our data's fault). After
  ``breaker_failures`` transient failures in a row the lookup fails fast for
  ``breaker_seconds``, so a dead service does not cost every row of a big
  file the full retry time.
"""

from __future__ import annotations

import functools
import http.client
import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import phonenumbers
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, PhoneMetadata, PhoneNumberType

from personsd.config import CARRIER_LOOKUPS
from personsd.errors import ErrorKind, RowError, TransientError
from personsd.retry import RetryPolicy

CarrierCheck = Callable[[str], RowError | None]

# The modes import.carrier_lookup may name: the config's list, one source of truth.
CARRIER_MODES = CARRIER_LOOKUPS

_FAST_E164 = re.compile(r"\+[1-9][0-9]{7,14}")
_FAST_US = re.compile(r"1?[2-9][0-9]{9}")
_MDN_CHARS = re.compile(r"\+?[0-9 .()\-]+")
_PUNCTUATION = str.maketrans("", "", " .()-")
_MOBILE_TYPES = frozenset(
    {phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE}
)
_PERMANENT = ErrorKind.PERMANENT_LOOKUP_FAILURE.at(field="mdn")
_TRANSIENT = ErrorKind.TRANSIENT_LOOKUP_FAILURE.at(field="mdn")


def normalize_mdn(raw: str) -> str | None:
    """``raw`` in E.164 (``+12295551234``), or None when it is not a well-formed MDN."""
    if _FAST_E164.fullmatch(raw):
        return raw
    if _FAST_US.fullmatch(raw):
        return "+" + raw if len(raw) == 11 else "+1" + raw
    if not _MDN_CHARS.fullmatch(raw) or not _parentheses_ok(raw):
        return None
    digits = raw.translate(_PUNCTUATION)
    if digits.startswith("+"):
        return digits if _FAST_E164.fullmatch(digits) else None
    if _FAST_US.fullmatch(digits):
        return "+" + digits if len(digits) == 11 else "+1" + digits
    return None


def _parentheses_ok(raw: str) -> bool:
    """At most one ``(`` ... ``)`` pair, holding digits (an area code)."""
    opening = raw.find("(")
    closing = raw.find(")")
    if opening < 0 and closing < 0:
        return True
    if raw.count("(") != 1 or raw.count(")") != 1 or closing < opening + 2:
        return False
    return raw[opening + 1 : closing].isdigit()


def no_lookup(e164: str) -> RowError | None:
    """``carrier_lookup = "none"``: every well-formed MDN passes."""
    return None


def _reference_lookup(e164: str) -> RowError | None:
    """phonenumbers' own answer: the definition the fast path must agree with."""
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return _PERMANENT
    if not phonenumbers.is_valid_number(number):
        return _PERMANENT
    if phonenumbers.number_type(number) not in _MOBILE_TYPES:
        return _PERMANENT
    return None


# phonenumbers recompiles (through re's cache) every pattern on every call and
# works out a number's region and type several times per validity + type
# question: about 70 µs a number, the largest cost of an initial load. For
# NANP numbers (+1, ten digits, area code 2-9: the common case here), the same
# decision is taken below with the same metadata, each pattern compiled once,
# the region and type computed once. tests/test_phones.py checks the two
# agree on generated numbers; anything else takes the reference path.
_NANP = re.compile(r"\+1([2-9]\d{9})")
_DESCS = (
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
)


@functools.cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _applies(desc: Any, length: int) -> str | None:
    """The pattern of ``desc`` if numbers of ``length`` digits can match it."""
    if desc is None or not desc.national_number_pattern:
        return None
    lengths = desc.possible_length
    if lengths and length not in lengths:
        return None
    return str(desc.national_number_pattern)


@dataclass(frozen=True, kw_only=True, slots=True)
class _TypeMatcher:
    """phonenumbers' ``_number_type_helper`` for one region and one length, in two matches.

    The descriptions phonenumbers tries one after another (premium rate, toll
    free, ..., fixed line, mobile) become the alternatives of one pattern, in
    the same order: ``re`` takes the first alternative that matches the whole
    number, so the group that matched names the type phonenumbers would find.
    """

    general: re.Pattern[str] | None
    kinds: re.Pattern[str] | None
    mobile: re.Pattern[str] | None
    same_mobile_and_fixed: bool

    @classmethod
    def build(cls, md: Any, length: int) -> _TypeMatcher:
        general = _applies(md.general_desc, length)
        alternatives = [
            (f"t{kind}", pattern)
            for kind, name in (
                *zip(_DESC_TYPES, _DESCS, strict=True),
                (PhoneNumberType.FIXED_LINE, "fixed_line"),
                (PhoneNumberType.MOBILE, "mobile"),
            )
            if (pattern := _applies(getattr(md, name), length)) is not None
        ]
        combined = "|".join(f"(?P<{group}>{pattern})" for group, pattern in alternatives)
        mobile = _applies(md.mobile, length)
        return cls(
            general=re.compile(general) if general else None,
            kinds=re.compile(combined) if combined else None,
            mobile=re.compile(mobile) if mobile else None,
            same_mobile_and_fixed=bool(md.same_mobile_and_fixed_line_pattern),
        )

    def type_of(self, nsn: str) -> int:
        if self.general is None or self.general.fullmatch(nsn) is None:
            return PhoneNumberType.UNKNOWN
        found = self.kinds.fullmatch(nsn) if self.kinds is not None else None
        if found is None:
            return PhoneNumberType.UNKNOWN
        # The outer group closes last, so it is `lastgroup`; groupdict covers any surprise.
        group = found.lastgroup or next(n for n, v in found.groupdict().items() if v is not None)
        kind = int(group[1:])
        if kind == PhoneNumberType.FIXED_LINE:
            if self.same_mobile_and_fixed or (
                self.mobile is not None and self.mobile.fullmatch(nsn) is not None
            ):
                return PhoneNumberType.FIXED_LINE_OR_MOBILE
            return PhoneNumberType.FIXED_LINE
        if kind == PhoneNumberType.MOBILE and self.same_mobile_and_fixed:
            return PhoneNumberType.UNKNOWN  # phonenumbers never asks the mobile pattern then
        return kind


_DESC_TYPES = (
    PhoneNumberType.PREMIUM_RATE,
    PhoneNumberType.TOLL_FREE,
    PhoneNumberType.SHARED_COST,
    PhoneNumberType.VOIP,
    PhoneNumberType.PERSONAL_NUMBER,
    PhoneNumberType.PAGER,
    PhoneNumberType.UAN,
    PhoneNumberType.VOICEMAIL,
)


@functools.cache
def _nanp_regions() -> tuple[tuple[re.Pattern[str] | None, _TypeMatcher], ...]:
    """Every +1 region in phonenumbers' order: its leading digits and its type matcher."""
    regions = []
    for region in COUNTRY_CODE_TO_REGION_CODE[1]:
        md = PhoneMetadata.metadata_for_region(region.upper(), None)
        if md is None:
            continue
        leading = _compiled(md.leading_digits) if md.leading_digits is not None else None
        regions.append((leading, _TypeMatcher.build(md, 10)))
    return tuple(regions)


def _nanp_type(nsn: str) -> int:
    """Region by phonenumbers' rule (leading digits, else full type), then the type."""
    for leading, matcher in _nanp_regions():
        if leading is not None:
            if leading.match(nsn):
                return matcher.type_of(nsn)
        else:
            kind = matcher.type_of(nsn)
            if kind != PhoneNumberType.UNKNOWN:
                return kind
    return PhoneNumberType.UNKNOWN


@functools.lru_cache(maxsize=1 << 16)
def offline_lookup(e164: str) -> RowError | None:
    """``carrier_lookup = "offline"``: valid per phonenumbers and mobile-capable."""
    nanp = _NANP.fullmatch(e164)
    if nanp is None:
        return _reference_lookup(e164)
    return None if _nanp_type(nanp.group(1)) in _MOBILE_TYPES else _PERMANENT


class HttpCarrierLookup:
    """``carrier_lookup = "http"``: GET ``{url}?mdn=<e164>`` answering ``{"valid": bool}``.

    Thread-safe: workers of different tenants may share one instance.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 3.0,
        retries: int = 2,
        backoff: float = 0.2,
        breaker_failures: int = 20,
        breaker_seconds: float = 30.0,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"carrier lookup URL must be http(s): {url!r}")
        # backoff > 0: no retry without a pause, as everywhere in personsd.
        if timeout <= 0 or retries < 0 or backoff <= 0 or breaker_failures < 1:
            raise ValueError("carrier lookup: timeout > 0, retries >= 0, backoff > 0")
        self.url = url
        self.timeout = timeout
        self.retries = retries
        # Pauses of backoff, then doubling, all exact: no jitter, and a cap past the
        # last of ``retries`` pauses.
        self.policy = RetryPolicy(base=backoff, cap=backoff * 2**retries, jitter=0.0)
        self.breaker_failures = breaker_failures
        self.breaker_seconds = breaker_seconds
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until = 0.0

    def __call__(self, e164: str) -> RowError | None:
        with self._lock:
            if time.monotonic() < self._open_until:
                return _TRANSIENT
        answer = self._ask(e164)
        with self._lock:
            if answer is None:
                self._failures += 1
                if self._failures >= self.breaker_failures:
                    self._open_until = time.monotonic() + self.breaker_seconds
                    self._failures = 0
                return _TRANSIENT
            self._failures = 0
        return None if answer else _PERMANENT

    def unavailable(self) -> bool:
        """True while the breaker is open: the service is down, not one MDN's trouble."""
        with self._lock:
            return time.monotonic() < self._open_until

    def _ask(self, e164: str) -> bool | None:
        """The service's answer, or None when it could not be had."""
        separator = "&" if "?" in self.url else "?"
        request = urllib.request.Request(
            self.url + separator + urllib.parse.urlencode({"mdn": e164}),
            headers={"Accept": "application/json"},
        )
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.policy.delay(attempt))
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    body = response.read(64 * 1024)
            except urllib.error.HTTPError as exc:
                if exc.code >= 500 or exc.code == 429:
                    continue
                return None
            except (OSError, http.client.HTTPException):
                continue  # timeouts, refused or reset connections
            return _valid_flag(body)
        return None


class CarrierUnavailable(TransientError):
    """The http carrier service is down: an environment fault, the import waits (SPEC 5)."""


def ask_all(lookup: HttpCarrierLookup, mdns: Iterable[str]) -> dict[str, RowError | None]:
    """Each MDN's answer, asked before any transaction opens (no lock held meanwhile).

    One MDN's failure is that row's ``TransientLookupFailureError``; once the
    breaker opens (``breaker_failures`` failures in a row) the service is
    down and :class:`CarrierUnavailable` is raised, so the chunk waits.
    """
    answers: dict[str, RowError | None] = {}
    for e164 in mdns:
        answers[e164] = lookup(e164)
        if lookup.unavailable():
            raise CarrierUnavailable(f"carrier lookup service {lookup.url} is not answering")
    return answers


def _valid_flag(body: bytes) -> bool | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    flag = document.get("valid") if isinstance(document, dict) else None
    return flag if isinstance(flag, bool) else None


def carrier_check(mode: str, url: str = "") -> CarrierCheck:
    """The check ``import.carrier_lookup`` names (``none``, ``offline`` or ``http``)."""
    if mode == "none":
        return no_lookup
    if mode == "offline":
        return offline_lookup
    if mode == "http":
        return _http_lookup(url)
    raise ValueError(f"unknown carrier lookup {mode!r}: one of {', '.join(CARRIER_MODES)}")


@functools.cache
def _http_lookup(url: str) -> HttpCarrierLookup:
    # One per URL for the process: its breaker remembers an outage across
    # imports, so a retried import does not pay every MDN's timeouts again.
    return HttpCarrierLookup(url)
