"""The folder's queue on its own: real files, announcements made by hand, ``take`` in a thread."""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from drops import WAIT_S

from hotpatch.agent import _lateness, _queue
from hotpatch.agent._configmap import Taken
from hotpatch.agent._lateness import TimerLateness
from hotpatch.agent._queue import DropQueue

HELD_S = 0.3  # how long a take that must wait is watched not returning


def source(version: str) -> str:
    return f'from hotpatch import Patch\n\npatch = Patch(version="{version}", baseline="1.0")\n'


class Taking:
    """``queue.take()`` running in a thread of its own."""

    def __init__(self, queue: DropQueue) -> None:
        self.taken: list[str | None] = []
        self._thread = threading.Thread(target=lambda: self.taken.append(queue.take()))
        self._thread.start()

    def result(self, timeout: float = WAIT_S) -> str | None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "take() did not return"
        return self.taken[0]

    def waiting_after(self, seconds: float) -> bool:
        self._thread.join(seconds)
        return self._thread.is_alive()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "patches"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def queue(folder: Path, monkeypatch: pytest.MonkeyPatch) -> DropQueue:
    monkeypatch.setattr(_queue, "HOLD_BACK_S", WAIT_S)
    return DropQueue(
        folder, threading.Condition(), max_bytes=1 << 20, keep=False, taken=Taken(folder)
    )


@pytest.fixture
def announce(queue: DropQueue) -> Callable[..., None]:
    def announce(*names: str) -> None:
        with queue._cond:
            for name in names:
                queue.add(name)
            queue._cond.notify_all()

    return announce


def put(folder: Path, name: str, version: str) -> None:
    """``name`` in the folder, whole, as a rename makes it (not announced: its event in flight)."""
    staged = folder.parent / name
    staged.write_text(source(version))
    staged.rename(folder / name)


def processed(queue: DropQueue, folder: Path, name: str) -> None:
    """What the folder does once a drop is handled: moved out, forgotten."""
    (folder / name).rename(folder.parent / f"{name}.done")
    queue.forget(name)
    queue.current = None


def test_in_a_burst_a_lower_version_that_came_after_the_last_look_is_waited_for(
    queue: DropQueue, folder: Path, announce: Callable[..., None]
) -> None:
    for n in (2, 3, 4):
        put(folder, f"fix-{n}.py", f"1.0.{n}")
    announce("fix-2.py", "fix-3.py", "fix-4.py")
    assert queue.take() == "fix-2.py"  # nothing lower anywhere
    processed(queue, folder, "fix-2.py")
    put(folder, "fix-1.py", "1.0.1")  # in the folder; its announcement late
    taking = Taking(queue)
    assert taking.waiting_after(HELD_S), "fix-3.py was taken before the lower fix-1.py"
    announce("fix-1.py")
    assert taking.result() == "fix-1.py"
    processed(queue, folder, "fix-1.py")
    assert queue.take() == "fix-3.py"
    processed(queue, folder, "fix-3.py")
    assert queue.take() == "fix-4.py"


def test_a_long_burst_is_taken_in_version_order_once_each_while_more_arrive(
    queue: DropQueue, folder: Path, announce: Callable[..., None]
) -> None:
    # The worker looks at the queue without copying it: what other threads add
    # meanwhile is seen at its next look, and nothing is taken twice or skipped.
    first, second = list(range(1, 41)), list(range(41, 81))
    random.Random(16).shuffle(first)
    random.Random(61).shuffle(second)
    for n in first:
        put(folder, f"fix-{n:02d}.py", f"1.0.{n}")
    announce(*(f"fix-{n:02d}.py" for n in first))
    taken = []
    for _ in range(10):
        name = queue.take()
        assert name is not None
        taken.append(name)
        processed(queue, folder, name)
    for n in second:  # announced one by one while the worker takes
        put(folder, f"fix-{n:02d}.py", f"1.0.{n}")
    taking = Taking(queue)
    for n in second:
        announce(f"fix-{n:02d}.py")
    name = taking.result()
    while name is not None:
        taken.append(name)
        processed(queue, folder, name)
        name = queue.take()
    assert taken == [f"fix-{n:02d}.py" for n in range(1, 81)]
    assert len(queue) == 0


