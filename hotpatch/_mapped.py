"""A sequence read through a function, item by item, where asked."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar, overload

__all__ = ["Mapped"]

S = TypeVar("S")
T = TypeVar("T")


class Mapped(Sequence[T], Generic[S, T]):
    """``items`` (never changed while the view is read) as ``read(item)`` each, made only
    for the items read: O(1) to make, and reading the top reads the top alone."""

    __slots__ = ("_items", "_read")

    def __init__(self, items: Sequence[S], read: Callable[[S], T]) -> None:
        self._items = items
        self._read = read

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> list[T]: ...

    def __getitem__(self, index: int | slice) -> T | list[T]:
        if isinstance(index, slice):
            return [self._read(item) for item in self._items[index]]
        return self._read(self._items[index])

    def __iter__(self) -> Iterator[T]:
        return map(self._read, self._items)

    def __reversed__(self) -> Iterator[T]:
        return map(self._read, reversed(self._items))
