"""The supervisor's failure paths leave nothing behind: no process, no descriptor.

A service process that cannot be watched once started (``pidfd_open`` out of
descriptors, for real: the limit lowered as ``Child.__init__`` starts) is
killed and reaped, its channel closed. A process that passes more descriptors
than the one a state round takes (a buggy or hostile peer, over a real
socket pair) has the others closed; a round it describes unreadably is
closed too, and said so.
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import signal
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from hotpatch.supervisor._child import Child, ChildSpec
from hotpatch.supervisor._handover import Handover
from hotpatch.supervisor._records import StateError, SupervisorConfig

pytestmark = pytest.mark.e2e


def _fds() -> set[int]:
    """This process's open descriptors (not the one that listed them)."""
    return {fd for fd in map(int, os.listdir("/proc/self/fd")) if _is_open(fd)}


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _children() -> set[int]:
    """The processes this one started that are not reaped yet (running or zombies)."""
    pid = os.getpid()
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(child) for child in text.split()}


@pytest.fixture
def no_child_left() -> Iterator[set[int]]:
    """The children before the test; any the test leaves is killed and reaped after it."""
    before = _children()
    yield before
    for pid in _children() - before:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_a_process_that_cannot_be_watched_once_started_is_killed_and_its_channel_closed(
    no_child_left: set[int],
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    init = Child.__init__.__code__

    def no_descriptor_left(frame: FrameType, event: str, _arg: object) -> None:
        if event == "call" and frame.f_code is init:  # started: now none is free
            lowest = min(set(range(max(_fds()) + 2)) - _fds())
            resource.setrlimit(resource.RLIMIT_NOFILE, (lowest, hard))

    async def spawn() -> OSError:
        spec = ChildSpec((sys.executable, "-c", "import time; time.sleep(120)"))
        sys.settrace(no_descriptor_left)
        try:
            Child.spawn(spec, {}, 1)
        except OSError as exc:
            return exc
        finally:
            sys.settrace(None)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        pytest.fail("Child.spawn did not fail")

    before = _fds()
    failure = asyncio.run(spawn())
    assert failure.errno == errno.EMFILE  # pidfd_open, after the process was started
    assert _children() == no_child_left, "the process started is left running"
    assert _fds() == before, "its channel is left open"


# A process that answers the supervisor's pull and drain with its state round, and more.
HOSTILE = """
import os, socket, sys, time
sys.path[:0] = {paths!r}
from hotpatch.service._channel import ENV_CONTROL, recv_message, send_message, write_memfd

channel = socket.socket(fileno=int(os.environ[ENV_CONTROL]))
while (received := recv_message(channel)) is not None:
    message, fds = received
    for fd in fds:
        os.close(fd)
    extra = [os.open(os.devnull, os.O_RDONLY) for _ in range({extra})]
    round = [write_memfd(b"state", "state"), *extra]
    body = {{"size": {size}, "records": 1}}
    if message["op"] == "pull":
        send_message(channel, {{"op": "state", "id": message["id"], **body}}, round)
    elif message["op"] == "drain":
        send_message(channel, {{"op": "handover", "stopped_at": time.monotonic(), **body}}, round)
    for fd in round:
        os.close(fd)
"""


def _handover(argv: tuple[str, ...]) -> Handover:
    return Handover(
        SupervisorConfig(spec=ChildSpec(argv)),
        {},
        on_exit=lambda _child: None,
        on_level=lambda _child: None,
        on_baseline_ready=lambda _child: None,
        on_restart_asked=lambda _child, _why: None,
        on_change=lambda: None,
    )


def _hostile(extra: int, size: str) -> tuple[str, ...]:
    code = textwrap.dedent(HOSTILE).format(paths=sys.path, extra=extra, size=size)
    return (sys.executable, "-c", code)


def test_descriptors_passed_with_a_state_round_beyond_its_own_are_closed(
    no_child_left: set[int],
) -> None:
    async def rounds() -> tuple[set[int], set[int], set[int], int, int]:
        handover = _handover(_hostile(extra=3, size="5"))
        child = Child.spawn(handover.config.spec, {}, 1)
        try:
            before = _fds()
            pulled = await handover.pull(child, full=True)
            after_pull = _fds()
            _, final = await handover.drain(child)
            after_drain = _fds()
            assert final is not None
            assert [c.size for c in handover.chain.chunks] == [5, 5]
            return before, after_pull, after_drain, pulled.fd, final.fd
        finally:
            await child.kill()
            handover.forget(child)
            handover.chain.clear()

    before = _fds()
    held, after_pull, after_drain, pulled, final = asyncio.run(rounds())
    # The supervisor holds each round (one descriptor), and none of the 3 others of each.
    assert after_pull - held == {pulled}
    assert after_drain - held == {pulled, final}
    assert _fds() == before


def test_a_state_round_with_an_unreadable_size_is_closed_and_refused(
    no_child_left: set[int],
) -> None:
    async def rounds() -> tuple[set[int], set[int], StateError | None]:
        handover = _handover(_hostile(extra=0, size='"lots"'))
        child = Child.spawn(handover.config.spec, {}, 1)
        try:
            before = _fds()
            refusal = None
            try:
                await handover.pull(child, full=True)
            except StateError as exc:
                refusal = exc
            _, final = await handover.drain(child)  # the round since the last: lost, said so
            assert final is None
            return before, _fds(), refusal
        finally:
            await child.kill()
            handover.forget(child)

    held, after, refusal = asyncio.run(rounds())
    assert refusal is not None
    assert "without a readable size and record count" in str(refusal)
    assert after == held