def test_a_drop_rewritten_while_it_waits_goes_where_its_new_version_puts_it(
    queue: DropQueue, folder: Path, announce: Callable[..., None]
) -> None:
    # The order is a heap of (version, arrival): a drop whose file changed without a
    # word is sorted in again at its new version when met; one announced again, at
    # the new version, its old entry dropped.
    for name, version in (
        ("a.py", "1.0.5"),
        ("b.py", "1.0.6"),
        ("c.py", "1.0.7"),
        ("d.py", "1.0.8"),
    ):
        put(folder, name, version)
    announce("a.py", "b.py", "c.py", "d.py")
    put(folder, "a.py", "1.0.9")  # replaced, its event not heard
    put(folder, "d.py", "1.0.1")
    announce("d.py")  # replaced and heard
    taken = []
    while (name := queue.take()) is not None:
        taken.append(name)
        processed(queue, folder, name)
    assert taken == ["d.py", "b.py", "c.py", "a.py"]
    assert len(queue) == 0


def test_in_a_burst_a_lower_version_still_being_written_is_waited_for(
    queue: DropQueue, folder: Path, announce: Callable[..., None]
) -> None:
    for n in (2, 3, 4):
        put(folder, f"fix-{n}.py", f"1.0.{n}")
    announce("fix-2.py", "fix-3.py", "fix-4.py")
    assert queue.take() == "fix-2.py"
    processed(queue, folder, "fix-2.py")
    with (folder / "fix-1.py").open("w") as writer:
        writer.write(source("1.0.1"))
        writer.flush()
        taking = Taking(queue)
        assert taking.waiting_after(HELD_S), "fix-3.py was taken while fix-1.py was written"
    announce("fix-1.py")  # closed after writing
    assert taking.result() == "fix-1.py"


def test_a_lower_version_removed_before_it_was_announced_holds_nothing_back(
    queue: DropQueue, folder: Path, announce: Callable[..., None]
) -> None:
    for n in (2, 3, 4):
        put(folder, f"fix-{n}.py", f"1.0.{n}")
    announce("fix-2.py", "fix-3.py", "fix-4.py")
    assert queue.take() == "fix-2.py"
    processed(queue, folder, "fix-2.py")
    put(folder, "fix-1.py", "1.0.1")
    taking = Taking(queue)
    assert taking.waiting_after(HELD_S)
    (folder / "fix-1.py").unlink()  # its writer took it back
    assert taking.result() == "fix-3.py"


def test_a_folder_replaced_in_a_burst_is_listed_until_watched_again(
    queue: DropQueue, folder: Path, announce: Callable[..., None]
) -> None:
    for n in (2, 3, 4):
        put(folder, f"fix-{n}.py", f"1.0.{n}")
    announce("fix-2.py", "fix-3.py", "fix-4.py")
    assert queue.take() == "fix-2.py"  # the folder's changes watched from here
    processed(queue, folder, "fix-2.py")
    # The folder moved away and made again, its drops moved into the new one.
    old = folder.rename(folder.with_name("old"))
    folder.mkdir(mode=0o700)
    for name in ("fix-3.py", "fix-4.py"):
        (old / name).rename(folder / name)
    put(folder, "fix-1.py", "1.0.1")
    taking = Taking(queue)
    assert taking.waiting_after(HELD_S), "the new folder's fix-1.py was not seen"
    with queue._cond:
        queue.rewatch()  # what the folder does once its guard has watched the new one
    assert taking.waiting_after(HELD_S)
    announce("fix-1.py")
    assert taking.result() == "fix-1.py"
    processed(queue, folder, "fix-1.py")
    put(folder, "fix-0.py", "1.0.0")  # seen by the new watch
    taking = Taking(queue)
    assert taking.waiting_after(HELD_S), "fix-3.py was taken before the lower fix-0.py"
    announce("fix-0.py")
    assert taking.result() == "fix-0.py"
    queue.stopped()


def test_a_lower_version_that_came_after_the_take_is_found_before_the_apply(
    queue: DropQueue, folder: Path, announce: Callable[..., None]
) -> None:
    put(folder, "high.py", "1.0.9")
    announce("high.py")
    assert Taking(queue).result() == "high.py"
    assert queue.lower_than("1.0.9") is None
    put(folder, "same.py", "1.0.9")  # not lower: no reason to give way
    put(folder, "newer.py", "1.0.10")
    assert queue.lower_than("1.0.9") is None
    put(folder, "low.py", "1.0.3")  # in the folder, its event still on its way
    assert queue.lower_than("1.0.9") == "low.py"
    announce("same.py", "newer.py", "low.py")
    assert queue.lower_than("1.0.9") == "low.py"
    with queue._cond:
        queue.requeue("high.py")
    assert Taking(queue).result() == "low.py"  # the lower one first, then the rest in order
    processed(queue, folder, "low.py")
    assert Taking(queue).result() in {"high.py", "same.py"}


