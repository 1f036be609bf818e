"""A bad patch for the quickstart demo: it adds a required parameter.

Every caller written against baseline 2.3 calls ``apply_discount(price, pct)``;
this replacement would make each of those calls fail, so the agent refuses it
(``SignatureIncompatible``) and the service keeps running 2.3.1.
"""

from decimal import ROUND_HALF_UP, Decimal

from hotpatch import Patch

CENT = Decimal("0.01")

patch = Patch(version="2.3.2", baseline="2.3", summary="Prices in a given currency")


@patch.replace("quickstart_app.pricing:apply_discount")
def apply_discount(price: Decimal, pct: int, currency: str) -> Decimal:
    """Price after a percentage discount, in ``currency``."""
    rate = {"EUR": Decimal(1), "USD": Decimal("1.08")}[currency]
    return (price * rate * (100 - pct) / 100).quantize(CENT, rounding=ROUND_HALF_UP)
