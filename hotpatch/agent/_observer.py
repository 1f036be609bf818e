"""Stopping a watchdog observer without its shutdown race reaching the service's stderr.

An inotify emitter that reads an event while its observer is being stopped
drops the event -- what the observer is asked to do -- but first logs
``InotifyEmitter.queue_events() called when the thread is inactive`` at ERROR
on ``watchdog.observers.inotify``. In a service that configured no logging,
Python's last-resort handler prints that line on stderr whenever a file
changes in the folder as the agent stops. ``stop_observer`` stops an observer
with that one message held back for its own emitter threads, for as long as
the stop lasts; everything else watchdog logs (a full inotify queue, from any
thread) still goes through.

When the kernel's inotify queue overflows, events are lost: watchdog says so
in a warning (``OVERFLOW``) and carries on. ``on_overflow`` hears that warning
(a filter that lets it through) and calls back whoever must look again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

from watchdog.observers.api import BaseObserver

__all__ = ["OVERFLOW", "SHUTDOWN_RACE", "on_overflow", "stop_observer"]

SHUTDOWN_RACE = "InotifyEmitter.queue_events() called when the thread is inactive"
_LOGGER = "watchdog.observers.inotify"


class _Stopping(logging.Filter):
    """Drops ``SHUTDOWN_RACE`` when it comes from an emitter thread being stopped."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._threads: dict[int, int] = {}  # thread ident -> stops in progress

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.thread in self._threads and record.msg == SHUTDOWN_RACE)

    def add(self, idents: set[int]) -> None:
        with self._lock:
            for ident in idents:
                self._threads[ident] = self._threads.get(ident, 0) + 1

    def remove(self, idents: set[int]) -> None:
        with self._lock:
            for ident in idents:
                left = self._threads.pop(ident, 1) - 1
                if left:
                    self._threads[ident] = left


_STOPPING = _Stopping()
logging.getLogger(_LOGGER).addFilter(_STOPPING)


def stop_observer(observer: BaseObserver) -> None:
    """Stop ``observer`` and wait for its threads; its emitters' shutdown race stays quiet."""
    idents = {e.ident for e in observer.emitters if e.ident is not None}
    _STOPPING.add(idents)
    try:
        observer.stop()
        observer.join()
    finally:
        _STOPPING.remove(idents)


OVERFLOW = "Inotify queue overflowed"
# Where watchdog says it (inotify_c since 5; inotify_buffer before).
_OVERFLOW_LOGGERS = ("watchdog.observers.inotify_c", "watchdog.observers.inotify_buffer")


class _Overflows(logging.Filter):
    """Calls back its listeners when watchdog reports lost events; filters nothing out."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(OVERFLOW):
            with self._lock:
                listeners = list(self._listeners)
            for listener in listeners:
                with contextlib.suppress(Exception):
                    listener()
        return True

    def add(self, listener: Callable[[], None]) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return remove


_OVERFLOWS = _Overflows()
for _name in _OVERFLOW_LOGGERS:
    logging.getLogger(_name).addFilter(_OVERFLOWS)


def on_overflow(listener: Callable[[], None]) -> Callable[[], None]:
    """Call ``listener`` whenever the inotify queue overflowed; returns what unsubscribes it.

    Heard through watchdog's warning, so only while that logger is enabled for
    WARNING (the default).
    """
    return _OVERFLOWS.add(listener)
