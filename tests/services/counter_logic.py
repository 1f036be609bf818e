"""What the counter service's answers say about its code: the target the supervisor tests patch."""

from __future__ import annotations


def tag() -> str:
    return "base"
