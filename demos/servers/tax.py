"""The code both example apps share, with the bug the patch in fixes/ corrects."""

RATE_PERCENT = 20


def vat(cents: int) -> int:
    """VAT on ``cents``, in cents. The bug: it truncates (1999 -> 399) instead of rounding (400)."""
    return cents * RATE_PERCENT // 100
