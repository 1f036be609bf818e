"""Control socket: a real Unix socket server and client, peer uid checks, robustness."""

from __future__ import annotations

import errno
import inspect
import json
import os
import socket
import stat
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from pychild import run_python_json

from hotpatch import VersionConflict
from hotpatch.agent._control import MAX_REQUEST_BYTES, AgentBusy, request
from hotpatch.agent._control_server import ControlServer


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short private folder: Unix socket addresses are limited to 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="hp-") as folder:
        yield Path(folder)


class Recorder:
    """A handler that records what it was given and echoes it back."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, Any], int]] = []

    def __call__(self, req: dict[str, Any], uid: int) -> dict[str, Any]:
        self.calls.append((req, uid))
        return {"ok": True, "echo": req, "uid": uid}


@pytest.fixture
def served(sock_dir: Path) -> Iterator[tuple[ControlServer, Recorder]]:
    handler = Recorder()
    server = ControlServer(sock_dir / "control.sock", handler)
    server.start()
    yield server, handler
    server.stop()


def _raw(path: Path) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(30)
    client.connect(str(path))
    return client


def _to_the_end(client: socket.socket) -> bytes:
    """What the server sent, up to its close. A peer that closes with bytes of ours still
    unread (a client dribbling bytes) ends the stream with ECONNRESET, after all it sent,
    instead of an end of file."""
    data = b""
    while True:
        try:
            chunk = client.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def _exchange(client: socket.socket, line: bytes) -> dict[str, Any]:
    client.sendall(line)
    data = b""
    while not data.endswith(b"\n"):
        chunk = client.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    return json.loads(data)


def test_socket_is_mode_0600_and_the_handler_sees_the_peer_uid(served) -> None:
    server, handler = served
    st = server.path.lstat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert sorted(p.name for p in server.path.parent.iterdir()) == ["control.sock"]

    answer = request(server.path, {"cmd": "status", "n": [1, "ü"]})
    assert answer == {"ok": True, "echo": {"cmd": "status", "n": [1, "ü"]}, "uid": os.getuid()}
    assert handler.calls == [({"cmd": "status", "n": [1, "ü"]}, os.getuid())]


def test_mode_is_0600_whatever_the_umask(sock_dir: Path) -> None:
    old = os.umask(0)
    try:
        with ControlServer(sock_dir / "c.sock", Recorder()) as server:
            assert stat.S_IMODE(server.path.lstat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_a_uid_that_is_not_allowed_is_refused_before_the_handler_runs(sock_dir: Path) -> None:
    handler = Recorder()
    other = os.getuid() + 4242
    with ControlServer(sock_dir / "c.sock", handler, allowed_uids={other}) as server:
        answer = request(server.path, {"cmd": "rollback"})
    assert answer["ok"] is False
    assert answer["error_type"] == "PermissionDenied"
    assert f"uid {os.getuid()} may not control" in answer["error"]
    assert handler.calls == []


def test_by_default_the_own_uid_and_root_are_allowed(sock_dir: Path) -> None:
    server = ControlServer(sock_dir / "c.sock", Recorder())
    assert server.allowed_uids == {os.getuid(), 0}


def test_malformed_requests_get_bad_request_and_the_server_keeps_serving(served) -> None:
    server, handler = served
    with _raw(server.path) as client:
        for line in (b"not json\n", b"[1, 2]\n", b"\xff\xfe\n", b'{"cmd": \n'):
            answer = _exchange(client, line)
            assert answer["ok"] is False
            assert answer["error_type"] == "BadRequest"
        # Blank lines are skipped; the same connection still works.
        assert _exchange(client, b'\n{"cmd": "status"}\n')["echo"] == {"cmd": "status"}
    assert request(server.path, {"cmd": "history"})["ok"] is True
    assert [c[0] for c in handler.calls] == [{"cmd": "status"}, {"cmd": "history"}]


def test_a_request_over_the_size_limit_is_refused(served) -> None:
    server, _ = served
    with _raw(server.path) as client:
        client.sendall(b'{"cmd": "' + b"x" * MAX_REQUEST_BYTES + b'"}\n')
        data = client.makefile("rb").readline()
    answer = json.loads(data)
    assert answer["error_type"] == "BadRequest"
    assert "longer than" in answer["error"]
    assert request(server.path, {"cmd": "status"})["ok"] is True


def test_handler_errors_become_answers(sock_dir: Path) -> None:
    def handler(req: dict[str, Any], uid: int) -> dict[str, Any]:
        if req["cmd"] == "refuse":
            raise VersionConflict("patch 1.0.1 is not newer than 1.0.2", patch="1.0.1")
        if req["cmd"] == "crash":
            raise KeyError("boom")
        if req["cmd"] == "bad":
            return {"ok": True, "value": object()}
        return {"ok": True}

    with ControlServer(sock_dir / "c.sock", handler) as server:
        refused = request(server.path, {"cmd": "refuse"})
        assert refused == {
            "ok": False,
            "error": "patch 1.0.1 is not newer than 1.0.2",
            "error_type": "VersionConflict",
        }
        crashed = request(server.path, {"cmd": "crash"})
        assert crashed["error_type"] == "InternalError"
        assert "KeyError" in crashed["error"]
        assert request(server.path, {"cmd": "bad"})["value"].startswith("<object")
        assert request(server.path, {"cmd": "fine"}) == {"ok": True}


def test_a_stale_socket_file_is_removed(sock_dir: Path) -> None:
    path = sock_dir / "c.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays behind, nobody listens: a crashed agent
    assert stat.S_ISSOCK(path.lstat().st_mode)
    with ControlServer(path, Recorder()) as server:
        assert request(server.path, {"cmd": "status"})["ok"] is True


def test_a_live_socket_refuses_a_second_server(served) -> None:
    server, _ = served
    second = ControlServer(server.path, Recorder())
    with pytest.raises(FileExistsError, match="in use by a running process"):
        second.start()
    assert request(server.path, {"cmd": "status"})["ok"] is True
    second.stop()  # never started: nothing to do


def test_a_path_that_is_not_a_socket_is_left_alone(sock_dir: Path) -> None:
    path = sock_dir / "c.sock"
    path.write_text("precious")
    with pytest.raises(FileExistsError, match="is not a socket"):
        ControlServer(path, Recorder()).start()
    assert path.read_text() == "precious"


def test_stop_unlinks_and_is_idempotent(sock_dir: Path) -> None:
    server = ControlServer(sock_dir / "c.sock", Recorder())
    server.start()
    with pytest.raises(RuntimeError, match="already being served"):
        server.start()
    server.stop()
    server.stop()
    assert not server.path.exists()
    with pytest.raises(FileNotFoundError):
        request(server.path, {"cmd": "status"})
    server.start()  # can serve again
    assert request(server.path, {"cmd": "status"})["ok"] is True
    server.stop()


def test_stop_never_removes_a_successors_socket(sock_dir: Path) -> None:
    path = sock_dir / "c.sock"
    first = ControlServer(path, Recorder())
    first.start()
    path.unlink()  # e.g. an operator cleaned up; a new agent took the path
    with ControlServer(path, Recorder()):
        first.stop()
        assert request(path, {"cmd": "status"})["ok"] is True


def test_stop_disconnects_idle_clients(served) -> None:
    server, _ = served
    with _raw(server.path) as idle:
        assert _exchange(idle, b'{"cmd": "status"}\n')["ok"] is True
        server.stop()
        assert idle.recv(1) == b""


def test_concurrent_clients_are_served_at_the_same_time(sock_dir: Path) -> None:
    clients = 6
    barrier = threading.Barrier(clients, timeout=30)

    def handler(req: dict[str, Any], uid: int) -> dict[str, Any]:
        barrier.wait()  # only passes when every client is inside the handler at once
        return {"ok": True, "n": req["n"]}

    answers: dict[int, dict[str, Any]] = {}
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            answers[n] = request(path, {"cmd": "status", "n": n})
        except BaseException as exc:
            errors.append(exc)

    path = sock_dir / "c.sock"
    with ControlServer(path, handler):
        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert {n: a["n"] for n, a in answers.items()} == {n: n for n in range(clients)}


class _HandlerAfterStop:
    """The server's lock, except that a request thread takes it only after stop() has.

    It orders the one race that matters deterministically: a handler that sent
    its answer before the server stopped, and files its connection after
    stop() closed the connections it knew of.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.stop_passed = threading.Event()

    def __enter__(self) -> None:
        if threading.current_thread().name == "hotpatch-control request":
            self.stop_passed.wait(10)
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
        if threading.current_thread() is threading.main_thread():
            self.stop_passed.set()


