"""What the fleet's service answers with: the code the fleet tests patch."""

from __future__ import annotations


def price(cents: int) -> int:
    return cents * 2  # the bug the good patch fixes: +20% tax, not +100%


def healthy() -> bool:
    """What /health and the service's health hook answer (the bad patch says no)."""
    return True
