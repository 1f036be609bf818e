"""Hot patch 1.0.1: the bulk discount starts at ten items, as the price list says."""

from decimal import Decimal

from shop.pricing import BULK_QTY, BULK_RATE

from hotpatch import Patch

patch = Patch(version="1.0.1", baseline="1.0", summary="Bulk discount from 10 items, not 11")


@patch.replace("shop.pricing:bulk_discount")
def bulk_discount(qty: int) -> Decimal:
    """The bulk rate for an order of ``qty`` items."""
    return BULK_RATE if qty >= BULK_QTY else Decimal(0)
