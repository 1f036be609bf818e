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

__all__ = ["MAX_REQUEST_BYTES", "AgentBusy", "request", "with_address"]

MAX_REQUEST_BYTES = 1 << 20
MAX_RESPONSE_BYTES = 64 << 20
BUSY_WAIT_S = 5.0  # how long the client keeps trying a backlog that is full
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
    path: str | os.PathLike[str], payload: dict[str, Any], *, timeout: float = 30.0
) -> dict[str, Any]:
    """Send one request to the control socket at ``path`` and return its answer.

    Raises ``OSError`` (``FileNotFoundError``, ``ConnectionRefusedError``,
    ``TimeoutError``, ``ConnectionError`` for a missing or unreadable answer,
    ``AgentBusy`` when its backlog stays full for ``BUSY_WAIT_S``).
    """
    target = Path(path)
    with _connect(target, timeout) as sock:
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
