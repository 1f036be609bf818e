"""The passed listening sockets shared by several processes (``hotpatch run --workers N``).

Every worker polls the same socket; a connection wakes them all and one takes
it. The others must go back to waiting, not block in ``accept()`` until the next
connection: a worker so blocked counts the accept as work in flight (its drain
waits the whole drain timeout for it) and never sees that it is told to stop.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from hotpatch.service._listeners import Gate, Listener

WORKER = textwrap.dedent(
    """
    import json, os, sys, threading
    from hotpatch.service._listeners import Gate, Listener

    fd, how = int(sys.argv[1]), sys.argv[2]
    gate = Gate()
    listener = Listener(fileno=fd)
    listener.gate = gate
    taken = 0
    ended = []

    def serve():
        global taken
        while True:
            try:
                conn, _ = listener.accept()
            except ConnectionAbortedError as exc:
                ended.append(str(exc))
                return
            conn.sendall(b"%d" % os.getpid())
            conn.close()
            taken += 1

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    print("ready", flush=True)
    sys.stdin.readline()
    gate.close(hold=how == "hold")
    idle = gate.wait_idle(5.0)
    in_flight = gate.in_flight()
    if how == "hold":
        thread.join(0.2)
        held = thread.is_alive()  # a closed gate holds a blocking accept until the end
        gate.end()
    else:
        held = False
    thread.join(5.0)
    print(json.dumps({"taken": taken, "idle": idle, "in_flight": in_flight, "held": held,
                      "stopped": not thread.is_alive(), "ended": ended}), flush=True)
    """
)

PROCESSES = 4
CONNECTIONS = 80


def start_workers(server: socket.socket, how: str) -> list[subprocess.Popen[str]]:
    fd = server.fileno()
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(fd), how],
            pass_fds=(fd,),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    for worker in workers:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "ready"
    return workers


def connect(address: tuple[str, int]) -> int:
    """One connection, answered by some worker: its pid."""
    with socket.create_connection(address, timeout=30) as conn:
        return int(conn.recv(64))


@pytest.mark.parametrize("how", ["hold", "drain"])
def test_workers_losing_a_connection_to_another_go_back_to_waiting_and_stop_when_told(
    how: str,
) -> None:
    with socket.create_server(("127.0.0.1", 0), backlog=128) as server:
        address = server.getsockname()
        workers = start_workers(server, how)
        try:
            served = [connect(address) for _ in range(CONNECTIONS)]
            reports = []
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write("stop\n")
                worker.stdin.flush()
            for worker in workers:
                assert worker.stdout is not None
                reports.append(json.loads(worker.stdout.readline()))
        finally:
            for worker in workers:
                with worker:  # its pipes closed, its exit waited for
                    worker.kill()
    assert len(set(served)) > 1, served  # the workers competed for the connections
    assert sum(r["taken"] for r in reports) == CONNECTIONS, reports
    for report in reports:
        # Nothing counted in flight once its connections were answered, the accept
        # waiting at the stop given up: held at the gate until the end, or at once.
        assert report["idle"], reports
        assert report["in_flight"] == 0, reports
        assert report["held"] == (how == "hold"), reports
        assert report["stopped"], reports
        assert len(report["ended"]) == 1, reports


def waits_past_a_connection_another_took(listener: Listener, server: socket.socket) -> None:
    """``listener.accept()`` finds the socket readable, then the connection gone (``server``,
    another process, took it): it waits on, and takes the next connection."""
    address = server.getsockname()
    got: list[socket.socket] = []
    thread = threading.Thread(target=lambda: got.append(listener.accept()[0]))
    first = socket.create_connection(address)
    taken, _ = server.accept()  # "another process" took it first
    thread.start()
    thread.join(0.3)
    assert thread.is_alive()  # still waiting: there was nothing to take
    if listener.gate is not None:
        assert listener.gate.in_flight() == 0  # a wait, not work in flight
    second = socket.create_connection(address)
    thread.join(10.0)
    assert not thread.is_alive()
    assert got[0].getpeername() == second.getsockname()
    for each in (got[0], first, taken, second):
        each.close()


def test_a_blocking_accept_keeps_waiting_after_another_process_took_the_connection() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        listener = Listener(fileno=os.dup(server.fileno()))
        listener.gate = Gate()
        with listener:
            waits_past_a_connection_another_took(listener, server)


@pytest.mark.parametrize("closed", [False, True])
def test_a_timed_accept_with_nothing_to_take_times_out_and_is_never_work_in_flight(
    closed: bool,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        address = server.getsockname()
        listener = Listener(fileno=os.dup(server.fileno()))
        gate = listener.gate = Gate()
        with listener, socket.create_connection(address) as first:
            taken, _ = server.accept()  # readable for a moment, then taken by another
            if closed:
                gate.close()  # held: a timed accept still ends at its timeout
            listener.settimeout(0.2)
            seen: list[int] = []

            def look() -> None:  # while the accept waits
                time.sleep(0.1)
                seen.append(gate.in_flight())

            thread = threading.Thread(target=look)
            thread.start()
            with pytest.raises(TimeoutError):
                listener.accept()
            thread.join()
            assert seen == [0]
            assert gate.in_flight() == 0
            taken.close()
            first.close()


def test_a_duplicate_of_a_passed_socket_accepts_freely_and_waits_like_it() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        listener = Listener(fileno=os.dup(server.fileno()))
        listener.gate = Gate()
        listener.gate.close()  # the original takes nothing; its duplicate has no gate
        with listener, listener.dup() as twin:
            assert isinstance(twin, Listener)
            assert twin.gate is None
            waits_past_a_connection_another_took(twin, server)
