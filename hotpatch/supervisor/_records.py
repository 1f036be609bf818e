"""The supervisor's records: its configuration, what it runs, restart outcomes, jobs."""

from __future__ import annotations

import asyncio
import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from hotpatch.service._channel import VITAL_TIMEOUT_S
from hotpatch.supervisor._bundle import Release
from hotpatch.supervisor._child import Child, ChildSpec
from hotpatch.supervisor._status import utc_now
from hotpatch.supervisor._takeover import CodePoint

__all__ = [
    "PATCH_TIMEOUT_S",
    "BaselineJob",
    "FolderPipeline",
    "PatchJob",
    "RestartMode",
    "RestartOutcome",
    "Running",
    "StateError",
    "SupervisorConfig",
    "in_window",
    "not_now",
]

RestartMode = Literal["preserving", "plain"]

# For a serving process to take a patch, its check after the apply (``vital_timeout``,
# 10 s unless --vital-timeout says otherwise) included; a longer check adds to it.
PATCH_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    """Everything ``hotpatch run`` is told (see ``python -m hotpatch.supervisor run --help``)."""

    spec: ChildSpec
    binds: tuple[tuple[str, tuple[str, int]], ...] = ()
    state_limit: int = 1024 * 2**20
    drain_timeout: float = 5.0
    ready_timeout: float = 30.0
    status_file: Path | None = None
    snapshot_interval: float = 5.0
    max_restarts: int = 5
    restart_period: float = 60.0
    backoff_initial: float = 0.1
    backoff_max: float = 30.0
    restart_mode: RestartMode = "preserving"
    # Patches (--watch): the folder, the service's baseline and journal, signatures.
    watch: Path | None = None
    baseline: str | None = None
    journal: Path | None = None
    require_signature: bool = True
    trusted_keys: Path | None = None
    verify_timeout: float = 10.0
    patch_timeout: float = PATCH_TIMEOUT_S  # for a serving process to take a patch
    vital_timeout: float = VITAL_TIMEOUT_S  # for its check after the apply (--vital-timeout)
    releases: Path | None = None  # where baseline bundles are unpacked
    window: tuple[datetime.time, datetime.time] | None = None  # maintenance window, UTC
    control_socket: Path | None = None  # the folder's control socket (None: DIR/.hotpatch.sock)
    state_dir: Path | None = None  # where the folder's outcomes, lock... go (None: the folder)
    # After a restart that changes the code: serve ``settle`` seconds, then the new
    # process's health (hooks, and GET ``health_url``); unhealthy -> back to the old code.
    health_url: str | None = None
    settle: float = 0.0
    check_takeover: bool = True  # a fleet's workers: off, the fleet checks each batch


@dataclass(frozen=True, slots=True)
class RestartOutcome:
    """How a start or restart went.

    ``kind``: ``start``, ``preserving``, ``plain`` or ``recovery`` (after the
    process died). ``state``: ``complete`` (handed over up to the pause),
    ``from-snapshot`` (changes since the last round were lost), ``fresh``.
    """

    kind: str
    reason: str
    ok: bool
    error: str | None = None
    old_pid: int | None = None
    new_pid: int | None = None
    paused_s: float | None = None
    state: str | None = None
    health: list[str] | None = None  # why the new process was found unhealthy
    rolled_back: str | None = None  # what it was rolled back to: ``baseline 1.0 at level 1.0.1``
    shortage: str | None = None  # the resource the new process ran short of, if that was why
    final_round_bytes: int | None = None  # the state that crossed in the pause (its last round)
    finished: str = field(default_factory=utc_now)


@dataclass(slots=True)
class Running:
    """What one supervisor runs now; the work it schedules (restarts, jobs) changes it.

    The supervisor owns it and hands it to its ``Restarts`` and ``Jobs``: these
    fields are all they change of it.
    """

    baseline: str | None  # the code's version: --baseline, then each baseline restarted onto
    release: Release | None = None  # the code the processes run (None: as started)
    previous: CodePoint | None = None  # the code before the last baseline restart
    current: Child | None = None  # the process serving, or about to
    state: str = "starting"  # what the status says: starting, running, restarting, ...

    @property
    def serving(self) -> Child | None:
        """The process serving now, if any (alive, and it said it is ready)."""
        child = self.current
        return child if child is not None and child.alive and child.ready_at is not None else None

    def code_point(self, journal: Path | None) -> CodePoint:
        """The code it runs now and ``journal``'s bytes: what a code change may go back to."""
        return CodePoint.keep(self.release, self.baseline, journal)


class FolderPipeline(Protocol):
    """What a supervisor asks of the watched folder's pipeline it is given (``_patches``)."""

    def start(self) -> object:
        """Open the folder and its control socket, catch up, then watch (raises if it cannot)."""

    def stop(self) -> None:
        """Stop watching and serving; the drop being processed finishes first."""

    def pending(self, *, whole: bool = True) -> tuple[list[str], int]:
        """The drops waiting in the folder (all, or the first ``LEVEL_SHOWN`` unless
        ``whole``) and how many wait."""

    def folder(self) -> dict[str, Any]:
        """``folder`` (safe, and if not, why) and ``waiting`` (a drop short of a resource)."""


class StateError(Exception):
    """The service could not write its state (not picklable, over ``--state-mb``, no reply)."""


@dataclass(slots=True)
class PatchJob:
    """A verified patch on its way to the service process (from the folder's thread)."""

    name: str
    path: str
    data: bytes
    who: str
    done: asyncio.Future[dict[str, Any]]
    # A serving process that ended while it was sent or taking the patch: the patch
    # goes to the one replacing it. ``sent_to``: the last process that was sent it;
    # ``ended``: how each that had it ended; ``level``: the level before the first.
    sent_to: int | None = None
    ended: list[str] = field(default_factory=list)
    level: list[str] | None = None


@dataclass(slots=True)
class BaselineJob:
    """A baseline bundle, unpacked, waiting for its restart."""

    name: str
    release: Release
    who: str
    done: asyncio.Future[dict[str, Any]]
    announced: str = field(default_factory=utc_now)
    due: str | None = None  # why it is due now: "unplanned", "window", "ready", "deadline"

    def describe(self) -> dict[str, Any]:
        bundle = self.release.bundle
        return {
            "file": self.name,
            "version": bundle.version,
            "kind": bundle.kind,
            "summary": bundle.summary,
            "deadline": bundle.deadline.isoformat() if bundle.deadline else None,
            "announced": self.announced,
            "due": self.due,
        }


def in_window(window: tuple[datetime.time, datetime.time], now: datetime.datetime) -> bool:
    """Is ``now`` (UTC) inside the daily window ``start-end`` (which may cross midnight)?"""
    start, end = window
    t = now.astimezone(datetime.UTC).time().replace(tzinfo=None)
    if start <= end:
        return start <= t < end
    return t >= start or t < end


def not_now(why: str) -> dict[str, Any]:
    """The answer for a job that was not applied: ``pending``, to be dropped again."""
    return {
        "outcome": "pending",
        "reason": f"{why}; drop it again to apply it",
        "error_type": "RestartRequired",
        "via": None,
    }
