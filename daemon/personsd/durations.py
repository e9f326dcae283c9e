"""Durations as operators write them (``24h``, ``90m``, ``7d``) and read them back."""

from __future__ import annotations

import re

from personsd.errors import OperatorError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"([1-9][0-9]{0,6})([smhdw])")


def parse(text: str) -> int:
    """Seconds in ``text`` (a whole number and one unit of s, m, h, d, w)."""
    found = _DURATION.fullmatch(text.strip().lower())
    if found is None:
        raise OperatorError(f"invalid duration {text!r}: use e.g. 90m, 24h or 7d")
    return int(found.group(1)) * _UNITS[found.group(2)]


def render(seconds: float) -> str:
    """A short human form: ``45s``, ``12m``, ``3h20m``, ``2d4h``."""
    whole = int(max(0.0, seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m"
    if whole < 86400:
        hours, minutes = divmod(whole // 60, 60)
        return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"
    days, hours = divmod(whole // 3600, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"
