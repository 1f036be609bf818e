"""Pre-fork workers at their descriptor limit: deliveries, the undo of a refused patch.

Real worker processes (``limited.Service``) lower their own ``RLIMIT_NOFILE``
and fill every descriptor with real open files; the owner delivers through
the workers' real sockets. A good patch is never refused for a worker's
shortage: the worker takes the delivery with the descriptor its control
server keeps for that, or, when it truly cannot, the drop waits naming the
worker, the resource and the fix. An undo across the workers completes
when the owner runs short in the middle of it, and so does a group rollback.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from drops import DropFolder, wait_for
from limited import Service, good_patch, outcome, running

from hotpatch.agent._control import request


@pytest.fixture
def services() -> Iterator[Any]:
    with running() as start:
        yield start


def waits_line(service: Service, name: str) -> str:
    """The owner's log line saying ``name`` waits for a resource."""
    found: list[str] = []

    def said() -> bool:
        found[:] = [line for line in service.logged().splitlines() if f"{name} waits" in line]
        return bool(found)

    wait_for(said, f"the owner to say {name} waits")
    return found[0]


def cannot_accept(worker: Service) -> None:
    """``worker`` holds every descriptor and its limit is lowered below what it holds:
    it truly cannot accept a connection, even with its spare one, until told ``free``."""
    worker.tell("fill 0 0")
    worker.expect("full")
    _, hard = resource.prlimit(worker.process.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(worker.process.pid, resource.RLIMIT_NOFILE, (3, hard))


def applied_everywhere(folder: DropFolder, name: str, *services: Service) -> dict[str, Any]:
    """Wait for ``name`` to be filed as applied; each service then answers ``f 1``.

    Returns the drop's result (its ``workers`` for a test to check further)."""
    where, result = outcome(folder, name)
    logs = [each.logged() for each in services]
    assert (where, result["outcome"]) == ("applied", "applied"), (result, logs)
    for each in services:
        each.tell("f")
        assert each.expect("f") == "f 1"
    return result


def test_a_worker_at_its_descriptor_limit_takes_the_owner_s_delivery(
    tmp_path: Path, services: Any
) -> None:
    # The other worker has no descriptor free at all: its control server accepts the
    # owner's delivery with the descriptor it keeps for that, and applies the patch.
    folder = DropFolder(tmp_path)
    owner, other = services(folder, "workers"), services(folder, "workers")
    other.tell("fill 0 0")
    other.expect("full")
    folder.drop("a.py", good_patch("1.0.1", 1))
    result = applied_everywhere(folder, "a.py", owner, other)
    assert {w["pid"]: w["outcome"] for w in result["workers"]} == {
        owner.process.pid: "applied",
        other.process.pid: "applied",
    }
    other.tell("free")
    other.expect("freed")
    assert owner.finish() == other.finish() == "level 1.0.1"


def test_a_worker_that_truly_cannot_accept_makes_the_drop_wait_naming_it(
    tmp_path: Path, services: Any
) -> None:
    # The other worker's limit is lowered from outside below what it holds (prlimit):
    # no descriptor can be had, its kept one included. The owner's drop waits, saying
    # which worker, what ran out and what to do; it goes in once the worker has some.
    folder = DropFolder(tmp_path)
    owner, other = services(folder, "workers"), services(folder, "workers")
    cannot_accept(other)
    folder.drop("a.py", good_patch("1.0.1", 1))
    line = waits_line(owner, "a.py")
    assert f"worker {other.process.pid}" in line, line
    assert "file descriptors" in line, line
    assert "LimitNOFILE" in line, line
    assert not os.path.lexists(folder.path / "rejected" / "a.py")
    other.tell("free")
    other.expect("freed")
    applied_everywhere(folder, "a.py", owner, other)
    assert owner.finish() == other.finish() == "level 1.0.1"


def test_a_delivery_larger_than_the_socket_buffer_is_given_up_like_a_small_one(
    tmp_path: Path, services: Any
) -> None:
    # The patch is larger than a socket's buffer: sending it to a worker that truly
    # cannot accept never completes. The owner finds that worker out as it does for a
    # small delivery (its request not taken, at its descriptor limit), not only after
    # waiting the whole DELIVER_TIMEOUT_S for the send; the drop waits naming it and
    # goes in once the worker has descriptors again.
    folder = DropFolder(tmp_path)
    owner, other = services(folder, "workers"), services(folder, "workers")
    cannot_accept(other)
    padding = f"PADDING = {'x' * 600_000!r}\n"  # more than a Unix socket's buffer
    folder.drop("a.py", good_patch("1.0.1", 1) + padding)
    line = waits_line(owner, "a.py")
    assert f"worker {other.process.pid} did not take the request" in line, line
    assert "LimitNOFILE" in line, line
    other.tell("free")
    other.expect("freed")
    applied_everywhere(folder, "a.py", owner, other)
    assert owner.finish() == other.finish() == "level 1.0.1"


def test_a_patch_larger_than_a_control_request_reaches_every_worker(
    tmp_path: Path, services: Any
) -> None:
    # A patch file may be up to max_bytes (10 MiB); delivered to a worker it is one
    # control request carrying its text. A 2 MB patch is a good patch: every worker
    # applies it (before: the other worker refused the request as longer than 1 MiB,
    # and the drop was rejected with "fix the patch").
    folder = DropFolder(tmp_path)
    owner, other = services(folder, "workers"), services(folder, "workers")
    padding = f"PADDING = {'x' * 2_000_000!r}\n"
    folder.drop("a.py", good_patch("1.0.1", 1) + padding)
    result = applied_everywhere(folder, "a.py", owner, other)
    assert [w["outcome"] for w in result["workers"]] == ["applied", "applied"], result
    assert owner.finish() == other.finish() == "level 1.0.1"


def test_a_delivery_given_up_is_never_applied_later(tmp_path: Path, services: Any) -> None:
    # The owner gave up on a worker that could not take the delivery; the drop is then
    # removed. When the worker gets descriptors back, the delivery left waiting in its
    # socket's backlog must not go in: every worker stays at the baseline.
    folder = DropFolder(tmp_path)
    owner, other = services(folder, "workers"), services(folder, "workers")
    cannot_accept(other)
    folder.drop("a.py", good_patch("1.0.1", 1))
    waits_line(owner, "a.py")
    (folder.path / "a.py").unlink()
    other.tell("free")
    other.expect("freed")
    wait_for(
        lambda: "left before its request was taken" in other.logged(),
        "the worker to drop the delivery whose sender left",
    )
    for each in (owner, other):
        each.tell("f")
        assert each.expect("f") == "f 0"
    assert owner.finish() == other.finish() == "level"


def test_a_delivery_given_up_is_never_applied_while_its_connection_is_still_open(
    tmp_path: Path, services: Any
) -> None:
    # The owner gives up on a worker that cannot take the delivery, and closes its end;
    # but a child its service forked meanwhile (as ``multiprocessing`` does) still holds
    # the connection, so to the worker its sender looks still there -- as when the worker
    # reads the request in the instant between the owner's decision and its close. The
    # drop is then removed: never tried again. Once the worker has descriptors again it
    # reads that request; it must not apply it: every worker stays at the owner's level,
    # and the worker says loudly what it did not apply and why.
    folder = DropFolder(tmp_path)
    owner, other = services(folder, "workers"), services(folder, "workers")
    owner.tell("fork-hold 4")
    owner.expect("armed")
    cannot_accept(other)
    folder.drop("a.py", good_patch("1.0.1", 1))
    waits_line(owner, "a.py")
    (folder.path / "a.py").unlink()
    other.tell("free")
    other.expect("freed")
    wait_for(
        lambda: "1.0.1" in other.logged(),
        "the worker to take the delivery left in its socket's backlog",
    )
    for each in (owner, other):
        each.tell("f")
        assert each.expect("f") == "f 0", other.logged()
    said = [line for line in other.logged().splitlines() if "NOT applied" in line]
    assert said, other.logged()
    assert f"worker {other.process.pid}: patch 1.0.1" in said[0], said
    assert f"worker {owner.process.pid}, stopped waiting" in said[0], said
    owner.tell("release")
    owner.expect("released")
    assert owner.finish() == other.finish() == "level"


def test_a_delivery_taken_but_not_answered_in_time_is_undone_in_that_worker(
    tmp_path: Path, services: Any
) -> None:
    # The other worker takes the delivery, but applying it hangs past the owner's wait
    # for an answer (deliver_timeout, given 3 s here, not the default 60): the owner gives
    # up on it not knowing whether it went in. It then does: the owner must have it undone
    # there (that version, those bytes), not leave that worker alone on the patch while
    # the drop is refused. The worker's result says which wait ran out, and for how long.
    folder = DropFolder(tmp_path)
    owner = services(folder, "workers", "deliver-timeout=3")
    other = services(folder, "workers", "deliver-timeout=3")
    other.tell("stall")
    other.expect("armed")
    folder.drop("a.py", good_patch("1.0.1", 1))
    wait_for(
        lambda: "gave no answer" in owner.logged() or not (folder.path / "a.py").exists(),
        "the owner to give up waiting for the worker's answer",
    )
    other.tell("unstall")
    other.expect("unstalled")
    where, result = outcome(folder, "a.py")
    for each in (owner, other):
        each.tell("f")
        assert each.expect("f") == "f 0", (result, other.logged())
    assert where == "rejected", (where, result)
    by_pid = {w["pid"]: w for w in result["workers"]}
    assert by_pid[other.process.pid]["taken"] is True, by_pid
    assert "none within deliver_timeout (3 s;" in by_pid[other.process.pid]["reason"], by_pid
    assert by_pid[other.process.pid]["undone"] is True, (by_pid, owner.logged())
    said = [line for line in owner.logged().splitlines() if "without answering" in line]
    assert f"worker {other.process.pid}, which took patch 1.0.1" in said[0], said
    assert "undone there" in said[0], said
    assert owner.finish() == other.finish() == "level"


def test_the_undo_of_a_refused_patch_completes_when_the_owner_runs_short_during_it(
    tmp_path: Path, services: Any
) -> None:
    # Two workers apply the patch, the third refuses it. As the owner undoes it, its
    # load takes every descriptor for two seconds: it cannot list the workers nor
    # reach them. The undo is tried again until it is done: the drop is refused (not
    # held as a shortage with the other worker still running it), every worker at the
    # baseline, and the result says where each worker is.
    folder = DropFolder(tmp_path)
    owner = services(folder, "workers")
    other = services(folder, "workers")
    refusing = services(folder, "workers", "refuse")
    owner.tell("squeeze-undo 2")
    owner.expect("armed")
    folder.drop("a.py", good_patch("1.0.1", 1))
    where, result = outcome(folder, "a.py")
    assert (where, result["outcome"]) == ("rejected", "rejected"), (result, owner.logged())
    assert "waits" not in owner.logged(), owner.logged()
    assert f"worker {refusing.process.pid}" in result["reason"]
    assert "rolled back in the 2" in result["reason"], result["reason"]
    by_pid = {w["pid"]: w for w in result["workers"]}
    assert by_pid[other.process.pid]["undone"] is True, by_pid
    assert by_pid[owner.process.pid]["undone"] is True, by_pid
    for each in (owner, other, refusing):
        each.tell("f")
        assert each.expect("f") == "f 0"
    assert owner.finish() == other.finish() == refusing.finish() == "level"


def test_a_group_rollback_completes_when_the_owner_runs_short_during_it(
    tmp_path: Path, services: Any
) -> None:
    # `hotpatch rollback` through the owner: it rolls back here, then its load takes
    # every descriptor for two seconds, so it can neither list the other workers nor
    # reach them. Both are tried again: the rollback answers for every worker and
    # leaves none of them on the patch.
    folder = DropFolder(tmp_path)
    owner, other = services(folder, "workers"), services(folder, "workers")
    folder.drop("a.py", good_patch("1.0.1", 1))
    where, _ = outcome(folder, "a.py")
    assert where == "applied"
    owner.tell("squeeze-undo 2")
    owner.expect("armed")
    sock = folder.path / ".workers" / f"{owner.process.pid}.sock"
    answer = request(sock, {"cmd": "rollback"}, timeout=120)
    assert answer["ok"] is True, (answer, owner.logged())
    assert answer["versions"] == ["1.0.1"]
    assert sorted(w["index"] for w in answer["workers"]) == sorted(
        [owner.process.pid, other.process.pid]
    )
    for each in (owner, other):
        each.tell("f")
        assert each.expect("f") == "f 0"
    assert owner.finish() == other.finish() == "level"
