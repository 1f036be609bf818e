"""Services that stop on SIGTERM (``hotpatch.ready()`` without ``drain=``) under the supervisor.

Real supervisor, real service processes, real TCP on 127.0.0.1, real clients
in threads: whatever the old process counted reaches the new one, exactly.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import pytest
from test_supervisor import WAIT, Load, Supervised, request, running, supervise, wait_for

__all__ = ["supervise"]  # the fixture, shared with test_supervisor

pytestmark = pytest.mark.e2e

RESTARTS = 5


def restarts_under_load(
    supervised: Supervised, restarts: int, *, failures_allowed: bool = False
) -> tuple[Load, list[int]]:
    """``restarts`` SIGHUPs while four clients count; each restart must hand the state over."""
    pids = [supervised.child_pid]
    with Load(supervised.address) as load:
        wait_for(lambda: load.served_by(pids[0]), "a request to the first process")
        for _ in range(restarts):
            served = sum(load.ok.values())
            outcome = supervised.restart()
            assert outcome["ok"], outcome
            assert outcome["state"] == "complete", outcome
            pids.append(outcome["new_pid"])
            wait_for(lambda: load.served_by(pids[-1]), "a request to the new process")
            wait_for(lambda s=served: sum(load.ok.values()) > s + 50, "requests after it")  # type: ignore[misc]
    if not failures_allowed:
        assert load.failed == []
    return load, pids


@pytest.mark.slow
def test_a_service_on_pythons_default_sigterm_loses_no_count_across_restarts(
    supervise: Callable[..., Supervised],
) -> None:
    # No drain callback and no SIGTERM handler of its own: hotpatch handles the
    # signal, stops the process taking connections, lets the ones in flight
    # finish, hands the last round over, and only then lets the process end.
    supervised = supervise("--drain", "none")
    load, pids = restarts_under_load(supervised, RESTARTS)
    body = request(supervised.address, "/get")
    answered = sum(load.ok.values())
    print(  # the figures the issue asks for (pytest -s shows them)
        f"\nrequests answered {answered}, preserved count {body['counters']['hits']}, "
        f"lost {answered - body['counters']['hits']}, failed {len(load.failed)}, "
        f"restarts {RESTARTS}"
    )
    load.check(body["counters"])
    assert set(load.pids) == set(pids)
    wait_for(lambda: not any(running(pid) for pid in pids[:-1]), "the old processes to exit")
    assert supervised.status()["restarts"] == {"start": 1, "preserving": RESTARTS}


def test_requests_in_flight_when_the_restart_comes_are_finished_and_counted(
    supervise: Callable[..., Supervised],
) -> None:
    # Each /inc works 40 ms before it counts: at every restart some are in flight.
    supervised = supervise("--drain", "none", "--inc-delay-ms", "40")
    load, _ = restarts_under_load(supervised, 3)
    body = request(supervised.address, "/get")
    load.check(body["counters"])  # none failed, every answer counted


def test_a_hasty_drain_callback_gets_refusals_not_silent_losses(
    supervise: Callable[..., Supervised],
) -> None:
    # The drain callback returns before the work in flight is done: that work
    # changes the state after the last round. It used to vanish with the old
    # process; now the change is refused, so its request fails where the client
    # sees it, and what the clients were answered is exactly what was counted.
    supervised = supervise("--drain", "hasty", "--inc-delay-ms", "40")
    load, _ = restarts_under_load(supervised, 3, failures_allowed=True)
    body = request(supervised.address, "/get")
    answered = sum(load.ok.values())
    print(
        f"\nhasty drain: answered {answered}, counted {body['counters']['hits']}, "
        f"refused in flight {len(load.failed)}"
    )
    assert body["counters"]["hits"] == answered
    for client, count in load.ok.items():
        assert body["counters"][f"c{client}"] == count
    assert load.refused == 0
    assert "changed after this process handed its state over" in supervised.log() or not load.failed


def test_stopping_a_service_on_the_default_sigterm_finishes_its_requests(
    supervise: Callable[..., Supervised],
) -> None:
    supervised = supervise("--drain", "none")
    child = supervised.child_pid
    address = supervised.address
    slow: list[dict[str, Any]] = []
    thread = threading.Thread(target=lambda: slow.append(request(address, "/slow?ms=1500")))
    thread.start()
    wait_for(lambda: request(address, "/get")["inflight"] >= 2, "the slow request in flight")
    assert supervised.stop() == 0
    thread.join(WAIT)
    assert len(slow) == 1  # answered, not cut off by the signal
    assert slow[0]["pid"] == child
    assert not running(child)
    assert "did not stop in time" not in supervised.log()


def test_a_sigterm_sent_to_the_service_itself_replaces_it_with_its_state(
    supervise: Callable[..., Supervised],
) -> None:
    # Someone else's SIGTERM (kill PID): hotpatch's handler asks the supervisor
    # to replace the process, which it does as for SIGHUP -- nothing lost.
    supervised = supervise("--drain", "none")
    old = supervised.child_pid
    with Load(supervised.address, clients=2) as load:
        wait_for(lambda: load.served_by(old), "a request to the first process")
        os.kill(old, signal.SIGTERM)
        status = supervised.wait(
            lambda s: s["last_restart"]["old_pid"] == old and s["state"] == "running",
            "the process to be replaced",
        )
        outcome = status["last_restart"]
        assert outcome["ok"], outcome
        assert (outcome["kind"], outcome["state"]) == ("preserving", "complete")
        assert outcome["reason"] == f"process {old} got SIGTERM"
        wait_for(lambda: load.served_by(outcome["new_pid"]), "a request to the new process")
    load.check(request(supervised.address, "/get")["counters"])
    wait_for(lambda: not running(old), "the old process to exit")
    assert "exited with status" not in supervised.log()  # replaced, not recovered
