"""Retry backoff policy: exponential, capped, jittered."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from personsd.retry import RetryPolicy

policies = st.builds(
    lambda base, factor, extra, jitter: RetryPolicy(
        base=base, factor=factor, cap=base + extra, jitter=jitter
    ),
    base=st.floats(0.001, 100),
    factor=st.floats(1, 10),
    extra=st.floats(0, 1000),
    jitter=st.floats(0, 1),
)


def test_default_schedule() -> None:
    """Defaults: 0.5 s doubling up to a 60 s cap."""
    policy = RetryPolicy()
    assert [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0] == [
        policy.nominal(n) for n in range(1, 10)
    ]


def test_delay_without_jitter_is_nominal() -> None:
    """With jitter 0 the delay is exactly the nominal one."""
    policy = RetryPolicy(jitter=0)
    assert 4.0 == policy.delay(4, random.Random(1))


def test_jitter_is_reproducible_with_a_seeded_rng() -> None:
    """The same seed gives the same delays, and jitter actually varies them."""
    policy = RetryPolicy()
    first = [policy.delay(3, random.Random(7)) for _ in range(3)]
    assert first == [policy.delay(3, random.Random(7)) for _ in range(3)]
    rng = random.Random(7)
    assert len({policy.delay(3, rng) for _ in range(20)}) > 1


def test_huge_attempt_does_not_overflow() -> None:
    """Far past the cap, the delay is the cap, not an OverflowError."""
    assert 60.0 == RetryPolicy(jitter=0).delay(100_000)


@given(policies, st.integers(1, 2000))
def test_nominal_is_monotone_and_capped(policy: RetryPolicy, attempt: int) -> None:
    """Before jitter, delays never decrease and never exceed the cap."""
    assert policy.nominal(attempt) <= policy.nominal(attempt + 1) <= policy.cap


@given(policies, st.integers(1, 2000), st.integers(0, 2**32))
def test_delay_bounds(policy: RetryPolicy, attempt: int, seed: int) -> None:
    """A jittered delay is within nominal*(1±jitter): never negative, never above cap*(1+jitter)."""
    delay = policy.delay(attempt, random.Random(seed))
    nominal = policy.nominal(attempt)
    assert 0 <= delay <= policy.cap * (1 + policy.jitter)
    assert nominal * (1 - policy.jitter) <= delay <= nominal * (1 + policy.jitter)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base": 0}, "base"),
        ({"factor": 0.5}, "factor"),
        ({"cap": 0.1}, "cap"),
        ({"jitter": 1.5}, "jitter"),
        ({"jitter": -0.1}, "jitter"),
    ],
)
def test_policy_validation(kwargs: dict[str, float], message: str) -> None:
    """Nonsensical policies are refused at construction."""
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)


def test_attempt_starts_at_one() -> None:
    """Attempt 1 is the first retry; 0 is a caller bug."""
    with pytest.raises(ValueError, match="attempt"):
        RetryPolicy().delay(0)
