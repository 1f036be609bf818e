"""``hotpatch run --metrics HOST:PORT``: the supervisor's view of its workers, in one Metrics.

The bridge observes the runner (a ``Supervisor``, or a ``Fleet`` of them)
rather than being called from its code paths, and feeds the metrics plugin
only what is new since it last looked:

- every worker's baseline and patch level, from the level its serving
  process last reported (``hotpatch_worker_level``, ``..._worker_version_info``);
  the level all workers share is the service's (``hotpatch_patch_level``);
- applies and rejections, one per outcome, from the folder's outcome log, which
  the drop pipeline appends to however the patch came (``source="folder"`` for
  a drop, ``"control"`` for ``hotpatch apply`` through the control socket);
- rollbacks, per worker, from a serving process's level losing versions;
- starts and restarts by kind, cause and outcome, and the pauses the
  supervisor measured.

Restarts and level changes are heard as each ``Supervisor`` calls its
observers (``Supervisor.observe``), on every recorded restart and every level
a process reports, so none is missed however quickly they follow.

A periodic task on the runner's event loop does the rest; nothing here runs
on another thread, and a failure in the bridge is logged, never raised into
the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from typing import Any

from hotpatch.agent._outcome_log import FOLDER, LogTail
from hotpatch.supervisor._records import RestartOutcome
from hotpatch.supervisor._runner import Runner
from hotpatch.supervisor._supervisor import Supervisor

__all__ = [
    "MetricsBridge",
    "cause_of",
    "open_metrics",
    "run_with_metrics",
    "serve_with_metrics",
]

log = logging.getLogger("hotpatch.supervisor")

# hotpatch_plugins.metrics.Metrics: the plugins package is imported by name, as the
# agent does, so that hotpatch keeps working (and type-checking) without it.
Metrics = Any

INTERVAL = 0.25  # seconds between looks at the runner
INSTALL_HINT = "pip install 'pyhotpatch[metrics]'"


def open_metrics(host: str, port: int) -> Metrics:
    """Serve an empty ``Metrics`` on loopback ``host:port``.

    Raises ``ImportError`` naming the extra to install, ``OSError`` for a port
    that cannot be bound.
    """
    try:
        plugin = importlib.import_module("hotpatch_plugins.metrics")  # an optional dependency
        metrics: Metrics = plugin.Metrics(port, host)
    except ImportError as exc:
        msg = (
            "hotpatch run --metrics needs prometheus_client, which is not installed; "
            f"install it with: {INSTALL_HINT}"
        )
        raise ImportError(msg, name="prometheus_client") from exc
    return metrics


def cause_of(outcome: RestartOutcome) -> str:
    """Why a process was (re)started, reduced to a label value (``CAUSES``)."""
    if outcome.kind == "start":
        return "start"
    if outcome.kind == "recovery":
        return "crash"
    for prefix, cause in (("patch ", "patch"), ("baseline ", "baseline"), ("SIG", "signal")):
        if outcome.reason.startswith(prefix):
            return cause
    return "other"


class MetricsBridge:
    """Feeds ``metrics`` from ``runner``: call ``sync()`` (or run ``run()``) on its loop."""

    def __init__(self, runner: Runner, metrics: Metrics) -> None:
        self.runner = runner
        self.metrics = metrics
        self._hooked: set[int] = set()  # id() of the members we observe
        self._restarts: dict[str, RestartOutcome | None] = {}  # per worker, the last counted
        self._levels: dict[str, tuple[int, str, tuple[str, ...]]] = {}  # pid, baseline, level
        self._service: tuple[str, tuple[str, ...]] | None = None
        self._failed = False
        # The outcome log is in --state-dir, else in the folder. From here on: earlier
        # runs' outcomes are not this run's.
        state = runner.config.state_dir or runner.config.watch
        self._outcomes = LogTail(state) if state is not None else None

    # -- the periodic look

    async def run(self, interval: float = INTERVAL) -> None:
        """Look every ``interval`` seconds until cancelled."""
        while True:
            self.sync()
            await asyncio.sleep(interval)

    def sync(self) -> None:
        """Feed the metrics what changed since the last look; never raises."""
        try:
            for member in self.runner.members:
                self._hook(member)
                self._restarted(member)
                self._level(member)
            self._service_level()
            self._count_outcomes()
            self._folder()
        except Exception:
            self._log_failure()

    def _log_failure(self) -> None:
        if not self._failed:  # once: a broken bridge must not flood the log
            self._failed = True
            log.exception("metrics: cannot read the supervisor's state; the metrics may lag")

    # -- restarts, heard as each member's status changes

    def _hook(self, member: Supervisor) -> None:
        if id(member) in self._hooked:
            return
        self._hooked.add(id(member))

        def changed() -> None:
            try:
                self._restarted(member)
                self._level(member)
            except Exception:
                self._log_failure()

        member.observe(changed)

    def _restarted(self, member: Supervisor) -> None:
        outcome = member.last_restart
        worker = str(member.index or 0)
        if outcome is None or self._restarts.get(worker) is outcome:
            return
        self._restarts[worker] = outcome
        self.metrics.record_restart(
            outcome.kind, cause_of(outcome), ok=outcome.ok, paused_s=outcome.paused_s
        )

    # -- levels

    def _level(self, member: Supervisor) -> None:
        child = member.serving
        if child is None:
            return  # starting or restarting: keep showing what it ran
        worker = str(member.index or 0)
        info = child.info
        baseline = str(info.get("baseline") or member.baseline or "0")
        level = tuple(str(v) for v in info.get("level") or ())
        seen = self._levels.get(worker)
        if seen == (child.pid, baseline, level):
            return
        if seen is not None and seen[0] == child.pid and seen[1] == baseline:
            gone = [v for v in seen[2] if v not in level]
            if gone:  # the same process lost versions: rolled back in it
                self.metrics.rollbacks.labels(source="other").inc(len(gone))
        self._levels[worker] = (child.pid, baseline, level)
        version = level[-1] if level else baseline
        self.metrics.set_worker_level(worker, len(level), version, baseline=baseline)

    def _service_level(self) -> None:
        """The service runs what every worker runs: the versions common to all levels."""
        if not self._levels:
            return
        rows = list(self._levels.values())
        common = tuple(v for v in rows[0][2] if all(v in row[2] for row in rows[1:]))
        baseline = str(self.runner.baseline or rows[0][1])
        if self._service == (baseline, common):
            return
        self._service = (baseline, common)
        self.metrics.patch_level.set(len(common))
        self.metrics.version_info.labels(baseline=baseline).info(
            {"version": common[-1] if common else baseline}
        )

    # -- the folder: unsafe, or a drop waiting for a resource

    def _folder(self) -> None:
        pipeline = self.runner.pipeline
        state = pipeline.folder() if pipeline is not None else {}
        folder = state.get("folder") or {}
        self.metrics.folder_unsafe.set(0 if folder.get("safe", True) else 1)
        self.metrics.drop_waiting.set(1 if state.get("waiting") else 0)

    # -- applies and rejections, from the folder's outcome log

    def _count_outcomes(self) -> None:
        if self._outcomes is None:
            return
        for record in self._outcomes.read():
            if record.get("event") == "outcome":
                self._count(record)

    def _count(self, record: dict[str, Any]) -> None:
        source = "folder" if record.get("source") == FOLDER else "control"
        outcome = record.get("outcome")
        if outcome == "applied":
            self.metrics.applies.labels(source=source).inc()
            seconds = (record.get("timings") or {}).get("service_apply_s")
            if isinstance(seconds, int | float):
                self.metrics.apply_seconds.observe(float(seconds))
        elif outcome == "rejected":
            self.metrics.rejections.labels(source=source).inc()
        elif outcome == "pending":  # a planned baseline, announced
            self.metrics.restarts_scheduled.labels(kind="planned-baseline").inc()

    def close(self) -> None:
        """Stop following the outcome log."""
        if self._outcomes is not None:
            self._outcomes.close()


async def serve_with_metrics(runner: Runner, metrics: Metrics, interval: float = INTERVAL) -> int:
    """``runner.run()`` with ``metrics`` fed all along; closes ``metrics`` at the end."""
    bridge = MetricsBridge(runner, metrics)
    bridge.sync()  # hooks a single supervisor before its first start
    task = asyncio.create_task(bridge.run(interval))
    try:
        return await runner.run()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        bridge.sync()
        bridge.close()
        await asyncio.to_thread(metrics.close)


def run_with_metrics(runner: Runner, metrics_address: tuple[str, int]) -> int:
    """Run ``runner`` to its end, serving metrics on ``metrics_address``.

    1 (after logging why) if the metrics cannot be served: prometheus_client
    missing, or the port taken.
    """
    try:
        metrics = open_metrics(*metrics_address)
    except (ImportError, OSError) as exc:
        runner.close_sockets()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        log.error("%s", reason)  # noqa: TRY400 -- the message says it all
        return 1
    runner.metrics_url = metrics.url
    log.info("serving metrics on %s", metrics.url)
    return asyncio.run(serve_with_metrics(runner, metrics))