def _open_descriptors() -> set[str]:
    # Numbers, not a count: another thread of the test process may close one meanwhile.
    return set(os.listdir("/proc/self/fd"))


def test_a_connection_answered_while_stopping_is_closed(sock_dir: Path) -> None:
    server = ControlServer(sock_dir / "c.sock", Recorder())
    lock = _HandlerAfterStop()
    server._lock = lock  # type: ignore[assignment]
    before = _open_descriptors()
    server.start()
    assert request(server.path, {"cmd": "status"})["ok"] is True  # its handler is still going
    server.stop()
    for thread in threading.enumerate():
        if thread.name == "hotpatch-control request":
            thread.join(15)
    assert lock.stop_passed.is_set()
    # Not kept for a next request that no serving thread would ever read.
    assert _open_descriptors() - before == set()


def _paused_at(function: Any, text: str, until: threading.Event, reached: threading.Event) -> Any:
    """A trace function for the threads started next: each pauses in ``function`` before its
    line holding ``text`` runs, until ``until`` is set (``reached`` says one got there)."""
    lines, first = inspect.getsourcelines(function)
    line = first + next(i for i, source in enumerate(lines) if text in source)
    code = function.__code__

    def local(frame: FrameType, event: str, arg: object) -> Any:
        if event == "line" and frame.f_lineno == line:
            reached.set()
            until.wait(10)
            # Tracing ends in this thread: on 3.13 a thread that ends still traced leaves
            # every function instrumented for line events (the health gate sees them).
            sys.settrace(None)
            return None
        return local

    def trace(frame: FrameType, event: str, arg: object) -> Any:
        return local if frame.f_code is code else None

    return trace


