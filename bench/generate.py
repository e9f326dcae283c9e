"""Deterministic ``.persons`` files for the benchmark, written as a stream.

The values come from one ``random.Random(seed)`` drawn in row order and the
identifiers of row ``i`` from fixed permutations of ``i``, so the first N rows
of any file of one seed are the same rows: a subset of a big file is a small
file. Memory stays flat whatever the row count.

MDNs must pass ``carrier_lookup = "offline"`` (phonenumbers: valid, mobile or
fixed-line-or-mobile), so they are built from (area code, exchange) pairs that
phonenumbers accepts, checked once per pair when the generator starts, and
spread over that space by a bijection ``i -> (i * A + B) mod capacity``, so
every MDN of a file is distinct. External ids are permuted the same way so
that they reach the unique indexes in no particular order, as a partner's
own ids would.

    python bench/generate.py ROWS [--seed N] [--out FILE]
"""

from __future__ import annotations

import argparse
import functools
import math
import random
import sys
from collections.abc import Iterator
from pathlib import Path

GENERATOR_VERSION = 1
DEFAULT_SEED = 20_240_601
DATA_DIR = Path(__file__).resolve().parent / "data"
HEADER = "external_person_id,mdn,first_name,age,sport_interests"
SPORTS = ("football", "hockey", "soccer", "golf", "basketball")
# The tenant's custom fields the files use: (name, type, options).
CUSTOM_FIELDS = (
    ("first_name", "string", None),
    ("age", "number", None),
    ("sport_interests", "multi_select", ",".join(SPORTS)),
)
FIRST_NAMES = (
    "James",
    "Mary",
    "Robert",
    "Patricia",
    "John",
    "Jennifer",
    "Michael",
    "Linda",
    "David",
    "Elizabeth",
    "William",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Charles",
    "Karen",
    "Christopher",
    "Lisa",
    "Daniel",
    "Nancy",
    "Matthew",
    "Betty",
    "Anthony",
    "Margaret",
    "Mark",
    "Sandra",
    "Donald",
    "Ashley",
    "José",
    "Zoë",
    "Renée",
    "Chloé",
    "Siobhán",
    "Łukasz",
    "Ana-María",
    "O'Neil",
)
# Real, populous area codes; phonenumbers has the final say on each exchange.
AREA_CODES = (
    212,
    213,
    214,
    305,
    312,
    404,
    415,
    512,
    602,
    617,
    702,
    713,
    718,
    720,
    773,
    503,
    206,
    303,
    612,
    919,
)
SUBSCRIBERS = 10_000
# Fictional (555) and service (N11) exchanges are left out even where
# phonenumbers would let them pass.
_EXCLUDED_EXCHANGES = frozenset({555, *range(211, 1000, 100)})
_MDN_MULTIPLIER = 1_000_003
_MDN_OFFSET = 7_777_777
_EXT_SPACE = 10**10
_EXT_MULTIPLIER = 2_654_435_761  # odd and not a multiple of 5: coprime with 10**10
_EXT_OFFSET = 1_234_567_891


@functools.cache
def valid_pairs() -> tuple[tuple[int, int], ...]:
    """(area code, exchange) pairs whose numbers pass the offline carrier check."""
    import phonenumbers
    from phonenumbers import PhoneNumberType

    mobile = (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE)
    pairs = []
    for area in sorted(set(AREA_CODES)):
        for exchange in range(200, 1000):
            if exchange in _EXCLUDED_EXCHANGES:
                continue
            ok = True
            for subscriber in (0, 4321, 9999):  # both ends and the middle of the block
                number = phonenumbers.parse(f"+1{area}{exchange}{subscriber:04d}", None)
                if not (
                    phonenumbers.is_valid_number(number)
                    and phonenumbers.number_type(number) in mobile
                ):
                    ok = False
                    break
            if ok:
                pairs.append((area, exchange))
    if not pairs:
        raise RuntimeError("phonenumbers accepts no (area code, exchange) pair: check AREA_CODES")
    return tuple(pairs)


@functools.cache
def _mdn_permutation() -> tuple[int, int]:
    """(capacity, multiplier coprime with it) of the MDN space."""
    capacity = len(valid_pairs()) * SUBSCRIBERS
    multiplier = _MDN_MULTIPLIER
    while math.gcd(multiplier, capacity) != 1:
        multiplier += 2
    return capacity, multiplier


def mdn(i: int) -> str:
    """The E.164 MDN of row ``i`` (0-based); distinct for distinct ``i``."""
    capacity, multiplier = _mdn_permutation()
    if i >= capacity:
        raise ValueError(f"only {capacity} distinct MDNs available")
    j = (i * multiplier + _MDN_OFFSET) % capacity
    area, exchange = valid_pairs()[j // SUBSCRIBERS]
    return f"+1{area}{exchange}{j % SUBSCRIBERS:04d}"


def external_id(i: int) -> str:
    """The partner's id of row ``i``; distinct for distinct ``i`` below 10**10."""
    return f"cust-{(i * _EXT_MULTIPLIER + _EXT_OFFSET) % _EXT_SPACE:010d}"


def rows(count: int, seed: int = DEFAULT_SEED, start: int = 0) -> Iterator[str]:
    """Lines (without newline) of data rows ``start`` .. ``start + count - 1``.

    Identifiers are a function of ``i`` alone; the other values come from one
    stream per (seed, start), so only files that start at 0 share their rows.
    """
    rng = random.Random(seed if start == 0 else f"{seed}:{start}")
    for i in range(start, start + count):
        name, age, sports = _draw(rng)
        yield f"{external_id(i)},{mdn(i)},{name},{age},{sports}"


def _draw(rng: random.Random) -> tuple[str, int, str]:
    name = FIRST_NAMES[rng.randrange(len(FIRST_NAMES))]
    age = rng.randrange(18, 91)
    picked = rng.randrange(10)
    # One row in ten has no interests: a blank multi-select (it clears).
    sports = "" if picked == 0 else "|".join(rng.sample(SPORTS, 1 + picked % 3))
    return name, age, sports


def write(path: Path, count: int, seed: int = DEFAULT_SEED, start: int = 0) -> Path:
    """Write a file of ``count`` rows atomically (temp name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name("." + path.name + ".partial")
    batch: list[str] = [HEADER]
    with partial.open("w", encoding="utf-8", newline="\n") as out:
        for line in rows(count, seed, start):
            batch.append(line)
            if len(batch) >= 10_000:
                out.write("\n".join(batch) + "\n")
                batch.clear()
        if batch:
            out.write("\n".join(batch) + "\n")
    partial.replace(path)
    return path


def cached(count: int, seed: int = DEFAULT_SEED) -> Path:
    """The file of ``count`` rows under bench/data/, generated on first use."""
    path = DATA_DIR / f"bench-v{GENERATOR_VERSION}-s{seed}-{count}.persons"
    if not path.exists():
        write(path, count, seed)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", type=int)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument(
        "--out", type=Path, default=None, help="output file (default: the cache under bench/data/)"
    )
    args = parser.parse_args(argv)
    path = write(args.out, args.rows, args.seed) if args.out else cached(args.rows, args.seed)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
