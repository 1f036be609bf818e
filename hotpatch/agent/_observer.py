"""Stopping a watchdog observer without its shutdown race reaching the service's stderr.

An inotify emitter that reads an event while its observer is being stopped
drops the event -- what the observer is asked to do -- but first logs
``InotifyEmitter.queue_events() called when the thread is inactive`` at ERROR
on ``watchdog.observers.inotify``. In a program that configured no logging,
Python's last-resort handler prints that line on stderr whenever a file
changes in the folder as it stops watching (``hotpatch watch``; the agent's
folder uses watchdog's inotify reader alone, ``hotpatch.agent._watch``).
``stop_observer`` stops an observer with that one message held back for its
own emitter threads, for as long as the stop lasts; everything else watchdog
logs (a full inotify queue, from any thread) still goes through.
"""

from __future__ import annotations

import logging
import threading

from watchdog.observers.api import BaseObserver

__all__ = ["SHUTDOWN_RACE", "stop_observer"]

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
