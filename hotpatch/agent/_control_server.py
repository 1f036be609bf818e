"""The control socket's server: a Unix socket (mode 0600, peer uid checked) answering requests.

The wire format and the client are ``hotpatch.agent._control``'s; here, one
thread accepts and reads for every connection, and a complete request goes to
a handler thread (``ControlServer``).

Out of descriptors, the server still takes one connection at a time: it keeps
a descriptor for that (``SpareFds``), gives it up to accept, serves that one
request and closes the connection, then takes the descriptor again (a pre-fork
worker at its limit still takes the owner's delivery). A connection that
waited in the backlog while the server could not accept, and whose client
left meanwhile, is not served: its client gave up on it (an owner that could
not deliver a patch there sends it again later, or not at all).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import logging
import math
import os
import secrets
import select
import selectors
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from hotpatch._errors import PatchError
from hotpatch._shortage import SpareFds
from hotpatch.agent._control import MAX_REQUEST_BYTES, with_address

__all__ = ["ControlServer", "Handler"]

log = logging.getLogger("hotpatch")

Handler = Callable[[dict[str, Any], int], dict[str, Any]]

IDLE_TIMEOUT_S = 5.0  # to send each complete request, from connecting or the last answer
ANSWER_TIMEOUT_S = 30.0  # for a client to take its answer
ACCEPT_PAUSE_S = 0.1  # out of descriptors: accepting waits this long before trying again
BACKLOG = 512  # connections the kernel queues while the serving thread catches up
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class ControlServer:
    """Serves ``handler(request, peer_uid) -> response`` on a Unix socket, in daemon threads.

    One thread accepts connections and reads requests for all of them (a
    selector): a connection costs a descriptor, not a thread, so idle clients
    never keep another one out. A complete request line goes to a thread of
    its own, at most ``max_clients`` at a time (beyond that: ``Busy``, retry).
    A connection must send each complete request within ``idle_timeout`` of
    connecting or of its last answer, or it is told so and closed; beyond
    ``max_connections`` the connection closest to that deadline makes room.
    A request line longer than ``max_request_bytes`` is refused (``BadRequest``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        handler: Handler,
        *,
        allowed_uids: Collection[int] | None = None,
        max_clients: int = 16,
        max_connections: int = 256,
        idle_timeout: float = IDLE_TIMEOUT_S,
        max_request_bytes: int = MAX_REQUEST_BYTES,
    ) -> None:
        self.path = Path(path).absolute()
        self.max_request_bytes = max_request_bytes
        self.handler = handler
        self.allowed_uids = frozenset({os.getuid(), 0} if allowed_uids is None else allowed_uids)
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_clients)
        self._max_clients = max_clients
        self._listener: socket.socket | None = None
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self._thread: threading.Thread | None = None
        self._identity: tuple[int, int] | None = None
        self._idle: dict[socket.socket, _Connection] = {}  # waiting for a request (serve thread)
        self._working: set[socket.socket] = set()  # a handler thread answers them
        self._returned: collections.deque[_Connection] = collections.deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._short: str | None = None  # accept() is out of descriptors: why
        self._short_at = 0.0  # when it last failed so (time.monotonic())
        self._spare = SpareFds()  # given up to accept one connection when none is left
        self._said: set[str] = set()  # what was logged of running short, once each

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        """Bind (mode 0600 from the first moment it is reachable) and serve in a daemon thread.

        Refuses (``FileExistsError``) when ``path`` is a live socket or not a
        socket at all; a stale socket left by a dead process is removed. Raises
        ``OSError`` (``EAGAIN``) when no thread can be started to serve it;
        whatever way it fails, nothing of it is left (socket, path, descriptors).
        """
        if self._thread is not None:
            msg = f"control socket {self.path} is already being served"
            raise RuntimeError(msg)
        _clear_stale(self.path)
        # Bound under a temporary name, restricted, then linked into place: the
        # final path never exists with a looser mode, and link() will not replace
        # a socket another server created meanwhile.
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with_address(tmp, listener.bind)
            try:
                os.chmod(tmp, 0o600)
                listener.listen(BACKLOG)
                try:
                    os.link(tmp, self.path)
                except FileExistsError:
                    _clear_stale(self.path)  # raises if a live server got there first
                    os.link(tmp, self.path)
            finally:
                tmp.unlink(missing_ok=True)
            st = self.path.lstat()
        except BaseException:
            listener.close()
            raise
        listener.setblocking(False)
        self._spare.try_reserve()
        self._identity = (st.st_dev, st.st_ino)
        self._listener = listener
        self._stopping.clear()
        thread = threading.Thread(
            target=self._serve, name=f"hotpatch-control {self.path.name}", daemon=True
        )
        try:
            self._wakeup = socket.socketpair()
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": nothing of it is left
            self._unbind()
            msg = (
                f"control socket {self.path}: no thread could be started to serve it "
                f"({exc}; the user's processes and threads at RLIMIT_NPROC, ulimit -u, or "
                "out of memory)"
            )
            # pthread_create's EAGAIN, which Python does not pass on: an OSError, as every
            # other way start() can fail (a caller making the socket again handles those).
            raise OSError(errno.EAGAIN, msg) from exc
        except BaseException:  # no descriptor for the wakeup pair: nothing of it is left
            self._unbind()
            raise
        self._thread = thread
        log.info("control socket listening at %s", self.path)

    def _unbind(self) -> None:
        """Undo a start that could not be completed: the socket, its path, the descriptors."""
        if self._listener is not None:
            self._listener.close()
        for end in self._wakeup or ():
            end.close()
        self._spare.release()
        with contextlib.suppress(OSError):
            st = self.path.lstat()
            if (st.st_dev, st.st_ino) == self._identity:
                self.path.unlink()
        self._listener = self._wakeup = None

    def stop(self) -> None:
        """Stop accepting, disconnect idle clients, close and unlink the socket. Idempotent.

        A request being handled is still answered; its connection closes after.
        """
        thread, wakeup, listener = self._thread, self._wakeup, self._listener
        if thread is None or wakeup is None or listener is None:
            return
        self._stopping.set()
        self._wake()
        thread.join()
        with self._lock:
            for returned in self._returned:  # answered while the serving thread ended
                returned.sock.close()
            self._returned.clear()
            for conn in self._working:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RD)  # its handler still answers
        listener.close()
        for end in wakeup:
            end.close()
        self._spare.release()
        with contextlib.suppress(OSError):
            st = self.path.lstat()
            if (st.st_dev, st.st_ino) == self._identity:  # never remove a successor's socket
                self.path.unlink()
        self._thread = self._wakeup = self._listener = None

    @property
    def serving(self) -> bool:
        """Started, and ``path`` still names this server's socket (not removed or replaced)."""
        if self._thread is None:
            return False
        try:
            st = self.path.lstat()
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._identity

    def accept_short(self, since: float) -> str | None:
        """Why ``accept()`` failed for want of descriptors at ``since`` (``time.monotonic()``)
        or later, if it has not accepted a connection since."""
        why = self._short
        return why if why is not None and self._short_at >= since else None

    def adopt(self, sock: socket.socket) -> None:
        """Serve ``sock``, one end of a socket pair of this process's, as a connection.

        It is read, handled and answered as any other, and never idles out: the
        process's own way to its handler (the vital check after an apply) that
        needs no new descriptor when no connection can be accepted. Closed when
        the server stops, like every connection.
        """
        sock.setblocking(False)
        with self._lock:  # as a handler's connection: closed here or by stop(), never lost
            serving = self._thread is not None and not self._stopping.is_set()
            if serving:
                self._returned.append(_Connection(sock, os.getuid(), kept=True))
        if serving:
            self._wake()
        else:
            sock.close()

    # -- the serving thread: accept, read, time out -------------------------------------

    def _serve(self) -> None:
        assert self._listener is not None
        assert self._wakeup is not None
        listener, wakeup = self._listener, self._wakeup[0]
        wakeup.setblocking(False)
        paused_until: float | None = None  # accept() ran out of descriptors: wait a little
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(wakeup, selectors.EVENT_READ)
            try:
                while not self._stopping.is_set():
                    now = time.monotonic()
                    if paused_until is not None and now >= paused_until:
                        selector.register(listener, selectors.EVENT_READ)
                        paused_until = None
                    if not self._spare.held:  # given up for a connection that is closed now
                        self._spare.try_reserve()
                    for key, _ in selector.select(self._timeout(now, paused_until)):
                        if self._stopping.is_set():
                            break
                        if key.fileobj is listener:
                            if not self._accept(listener, selector):
                                selector.unregister(listener)
                                paused_until = time.monotonic() + ACCEPT_PAUSE_S
                        elif key.fileobj is wakeup:
                            with contextlib.suppress(OSError):
                                wakeup.recv(4096)
                        else:
                            self._read(key.data, selector)
                    self._take_back(selector)
                    self._expire(selector)
            finally:
                for conn in list(self._idle.values()):
                    self._close(conn, selector)

    def _timeout(self, now: float, paused_until: float | None) -> float | None:
        deadlines = [c.deadline for c in self._idle.values() if not c.kept]
        if paused_until is not None:
            deadlines.append(paused_until)
        return max(0.0, min(deadlines) - now) if deadlines else None

    def _accept(self, listener: socket.socket, selector: selectors.BaseSelector) -> bool:
        """Admit every waiting connection; ``False`` when out of descriptors (pause accepting).

        Out of descriptors, the spare one is given up for one connection (served once)."""
        late = self._short is not None  # these waited while the server could not accept
        while True:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                return True
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return True
                spared = self._accept_spared(listener)
                if spared is None:
                    self._out_of_descriptors(exc)
                    return False
                self._admit(spared, selector, spared=True, late=True)
                return True  # the next one waits for the spare descriptor to be back
            if self._short is not None:
                log.warning("control socket %s: accepting connections again", self.path)
                self._short = None
                self._said.clear()
            self._admit(conn, selector, late=late)

    def _accept_spared(self, listener: socket.socket) -> socket.socket | None:
        """One connection accepted with the spare descriptor given up for it, if it can be."""
        if not self._spare.release():
            return None
        try:
            conn, _ = listener.accept()
        except OSError:
            return None
        if "spare" not in self._said:  # once, as the error when none can be accepted
            self._said.add("spare")
            log.warning(
                "control socket %s: out of descriptors; taking one connection at a time "
                "with the descriptor kept for that",
                self.path,
            )
        self._short = "out of descriptors (one connection at a time is taken with a spare)"
        self._short_at = time.monotonic()
        return conn

    def _out_of_descriptors(self, exc: OSError) -> None:
        if "none" not in self._said:  # once, not at each try every ACCEPT_PAUSE_S
            self._said.add("none")
            log.error(
                "control socket %s: cannot accept a connection: %s; "
                "clients wait in the backlog meanwhile",
                self.path,
                exc.strerror or exc,
            )
        self._short = f"{exc.strerror or exc} (errno {exc.errno})"
        self._short_at = time.monotonic()

    def _admit(
        self,
        conn: socket.socket,
        selector: selectors.BaseSelector,
        *,
        spared: bool = False,
        late: bool = False,
    ) -> None:
        try:
            pid, uid, _ = _PEERCRED.unpack(
                conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            )
        except OSError:
            conn.close()
            return
        conn.setblocking(False)
        if uid not in self.allowed_uids:
            log.warning(
                "control socket %s: refused a connection from uid %d (pid %d)", self.path, uid, pid
            )
            message = (
                f"uid {uid} may not control this process; connect as uid "
                f"{os.getuid()} (the service's user) or root"
            )
            _send_now(conn, _error(message, "PermissionDenied"))
            conn.close()
            return
        others = [c for c in self._idle.values() if not c.kept]
        if len(others) >= self.max_connections:  # make room: the nearest deadline goes
            oldest = min(others, key=lambda c: c.deadline)
            _send_now(oldest.sock, _error("too many control connections; closed", "Busy"))
            self._close(oldest, selector)
        self._wait_for_request(_Connection(conn, uid, spared=spared, late=late), selector)

    def _wait_for_request(self, conn: _Connection, selector: selectors.BaseSelector) -> None:
        conn.deadline = math.inf if conn.kept else time.monotonic() + self.idle_timeout
        self._idle[conn.sock] = conn
        selector.register(conn.sock, selectors.EVENT_READ, conn)
        self._next_request(conn, selector)  # a pipelined request may be there already

    def _read(self, conn: _Connection, selector: selectors.BaseSelector) -> None:
        try:
            chunk = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._close(conn, selector)
            return
        conn.buffer += chunk
        self._next_request(conn, selector)

    def _next_request(self, conn: _Connection, selector: selectors.BaseSelector) -> None:
        """Hand a complete request line to a handler thread, or refuse an oversized one."""
        buffer = conn.buffer
        blank = len(buffer) - len(buffer.lstrip())  # blank lines are skipped
        del buffer[:blank]
        end = buffer.find(b"\n")
        if end < 0:
            if len(buffer) > self.max_request_bytes:
                msg = f"request longer than {self.max_request_bytes} bytes"
                _send_now(conn.sock, _error(msg, "BadRequest"))
                self._close(conn, selector)
            return
        if end > self.max_request_bytes:
            msg = f"request longer than {self.max_request_bytes} bytes"
            _send_now(conn.sock, _error(msg, "BadRequest"))
            self._close(conn, selector)
            return
        line = bytes(buffer[: end + 1])
        del buffer[: end + 1]
        if conn.late and _hung_up(conn.sock):
            log.warning(
                "control socket %s: a client left before its request was taken (it waited "
                "while no descriptor was free); not served",
                self.path,
            )
            self._close(conn, selector)
            return
        if not self._slots.acquire(blocking=False):
            message = (
                f"the agent is busy: {self._max_clients} control requests are being handled; "
                "retry shortly"
            )
            if not _send_now(conn.sock, _error(message, "Busy")):
                self._close(conn, selector)
            elif not conn.kept:
                conn.deadline = time.monotonic() + self.idle_timeout
            return
        selector.unregister(conn.sock)
        del self._idle[conn.sock]
        with self._lock:
            self._working.add(conn.sock)
        try:
            threading.Thread(
                target=self._handle, args=(conn, line), name="hotpatch-control request", daemon=True
            ).start()
        except RuntimeError as exc:  # "can't start new thread": RLIMIT_NPROC, memory
            self._unstarted(conn, exc, selector)

    def _unstarted(
        self, conn: _Connection, exc: RuntimeError, selector: selectors.BaseSelector
    ) -> None:
        """A request no thread could be started for: its slot back, told so, closed (one
        the process keeps for itself waits for its next request, as when all are busy)."""
        self._slots.release()
        with self._lock:
            self._working.discard(conn.sock)
        log.error(
            "control socket %s: no thread could be started to handle a request (%s); "
            "it was refused (Busy)",
            self.path,
            exc,
        )
        message = (
            f"the agent cannot serve this request now: no thread could be started to handle it "
            f"({exc}; the user's processes and threads at RLIMIT_NPROC, ulimit -u, or out of "
            "memory); retry shortly"
        )
        if _send_now(conn.sock, _error(message, "Busy")) and conn.kept:
            self._wait_for_request(conn, selector)
        else:
            conn.sock.close()

    def _expire(self, selector: selectors.BaseSelector) -> None:
        now = time.monotonic()
        for conn in [c for c in self._idle.values() if c.deadline <= now]:
            if conn.buffer:
                why = f"did not send a complete request within {self.idle_timeout:g} s"
            else:
                why = f"idle for {self.idle_timeout:g} s"
            _send_now(conn.sock, _error(f"{why}: closed; connect again to ask", "Timeout"))
            self._close(conn, selector)

    def _take_back(self, selector: selectors.BaseSelector) -> None:
        """Connections whose answer was sent wait for their next request again."""
        while True:
            with self._lock:
                if not self._returned:
                    return
                conn = self._returned.popleft()
            if self._stopping.is_set():
                conn.sock.close()
            else:
                self._wait_for_request(conn, selector)

    def _close(self, conn: _Connection, selector: selectors.BaseSelector) -> None:
        if self._idle.pop(conn.sock, None) is not None:
            with contextlib.suppress(KeyError, ValueError):
                selector.unregister(conn.sock)
        conn.sock.close()

    def _wake(self) -> None:
        wakeup = self._wakeup  # once: stop() sets it to None as a handler may wake it
        if wakeup is not None:
            with contextlib.suppress(OSError):  # closed by stop() meanwhile
                wakeup[1].send(b"x")

    # -- a handler thread ---------------------------------------------------------------

    def _handle(self, conn: _Connection, line: bytes) -> None:
        keep = False
        try:
            try:
                answer = _encode(self._answer(line, conn.uid))
            finally:
                self._slots.release()  # answered: the next request may start
            conn.sock.settimeout(ANSWER_TIMEOUT_S)  # a client that never reads its answer
            conn.sock.sendall(answer)
            keep = not conn.spared
        except OSError:
            pass  # the client went away
        finally:
            with self._lock:
                self._working.discard(conn.sock)
                # Under the lock: stop() sets _stopping before it closes what was
                # returned, so a connection is either closed there or here.
                keep = keep and not self._stopping.is_set()
                if keep:
                    conn.sock.setblocking(False)
                    self._returned.append(conn)
            if keep:
                self._wake()
            else:
                conn.sock.close()
                if conn.spared:
                    self._wake()  # the serving thread takes the spare descriptor again

    def _answer(self, line: bytes, uid: int) -> dict[str, Any]:
        try:
            req = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _error(f"request is not JSON: {exc}", "BadRequest")
        if not isinstance(req, dict):
            return _error(f"request must be a JSON object, not {type(req).__name__}", "BadRequest")
        try:
            response: object = self.handler(req, uid)
        except PatchError as exc:
            return _error(str(exc), type(exc).__name__)
        except Exception as exc:
            log.exception("control socket %s: the handler failed on %r", self.path, req)
            return _error(f"internal error: {type(exc).__name__}: {exc}", "InternalError")
        if not isinstance(response, dict):
            msg = f"internal error: the handler answered a {type(response).__name__}"
            return _error(msg, "InternalError")
        return response


