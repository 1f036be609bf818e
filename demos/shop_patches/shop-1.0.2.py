"""Hot patch 1.0.2 (a bad one): loyalty rates by member tier -- but the silver tier is missing.

It imports, its targets resolve and its signature matches, so every check
before it goes in passes; once live, it raises ``KeyError`` for every silver
member (odd member numbers). The health gate sees the errors of the patched
function during probation and rolls the patch back.
"""

from decimal import Decimal

from hotpatch import Patch

patch = Patch(version="1.0.2", baseline="1.0", summary="Loyalty rates by member tier")

TIER_RATES = {"gold": Decimal("0.05")}  # "silver" was forgotten


@patch.replace("shop.pricing:loyalty_discount")
def loyalty_discount(customer: str) -> Decimal:
    """The loyalty rate of ``customer``, by tier: gold (even member numbers) or silver."""
    if not customer.startswith("m"):
        return Decimal(0)
    tier = "gold" if int(customer[1:]) % 2 == 0 else "silver"
    return TIER_RATES[tier]
