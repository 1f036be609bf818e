"""The control socket's wire and its client; the server is ``hotpatch.agent._control_server``.

Wire format: one JSON object per line each way, UTF-8. A connection may carry
several requests in turn. The server answers a line that is not a JSON object
with ``{"ok": false, "error_type": "BadRequest"}`` and keeps serving; a peer
whose uid (``SO_PEERCRED``) is not allowed -- by default only the server's own
uid and root are -- gets ``{"ok": false, "error_type": "PermissionDenied"}``
and is disconnected before anything it sent is read.

A socket path longer than ``sun_path`` allows is reached through its
folder's descriptor (``with_address``), by the server and the client alike.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["MAX_REQUEST_BYTES", "AgentBusy", "exchange", "request", "with_address"]

MAX_REQUEST_BYTES = 1 << 20
MAX_RESPONSE_BYTES = 64 << 20
BUSY_WAIT_S = 5.0  # how long the client keeps trying a backlog that is full
POLL_S = 0.05  # how often a request asks ``unanswerable`` while its answer is awaited
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes with the terminating NUL


# -- paths ------------------------------------------------------------------------------


def with_address(path: Path, action: Callable[[str], object]) -> None:
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


# -- client -----------------------------------------------------------------------------


class AgentBusy(ConnectionError):
    """The control socket's backlog is full: the agent is too busy to take the connection."""


def request(
    path: str | os.PathLike[str],
    payload: dict[str, Any],
    *,
    timeout: float = 30.0,
    unanswerable: Callable[[], OSError | None] | None = None,
) -> dict[str, Any]:
    """Send one request to the control socket at ``path`` and return its answer.

    Raises ``OSError`` (``FileNotFoundError``, ``ConnectionRefusedError``,
    ``TimeoutError``, ``ConnectionError`` for a missing or unreadable answer,
    ``AgentBusy`` when its backlog stays full for ``BUSY_WAIT_S``).
    ``unanswerable``: asked while the request cannot be sent (its peer reads
    none of it: a request larger than the socket's buffer) and while the answer
    is awaited, every ``POLL_S``; an error it returns (the server cannot accept:
    no descriptor left) ends the wait.
    """
    target = Path(path)
    with _connect(target, timeout) as sock:
        return exchange(sock, payload, timeout=timeout, peer=target, unanswerable=unanswerable)


def exchange(
    sock: socket.socket,
    payload: dict[str, Any],
    *,
    timeout: float,
    peer: object,
    unanswerable: Callable[[], OSError | None] | None = None,
) -> dict[str, Any]:
    """Send ``payload`` on a connected ``sock`` and read its answer (see ``request``)."""
    sock.settimeout(timeout)
    data = (json.dumps(payload) + "\n").encode()
    # Refused before it read anything (uid, busy): its answer may still be waiting.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        if unanswerable is None:
            sock.sendall(data)
        else:
            _send_watching(sock, data, timeout, unanswerable)
    line = _answer_line(sock, timeout, unanswerable)
    if not line.endswith(b"\n"):
        msg = f"the process at {peer} closed the connection without a complete answer"
        raise ConnectionError(msg)
    try:
        response = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        msg = f"the process at {peer} answered something that is not JSON: {line[:200]!r}"
        raise ConnectionError(msg) from None
    if not isinstance(response, dict):
        msg = f"the process at {peer} answered a JSON {type(response).__name__}, not an object"
        raise ConnectionError(msg)
    return response


def _send_watching(
    sock: socket.socket, data: bytes, timeout: float, unanswerable: Callable[[], OSError | None]
) -> None:
    """``sendall``, asking ``unanswerable`` each time nothing could be sent for ``POLL_S``:
    a peer that reads none of a large request is found out as soon as a small one's."""
    view = memoryview(data)
    waited = 0.0
    sock.settimeout(POLL_S)
    while view:
        try:
            sent = sock.send(view)
        except TimeoutError:
            problem = unanswerable()
            if problem is not None:
                raise problem from None
            waited += POLL_S
            if waited >= timeout:
                raise
            continue
        view = view[sent:]
        waited = 0.0


def _answer_line(
    sock: socket.socket, timeout: float, unanswerable: Callable[[], OSError | None] | None
) -> bytes:
    if unanswerable is None:
        with sock.makefile("rb") as answers:
            return answers.readline(MAX_RESPONSE_BYTES)
    line = bytearray()
    waited = 0.0
    sock.settimeout(POLL_S)
    while b"\n" not in line and len(line) < MAX_RESPONSE_BYTES:
        problem = unanswerable()
        if problem is not None:
            raise problem
        try:
            chunk = sock.recv(min(65536, MAX_RESPONSE_BYTES - len(line)))
        except TimeoutError:
            waited += POLL_S
            if waited >= timeout:
                raise
            continue
        if not chunk:
            break
        waited = 0.0
        line += chunk
    end = line.find(b"\n")
    return bytes(line[: end + 1] if end >= 0 else line)


def _connect(target: Path, timeout: float) -> socket.socket:
    """A connected socket; a full backlog (``EAGAIN``) is tried again for a while, then busy."""
    give_up = time.monotonic() + min(timeout, BUSY_WAIT_S)
    pause = 0.005
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            with_address(target, sock.connect)
        except BlockingIOError:
            sock.close()
            if time.monotonic() + pause > give_up:
                msg = (
                    f"the agent at {target} is busy: its connection backlog stayed full for "
                    f"{min(timeout, BUSY_WAIT_S):g} s; retry shortly"
                )
                raise AgentBusy(errno.EAGAIN, msg) from None
            time.sleep(pause)
            pause = min(pause * 2, 0.2)
            continue
        except BaseException:
            sock.close()
            raise
        return sock
