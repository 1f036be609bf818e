"""An apply in flight when the agent stops: finished, filed and journalled, never blamed.

The agent's stop closes its control socket. The check after an apply that
runs meanwhile cannot reach it any more: that is the stop's doing, not the
patch's, so the patch is neither rolled back nor refused, and nothing is
logged at ERROR or above. A drop being processed when the stop begins is
finished first: applied, journalled and filed in ``applied/`` before the stop
returns (SPEC 7: each drop gets an outcome). An agent started again on the
same folder and journal comes back at that level and gives the drop no
second outcome.

Each apply is held in a real migration waiting on an event, while another
thread stops the agent; it is let go once the stop has begun.
"""

from __future__ import annotations

import json
import logging
import os
import textwrap
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from drops import DropFolder, wait_for
from watchdog.observers.inotify_c import InotifyFD

import hotpatch
from hotpatch.agent._control import request
from hotpatch.agent._outcome import RESULT_SUFFIX

HELD = """\
import threading
STARTED = threading.Event()
RELEASE = threading.Event()
MIGRATED = []

def f():
    return 0
"""


def held_patch(module: str, version: str = "1.0.1", value: int = 1) -> str:
    """A patch of ``module.f`` whose migration waits for ``module.RELEASE``."""
    return textwrap.dedent(
        f"""\
        from hotpatch import Patch
        patch = Patch(version={version!r}, baseline="1.0")

        @patch.replace("{module}:f")
        def f():
            return {value}

        @patch.migrate({module!r})
        def up(module):
            module.STARTED.set()
            module.RELEASE.wait(60)
            module.MIGRATED.append({version!r})
        """
    )


@pytest.fixture
def held(make_module: Callable[[str], types.ModuleType]) -> Iterator[types.ModuleType]:
    module = make_module(HELD)
    yield module
    module.RELEASE.set()


def observers() -> set[threading.Thread]:
    """The folder watches' threads running now (watchdog's inotify readers)."""
    return {t for t in threading.enumerate() if isinstance(t, InotifyFD) and t.is_alive()}


def loud(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def said_stopped(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Lines at INFO or WARNING saying the agent stopped while a patch was applied."""
    return [
        r.getMessage()
        for r in caplog.records
        if logging.INFO <= r.levelno <= logging.WARNING
        and "stopped" in r.getMessage()
        and "during" in r.getMessage()
    ]


def results_of(folder: DropFolder, name: str) -> list[str]:
    """Every outcome folder holding a result of ``name``."""
    return [
        where
        for where in ("applied", "rejected", "pending")
        if (folder.path / where / f"{name}{RESULT_SUFFIX}").exists()
    ]


def outcome_events(folder: DropFolder, name: str) -> list[dict[str, object]]:
    log_path = folder.path / ".hotpatch.outcomes.jsonl"
    events = [json.loads(line) for line in log_path.read_text().splitlines() if line]
    return [e for e in events if e.get("event") == "outcome" and e.get("file") == name]


def restart(stopped: hotpatch.Agent, folder: DropFolder) -> hotpatch.Agent:
    """The process "restarts": its code back to the original, the journal as it was; then an
    agent on the same folder and journal."""
    journal = folder.journal.read_bytes()
    assert stopped.registry is not None
    stopped.registry.rollback(to="1.0")
    folder.journal.write_bytes(journal)
    return hotpatch.install("1.0", watch=folder.path, journal=folder.journal)


def assert_at_1_0_1(agent: hotpatch.Agent, held: types.ModuleType) -> None:
    """``agent``'s level is the held patch alone, and its function answers as patched."""
    assert agent.registry is not None
    assert agent.registry.level == ("1.0.1",)
    assert held.f() == 1


def stop_all(*agents: hotpatch.Agent | None) -> None:
    """Stop each agent started, its code put back to the baseline."""
    for running in agents:
        if running is not None:
            running.stop()
            if running.registry is not None and running.registry.level:
                running.registry.rollback(to="1.0")


def test_a_drop_applied_while_the_agent_stops_is_filed_applied_and_journalled(
    tmp_path: Path, held: types.ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hotpatch")
    folder = DropFolder(tmp_path)
    before = observers()
    agent = hotpatch.install("1.0", watch=folder.path, journal=folder.journal)
    again: hotpatch.Agent | None = None
    try:
        watching = observers() - before
        assert watching
        folder.drop("fix.py", held_patch(held.__name__))
        assert held.STARTED.wait(60)  # the apply is in its migration
        stopper = threading.Thread(target=agent.stop)
        stopper.start()
        # The stop has begun: the folder no longer watched (its drop being applied goes on).
        wait_for(lambda: not watching & observers(), "the folder's watch to stop")
        held.RELEASE.set()
        stopper.join(60)
        assert not stopper.is_alive()

        # Finished before the stop returned: applied, journalled, filed.
        assert_at_1_0_1(agent, held)
        assert not os.path.lexists(folder.path / "fix.py")
        assert results_of(folder, "fix.py") == ["applied"]
        assert folder.result("fix.py", "applied")["outcome"] == "applied"
        assert os.path.lexists(folder.path / "applied" / "fix.py")
        journal = folder.journal.read_text()
        assert '"version":"1.0.1"' in journal.replace(" ", "")
        assert loud(caplog) == []
        assert said_stopped(caplog)

        # Started again on the same folder and journal: the same level, no second outcome.
        again = restart(agent, folder)
        assert_at_1_0_1(again, held)
        assert held.MIGRATED == ["1.0.1", "1.0.1"]  # the replay runs the migration again
        assert results_of(folder, "fix.py") == ["applied"]
        assert [e["outcome"] for e in outcome_events(folder, "fix.py")] == ["applied"]
        assert loud(caplog) == []
    finally:
        held.RELEASE.set()
        stop_all(agent, again)


def test_an_apply_asked_through_the_socket_as_the_agent_stops_is_not_blamed_on_the_patch(
    tmp_path: Path, held: types.ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    """``hotpatch apply`` in flight: the stop closes the socket the check after the apply
    asks; the patch stays applied and journalled, its answer says applied."""
    caplog.set_level(logging.INFO, logger="hotpatch")
    folder = DropFolder(tmp_path)
    sock = folder.path / ".hotpatch.sock"
    patch_file = folder.write("fix.py", held_patch(held.__name__))
    agent = hotpatch.install("1.0", watch=folder.path, journal=folder.journal)
    again: hotpatch.Agent | None = None
    answers: list[dict[str, object]] = []
    try:
        client = threading.Thread(
            target=lambda: answers.append(
                request(sock, {"cmd": "apply", "path": str(patch_file)}, timeout=60)
            )
        )
        client.start()
        assert held.STARTED.wait(60)
        agent.stop()  # does not wait for a request in flight: the socket is gone now
        assert not os.path.lexists(sock)
        held.RELEASE.set()
        client.join(60)
        assert not client.is_alive()

        assert len(answers) == 1
        answer = answers[0]
        assert answer["ok"] is True, answer
        assert answer["outcome"] == "applied"
        assert "stopped" in str(answer["reason"])
        assert_at_1_0_1(agent, held)
        assert [h.action for h in agent.registry.history] == ["apply"]  # no rollback
        assert '"version":"1.0.1"' in folder.journal.read_text().replace(" ", "")
        assert loud(caplog) == []
        assert said_stopped(caplog)

        again = restart(agent, folder)
        assert_at_1_0_1(again, held)
        assert loud(caplog) == []
    finally:
        held.RELEASE.set()
        stop_all(agent, again)
