"""The service side of the supervisor: listening sockets, preserved state, the restart hand-over.

A service calls three functions, and runs the same with or without ``hotpatch run``::

    sock = hotpatch.listen_socket("http", default="127.0.0.1:8000")
    counters = hotpatch.preserved("counters", dict)
    ...build the server on ``sock``...
    hotpatch.ready(drain=server_drain, resumed=resync_clocks)
    server.serve_forever()

Under the supervisor, ``listen_socket`` takes the socket the supervisor owns
(it stays open across restarts, so connections wait in its backlog), and
``preserved`` and ``ready`` carry the declared state from the old process to
the new one. State crosses as *rounds*: sealed memfds (shared memory, never a
file on disk) holding a stream of records, each an 8-byte length and a pickle:

    ("full",)                    the round replaces everything before it
    ("n", name)                  the preserved mapping ``name`` exists
    ("s", name, key, value)      ``name[key] = value``
    ("d", name, key)             ``del name[key]``
    ("x", extra)                 what ``hotpatch_save_state`` hooks returned

The first round is a full snapshot; later rounds hold only the keys marked
dirty since the round before, which is why a restart's pause depends on what
the service wrote lately, not on how much state it keeps. The control channel
to the supervisor is a ``SOCK_SEQPACKET`` socket carrying one JSON object per
message, with the memfds attached (``SCM_RIGHTS``).

This module holds what a service calls; the wire is in ``_channel``, the
rounds in ``_rounds``, the runtime answering the supervisor in ``_runtime``
(its patch registry in ``_patches``).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from hotpatch.service._rounds import PreservedDict
from hotpatch.service._runtime import get_runtime

__all__ = ["listen_socket", "preserved", "ready", "ready_for_baseline"]


def listen_socket(name: str, *, default: str | tuple[str, int] | None = None) -> socket.socket:
    """The listening socket ``name``.

    Under ``hotpatch run --bind NAME=HOST:PORT`` this is the supervisor's
    socket, open for the service's whole life: do not ``shutdown()`` it (that
    would stop it for every process), just stop accepting when told to drain.
    Its ``accept()`` is blocking or not as you set it; the socket underneath is
    non-blocking (with ``--workers N`` every worker shares it), so accept through
    this object, not through a descriptor taken from it. While the process stops
    it accepts nothing: a blocking accept then raises ``ConnectionAbortedError``
    (at once if you stop yourself with a drain callback or SIGTERM handler; when
    hotpatch stops the process for you, once your state is handed over).
    Running alone, the service binds its own socket on ``$HOTPATCH_BIND``
    (``name=HOST:PORT,...``) or else ``default``. The same object is returned
    on every call.
    """
    return get_runtime().listen_socket(name, default)


def preserved(name: str, factory: Callable[[], Mapping[Any, Any]] = dict) -> PreservedDict:
    """The state ``name`` that survives memory-preserving restarts.

    After a restart this is the old process's mapping, loaded while the old
    process still served and brought up to date during the pause; otherwise
    (first start, or no supervisor) a new :class:`PreservedDict` holding
    ``factory()``. See :class:`PreservedDict` for which changes are tracked.
    Calling it again with the same name returns the same object.

    With ``hotpatch run --workers N`` the state is per worker: each worker
    process has its own, handed to its own successor; workers share nothing
    but the listening sockets (keep what must be shared in a database).
    """
    return get_runtime().preserved(name, factory)


def ready(
    *,
    drain: Callable[[float], object] | None = None,
    resumed: Callable[[float], object] | None = None,
    plugins: Iterable[object] = (),
) -> None:
    """Say the service is ready to serve; start accepting when this returns.

    Under the supervisor, a restarted process first receives what changed
    in the old process's state while it drained (this is the pause), then
    calls ``resumed(paused_s)`` and the ``hotpatch_resumed`` hook of
    ``plugins`` (also used for ``hotpatch_save_state`` and
    ``hotpatch_restore_state``). ``drain(timeout_s)`` is how the old process
    is told to stop accepting: it must return once the service accepts no new
    work and its in-flight work is done (or ``timeout_s`` has passed); the
    state must not change after it returns (a change then raises
    ``ServiceError``: it would be lost).

    Without ``drain``, the process is stopped by SIGTERM. With a SIGTERM
    handler of its own, the service returns from its main and the state goes
    when the interpreter exits, once the connections it accepted are closed.
    With none (Python's default would end the process before anything is
    handed over), hotpatch handles SIGTERM: the sockets of
    :func:`listen_socket` accept nothing more (connections wait for the next
    process), the connections accepted are waited for (up to the drain
    timeout), the state is handed over, then ``SystemExit`` ends the main
    thread. Call ``ready()`` from the main thread for that. A SIGTERM sent to
    the process from elsewhere asks the supervisor to replace it the same way.
    """
    get_runtime().ready(drain, resumed, plugins)


def ready_for_baseline() -> None:
    """Tell the supervisor that now is a good moment for a planned baseline restart.

    A planned baseline restarts at the maintenance window, at its deadline, or
    as soon as the service calls this -- whichever comes first. Call it when
    the service is quiet (a batch finished, no long request running). It does
    nothing without a supervisor, or when no baseline is pending: it is a
    moment, not remembered, so a baseline announced later waits for its own
    (call this again once the ``hotpatch_restart_scheduled`` hook announced it).
    """
    get_runtime().baseline_ready()
