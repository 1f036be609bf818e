"""``Runner``: what a single ``Supervisor`` and a ``Fleet`` of them both offer to what runs them."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from hotpatch.supervisor._bundle import Release
from hotpatch.supervisor._records import FolderPipeline, SupervisorConfig
from hotpatch.supervisor._supervisor import Supervisor

__all__ = ["Runner"]


class Runner(Protocol):
    """A supervisor of the service, one process (``Supervisor``) or N workers (``Fleet``).

    The watched folder's pipeline (``_patches``), the metrics bridge
    (``_metrics``) and ``hotpatch run`` (``_cli``) use a runner only through
    this interface. ``members`` are the supervisors whose processes serve: a
    fleet's workers, or a single supervisor itself.
    """

    @property
    def config(self) -> SupervisorConfig:
        """What ``hotpatch run`` was told."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop ``run()`` runs on (``None`` before it starts)."""

    @property
    def baseline(self) -> str | None:
        """The baseline the service runs now (it changes with a baseline restart)."""

    @property
    def pipeline(self) -> FolderPipeline | None:
        """The watched folder's pipeline, while it runs."""

    @property
    def members(self) -> Sequence[Supervisor]:
        """The supervisors whose processes serve: the fleet's workers, or ``[self]``."""

    @property
    def applied_patches(self) -> list[tuple[str, str | None]]:
        """``(version, sha256)`` of the patches the service has (every worker, in a fleet)."""

    @property
    def service_sys_path(self) -> list[str] | None:
        """The ``sys.path`` a service process started with (``None``: none has yet)."""

    @property
    def sys_path_known(self) -> threading.Event:
        """Set once ``service_sys_path`` is known (or the runner stops)."""

    # Where ``--metrics`` serves, shown in the status (set by the metrics bridge).
    metrics_url: str | None

    def status(self, *, whole: bool = True) -> dict[str, Any]:
        """What ``hotpatch status`` shows; the status file holds it with each level and the
        drops pending shown by their top (not ``whole``)."""

    def write_status(self) -> None:
        """Rewrite the status file, if any, with what is true now (on the runner's loop)."""

    async def submit_patch(self, name: str, path: str, data: bytes, who: str) -> dict[str, Any]:
        """Apply verified patch bytes to the service; the outcome the folder files."""

    async def submit_baseline(self, name: str, release: Release, who: str) -> dict[str, Any]:
        """Restart the service onto a new baseline; the outcome the folder files."""

    def open_sockets(self, passed: Mapping[str, socket.socket] | None = None) -> None:
        """Take the sockets ``passed`` by systemd, and bind every other ``--bind`` now
        (raises ``OSError`` naming the one that failed)."""

    def close_sockets(self) -> None:
        """Close the sockets this runner owns."""

    async def run(self) -> int:
        """Supervise until stopped: 0 after SIGTERM/SIGINT, 1 on failure."""