def test_a_handler_waking_the_server_as_it_stops_ends_without_an_error(sock_dir: Path) -> None:
    """A handler that kept its connection (before the stop) wakes the serving thread just as
    stop() lets go of the wake-up pair: it finds the pair closed, and ends without an
    exception (one in a request thread fails CI as a warning)."""
    server = ControlServer(sock_dir / "c.sock", Recorder())
    stopped, waking = threading.Event(), threading.Event()
    failures: list[BaseException | None] = []
    hook = threading.excepthook
    threading.excepthook = lambda args: failures.append(args.exc_value)
    try:
        server.start()
        threading.settrace(_paused_at(ControlServer._wake, ".send(", stopped, waking))
        try:
            assert request(server.path, {"cmd": "status"})["ok"] is True
        finally:
            threading.settrace(None)  # type: ignore[arg-type]
        assert waking.wait(10)  # its handler is about to send the wake-up
        server.stop()
        stopped.set()
        for thread in threading.enumerate():
            if thread.name == "hotpatch-control request":
                thread.join(15)
    finally:
        stopped.set()
        threading.excepthook = hook
        server.stop()
    assert failures == []


def test_a_connected_client_holds_no_handler_between_requests(sock_dir: Path) -> None:
    server = ControlServer(sock_dir / "c.sock", Recorder(), max_clients=1)
    with server, _raw(server.path) as first:
        assert _exchange(first, b'{"cmd": "status"}\n')["ok"] is True
        # The first client stays connected, idle: the one handler is free for others.
        assert request(server.path, {"cmd": "status"})["ok"] is True
        assert _exchange(first, b'{"cmd": "history"}\n')["ok"] is True


def test_a_socket_path_longer_than_sun_path_works(tmp_path: Path) -> None:
    folder = tmp_path / ("d" * 60) / ("e" * 60)
    folder.mkdir(parents=True)
    path = folder / "control.sock"
    assert len(os.fsencode(path)) > 108
    with ControlServer(path, Recorder()) as server:
        assert stat.S_IMODE(path.lstat().st_mode) == 0o600
        assert request(server.path, {"cmd": "status"})["uid"] == os.getuid()
        with pytest.raises(FileExistsError, match="in use"):
            ControlServer(path, Recorder()).start()
    assert not path.exists()


def _fake_server(path: Path, answer: bytes) -> threading.Thread:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.makefile("rb").readline()
                conn.sendall(answer)

    thread = threading.Thread(target=serve)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (b"", "without a complete answer"),
        (b'{"ok": tr', "without a complete answer"),
        (b"garbage\n", "not JSON"),
        (b"[1]\n", "not an object"),
    ],
)
def test_the_client_reports_broken_answers(sock_dir: Path, answer: bytes, why: str) -> None:
    path = sock_dir / "fake.sock"
    thread = _fake_server(path, answer)
    with pytest.raises(ConnectionError, match=why):
        request(path, {"cmd": "status"})
    thread.join()


