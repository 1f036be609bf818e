"""Pricing, as shipped in release 1.1: the bulk discount starts at ten items (1.0.1, folded in).

A quote is the catalogue price times the quantity, less 10% for orders of
ten or more (bulk), less 5% for members (loyalty), rounded half-up to the
cent.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")
CATALOGUE = {"widget": Decimal("9.99"), "gadget": Decimal("24.50")}
BULK_QTY = 10  # orders of this many items or more get the bulk rate
BULK_RATE = Decimal("0.10")
MEMBER_RATE = Decimal("0.05")


def bulk_discount(qty: int) -> Decimal:
    """The bulk rate for an order of ``qty`` items."""
    return BULK_RATE if qty >= BULK_QTY else Decimal(0)


def loyalty_discount(customer: str) -> Decimal:
    """The loyalty rate of ``customer``: members (ids starting with ``m``) get 5%."""
    return MEMBER_RATE if customer.startswith("m") else Decimal(0)


def quote(item: str, qty: int, loyalty: Decimal) -> Decimal:
    """The price of ``qty`` of ``item`` at the loyalty rate ``loyalty``, to the cent."""
    subtotal = CATALOGUE[item] * qty
    total = subtotal * (1 - bulk_discount(qty)) * (1 - loyalty)
    return total.quantize(CENT, rounding=ROUND_HALF_UP)
