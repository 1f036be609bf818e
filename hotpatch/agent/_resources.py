"""Running out of a resource (disk, file descriptors, memory): a drop waits and is retried.

A drop that fails because the machine ran short -- the disk full while staging
it, journalling it or filing its outcome, no descriptor left, no memory to
verify it -- is not the patch's fault. It is not rejected: it stays in the
folder, first in line, and is tried again after a back-off (``Backoff``), so
no later version overtakes it. What ran out is named by the core
(``hotpatch._shortage``), which the serving process under ``hotpatch run``
uses too. A drop whose checks were cut short by its folder going away
(``Interrupted``) waits the same way, until the folder is safe again.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from hotpatch._shortage import Shortage, shortage_of
from hotpatch.agent._names import shown

__all__ = ["BACKOFF_MAX_S", "BACKOFF_MIN_S", "Backoff", "Retry", "Shortage", "shortage_of"]

log = logging.getLogger("hotpatch")

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0


class Backoff:
    """Delays between attempts: ``BACKOFF_MIN_S``, doubling up to ``BACKOFF_MAX_S``."""

    def __init__(self, first: float | None = None, limit: float | None = None) -> None:
        self.first = BACKOFF_MIN_S if first is None else first
        self.limit = BACKOFF_MAX_S if limit is None else limit
        self.attempts = 0

    def next(self) -> float:
        """The delay before the next attempt (one more failure counted)."""
        self.attempts += 1
        return min(self.first * 2.0 ** (self.attempts - 1), self.limit)

    def reset(self) -> None:
        self.attempts = 0


class Retry:
    """The drop of a folder that waits for a resource: why, how often tried, when next.

    ``failed`` counts an attempt and logs it (at ERROR the first time, or when
    the reason changes); ``succeeded`` ends the wait and says so.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._backoff = Backoff()
        self._name: str | None = None
        self._reason: str | None = None
        self._until = 0.0

    @property
    def waiting(self) -> bool:
        return self._name is not None

    def remaining(self) -> float:
        """Seconds until the drop waiting is tried again (0 when none waits)."""
        return max(0.0, self._until - time.monotonic()) if self.waiting else 0.0

    def report(self) -> dict[str, object] | None:
        """The ``waiting`` of ``hotpatch status``: the drop, why, attempts, next try."""
        if self._name is None:
            return None
        return {
            "file": shown(self._name),
            "reason": self._reason,
            "attempts": self._backoff.attempts,
            "retry_in_s": round(self.remaining(), 3),
        }

    def failed(self, name: str, reason: str) -> float:
        """``name`` failed for want of a resource (``reason``): the delay before it is retried."""
        delay = self._backoff.next()
        again = self._name == name and self._reason == reason
        self._name, self._reason = name, reason
        self._until = time.monotonic() + delay
        log.log(
            logging.INFO if again else logging.ERROR,
            "patch folder %s: %s waits: %s. It stays in the folder, first in line (no later "
            "version goes before it), and is tried again in %.1f s (attempt %d; then less "
            "often, at least every %g s): free the resource, or remove the file to give up",
            self.folder,
            shown(name),
            reason,
            delay,
            self._backoff.attempts,
            self._backoff.limit,
        )
        return delay

    def cut_short(self, name: str, reason: str) -> float:
        """``name``'s checks were cut short by its folder going away: the delay before a retry."""
        delay = self._backoff.next()
        again = self._name == name and self._reason == reason
        self._name, self._reason = name, reason
        self._until = time.monotonic() + delay
        log.log(
            logging.INFO if again else logging.WARNING,
            "patch folder %s: the check of %s was cut short: %s. Not a rejection: it is tried "
            "again once the folder is safe, first in line (no later version goes before it), "
            "if it is still there (attempt %d)",
            self.folder,
            shown(name),
            reason,
            self._backoff.attempts,
        )
        return delay

    def forget(self, name: str) -> None:
        """``name`` is gone from the folder: no longer waited for."""
        if self._name == name:
            log.warning("patch folder %s: %s was removed while it waited", self.folder, name)
            self._name = self._reason = None
            self._backoff.reset()

    def succeeded(self) -> None:
        if self._name is not None:
            log.warning(
                "patch folder %s: %s goes on after %d attempts (%s)",
                self.folder,
                shown(self._name),
                self._backoff.attempts,
                self._reason,
            )
        self._name = self._reason = None
        self._backoff.reset()
