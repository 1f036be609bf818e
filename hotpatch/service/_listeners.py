"""The supervisor's listening sockets as a service sees them: accepts that can be stopped, and
the connections they gave out, so that a process stopping knows when its work in flight is done.

Under ``hotpatch run`` a process is told to stop in one of three ways. When it
relies on SIGTERM (``ready()`` without ``drain=``) hotpatch stops it: its
``Gate`` closes and holds every accept (no thread of this process takes another
connection from the shared sockets; they wait in the backlog for the next
process), then the connections accepted before are waited for, and only then
is the last round of state handed over. When it has a drain callback or a
SIGTERM handler of its own, the gate closes without holding: a blocking accept
with no connection raises ``ConnectionAbortedError`` at once, so the service's
accept loop (``socketserver``'s ``serve_forever``) sees the stop it was asked
for.

With ``--workers N`` every worker polls the same socket and a connection wakes
them all; one takes it. An accept here never blocks on the socket itself: it
waits until the socket is readable, then takes a connection without blocking,
and goes back to waiting if another process took it first.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["Gate", "Listener"]

_POLL_MS = 50  # a blocking accept looks at the gate this often while no connection waits
_IDLE_POLL_S = 0.002


class Gate:
    """Whether this process still takes new connections, and those it took that are open."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.closed = False  # no new connections: the process is stopping
        self.holding = True  # a blocking accept at the closed gate waits for the end
        self.ended = False  # it has stopped: accepts still waiting give up
        self._accepting = 0  # threads between the gate and the accept's return
        self.refused_at_once = 0  # non-blocking accepts refused at the closed gate
        self._open: weakref.WeakSet[socket.socket] = weakref.WeakSet()

    def close(self, *, hold: bool = True) -> None:
        """Take no new connection. ``hold``: accepts wait until :meth:`end` (hotpatch
        stops the process); otherwise they give up at once (the service stops itself)."""
        with self._cond:
            self.closed = True
            self.holding = hold
            self._cond.notify_all()

    def end(self) -> None:
        with self._cond:
            self.ended = True
            self._cond.notify_all()

    def enter(self, timeout: float | None) -> None:
        """Let an accept through (the gate open); at the closed gate, hold it until the
        process ends (``ConnectionAbortedError``) or, not holding, refuse it at once.

        ``timeout``: the socket's (``0.0`` non-blocking: ``BlockingIOError`` at
        once, so an event loop goes on with its other work).
        """
        with self._cond:
            deadline = None if timeout is None else time.monotonic() + timeout
            while self.closed:
                if self.ended:
                    msg = "this process handed its work over and is ending; accept elsewhere"
                    raise ConnectionAbortedError(msg)
                if not self.holding and timeout != 0.0:
                    msg = "this process is stopping (told to drain): it accepts nothing"
                    raise ConnectionAbortedError(msg)
                if timeout == 0.0:
                    self.refused_at_once += 1
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
    sockets too. Its accept is blocking, timed or non-blocking as the socket's
    timeout says; underneath, the socket (shared by every process holding it) is
    non-blocking, and a blocking or timed accept waits for it to be readable.
    """

    gate: Gate | None = None  # set by the runtime; a ``dup()`` has none and accepts freely
    _taker: socket.socket | None = None  # the same socket, non-blocking: one try per call
    _taker_lock = threading.Lock()

    def accept(self) -> tuple[socket.socket, Any]:
        gate = self.gate
        timeout = self.gettimeout()
        if timeout == 0.0:  # an event loop's: one try, at once
            return _through(gate, 0.0, super().accept)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # Wait for a connection before passing the gate, so a thread waiting
            # on a quiet socket never counts as work in flight.
            self._wait_readable(gate, deadline)
            # A timed accept at a held gate: TimeoutError, in time.
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            taken = _through(gate, left, self._take)
            if taken is not None:
                return taken
            # Another process took it: wait for the next one.

    def _wait_readable(self, gate: Gate | None, deadline: float | None) -> None:
        """Until a connection waits or the gate closes; ``TimeoutError`` at ``deadline``."""
        poller = select.poll()
        poller.register(self, select.POLLIN)
        while True:
            wait_ms = _POLL_MS
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("timed out")
                wait_ms = max(1, min(_POLL_MS, int(left * 1000)))
            events = poller.poll(wait_ms)
            if self.fileno() == -1 or any(e & select.POLLNVAL for _, e in events):
                raise OSError(errno.EBADF, "the listening socket was closed while accepting")
            if events or (gate is not None and gate.closed):
                return

    def _take(self) -> tuple[socket.socket, Any] | None:
        """One non-blocking accept: a connection, or ``None`` if there was none to take."""
        taker = self._taker
        if taker is None:
            with self._taker_lock:
                taker = self._taker
                if taker is None:
                    taker = socket.socket(fileno=os.dup(self.fileno()))
                    taker.settimeout(0.0)
                    self._taker = taker
        if os.get_blocking(taker.fileno()):  # a process made the shared socket blocking
            os.set_blocking(taker.fileno(), False)
        try:
            return taker.accept()
        except (BlockingIOError, InterruptedError):
            return None

    def close(self) -> None:
        self._drop_taker()
        super().close()

    def detach(self) -> int:
        self._drop_taker()
        return super().detach()

    def _drop_taker(self) -> None:
        taker, self._taker = self._taker, None
        if taker is not None:
            taker.close()


_Taken = TypeVar("_Taken", tuple[socket.socket, Any], tuple[socket.socket, Any] | None)


def _through(gate: Gate | None, timeout: float | None, take: Callable[[], _Taken]) -> _Taken:
    """``take()`` through ``gate`` (entered with ``timeout``), the connection it gives
    counted there while open; without a gate, ``take()`` alone."""
    if gate is None:
        return take()
    gate.enter(timeout)
    taken = None
    try:
        taken = take()
    finally:
        gate.leave(None if taken is None else taken[0])
    return taken
