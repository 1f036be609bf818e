"""The control socket: a Unix socket server (mode 0600, peer uid checked) and its client.

Wire format: one JSON object per line each way, UTF-8. A connection may carry
several requests in turn. The server answers a line that is not a JSON object
with ``{"ok": false, "error_type": "BadRequest"}`` and keeps serving; a peer
whose uid (``SO_PEERCRED``) is not allowed -- by default only the server's own
uid and root are -- gets ``{"ok": false, "error_type": "PermissionDenied"}``
and is disconnected before anything it sent is read.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import selectors
import socket
import stat
import struct
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from types import TracebackType
from typing import Any

from hotpatch._errors import PatchError

__all__ = ["ControlServer", "Handler", "request"]

log = logging.getLogger("hotpatch")

Handler = Callable[[dict[str, Any], int], dict[str, Any]]

MAX_REQUEST_BYTES = 1 << 20
MAX_RESPONSE_BYTES = 64 << 20
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes with the terminating NUL
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class ControlServer:
    """Serves ``handler(request, peer_uid) -> response`` on a Unix socket, in daemon threads."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        handler: Handler,
        *,
        allowed_uids: Collection[int] | None = None,
        max_clients: int = 16,
        idle_timeout: float = 60.0,
    ) -> None:
        self.path = Path(path).absolute()
        self.handler = handler
        self.allowed_uids = frozenset({os.getuid(), 0} if allowed_uids is None else allowed_uids)
        self.idle_timeout = idle_timeout
        self._slots = threading.BoundedSemaphore(max_clients)
        self._listener: socket.socket | None = None
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self._thread: threading.Thread | None = None
        self._identity: tuple[int, int] | None = None
        self._clients: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

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
        socket at all; a stale socket left by a dead process is removed.
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
            _with_address(tmp, listener.bind)
            try:
                os.chmod(tmp, 0o600)
                listener.listen(64)
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
        self._identity = (st.st_dev, st.st_ino)
        self._listener = listener
        self._wakeup = socket.socketpair()
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._serve, name=f"hotpatch-control {self.path.name}", daemon=True
        )
        self._thread.start()
        log.info("control socket listening at %s", self.path)

    def stop(self) -> None:
        """Stop accepting, disconnect idle clients, close and unlink the socket. Idempotent."""
        thread, wakeup, listener = self._thread, self._wakeup, self._listener
        if thread is None or wakeup is None or listener is None:
            return
        self._stopping.set()
        with contextlib.suppress(OSError):
            wakeup[1].send(b"x")
        thread.join()
        with self._lock:
            for client in self._clients:
                with contextlib.suppress(OSError):
                    client.shutdown(socket.SHUT_RD)  # a running handler still answers
        listener.close()
        for end in wakeup:
            end.close()
        with contextlib.suppress(OSError):
            st = self.path.lstat()
            if (st.st_dev, st.st_ino) == self._identity:  # never remove a successor's socket
                self.path.unlink()
        self._thread = self._wakeup = self._listener = None

    # -- serving ----------------------------------------------------------------------

    def _serve(self) -> None:
        assert self._listener is not None
        assert self._wakeup is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wakeup[0], selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in selector.select():
                    if key.fileobj is not self._listener or self._stopping.is_set():
                        continue
                    try:
                        conn, _ = self._listener.accept()
                    except OSError:
                        continue
                    self._admit(conn)

    def _admit(self, conn: socket.socket) -> None:
        try:
            pid, uid, _ = _PEERCRED.unpack(
                conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            )
        except OSError:
            conn.close()
            return
        if uid not in self.allowed_uids:
            log.warning(
                "control socket %s: refused a connection from uid %d (pid %d)", self.path, uid, pid
            )
            _send_quietly(
                conn,
                _error(
                    f"uid {uid} may not control this process; connect as uid "
                    f"{os.getuid()} (the service's user) or root",
                    "PermissionDenied",
                ),
            )
            conn.close()
            return
        if not self._slots.acquire(blocking=False):
            _send_quietly(conn, _error("too many control connections; retry shortly", "Busy"))
            conn.close()
            return
        with self._lock:
            self._clients.add(conn)
        threading.Thread(
            target=self._client, args=(conn, uid), name="hotpatch-control client", daemon=True
        ).start()

    def _client(self, conn: socket.socket, uid: int) -> None:
        try:
            conn.settimeout(self.idle_timeout)
            with conn, conn.makefile("rb") as lines:
                while True:
                    line = lines.readline(MAX_REQUEST_BYTES + 1)
                    if not line:
                        return
                    if len(line) > MAX_REQUEST_BYTES:
                        msg = f"request longer than {MAX_REQUEST_BYTES} bytes"
                        _send_quietly(conn, _error(msg, "BadRequest"))
                        return
                    if not line.strip():
                        continue
                    conn.sendall(_encode(self._answer(line, uid)))
        except OSError:
            return  # the client went away or idled out
        finally:
            with self._lock:
                self._clients.discard(conn)
            self._slots.release()

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


def _error(message: str, error_type: str) -> dict[str, Any]:
    return {"ok": False, "error": message, "error_type": error_type}


def _encode(response: dict[str, Any]) -> bytes:
    try:
        return (json.dumps(response, ensure_ascii=False, default=str) + "\n").encode()
    except (TypeError, ValueError) as exc:
        return _encode(_error(f"internal error: response is not JSON: {exc}", "InternalError"))


def _send_quietly(conn: socket.socket, response: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        conn.settimeout(1.0)
        conn.sendall(_encode(response))


# -- paths ------------------------------------------------------------------------------


def _with_address(path: Path, action: Callable[[str], object]) -> None:
    """``action(address)`` for a socket path, even one longer than ``sun_path`` allows."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        action(str(path))
        return
    # Through the folder's descriptor: /proc/self/fd/N/name is short whatever the folder.
    folder = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        action(f"/proc/self/fd/{folder}/{path.name}")
    finally:
        os.close(folder)


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
        _with_address(path, probe.connect)
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


# -- client -----------------------------------------------------------------------------


def request(
    path: str | os.PathLike[str], payload: dict[str, Any], *, timeout: float = 30.0
) -> dict[str, Any]:
    """Send one request to the control socket at ``path`` and return its answer.

    Raises ``OSError`` (``FileNotFoundError``, ``ConnectionRefusedError``,
    ``TimeoutError``, ``ConnectionError`` for a missing or unreadable answer).
    """
    target = Path(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        _with_address(target, sock.connect)
        # Refused before it read anything (uid, busy): its answer may still be waiting.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall((json.dumps(payload) + "\n").encode())
        with sock.makefile("rb") as answers:
            line = answers.readline(MAX_RESPONSE_BYTES)
    if not line.endswith(b"\n"):
        msg = f"the process at {target} closed the connection without a complete answer"
        raise ConnectionError(msg)
    try:
        response = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        msg = f"the process at {target} answered something that is not JSON: {line[:200]!r}"
        raise ConnectionError(msg) from None
    if not isinstance(response, dict):
        msg = f"the process at {target} answered a JSON {type(response).__name__}, not an object"
        raise ConnectionError(msg)
    return response
