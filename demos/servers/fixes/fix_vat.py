"""Round VAT half up instead of truncating: vat(1999) is 400, not 399."""

from tax import RATE_PERCENT

from hotpatch import Patch

patch = Patch(version="1.0.1", baseline="1.0", summary="Round VAT half up")


@patch.replace("tax:vat")
def vat(cents: int) -> int:
    return (cents * RATE_PERCENT + 50) // 100
