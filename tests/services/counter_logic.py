"""What the counter service's answers say about its code: the target the supervisor tests patch."""

from __future__ import annotations


def tag() -> str:
    return "base"


def healthy() -> bool:
    """What the service's ``hotpatch_health_check`` hook answers (a test patch may say no)."""
    return True


class Label:
    """A slotted class: a test patch changes its ``__slots__`` through a restart."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def render(self) -> str:
        return self.text
