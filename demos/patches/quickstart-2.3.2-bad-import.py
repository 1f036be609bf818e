"""A bad patch for the quickstart demo: it fails at import (a misspelt name).

The agent loads every patch in a short-lived child process first, so this
one is refused (``VerificationFailed``) before anything of it runs in the
service.
"""

from decimal import ROUND_HALF_EVEN, Decimal, quantise  # no such name: ImportError

from hotpatch import Patch

patch = Patch(version="2.3.2", baseline="2.3", summary="Round discounts half-even")


@patch.replace("quickstart_app.pricing:apply_discount")
def apply_discount(price: Decimal, pct: int) -> Decimal:
    """Price after a percentage discount, rounded half-even to the cent."""
    return quantise(price * (100 - pct) / 100, ROUND_HALF_EVEN)
