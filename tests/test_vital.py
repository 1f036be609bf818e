"""The vital check's thread: one for check after check, a new one after a check that hung.

``VitalCheck`` runs each check in a thread of its own, so that a patch that
makes filing hang cannot hang the agent. Here real checks write real result
files; a check made to hang (a record whose items wait on an event) times out.
"""

from __future__ import annotations

import gc
import os
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from drops import DropFolder

import hotpatch
from hotpatch.agent._control import request
from hotpatch.agent._control_server import ControlServer
from hotpatch.agent._vital import VITAL_TIMEOUT_S, VitalCheck
from hotpatch.service._patches import WireCheck

NAME = "hotpatch-vital-check"
PATCH = """\
from hotpatch import Patch
patch = Patch(version="1.0.{n}", baseline="1.0")

@patch.replace("{module}:f")
def f():
    return {n}
"""


def vital_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == NAME]


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


class Hangs(dict[str, Any]):
    """A record (or message) whose items wait for ``release``: read by the check, on its
    thread, so the check hangs until then."""

    def __init__(self, release: threading.Event, **items: Any) -> None:
        super().__init__(**items)
        self.release = release

    def items(self) -> Any:
        self.release.wait()
        return super().items()


@contextmanager
def unclosed() -> Iterator[Callable[[], list[str]]]:
    """What was left to the garbage collector unclosed so far (sockets, files: their
    ResourceWarning, on any thread), told while the block runs."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)

        def leaked() -> list[str]:
            gc.collect()
            return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]

        yield leaked


def test_checks_one_after_the_other_run_on_one_thread(tmp_path: Path) -> None:
    before = set(vital_threads())
    check = VitalCheck(tmp_path / "scratch", None, timeout=VITAL_TIMEOUT_S)
    try:
        for n in range(20):
            assert check({"outcome": "applied", "version": f"1.0.{n}"}) is None
        assert len(set(vital_threads()) - before) == 1
    finally:
        check.close()
    assert set(vital_threads()) <= before  # stopped and joined


def test_a_check_that_hangs_is_left_to_its_thread_and_the_next_gets_a_new_one(
    tmp_path: Path,
) -> None:
    before = set(vital_threads())
    release = threading.Event()

    class Hangs(dict[str, Any]):
        def items(self) -> Any:  # read by the check, on its thread
            release.wait()
            return super().items()

    # Only the check that hangs is given a short time: the others write and fsync a file,
    # which a busy disk can make take longer than that.
    check = VitalCheck(tmp_path / "scratch", None, timeout=60)
    try:
        assert check({"outcome": "applied"}) is None
        first = set(vital_threads()) - before
        check.timeout = 0.3
        broken = check(Hangs(outcome="applied"))
        check.timeout = 60
        assert broken is not None
        assert "did not finish within vital_timeout (0.3 s;" in broken
        assert check({"outcome": "applied"}) is None  # on a new thread
        assert check({"outcome": "applied"}) is None  # and on that one again
        now = set(vital_threads()) - before
        assert len(now) == 2
        assert first <= now  # the hung one, still in its check
        release.set()  # the hung check returns: its thread ends, never used again
        deadline = time.monotonic() + 10
        while first & set(vital_threads()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not first & set(vital_threads())
        assert check({"outcome": "applied"}) is None
        assert len(set(vital_threads()) - before) == 1
    finally:
        release.set()
        check.close()
    assert set(vital_threads()) <= before


def test_an_agent_without_a_control_socket_ends_its_check_thread_when_it_stops(
    tmp_path: Path, make_module: Callable[[str], types.ModuleType]
) -> None:
    target = make_module("def f():\n    return 0\n")
    paths = DropFolder(tmp_path)
    before = set(vital_threads())
    agent = hotpatch.install("1.0", watch=paths.path, control_socket=False, verify=False)
    try:
        for n in (1, 2):
            paths.drop(f"fix-{n}.py", PATCH.format(module=target.__name__, n=n))
            paths.filed(f"fix-{n}.py")
        assert target.f() == 2
        assert len(set(vital_threads()) - before) == 1  # the same for both checks
    finally:
        agent.stop()
        assert agent.registry is not None
        agent.registry.rollback(to="1.0")
    assert set(vital_threads()) <= before


def test_a_check_that_hangs_closes_the_spare_connection_it_was_left_once_it_returns(
    tmp_path: Path,
) -> None:
    """The check timed out while the agent's spare connection to its own socket was its to
    use: our end is left to its thread, closed there once the check returns, never left
    to the garbage collector (a ResourceWarning, an error under CI's warning filter)."""
    release = threading.Event()
    before = set(vital_threads())
    with unclosed() as leaked:
        server = ControlServer(tmp_path / "c.sock", lambda req, uid: {"ok": True})
        server.start()
        check = VitalCheck(tmp_path / "scratch", server.path, timeout=VITAL_TIMEOUT_S)
        try:
            check.served_by(server)  # the spare connection, adopted by the server
            assert check({"outcome": "applied"}) is None
            hung = set(vital_threads()) - before
            check.timeout = 0.3  # for the check that hangs only
            broken = check(Hangs(release, outcome="applied"))
            check.timeout = VITAL_TIMEOUT_S
            assert broken is not None
            assert "did not finish within vital_timeout (0.3 s;" in broken
            assert leaked() == []  # not dropped while the thread may still use it
            release.set()  # the check returns: its thread closes what it was left
            for thread in hung:
                thread.join(10)
            assert not hung & set(vital_threads())
            check.reserve()  # a new spare connection for the next check
            assert check({"outcome": "applied"}) is None
        finally:
            release.set()
            check.close()
            server.stop()
        assert leaked() == []
    assert set(vital_threads()) <= before


def test_a_supervised_process_check_that_hangs_closes_its_socket_pair_once_it_returns() -> None:
    """The service's check after an apply (a message through a socket pair of the channel's
    kind) timed out: the pair is left to its thread, which closes it once it returns."""
    release = threading.Event()
    before = set(vital_threads())
    wire = WireCheck()
    with unclosed() as leaked:
        try:
            wire.reserve()
            descriptors = open_descriptors()
            assert wire.check({"op": "level"}, timeout=VITAL_TIMEOUT_S) is None
            broken = wire.check(Hangs(release, op="level"), timeout=0.3)
            assert broken is not None
            assert "did not cross a channel within the vital timeout (0.3 s;" in broken
            hung = set(vital_threads()) - before
            assert len(hung) == 1
            assert leaked() == []
            release.set()
            for thread in hung:
                thread.join(10)
            assert not hung & set(vital_threads())
            assert open_descriptors() == descriptors - 2  # the pair, closed by its thread
            wire.reserve()  # a new one for the next check
            assert wire.check({"op": "level"}, timeout=VITAL_TIMEOUT_S) is None
        finally:
            release.set()
            wire.close()
        assert leaked() == []


class HeldApply:
    """A plugin holding an apply (before the patch goes in) until ``release``."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    @hotpatch.hookimpl
    def hotpatch_before_apply(self) -> None:
        self.entered.set()
        self.release.wait(10)


def test_a_check_after_the_agent_stopped_keeps_no_thread_or_descriptor(
    tmp_path: Path, make_module: Callable[[str], types.ModuleType]
) -> None:
    """An apply asked through the control socket goes on after the agent stopped (the stop
    does not wait for a request in flight): its check after the apply runs, and keeps
    neither a thread waiting for a next check nor the descriptors kept for one."""
    target = make_module("def f():\n    return 0\n")
    patch_file = tmp_path / "fix.py"
    patch_file.write_text(PATCH.format(module=target.__name__, n=1))
    held = HeldApply()
    before = set(vital_threads())
    descriptors = open_descriptors()
    answers: list[object] = []
    agent = hotpatch.install(
        "1.0", control_socket=tmp_path / "c.sock", plugins=[held], verify=False
    )
    try:

        def ask() -> None:
            try:
                answers.append(
                    request(tmp_path / "c.sock", {"cmd": "apply", "path": str(patch_file)})
                )
            except OSError as exc:  # the agent stopped under it
                answers.append(exc)

        client = threading.Thread(target=ask)
        client.start()
        assert held.entered.wait(10)
        agent.stop()  # while the apply waits in the plugin
        held.release.set()
        client.join(20)
        assert answers
        ending = set(vital_threads()) - before  # a check's thread that ends, ends now; the
        ending |= {t for t in threading.enumerate() if t.name == "hotpatch-control request"}
        for thread in ending:  # server's request thread closes its connection after answering
            thread.join(15)
        assert set(vital_threads()) <= before
        assert open_descriptors() == descriptors
    finally:
        held.release.set()
        agent.stop()
        assert agent.registry is not None
        if agent.registry.level:
            agent.registry.rollback(to="1.0")
