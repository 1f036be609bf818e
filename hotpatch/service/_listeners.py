"""The supervisor's listening sockets as a service sees them: accepts that can be stopped, and
the connections they gave out, so that a process stopping knows when its work in flight is done.

Under ``hotpatch run`` a process that relies on SIGTERM (``ready()`` without
``drain=``) is stopped by hotpatch itself: its ``Gate`` closes (no thread of
this process takes another connection from the shared sockets; they wait in
the backlog for the next process), then the connections accepted before are
waited for, and only then is the last round of state handed over.
"""

from __future__ import annotations

import select
import socket
import threading
import time
import weakref
from typing import Any

__all__ = ["Gate", "Listener"]

_POLL_MS = 50  # a blocking accept looks at the gate this often while no connection waits
_IDLE_POLL_S = 0.002


class Gate:
    """Whether this process still takes new connections, and those it took that are open."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.closed = False  # no new connections: the process is stopping
        self.ended = False  # it has stopped: accepts still waiting give up
        self._accepting = 0  # threads between the gate and the accept's return
        self._open: weakref.WeakSet[socket.socket] = weakref.WeakSet()

    def close(self) -> None:
        with self._cond:
            self.closed = True

    def end(self) -> None:
        with self._cond:
            self.ended = True
            self._cond.notify_all()

    def enter(self, timeout: float | None) -> None:
        """Let an accept through (the gate open), or hold it until the process ends.

        ``timeout``: the socket's (``0.0`` non-blocking: ``BlockingIOError`` at
        once, so an event loop goes on with its other work).
        """
        with self._cond:
            deadline = None if timeout is None else time.monotonic() + timeout
            while self.closed:
                if self.ended:
                    msg = "this process handed its work over and is ending; accept elsewhere"
                    raise ConnectionAbortedError(msg)
                if timeout == 0.0:
                    raise BlockingIOError(11, "this process is stopping: it accepts nothing")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError("timed out")
                self._cond.wait(left)
            self._accepting += 1

    def leave(self, connection: socket.socket | None) -> None:
        with self._cond:
            self._accepting -= 1
            if connection is not None:
                self._open.add(connection)

    def in_flight(self) -> int:
        """Accepts under way and connections accepted that are still open."""
        with self._cond:
            return self._accepting + sum(1 for c in list(self._open) if c.fileno() != -1)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is in flight (``True``), or ``timeout`` seconds (``False``)."""
        deadline = time.monotonic() + timeout
        while self.in_flight():
            if time.monotonic() >= deadline:
                return False
            time.sleep(_IDLE_POLL_S)
        return True


class Listener(socket.socket):
    """A listening socket passed by the supervisor, whose accepts go through the process's gate.

    Everything else is the plain socket; connections it returns are plain
    sockets too.
    """

    gate: Gate | None = None  # set by the runtime; a ``dup()`` has none and accepts freely

    def accept(self) -> tuple[socket.socket, Any]:
        gate = self.gate
        if gate is None:
            return super().accept()
        timeout = self.gettimeout()
        if timeout is None:
            # Blocking: wait for a connection before passing the gate, so a
            # thread waiting on a quiet socket never counts as work in flight.
            poller = select.poll()
            poller.register(self, select.POLLIN)
            while not poller.poll(_POLL_MS):
                if gate.closed:
                    break
        gate.enter(timeout)
        connection = None
        try:
            connection, address = super().accept()
        finally:
            gate.leave(connection)
        return connection, address