def test_the_client_reports_a_missing_or_dead_socket(sock_dir: Path) -> None:
    with pytest.raises(FileNotFoundError):
        request(sock_dir / "none.sock", {"cmd": "status"})
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_dir / "dead.sock"))
    dead.close()
    with pytest.raises(ConnectionRefusedError):
        request(sock_dir / "dead.sock", {"cmd": "status"})


# -- idle, slow and crowding clients -------------------------------------------------------


def test_idle_clients_never_block_a_request(sock_dir: Path) -> None:
    with ControlServer(sock_dir / "c.sock", Recorder()) as server:
        idle = [_raw(server.path) for _ in range(40)]  # connected, never sending
        try:
            answer = request(server.path, {"cmd": "status"}, timeout=10)
        finally:
            for client in idle:
                client.close()
    assert answer["ok"] is True


def test_an_idle_client_is_disconnected_after_the_idle_timeout(sock_dir: Path) -> None:
    with ControlServer(sock_dir / "c.sock", Recorder(), idle_timeout=0.3) as server:
        with _raw(server.path) as idle:
            idle.settimeout(30)  # a bound for a broken build; the server closes far sooner
            data = idle.makefile("rb").read()
        assert b"idle" in data  # told why, then closed
        assert request(server.path, {"cmd": "status"})["ok"] is True


def test_a_client_dribbling_bytes_is_disconnected_at_the_deadline(sock_dir: Path) -> None:
    with ControlServer(sock_dir / "c.sock", Recorder(), idle_timeout=0.5) as server:
        with _raw(server.path) as slow:
            closed = threading.Event()

            def dribble() -> None:
                for _ in range(3000):  # 1 byte every 10 ms: never idle for long, never done
                    try:
                        slow.sendall(b"x")
                    except OSError:
                        closed.set()
                        return
                    if closed.wait(0.01):
                        return

            writer = threading.Thread(target=dribble)
            writer.start()
            slow.settimeout(30)
            data = _to_the_end(slow)
            closed.set()
            writer.join()
        assert b"did not send a complete request" in data


def test_a_request_after_an_answer_gets_a_fresh_deadline(sock_dir: Path) -> None:
    server = ControlServer(sock_dir / "c.sock", Recorder(), idle_timeout=5)
    with server, _raw(server.path) as client:
        for n in range(3):
            assert _exchange(client, b'{"cmd": "status", "n": %d}\n' % n)["echo"]["n"] == n


def test_requests_beyond_the_handlers_at_work_get_busy(sock_dir: Path) -> None:
    release = threading.Event()
    entered = threading.Event()

    def handler(req: dict[str, Any], uid: int) -> dict[str, Any]:
        if req["cmd"] == "slow":
            entered.set()
            release.wait(30)
        return {"ok": True, "cmd": req["cmd"]}

    with ControlServer(sock_dir / "c.sock", handler, max_clients=1) as server:
        slow: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: slow.update(request(server.path, {"cmd": "slow"})))
        thread.start()
        assert entered.wait(30)
        busy = request(server.path, {"cmd": "status"})
        assert busy["error_type"] == "Busy"
        assert "retry" in busy["error"]
        release.set()
        thread.join()
        assert slow == {"ok": True, "cmd": "slow"}
        assert request(server.path, {"cmd": "status"})["ok"] is True


def test_hundreds_of_concurrent_clients_all_get_an_answer(sock_dir: Path) -> None:
    answers: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(200, timeout=60)

    def client() -> None:
        try:
            start.wait()
            answers.append(request(path, {"cmd": "status"}, timeout=60))
        except BaseException as exc:
            errors.append(exc)

    path = sock_dir / "c.sock"
    with ControlServer(path, Recorder()):
        threads = [threading.Thread(target=client) for _ in range(200)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert len(answers) == 200
    assert all(a["ok"] is True or a["error_type"] == "Busy" for a in answers)


def test_a_full_backlog_is_reported_as_busy(sock_dir: Path) -> None:
    path = sock_dir / "stuck.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stuck:
        stuck.bind(str(path))
        stuck.listen(0)  # never accepts: a wedged process
        waiting = []
        try:
            while True:  # fill the backlog until the kernel says so
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.setblocking(False)
                waiting.append(s)
                try:
                    s.connect(str(path))
                except BlockingIOError:
                    break
            with pytest.raises(AgentBusy, match="busy") as info:
                request(path, {"cmd": "status"}, timeout=1.0)
            assert isinstance(info.value, ConnectionError)
            assert "retry" in str(info.value)
        finally:
            for s in waiting:
                s.close()


def test_stop_closes_idle_connections_and_answers_the_one_at_work(sock_dir: Path) -> None:
    entered, release = threading.Event(), threading.Event()

    def handler(req: dict[str, Any], uid: int) -> dict[str, Any]:
        if req["cmd"] == "slow":
            entered.set()
            release.wait(30)
        return {"ok": True}

    server = ControlServer(sock_dir / "c.sock", handler)
    server.start()
    idle = _raw(server.path)
    answer: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: answer.update(request(server.path, {"cmd": "slow"})))
    worker.start()
    assert entered.wait(30)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    assert idle.recv(1) == b""
    release.set()
    worker.join()
    stopper.join()
    idle.close()
    assert answer == {"ok": True}


