"""Medians with their range, and ratios taken pair by pair within one round."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import TypedDict


class Spread(TypedDict):
    median: float | None
    min: float | None
    max: float | None
    n: int


def spread(values: Iterable[float | None]) -> Spread:
    """Median, min and max of the finite values (None when there are none)."""
    clean = [v for v in values if v is not None and math.isfinite(v)]
    if not clean:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {
        "median": statistics.median(clean),
        "min": min(clean),
        "max": max(clean),
        "n": len(clean),
    }


def paired_ratios(
    numerators: Sequence[float | None], denominators: Sequence[float | None]
) -> list[float | None]:
    """Round i's numerator over round i's denominator: runs next to each other share the
    machine's mood, so their ratio moves far less than either figure does."""
    out: list[float | None] = []
    for num, den in zip(numerators, denominators, strict=True):
        if num is None or den is None or den == 0 or not math.isfinite(num / den):
            out.append(None)
        else:
            out.append(num / den)
    return out


def quantile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile of a small sample (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


def fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}{unit}"


def fmt_spread(s: Spread, digits: int = 1, unit: str = "") -> str:
    """`median (min-max)` for a table cell."""
    if s["median"] is None:
        return "n/a"
    if s["n"] == 1 or s["min"] == s["max"]:
        return fmt(s["median"], digits, unit)
    return f"{fmt(s['median'], digits, unit)} ({fmt(s['min'], digits)}-{fmt(s['max'], digits)})"
