"""Values sent by visitors: the page sends what its widgets hold, but an API call can send anything. Each value is
read here with a message naming it (a ValueError, shown as an input problem), before the library sees it."""

from __future__ import annotations

import math


def number(value, name: str, whole: bool = False, optional: bool = False) -> float | int | None:
    """A number (a whole one with `whole`): a JSON number or the text of one; None only when `optional`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if optional:
            return None
        raise ValueError(f"{name} is missing: give a number")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    try:
        x = float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number, got '{str(value)[:40]}'") from None
    if not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if whole:
        if x != int(x):
            raise ValueError(f"{name} must be a whole number, got {value}")
        return int(x)
    return x


def text(value, name: str) -> str | None:
    """Text, stripped; None for nothing or blanks."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text, got {type(value).__name__}")
    return value.strip() or None
