"""A patch whose serving process goes away while it is sent or taken, under ``hotpatch run``.

The serving process may be killed from outside (SIGKILL, the OOM killer) at
any moment; a patch on its way to it then is not at fault. If the process
never got it (its channel was already closed: "Broken pipe"), it goes to the
process that replaces it. If the process ended while taking it, the new
process's journal says whether it went in: sent again, it goes in or is
found there -- the drop ends ``applied`` either way, never ``pending`` for a
broken pipe. A patch its serving process ends taking twice is refused,
naming both ends (it may be what ends them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import signal
import socket
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_supervisor import SERVICE, Supervised, processes_with, request, running, wait_for
from test_supervisor_patches import (
    drop,
    journal_level,
    logic_patch,
    result_of,
    supervise,
    watching,
)

from hotpatch.supervisor._child import ChildSpec
from hotpatch.supervisor._records import SupervisorConfig
from hotpatch.supervisor._supervisor import Supervisor

__all__ = ["supervise"]  # the fixture

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # real processes die and are replaced


def hung_up(channel: socket.socket) -> bool:
    """Has the other end of ``channel`` closed (without reading from it)?"""
    poll = select.poll()
    poll.register(channel, select.POLLHUP)
    return any(events & select.POLLHUP for _, events in poll.poll(0))


def test_a_patch_sent_just_after_its_process_died_goes_to_the_next_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The supervisor in this process, so that its loop can be held at the moment
    # it matters: the serving process is SIGKILLed and gone, its control channel
    # closed, and the patch is submitted before the loop has seen the exit -- the
    # supervisor sends it into the closed channel (EPIPE). The chaos run found
    # that drop filed `pending` with "Broken pipe".
    caplog.set_level(logging.INFO, logger="hotpatch")
    tag = f"hotpatch-test-{uuid.uuid4().hex}"
    journal = tmp_path / "journal.json"
    config = SupervisorConfig(
        spec=ChildSpec((sys.executable, str(SERVICE), "--tag", tag)),
        binds=(("http", ("127.0.0.1", 0)),),
        baseline="1.0",
        journal=journal,
        backoff_initial=0.0,
        snapshot_interval=0.0,
    )
    supervisor = Supervisor(config)
    data = logic_patch("1.0.1", "one").encode()
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        run = asyncio.create_task(supervisor.run())
        try:
            async with asyncio.timeout(60):
                while supervisor.serving is None:
                    await asyncio.sleep(0.02)
            first = supervisor.serving
            assert first is not None
            seen["first"] = first.pid
            os.kill(first.pid, signal.SIGKILL)
            # Until its last thread is gone, with its end of the channel (the loop waits too),
            # and it is a zombie: the kernel closes a dying process's descriptors before that.
            wait_for(
                lambda: hung_up(first.channel) and not running(first.pid),
                "the serving process to die",
            )
            assert first.alive  # as far as the supervisor knows
            seen["answer"] = await supervisor.submit_patch(
                "a-1.0.1.py", str(tmp_path / "a-1.0.1.py"), data, "test"
            )
            serving = supervisor.serving
            seen["second"] = serving.pid if serving is not None else None
            address = next(iter(supervisor.listeners.values())).getsockname()[:2]
            seen["get"] = await asyncio.to_thread(request, address, "/get")
        finally:
            supervisor.request_stop("the test is done")
            await run

    try:
        asyncio.run(scenario())
    finally:
        with contextlib.suppress(ProcessLookupError):  # a failed test leaves none behind
            for pid in processes_with(tag):
                os.kill(pid, signal.SIGKILL)
    answer = seen["answer"]
    assert answer["outcome"] == "applied", answer
    assert "Broken pipe" not in str(answer)
    assert seen["second"] not in (None, seen["first"])
    assert seen["get"]["tag"] == "one"
    assert seen["get"]["pid"] == seen["second"]
    assert journal_level(journal) == ["1.0.1"]
    kept = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "a-1.0.1.py" in r.getMessage()
    ]
    assert len(kept) == 1, kept
    assert f"process {seen['first']}" in kept[0]
    assert "sent again" in kept[0]
    wait_for(lambda: not processes_with(tag), "the service processes to end", timeout=10)


def killing_migration(marker: Path, *, once: bool) -> str:
    """A migration that SIGKILLs the serving process taking the patch (``once``: the first)."""
    condition = f"not os.path.exists({str(marker)!r})" if once else "True"
    return f"""
        @patch.migrate("counter_logic")
        def up(module):
            import os, signal
            if {condition}:
                open({str(marker)!r}, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
        """


def test_a_process_killed_while_taking_a_patch_before_recording_it_hands_it_on(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    # The process dies inside the apply, before the journal holds the patch (its
    # migration runs first): the new process has not got it, and is sent it.
    folder, supervised = watching(supervise, tmp_path)
    first = supervised.child_pid
    marker = tmp_path / "killed-once"
    patch = logic_patch("1.0.1", "one", extra=killing_migration(marker, once=True))
    drop(folder, "a-1.0.1.py", patch)
    result = result_of(folder, "a-1.0.1.py", supervised)
    assert (result["dir"], result["outcome"]) == ("applied", "applied"), result
    assert f"process {first} was killed by SIGKILL" in result["reason"], result
    assert marker.exists()
    answer = request(supervised.address, "/get")
    assert (answer["tag"], answer["pid"] != first) == ("one", True)
    assert supervised.status()["patches"]["level"] == ["1.0.1"]
    assert journal_level(folder / ".journal.json") == ["1.0.1"]


DUMPS_KILLS_ONCE = """
    @patch.replace("json:dumps")
    def dumps(obj, *args, **kwargs):
        # The first call after the switch (the level report to the supervisor)
        # kills this process: the journal already holds the patch.
        import json, os, signal
        if not os.path.exists({marker!r}):
            open({marker!r}, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        cls = kwargs.pop("cls", None) or json.JSONEncoder
        return cls(**kwargs).encode(obj)
    """


def test_a_process_killed_after_recording_a_patch_leaves_it_applied_by_the_journal(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    # The process dies after the journal holds the patch, before it answers:
    # the new process replays it, and the drop is applied -- not unchanged, not pending.
    folder, supervised = watching(supervise, tmp_path)
    first = supervised.child_pid
    marker = tmp_path / "killed-once"
    extra = DUMPS_KILLS_ONCE.format(marker=str(marker))
    drop(folder, "a-1.0.1.py", logic_patch("1.0.1", "one", extra=extra))
    result = result_of(folder, "a-1.0.1.py", supervised)
    assert (result["dir"], result["outcome"]) == ("applied", "applied"), result
    assert f"process {first} was killed by SIGKILL" in result["reason"], result
    assert "journal" in result["reason"], result
    assert marker.exists()
    answer = request(supervised.address, "/get")
    assert (answer["tag"], answer["pid"] != first) == ("one", True)
    assert supervised.status()["patches"]["level"] == ["1.0.1"]
    assert journal_level(folder / ".journal.json") == ["1.0.1"]


def test_a_patch_whose_process_ends_each_time_it_takes_it_is_refused(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    folder, supervised = watching(supervise, tmp_path)
    first = supervised.child_pid
    marker = tmp_path / "killed"
    patch = logic_patch("1.0.1", "one", extra=killing_migration(marker, once=False))
    drop(folder, "a-1.0.1.py", patch)
    result = result_of(folder, "a-1.0.1.py", supervised)
    assert (result["dir"], result["outcome"]) == ("rejected", "rejected"), result
    reason = result["reason"]
    assert f"process {first} was killed by SIGKILL" in reason, reason
    assert reason.count("was killed by SIGKILL") == 2, reason
    assert "Broken pipe" not in reason
    third = supervised.wait_serving()["child"]["pid"]
    assert third != first
    answer = request(supervised.address, "/get")
    assert answer["tag"] == "base"
    assert supervised.status()["patches"]["level"] == []
    assert journal_level(folder / ".journal.json") == []
    # A later patch goes in as usual.
    drop(folder, "b-1.0.2.py", logic_patch("1.0.2", "two"))
    result = result_of(folder, "b-1.0.2.py", supervised)
    assert (result["dir"], result["outcome"]) == ("applied", "applied"), result


def test_a_process_that_does_not_answer_a_patch_in_time_does_not_stop_the_supervisor(
    tmp_path: Path,
) -> None:
    # The serving process is stopped (SIGSTOP) when a patch is sent: no answer
    # within the patch timeout. The drop is answered pending, saying why, and the
    # supervisor goes on supervising (it used to fail: "internal error in the
    # supervisor: TimeoutError()", and stop the service).
    tag = f"hotpatch-test-{uuid.uuid4().hex}"
    journal = tmp_path / "journal.json"
    config = SupervisorConfig(
        spec=ChildSpec((sys.executable, str(SERVICE), "--tag", tag)),
        binds=(("http", ("127.0.0.1", 0)),),
        baseline="1.0",
        journal=journal,
        snapshot_interval=0.0,
        patch_timeout=1.0,
    )
    supervisor = Supervisor(config)
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        run = asyncio.create_task(supervisor.run())
        try:
            async with asyncio.timeout(60):
                while supervisor.serving is None:
                    await asyncio.sleep(0.02)
            child = supervisor.serving
            assert child is not None
            seen["pid"] = child.pid
            os.kill(child.pid, signal.SIGSTOP)
            try:
                seen["answer"] = await supervisor.submit_patch(
                    "a-1.0.1.py",
                    str(tmp_path / "a-1.0.1.py"),
                    logic_patch("1.0.1", "one").encode(),
                    "test",
                )
                await asyncio.sleep(0.2)  # the work's end is seen
                seen["stopping"] = supervisor.stopping
            finally:
                os.kill(child.pid, signal.SIGCONT)
            async with asyncio.timeout(30):  # it takes the patch once it runs again
                while child.info.get("level") != ["1.0.1"]:
                    await asyncio.sleep(0.02)
            seen["serving"] = supervisor.serving is child
            seen["answer2"] = await supervisor.submit_patch(
                "b-1.0.2.py",
                str(tmp_path / "b-1.0.2.py"),
                logic_patch("1.0.2", "two").encode(),
                "test",
            )
        finally:
            supervisor.request_stop("the test is done")
            await run

    try:
        asyncio.run(scenario())
    finally:
        for pid in processes_with(tag):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
    answer = seen["answer"]
    assert answer["outcome"] == "pending", answer
    assert f"process {seen['pid']} did not answer" in answer["reason"], answer
    assert seen["stopping"] is False
    assert supervisor.error is None
    assert seen["serving"] is True
    assert seen["answer2"]["outcome"] == "applied", seen["answer2"]
    assert journal_level(journal) == ["1.0.1", "1.0.2"]
