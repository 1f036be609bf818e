"""The vital check's thread: one for check after check, a new one after a check that hung.

``VitalCheck`` runs each check in a thread of its own, so that a patch that
makes filing hang cannot hang the agent. Here real checks write real result
files; a check made to hang (a record whose items wait on an event) times out.
"""

from __future__ import annotations

import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drops import DropFolder

import hotpatch
from hotpatch.agent._vital import VitalCheck

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


def test_checks_one_after_the_other_run_on_one_thread(tmp_path: Path) -> None:
    before = set(vital_threads())
    check = VitalCheck(tmp_path / "scratch", None)
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
        assert "did not finish within 0.3 s" in broken
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
