"""The level as other threads read it: each read a state the level had, never half of a change.

The registry keeps its level and its patches in ``TupleStack``s (a push or a
pop costs the same at any length), read as tuples by any thread without the
registry's lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st

import hotpatch
from hotpatch._results import TupleStack

T = TypeVar("T")

# (items popped, items pushed): a push, a pop, a rollback that puts entries back, a clear
changes = st.lists(
    st.tuples(st.integers(0, 6), st.lists(st.integers(0, 99), max_size=4)), max_size=60
)


@given(changes, st.lists(st.booleans(), min_size=60, max_size=60))
@settings(deadline=None)
def test_a_tuple_stack_reads_as_the_list_it_models(steps, reads):
    stack: TupleStack[int] = TupleStack()
    model: list[int] = []
    for (pop, push), read in zip(steps, reads, strict=False):
        stack.change(pop, push)
        del model[max(0, len(model) - pop) :]
        model.extend(push)
        assert len(stack) == len(model)
        assert stack.last(-1) == (model[-1] if model else -1)
        if read:  # the tuple made from the last one read, some changes ago
            assert stack.snapshot() == tuple(model)
    assert stack.snapshot() == tuple(model)
    assert stack.snapshot() is stack.snapshot()  # a state read again is not made again


def _read_while(
    change: Callable[[Callable[[], None]], None], read: Callable[[], T], readers: int = 3
) -> list[T]:
    """What ``readers`` threads read, without a lock, while ``change(between)`` runs;
    ``between()`` returns once every reader has read again (while it waits or after)."""
    done = threading.Event()
    seen: list[list[T]] = [[] for _ in range(readers)]

    def reader(into: list[T]) -> None:
        while not done.is_set():
            into.append(read())
            time.sleep(0)  # let the writer on

    threads = [threading.Thread(target=reader, args=(into,)) for into in seen]

    def between() -> None:
        counts = [len(into) for into in seen]
        while any(len(into) <= n for into, n in zip(seen, counts, strict=True)):
            assert all(t.is_alive() for t in threads), "a reader failed"
            time.sleep(0.0001)

    for thread in threads:
        thread.start()
    try:
        change(between)
    finally:
        done.set()
        for thread in threads:
            thread.join()
    return [s for into in seen for s in into]


def test_a_reader_during_a_change_sees_the_stack_before_it():
    stack: TupleStack[int] = TupleStack(range(10))
    stack.snapshot()
    seen: list[tuple[tuple[int, ...], int, int]] = []

    def read() -> None:  # on another thread, while the change is half done
        seen.append((stack.snapshot(), len(stack), stack.last(-1)))

    def pushed() -> Iterator[int]:
        for item in (100, 101):
            reader = threading.Thread(target=read)
            reader.start()
            reader.join()
            yield item

    stack.change(3, pushed())  # three off, two on
    assert seen == [(tuple(range(10)), 10, 9)] * 2
    assert stack.snapshot() == (*range(7), 100, 101)
    stack.change(len(stack), pushed())  # all of it replaced
    assert seen[2:] == [((*range(7), 100, 101), 9, 101)] * 2
    assert stack.snapshot() == (100, 101)


PATCH = """\
from hotpatch import Patch
patch = Patch(version="1.0.{n}", baseline="1.0", cumulative={cumulative})

@patch.replace("{module}:f")
def f():
    return {n}
"""


def test_readers_of_the_registry_see_levels_it_had(make_module, tmp_path: Path, registry):
    mod = make_module("def f():\n    return 0\n")

    def load(n: int, *, cumulative: bool = False) -> hotpatch.Patch:
        path = tmp_path / f"p{n}.py"
        path.write_text(PATCH.format(n=n, module=mod.__name__, cumulative=cumulative))
        return hotpatch.load_patch(path)

    patches = [load(n) for n in range(1, 61)]
    whole = load(61, cumulative=True)
    registry.apply(patches[0])
    states = [(registry.level, registry.version)]

    def change(between: Callable[[], None]) -> None:
        steps = [
            *(partial(registry.apply, p) for p in patches[1:40]),
            partial(registry.rollback, to="1.0.20"),  # twenty off at once
            partial(registry.apply, whole),  # the whole level replaced by one
            registry.rollback,  # and put back
            *(partial(registry.apply, p) for p in patches[40:]),
        ]
        for step in steps:
            step()
            states.append((registry.level, registry.version))
            between()

    seen = _read_while(change, lambda: (registry.level, registry.patches, registry.version))
    levels = {level for level, _ in states}
    assert len(seen) >= 3 * 62
    for level, applied, version in seen:
        assert level in levels
        assert tuple(p.version for p in applied) in levels
        assert version in {v for _, v in states}
    assert registry.level == (
        *(f"1.0.{n}" for n in range(1, 21)),
        *(f"1.0.{n}" for n in range(41, 61)),
    )
    assert registry.patches == (*patches[:20], *patches[40:])
    assert mod.f() == 60