# -- the settle on a loaded machine -------------------------------------------------------


def _settling(folder: Path, timers: TimerLateness) -> DropQueue:
    """A queue whose settle follows ``timers`` (not the process's own)."""
    return DropQueue(
        folder,
        threading.Condition(),
        max_bytes=1 << 20,
        keep=False,
        taken=Taken(folder),
        timers=timers,
    )


def test_a_late_timer_lengthens_the_settle_and_it_returns_to_its_base_once_on_time(
    folder: Path, announce: Callable[..., None]
) -> None:
    timers = TimerLateness()
    queue = _settling(folder, timers)
    assert queue.settle == _queue.SETTLE_S  # nothing late yet: the base
    timers.note(_lateness.IDLE_S / 2)  # a timer's usual slack: not load
    assert queue.settle == _queue.SETTLE_S
    timers.note(0.02)  # a wait that returned 20 ms late
    assert queue.settle == pytest.approx(_queue.SETTLE_S + 0.04)
    timers.note(1.0)  # however late: at most MAX_EXTRA_S more
    assert queue.settle == pytest.approx(_queue.SETTLE_S + _lateness.MAX_EXTRA_S)
    for _ in range(_lateness.SAMPLES - 1):
        timers.note(0.0)
        assert queue.settle > _queue.SETTLE_S  # the late one is still among the last waits
    timers.note(0.0)  # the last SAMPLES waits on time: the load went
    assert queue.settle == _queue.SETTLE_S


def test_a_thread_holding_the_gil_makes_the_measured_lateness_lengthen_the_settle(
    folder: Path,
) -> None:
    # A real measurement: a thread that never releases the GIL keeps a timed wait from
    # returning until CPython's switch interval has passed (here 100 ms), as a loaded
    # machine keeps a woken thread from running.
    timers = TimerLateness()
    queue = _settling(folder, timers)
    stop = threading.Event()
    spinning = threading.Event()

    def spin() -> None:
        spinning.set()
        while not stop.is_set():
            pass

    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.1)
    busy = threading.Thread(target=spin)
    try:
        busy.start()
        spinning.wait()
        # On a loaded machine the OS may not run the spinning thread while this one
        # waits, and the GIL is free when the wait ends: measure again (a few times).
        for _ in range(5):
            started, timeout = time.monotonic(), 0.001
            assert not threading.Event().wait(timeout)
            timers.waited(started, timeout)
            if timers.lateness > _lateness.IDLE_S:
                break
    finally:
        stop.set()
        busy.join()
        sys.setswitchinterval(interval)
    assert timers.lateness > _lateness.IDLE_S
    assert queue.settle == pytest.approx(
        _queue.SETTLE_S + min(2 * timers.lateness, _lateness.MAX_EXTRA_S)
    )
    assert queue.settle > _queue.SETTLE_S


def test_the_first_names_waiting_are_those_of_the_whole_list(
    queue: DropQueue, folder: Path, announce: Callable[..., None]
) -> None:
    names = [f"fix-{n}.py" for n in (5, 2, 9, 1, 7)]
    for name in names:
        put(folder, name, "1.0." + name.split("-")[1].removesuffix(".py"))
    announce(*names)
    assert queue.names() == names  # by arrival
    assert queue.take() == "fix-1.py"
    assert queue.names() == ["fix-1.py", "fix-5.py", "fix-2.py", "fix-9.py", "fix-7.py"]
    with queue._cond:
        queue.requeue("fix-1.py")  # put back (it waits for a resource): first in line
    queue.current = None
    assert queue.take() == "fix-1.py"
    with queue._cond:
        queue.requeue("fix-1.py")
    whole = queue.names()
    assert whole[:2] == ["fix-1.py", "fix-1.py"]  # the current one, and queued again
    for limit in range(len(whole) + 2):
        assert queue.names(limit) == whole[:limit]
