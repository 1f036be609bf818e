"""Hot patch 2.3.1: round discounted prices half-up instead of truncating."""

from decimal import ROUND_HALF_UP, Decimal

from hotpatch import Patch

CENT = Decimal("0.01")

patch = Patch(version="2.3.1", baseline="2.3", summary="Round discounts half-up")


def quantize(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


@patch.replace("quickstart_app.pricing:apply_discount")
def apply_discount(price: Decimal, pct: int) -> Decimal:
    """Price after a percentage discount, rounded half-up to the cent."""
    return quantize(price * (100 - pct) / 100)