# In a process of its own dropped to uid 65534 (root is exempt from RLIMIT_NPROC): a
# server whose handler thread cannot be started (RLIMIT_NPROC 0: threads count too).
NO_THREAD = """
import json, os, resource, shutil, socket, sys, tempfile
sys.path[:0] = {paths!r}
from hotpatch.agent._control_server import ControlServer

def fds():
    return sorted(int(fd) for fd in os.listdir("/proc/self/fd"))

def ask(path, to_the_end, client=None):
    if client is None:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(10)
        client.connect(path)
    client.sendall(b'{{"cmd": "status"}}\\n')
    data = b""
    try:  # the answer; to_the_end: and the connection closed by the server
        while to_the_end or not data.endswith(b"\\n"):
            if not (chunk := client.recv(65536)):
                break
            data += chunk
    except TimeoutError:
        return data.decode() + "(timed out)"
    finally:
        if to_the_end:
            client.close()
    return data.decode()

os.setgid(65534)
os.setuid(65534)
folder = tempfile.mkdtemp(prefix="hp-")
path = os.path.join(folder, "c.sock")
server = ControlServer(
    path, lambda req, uid: {{"ok": True}}, allowed_uids={{65534}}, max_clients=1, idle_timeout=60
)
server.start()
soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
kept = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
kept.settimeout(10)
kept.connect(path)
first = ask(path, False, kept)  # the server at work: its descriptors all made
own, adopted = socket.socketpair()  # as the agent's own way to its handler
own.settimeout(10)
server.adopt(adopted)
before = fds()
resource.setrlimit(resource.RLIMIT_NPROC, (0, hard))
refused = [ask(path, True) for _ in range(3)]
after = fds()
own_refused = ask(path, False, own)  # answered, and kept
other = ControlServer(os.path.join(folder, "d.sock"), lambda req, uid: {{"ok": True}})
try:
    other.start()
except OSError as exc:
    unstarted = str(exc)
else:
    unstarted = "started"
unstarted_left = [fds(), os.listdir(folder)]
resource.setrlimit(resource.RLIMIT_NPROC, (soft, hard))
served = ask(path, False, kept)
own_served = ask(path, False, own)
kept.close()
own.close()
server.stop()
shutil.rmtree(folder)
seen = {{"refused": refused, "first": first, "served": served, "before": before, "after": after,
        "unstarted": unstarted, "unstarted_left": unstarted_left,
        "own_refused": own_refused, "own_served": own_served}}
print(json.dumps(seen))
"""


def test_a_request_or_server_no_thread_can_be_started_for_is_refused_and_leaves_nothing() -> None:
    seen = run_python_json(NO_THREAD.format(paths=sys.path))
    for answer in seen["refused"]:  # each answered, then its connection closed
        assert answer.endswith("\n"), f"no answer, or the connection was left open: {answer!r}"
        refusal = json.loads(answer)
        assert refusal["error_type"] == "Busy"
        assert "no thread could be started" in refusal["error"], refusal
        assert "RLIMIT_NPROC" in refusal["error"]
    assert seen["after"] == seen["before"]  # no connection left open in the server
    assert json.loads(seen["first"]) == {"ok": True}
    assert json.loads(seen["served"]) == {"ok": True}  # its slot (the only one) was given back
    # The connection the process keeps for itself is answered so, and kept.
    assert json.loads(seen["own_refused"])["error_type"] == "Busy"
    assert json.loads(seen["own_served"]) == {"ok": True}
    # A server whose serving thread cannot be started leaves no socket, path or descriptor.
    assert seen["unstarted_left"] == [seen["before"], ["c.sock"]]
    assert seen["unstarted"].startswith(f"[Errno {errno.EAGAIN}] ")  # an OSError, as others
    assert "no thread could be started to serve it" in seen["unstarted"]
    assert "RLIMIT_NPROC" in seen["unstarted"]
