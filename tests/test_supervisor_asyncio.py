"""An asyncio service under ``hotpatch run``: the passed socket served by an event loop.

The counter service with ``--server asyncio`` accepts through ``asyncio.start_server``
(a non-blocking accept on the passed socket, from the loop's reader callback):
restarts under load must lose no request and no count there too, alone and
with workers, whichever way the service stops.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_supervisor import Load, Supervised, request, supervise, wait_for
from test_workers import rolling_restart

pytestmark = pytest.mark.e2e

__all__ = ["supervise"]  # the fixture, shared with test_supervisor

ASYNCIO = ("--server", "asyncio")


@pytest.mark.parametrize("drain", ["callback", "sigterm", "none"])
def test_restarts_of_an_asyncio_service_under_load_lose_no_request_and_no_count(
    supervise: Callable[..., Supervised], drain: str
) -> None:
    supervised = supervise(*ASYNCIO, "--drain", drain)
    pids = [supervised.child_pid]
    with Load(supervised.address) as load:
        wait_for(lambda: load.served_by(pids[0]), "a request to the first process")
        for _ in range(3):
            outcome = supervised.restart()
            assert outcome["ok"], outcome
            assert outcome["state"] == "complete", outcome
            pids.append(outcome["new_pid"])
            wait_for(lambda: load.served_by(pids[-1]), "a request to the new process")
    assert set(load.pids) == set(pids)
    load.check(request(supervised.address, "/get")["counters"])
    assert supervised.stop() == 0
    log = supervised.log()
    assert "did not" not in log, log
    assert "lost" not in log, log


@pytest.mark.slow
def test_asyncio_workers_restart_under_load_and_stop_when_told(
    supervise: Callable[..., Supervised],
) -> None:
    supervised = supervise(*ASYNCIO, options=("--workers", "3"), serving=False)
    supervised.wait(
        lambda s: len(s.get("workers", [])) == 3 and all(w["pid"] for w in s["workers"]),
        "3 serving workers",
    )
    with Load(supervised.address, clients=4) as load:
        wait_for(lambda: len(load.pids) == 3, "requests served by every worker")
        rolling_restart(supervised)
    assert load.refused == 0
    assert load.failed == []
    assert supervised.stop() == 0
    log = supervised.log()
    assert "did not" not in log, log
    assert "lost" not in log, log


def test_an_event_loop_left_accepting_through_a_drain_is_told_how_to_stop(
    supervise: Callable[..., Supervised],
) -> None:
    # Relying on SIGTERM (no drain callback), an asyncio service is stopped by hotpatch,
    # but its loop still asks the socket for connections each time one waits (for the
    # next process) and is refused each time: a loop turning at full speed through the
    # drain. Nothing is lost; the log says so and names the fix.
    supervised = supervise(*ASYNCIO, "--drain", "none", options=("--drain-timeout", "20"))
    old = supervised.child_pid
    with ThreadPoolExecutor(max_workers=1) as pool, Load(supervised.address, clients=2) as load:
        wait_for(lambda: load.served_by(old), "a request to the first process")
        slow = pool.submit(request, supervised.address, "/slow?ms=2500")
        wait_for(lambda: request(supervised.address, "/get")["inflight"] >= 2, "a slow request")
        outcome = supervised.restart()
        assert outcome["ok"], outcome
        assert slow.result()["pid"] == old
        wait_for(lambda: load.served_by(outcome["new_pid"]), "a request to the new process")
    load.check(request(supervised.address, "/get")["counters"])
    log = supervised.log()
    said = [line for line in log.splitlines() if "accept" in line and "event loop" in line]
    assert said, log
    assert "drain callback" in said[0], said
