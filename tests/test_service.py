"""The service side: sockets, preserved state and its rounds, and a service running alone."""

from __future__ import annotations

import http.client
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import hotpatch
from hotpatch import PreservedDict, ServiceError
from hotpatch.service._channel import (
    ENV_BIND,
    ENV_CONTROL,
    ENV_SOCKETS,
    parse_address,
    parse_bind,
    recv_message,
    send_message,
)
from hotpatch.service._listeners import Gate, Listener
from hotpatch.service._rounds import PreservedState
from hotpatch.service._runtime import get_runtime, reset

SERVICE = Path(__file__).parent / "services" / "counter_service.py"


@pytest.fixture(autouse=True)
def fresh_runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts unsupervised, with no runtime; what it opened is closed after."""
    for name in (ENV_SOCKETS, ENV_CONTROL, ENV_BIND):
        monkeypatch.delenv(name, raising=False)
    reset()
    yield
    reset()


def transfer(source: PreservedState, target: PreservedState, *, full: bool) -> int:
    """One round from ``source`` into ``target``, through a real memfd; its size."""
    fd, size, _ = source.take_round(full=full)
    target.apply_round(fd, size)
    return size


def contents(rt: PreservedState) -> dict[str, dict[Any, Any]]:
    state = {name: dict(d) for name, d in rt.names.items()}
    state.update({name: dict(d) for name, d in rt.pending.items()})
    return state


# -- PreservedDict ---------------------------------------------------------------------


def test_every_mutating_method_marks_its_key() -> None:
    d = PreservedDict("s", {"a": 1, "b": 2, "c": 3, "d": 4})
    d["x"] = 1
    del d["a"]
    d.pop("b")
    d.pop("missing", None)
    d.setdefault("y", [])
    d.update({"z": 1}, w=2)
    d |= {"v": 3}
    key, _ = d.popitem()
    assert d._take_dirty() == {"x", "a", "b", "missing", "y", "z", "w", "v", key}
    d.clear()
    assert d == {}
    assert d._take_dirty() == {"c", "d", "x", "y", "z", "w"} - {key}
    d["hits"] = 0
    d._take_dirty()
    d["hits"] += 1
    assert d._take_dirty() == {"hits"}


def test_in_place_changes_are_tracked_only_when_touched() -> None:
    d = PreservedDict("s", {"items": []})
    d["items"].append(1)  # documented: not seen
    assert d._take_dirty() == set()
    d["items"].append(2)
    d.touch("items")
    assert d._take_dirty() == {"items"}


def test_a_preserved_dict_pickles_and_copies_as_a_plain_dict() -> None:
    import pickle

    d = PreservedDict("s", {"a": 1})
    assert type(pickle.loads(pickle.dumps(d))) is dict
    assert type(d.copy()) is dict
    assert repr(d) == "PreservedDict('s', {'a': 1})"


# -- rounds -----------------------------------------------------------------------------------


def test_a_full_round_then_increments_rebuild_the_state_exactly() -> None:
    old, new = PreservedState(), PreservedState()
    counters = old.preserved("counters", lambda: {"hits": 0})
    sessions = old.preserved("sessions", dict)
    sessions.update({f"s{i}": {"user": i} for i in range(50)})
    transfer(old, new, full=True)
    assert contents(new) == contents(old)

    counters["hits"] = 7
    del sessions["s3"]
    sessions["s4"]["user"] = 40
    sessions.touch("s4")
    late = old.preserved("late", lambda: {"k": "v"})  # declared after the first round
    small = transfer(old, new, full=False)
    assert contents(new) == contents(old)
    assert late == {"k": "v"}
    assert small < 2000  # only what changed crossed, not the 50 sessions

    assert transfer(old, new, full=False) < 100  # nothing changed: nearly empty
    assert contents(new) == contents(old)


def test_declared_state_is_taken_from_what_was_received() -> None:
    old, new = PreservedState(), PreservedState()
    old.preserved("counters", dict)["hits"] = 3
    old.preserved("empty", dict)
    transfer(old, new, full=True)
    called = []
    restored = new.preserved("counters", lambda: called.append(1) or {})  # type: ignore[func-returns-value]
    assert restored == {"hits": 3}
    assert called == []  # the factory is for when nothing was preserved
    assert new.preserved("empty", lambda: {"not": "used"}) == {}
    assert new.preserved("counters", dict) is restored
    # Received but never declared: still carried by the next full round.
    other = PreservedState()
    new.pending["undeclared"] = {"x": 1}
    transfer(new, other, full=True)
    assert other.pending["undeclared"] == {"x": 1}


class Midway:
    """A key whose next hash (inside a dict operation) runs ``Midway.action`` once.

    A round run from there lands in the middle of a change: between the
    change and its dirty mark, whichever comes first.
    """

    action: Callable[[], object] | None = None

    def __init__(self, name: str) -> None:
        self.name = name

    def __hash__(self) -> int:
        if (action := Midway.action) is not None:
            Midway.action = None
            action()
        return hash(self.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Midway) and other.name == self.name


@pytest.mark.parametrize(
    "change",
    [
        lambda d, k: d.__setitem__(k, "new"),
        lambda d, k: d.__delitem__(k),
        lambda d, k: d.pop(k),
        lambda d, k: d.setdefault(Midway("fresh"), "new"),
    ],
    ids=["setitem", "delitem", "pop", "setdefault"],
)
def test_a_round_landing_in_the_middle_of_a_change_loses_nothing(
    change: Callable[[PreservedDict, Midway], object],
) -> None:
    old, new = PreservedState(), PreservedState()
    key = Midway("key")
    state = old.preserved("state", lambda: {key: "old"})
    transfer(old, new, full=True)
    Midway.action = lambda: transfer(old, new, full=False)
    change(state, key)
    assert Midway.action is None  # the round did run mid-change
    transfer(old, new, full=False)
    assert contents(new) == contents(old)


def test_rounds_taken_while_threads_write_lose_nothing() -> None:
    old, new = PreservedState(), PreservedState()
    state = old.preserved("state", lambda: {i: [i] for i in range(200)})
    stop = threading.Event()

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            key = rng.randrange(250)
            action = rng.random()
            if action < 0.4:
                state[key] = [seed, rng.random()]
            elif action < 0.5:
                state.pop(key, None)
            elif key in state:
                try:
                    state[key].append(seed)  # in place, then touched
                except KeyError:
                    continue
                state.touch(key)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(2)]
    for thread in threads:
        thread.start()
    try:
        transfer(old, new, full=True)
        for _ in range(20):
            transfer(old, new, full=False)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    transfer(old, new, full=False)  # the final round, after the writers stopped
    assert contents(new) == contents(old)


def test_a_value_that_cannot_be_pickled_is_named_and_kept_dirty() -> None:
    old, new = PreservedState(), PreservedState()
    state = old.preserved("state", dict)
    state["ok"] = 1
    transfer(old, new, full=True)
    state["lock"] = threading.Lock()
    with pytest.raises(ServiceError, match=r"preserved\('state'\) key 'lock' cannot be pickled"):
        old.take_round(full=False)
    state["lock"] = "fixed"
    transfer(old, new, full=False)  # the failed round forgot nothing
    assert contents(new) == {"state": {"ok": 1, "lock": "fixed"}}


def test_a_round_over_the_limit_is_refused() -> None:
    old = PreservedState()
    old.limit = 1000
    old.preserved("big", lambda: {"blob": "x" * 5000})
    with pytest.raises(ServiceError, match=r"larger than the hand-over limit.*--state-mb"):
        old.take_round(full=True)


def test_a_round_is_sealed_shared_memory_not_a_file() -> None:
    old = PreservedState()
    old.preserved("state", lambda: {"a": 1})
    fd, size, records = old.take_round(full=True)
    try:
        assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:hotpatch-state")
        assert records == 3  # full, name, one entry
        assert os.fstat(fd).st_size == size
        with pytest.raises(PermissionError):
            os.write(fd, b"tamper")
    finally:
        os.close(fd)


def test_after_the_final_round_every_change_is_refused_not_lost() -> None:
    old = PreservedState()
    state = old.preserved("state", lambda: {"a": 1, "b": [2]})
    fd, _, _ = old.take_round(full=True)
    os.close(fd)
    old.seal("handed over to the next process")
    changes: list[Callable[[], object]] = [
        lambda: state.__setitem__("a", 2),
        lambda: state.__delitem__("a"),
        lambda: state.pop("a"),
        state.popitem,
        lambda: state.setdefault("new", 0),
        lambda: state.update(a=3),
        lambda: state.__ior__({"a": 4}),
        state.clear,
        lambda: state.touch("b"),
    ]
    for change in changes:
        with pytest.raises(ServiceError, match=r"preserved\('state'\) key .* changed after"):
            change()
    assert state == {"a": 1, "b": [2]}
    assert state.setdefault("a", 9) == 1  # reading through setdefault still works
    late = old.preserved("late", dict)  # declared after the seal: sealed too
    with pytest.raises(ServiceError, match="handed over"):
        late["x"] = 1
    fd, _, records = old.take_round(full=False)
    os.close(fd)
    assert records == 1  # only the late mapping's name: nothing changed
    assert old.changed_since_sealed() == []


# -- the passed sockets while a process stops -------------------------------------------------


def test_a_closed_gate_holds_accepts_and_counts_connections_in_flight() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        gate = Gate()
        listener = Listener(fileno=os.dup(server.fileno()))
        listener.gate = gate
        address = server.getsockname()
        with listener, socket.create_connection(address) as first:
            conn, _ = listener.accept()
            assert gate.in_flight() == 1
            assert not gate.wait_idle(0.05)
            gate.close()
            second = socket.create_connection(address)  # waits in the backlog
            taken: list[object] = []

            def accept() -> None:
                try:
                    taken.append(listener.accept())
                except ConnectionAbortedError as exc:
                    taken.append(exc)

            thread = threading.Thread(target=accept)
            thread.start()
            thread.join(0.3)
            assert thread.is_alive()  # held at the gate, the connection left queued
            listener.setblocking(False)
            with pytest.raises(BlockingIOError):  # an event loop's accept: at once
                listener.accept()
            listener.setblocking(True)
            conn.close()
            assert gate.wait_idle(5.0)
            gate.end()
            thread.join(5.0)
            assert not thread.is_alive()
            assert len(taken) == 1  # it gave up; the queued connection is still there
            assert isinstance(taken[0], ConnectionAbortedError)
            assert "handed its work over" in str(taken[0])
            second.close()
            first.close()
        with socket.create_connection(address):
            unrelated, _ = server.accept()  # the next process would take it
            unrelated.close()


def test_sigterm_is_taken_only_when_the_service_left_it_to_python(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours:
        monkeypatch.setenv(ENV_CONTROL, str(theirs.detach()))
        runtime = get_runtime()  # as under the supervisor: a control channel
        previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            runtime._take_sigterm()
            assert runtime._handles_sigterm()
            reset()  # forgets the runtime, and puts Python's default back
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

            def own(signum: int, frame: object) -> None:
                pass

            signal.signal(signal.SIGTERM, own)  # the service's own: left alone
            get_runtime()._take_sigterm()
            assert signal.getsignal(signal.SIGTERM) is own
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            elsewhere = threading.Thread(target=get_runtime()._take_sigterm)
            elsewhere.start()
            elsewhere.join()
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
            assert "outside the main thread" in caplog.text
        finally:
            reset()
            signal.signal(signal.SIGTERM, previous)


# -- control messages -------------------------------------------------------------------------


def test_messages_carry_fds_and_end_with_none() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        read_end, write_end = os.pipe()
        send_message(ours, {"op": "state", "size": 3}, [read_end])
        os.close(read_end)
        received = recv_message(theirs)
        assert received is not None
        message, fds = received
        assert message == {"op": "state", "size": 3}
        os.write(write_end, b"abc")
        assert os.read(fds[0], 3) == b"abc"
        os.close(fds[0])
        os.close(write_end)
        ours.send(b"[1, 2]")
        with pytest.raises(ServiceError, match="malformed control message"):
            recv_message(theirs)
        ours.close()
        assert recv_message(theirs) is None


@pytest.mark.parametrize("data", [b"{not json", b"[1, 2]", b'{"no": "op"}'])
def test_a_malformed_message_is_refused_and_the_fds_it_carried_are_closed(data: bytes) -> None:
    """Nothing else knows of the descriptors a refused message carried: refusing it closes
    them (the pipe's read end passed is the only one left: writing then finds none)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    read_end, write_end = os.pipe()
    with ours, theirs:
        try:
            socket.send_fds(ours, [data], [read_end])
            os.close(read_end)
            with pytest.raises(ServiceError, match="malformed control message"):
                recv_message(theirs)
            with pytest.raises(BrokenPipeError):
                os.write(write_end, b"x")
        finally:
            os.close(write_end)


# -- addresses and sockets, running alone ------------------------------------------------------


def test_addresses_parse_or_say_how_to_write_them() -> None:
    assert parse_address("127.0.0.1:8000") == ("127.0.0.1", 8000)
    assert parse_address("[::1]:80") == ("::1", 80)
    assert parse_bind("http=localhost:0") == ("http", ("localhost", 0))
    for bad in ("8000", "host:", ":80", "host:99999", "host:http"):
        with pytest.raises(ValueError, match="is not HOST:PORT"):
            parse_address(bad)
    with pytest.raises(ValueError, match="is not NAME=HOST:PORT"):
        parse_bind("a b=127.0.0.1:80")


def test_listen_socket_alone_binds_its_default_once() -> None:
    sock = hotpatch.listen_socket("http", default="127.0.0.1:0")
    assert hotpatch.listen_socket("http") is sock
    assert not sock.get_inheritable()
    with socket.create_connection(sock.getsockname(), timeout=5):
        conn, _ = sock.accept()
        conn.close()


def test_listen_socket_alone_prefers_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    monkeypatch.setenv(ENV_BIND, f"admin=127.0.0.1:1,http=127.0.0.1:{port}")
    sock = hotpatch.listen_socket("http", default="127.0.0.1:0")
    assert sock.getsockname() == ("127.0.0.1", port)


def test_listen_socket_without_any_address_says_what_to_do() -> None:
    with pytest.raises(
        ServiceError, match=r"pass default='127\.0\.0\.1:8000' or set HOTPATCH_BIND"
    ):
        hotpatch.listen_socket("http")


def test_preserved_alone_is_a_fresh_object_from_the_factory() -> None:
    counters = hotpatch.preserved("counters", lambda: {"hits": 0})
    assert isinstance(counters, PreservedDict)
    assert counters == {"hits": 0}
    assert hotpatch.preserved("counters") is counters
    with pytest.raises(TypeError, match="returned a list, not a mapping"):
        hotpatch.preserved("bad", list)  # type: ignore[arg-type]


def test_ready_alone_returns_at_once_but_only_once() -> None:
    hotpatch.ready(drain=lambda timeout: None)
    with pytest.raises(ServiceError, match="already called"):
        hotpatch.ready()


def test_the_service_runs_without_the_supervisor(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, str(SERVICE), "--default-bind", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("serving on 127.0.0.1:"), process.stderr and process.stderr.read()
        port = int(line.split()[2].rsplit(":", 1)[1])
        for expected in (1, 2, 3):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request("GET", "/inc?c=0")
            assert json.loads(connection.getresponse().read())["hits"] == expected
            connection.close()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        assert process.stdout is not None
        assert process.stderr is not None
        process.stdout.close()
        process.stderr.close()


def test_the_final_round_is_written_at_the_descriptor_limit() -> None:
    # The process can make no new descriptor (RLIMIT_NOFILE reached): the final
    # round goes in the memfd kept in reserve; any other round fails as before.
    old = PreservedState()
    counts = old.preserved("counts", dict)
    counts["a"] = 1
    os.close(old.take_round(full=True)[0])  # a round: the reserve is made
    counts["a"] = 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    spare: list[int] = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (_lowest_free_fd(), hard))
        with pytest.raises(OSError, match="Too many open files"):
            old.take_round(full=False)
        fd, size, _ = old.take_round(full=False, final=True)
        spare.append(fd)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    new = PreservedState()
    new.apply_round(spare[0], size)
    assert dict(new.preserved("counts", dict)) == {"a": 2}


def _lowest_free_fd() -> int:
    probe = os.open(os.devnull, os.O_RDONLY)  # the lowest number free
    os.close(probe)
    return probe
