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
from collections.abc import Callable
from pathlib import Path

from hotpatch._shortage import Shortage, shortage_of
from hotpatch.agent._names import shown
from hotpatch.agent._outcome import now_iso

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
    """The drop of a folder that waits for a resource: why, since when, attempts, next try.

    ``failed`` counts an attempt and logs it (at ERROR the first time, or when
    the reason changes); ``succeeded`` ends the wait and says so. ``on_change``,
    if given, is called when a drop begins or ends waiting and on each attempt,
    under the folder's lock (it must not block): a status file says it at once.
    """

    def __init__(self, folder: Path, on_change: Callable[[], None] | None = None) -> None:
        self.folder = folder
        self._on_change = on_change
        self._backoff = Backoff()
        self._name: str | None = None
        self._reason: str | None = None
        self._fix: str | None = None
        self._since: str | None = None  # when the drop began to wait (ISO 8601, UTC)
        self._until = 0.0

    @property
    def waiting(self) -> bool:
        return self._name is not None

    def remaining(self) -> float:
        """Seconds until the drop waiting is tried again (0 when none waits)."""
        return max(0.0, self._until - time.monotonic()) if self.waiting else 0.0

    def report(self) -> dict[str, object] | None:
        """The ``waiting`` of ``hotpatch status``: the drop, why, since when, what to do,
        attempts, next try."""
        if self._name is None:
            return None
        return {
            "file": shown(self._name),
            "reason": self._reason,
            "since": self._since,
            "fix": self._fix,
            "attempts": self._backoff.attempts,
            "retry_in_s": round(self.remaining(), 3),
        }

    def failed(self, name: str, reason: str, fix: str | None = None) -> float:
        """``name`` failed for want of a resource (``reason``): the delay before it is retried.

        ``fix``: what to do (by default: free the resource, or remove the drop).
        """
        if fix is None:
            fix = f"free the resource (it is tried again), or remove {shown(name)} to give up"
        delay, again = self._wait(name, reason, fix)
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
        self._changed()
        return delay

    def cut_short(self, name: str, reason: str) -> float:
        """``name``'s checks were cut short by its folder going away: the delay before a retry."""
        fix = "make the folder safe again (see `folder`): it is tried again then, if still there"
        delay, again = self._wait(name, reason, fix)
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
        self._changed()
        return delay

    def _wait(self, name: str, reason: str, fix: str) -> tuple[float, bool]:
        """One more attempt of ``name`` failed: the delay before the next, and whether it
        failed so before (the same drop, for the same reason)."""
        delay = self._backoff.next()
        again = self._name == name and self._reason == reason
        if self._name != name:
            self._since = now_iso()
        self._name, self._reason, self._fix = name, reason, fix
        self._until = time.monotonic() + delay
        return delay, again

    def forget(self, name: str) -> None:
        """``name`` is gone from the folder: no longer waited for."""
        if self._name == name:
            log.warning("patch folder %s: %s was removed while it waited", self.folder, name)
            self._clear()

    def succeeded(self) -> None:
        if self._name is not None:
            log.warning(
                "patch folder %s: %s goes on after %d attempts (%s)",
                self.folder,
                shown(self._name),
                self._backoff.attempts,
                self._reason,
            )
            self._clear()

    def _clear(self) -> None:
        self._name = self._reason = self._fix = self._since = None
        self._backoff.reset()
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()
