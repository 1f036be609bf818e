"""How late this process's timers fire: the machine's load as the agent sees it, for the settle.

A burst (``mv *.py patches/``) is kept in version order when its files come
within the folder's settle of each other (``hotpatch.agent._queue``). On a
loaded machine ``mv`` is descheduled between two renames for longer than
that, and the burst is split. The agent's own threads are descheduled just
the same: a timed wait (the folder guard's every 250 ms, the settle's own)
returns late by about as long as the machine makes a runnable thread wait.
``TimerLateness`` keeps the last few of those delays, and ``settle(base)``
lengthens the settle by twice the largest, capped at ``MAX_EXTRA_S``: on a
loaded machine order wins over a few milliseconds of a lone drop's latency.
Delays below ``IDLE_S`` are a timer's usual slack, not load: on an idle
machine the settle stays ``base``. Once the timers are on time again (the
last ``SAMPLES`` of them), the settle is back at ``base``.

One ``TIMERS`` per process: the lateness is the process's and the machine's,
whichever thread measures it.
"""

from __future__ import annotations

import collections
import threading
import time

__all__ = ["IDLE_S", "MAX_EXTRA_S", "SAMPLES", "TIMERS", "TimerLateness"]

IDLE_S = 0.001  # a wait this late or less is on time
MAX_EXTRA_S = 0.05  # the most the settle is lengthened by
SAMPLES = 8  # the lateness is the largest of this many last waits


class TimerLateness:
    """The lateness of the last ``SAMPLES`` timed waits noted; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._late: collections.deque[float] = collections.deque([0.0], maxlen=SAMPLES)

    def note(self, late_s: float) -> None:
        """A timed wait returned ``late_s`` seconds after its timeout."""
        with self._lock:
            self._late.append(max(late_s, 0.0))

    def waited(self, started: float, timeout: float) -> None:
        """A timed wait of ``timeout`` s, started at ``started`` (``time.monotonic``), timed out."""
        self.note(time.monotonic() - started - timeout)

    @property
    def lateness(self) -> float:
        """How late the timers fired lately (the largest of the last waits), in seconds."""
        with self._lock:
            return max(self._late)

    def settle(self, base: float) -> float:
        """``base`` lengthened by twice the lateness beyond a timer's slack, capped."""
        late = self.lateness
        return base if late <= IDLE_S else base + min(2 * late, MAX_EXTRA_S)


TIMERS = TimerLateness()
