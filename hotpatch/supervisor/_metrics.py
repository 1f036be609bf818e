"""``hotpatch run --metrics HOST:PORT``: the supervisor's view of its workers, in one Metrics.

The bridge observes the runner (a ``Supervisor``, or a ``Fleet`` of them)
rather than being called from its code paths, and feeds the metrics plugin
only what is new since it last looked:

- every worker's baseline and patch level, from the level its serving
  process last reported (``hotpatch_worker_level``, ``..._worker_version_info``);
  the level all workers share is the service's (``hotpatch_patch_level``);
- applies and rejections, one per drop, from the outcome files the watched
  folder writes (``applied/``, ``rejected/``: the supervisor's only way in);
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
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from hotpatch.agent._outcome import OUTCOME_DIRS, RESULT_SUFFIX
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
RESCAN_WINDOW_NS = 2_000_000_000  # a folder changed this recently is listed again
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
        self._results: set[str] = set()  # outcome files counted (or there before we started)
        self._scanned: dict[Path, int] = {}  # outcome folder -> its mtime at the last listing
        self._failed = False
        watch = runner.config.watch
        self._folders = (
            [watch / name for name in sorted(set(OUTCOME_DIRS.values()))] if watch else []
        )
        self._scan_results(count=False)  # earlier runs' outcomes are not this run's

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
            self._scan_results(count=True)
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

    # -- applies and rejections, from the folder's outcome files

    def _scan_results(self, *, count: bool) -> None:
        now = time.time_ns()
        for folder in self._folders:
            try:
                mtime = folder.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            if self._scanned.get(folder) == mtime and now - mtime > RESCAN_WINDOW_NS:
                continue
            with os.scandir(folder) as entries:
                names = [
                    e.name
                    for e in entries
                    if e.name.endswith(RESULT_SUFFIX) and not e.name.startswith(".")
                ]
            for name in names:
                key = f"{folder.name}/{name}"
                if key in self._results:
                    continue
                if count and not self._count(folder / name):
                    continue  # unreadable for now: look again next time
                self._results.add(key)
            self._scanned[folder] = mtime

    def _count(self, path: Path) -> bool:
        try:
            record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        outcome = record.get("outcome")
        if outcome == "applied":
            self.metrics.applies.labels(source="folder").inc()
            seconds = (record.get("timings") or {}).get("service_apply_s")
            if isinstance(seconds, int | float):
                self.metrics.apply_seconds.observe(float(seconds))
        elif outcome == "rejected":
            self.metrics.rejections.labels(source="folder").inc()
        elif outcome == "pending":  # a planned baseline, announced
            self.metrics.restarts_scheduled.labels(kind="planned-baseline").inc()
        return True


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
