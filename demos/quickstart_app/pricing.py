"""Pricing, as shipped in baseline 2.3: it truncates discounted prices (the bug)."""

from decimal import ROUND_DOWN, Decimal

CENT = Decimal("0.01")


def apply_discount(price: Decimal, pct: int) -> Decimal:
    """Price after a percentage discount."""
    return (price * (100 - pct) / 100).quantize(CENT, rounding=ROUND_DOWN)
