"""Weights of the elements of an Accept-style header (Accept, Accept-Encoding), by RFC 9110.

A leaf: the parse that the probe handlers (text or health+json) and the /metrics renderer (format
and gzip) both judge by, so that `q` is read the same way everywhere.
"""

from __future__ import annotations

import math


def weighted(header: str) -> list[tuple[str, float]]:
    """Each element of a comma-separated header with its weight (its `q`, else 1), in header
    order: without the q parameter, its name in lower case (media types and codings are
    case-insensitive), its other parameters as sent. A weight that is not a number from 0 to 1
    is 0: the element is not acceptable, since the client's preference cannot be read
    (RFC 9110 12.4.2)."""
    found: list[tuple[str, float]] = []
    for element in header.split(","):
        name, *parameters = (part.strip() for part in element.split(";"))
        if not name:
            continue
        weight, kept = 1.0, [name.lower()]
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip().lower() == "q":
                weight = _qvalue(value.strip())
            elif parameter:
                kept.append(parameter)
        found.append((";".join(kept), weight))
    return found


def ranked(header: str) -> list[tuple[str, float]]:
    """The acceptable elements (weight above 0), highest weight first, in header order among
    equals."""
    found = [(element, weight) for element, weight in weighted(header) if weight > 0]
    found.sort(key=lambda item: -item[1])  # stable: header order among equal weights
    return found


def name_of(element: str) -> str:
    """An element's media type or coding, without parameters."""
    return element.split(";", 1)[0]


def _qvalue(text: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        return 0.0
    return weight if math.isfinite(weight) and 0 <= weight <= 1 else 0.0