@dataclass(slots=True, eq=False)
class _Connection:
    """A client's connection: its uid, what it sent of its next request, and by when.

    ``kept``: one the process made itself (``ControlServer.adopt``): no deadline.
    ``spared``: accepted with the spare descriptor: closed after one answer.
    ``late``: accepted after it waited while the server could not accept.
    """

    sock: socket.socket
    uid: int
    buffer: bytearray = field(default_factory=bytearray)
    deadline: float = 0.0
    kept: bool = False
    spared: bool = False
    late: bool = False


def _error(message: str, error_type: str) -> dict[str, Any]:
    return {"ok": False, "error": message, "error_type": error_type}


def _encode(response: dict[str, Any]) -> bytes:
    try:
        text = json.dumps(response, ensure_ascii=False, default=str)
    except (TypeError, ValueError) as exc:
        return _encode(_error(f"internal error: response is not JSON: {exc}", "InternalError"))
    try:
        return (text + "\n").encode()
    except UnicodeEncodeError:  # a name that is not UTF-8 (surrogate escapes): \\u escapes
        return (json.dumps(response, default=str) + "\n").encode()


def _hung_up(conn: socket.socket) -> bool:
    """Has the client closed its end (what it sent may still be there to read)?"""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return any(events & select.POLLHUP for _, events in poller.poll(0))


def _send_now(conn: socket.socket, response: dict[str, Any]) -> bool:
    """Send a short answer without waiting (the serving thread never blocks on a client)."""
    try:
        conn.sendall(_encode(response))
    except OSError:
        return False
    return True


def _clear_stale(path: Path) -> None:
    """Remove a socket nobody listens on; refuse a live one or anything else."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        msg = (
            f"control socket path {path} exists and is not a socket; "
            "remove it or choose another path"
        )
        raise FileExistsError(errno.EEXIST, msg)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        with_address(path, probe.connect)
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing stale control socket %s", path)
        path.unlink(missing_ok=True)
        return
    except OSError as exc:
        msg = (
            f"control socket {path} exists and cannot be probed ({exc.strerror or exc}); "
            "if no process uses it, remove it"
        )
        raise FileExistsError(errno.EEXIST, msg) from exc
    finally:
        probe.close()
    msg = (
        f"control socket {path} is in use by a running process (another hotpatch agent?); "
        "stop it first, or choose another socket path"
    )
    raise FileExistsError(errno.EADDRINUSE, msg)
