"""Metrics plugin: the patch level and what happened to it, served in Prometheus exposition.

``Metrics(port)`` starts prometheus_client's own HTTP server on a private
``CollectorRegistry`` at ``http://127.0.0.1:<port>/metrics`` and feeds it from
the hooks: ``hotpatch_patch_level``, ``hotpatch_version_info{baseline,version}``,
``hotpatch_applies_total``, ``hotpatch_rollbacks_total``,
``hotpatch_rejections_total`` (each by ``source``: ``api``, ``folder``,
``control``, ``journal`` or ``other``), ``hotpatch_restarts_scheduled_total{kind}``,
the ``hotpatch_apply_seconds`` and ``hotpatch_restart_pause_seconds`` histograms,
and, set by the supervisor (``hotpatch run --metrics``), ``hotpatch_worker_level{worker}``,
``hotpatch_worker_version_info{worker,version,baseline}`` and
``hotpatch_restarts_total{kind,cause,outcome}``. Needs the ``metrics`` extra:
``pip install 'pyhotpatch[metrics]'``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
from typing import TYPE_CHECKING

import hotpatch

if TYPE_CHECKING:
    from types import TracebackType
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry
    from prometheus_client.registry import Collector

__all__ = ["APPLY_BUCKETS", "CAUSES", "PAUSE_BUCKETS", "SOURCES", "Metrics"]

# An apply takes well under a millisecond to a few (validation included); strict
# quiescence can stretch it to its timeout.
APPLY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0)
# A memory-preserving restart pauses the service for milliseconds; a slow one, seconds.
PAUSE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# The ``source`` label: who asked, reduced to its channel so the label stays
# low-cardinality (``who`` itself holds uids and folder paths).
SOURCES = ("api", "folder", "control", "journal", "other")
# Why the supervisor (re)started a service process: the ``cause`` label of
# ``hotpatch_restarts_total``, next to its ``kind`` (start, preserving, plain, recovery).
CAUSES = ("start", "signal", "patch", "baseline", "crash", "other")

_MAX_PORT = 65535
_INSTALL_HINT = "pip install 'pyhotpatch[metrics]'"


def source_of(who: str) -> str:
    """The channel ``who`` came by: ``folder:/srv/p`` -> ``folder``, ``uid:0`` -> ``control``."""
    channel = who.partition(":")[0]
    if channel == "uid":
        return "control"
    return channel if channel in SOURCES else "other"


class Metrics:
    """Serves hotpatch's metrics on ``http://host:port/metrics`` until ``close()``.

    ``port=0`` picks a free port (read it back as ``.port``). ``host`` must be a
    loopback address unless ``allow_remote=True``: the endpoint has no
    authentication. ``registry`` is the prometheus_client ``CollectorRegistry``
    the metrics are registered in and which the server exposes; by default a
    private one, so nothing else in the process leaks into this endpoint.

    The supervisor reports each worker with ``set_worker_level``. To show the
    baseline before the first patch event, pass the registry to ``track``
    (``metrics.track(agent.registry)``). Also a context manager.
    """

    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        *,
        registry: CollectorRegistry | None = None,
        allow_remote: bool = False,
    ) -> None:
        try:
            import prometheus_client as prom  # noqa: PLC0415 - an optional dependency
        except ImportError as exc:
            msg = (
                "the metrics plugin needs prometheus_client, which is not installed; "
                f"install it with: {_INSTALL_HINT}"
            )
            raise ImportError(msg, name="prometheus_client") from exc
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= _MAX_PORT:
            msg = f"metrics: port {port!r} is not a TCP port; pass 0..65535 (0 picks a free one)"
            raise ValueError(msg)
        if not allow_remote and not _is_loopback(host):
            msg = (
                f"metrics: host {host!r} is not a loopback address, so the unauthenticated "
                "metrics endpoint would be reachable from other machines; serve on "
                "host='127.0.0.1' (and scrape through a proxy), or pass allow_remote=True "
                "if that exposure is intended"
            )
            raise ValueError(msg)

        self.host = host
        if registry is None:
            registry = prom.CollectorRegistry(auto_describe=True)
        self.registry: CollectorRegistry = registry
        reg = self.registry
        self._lock = threading.Lock()
        self.patch_level = prom.Gauge(
            "hotpatch_patch_level", "Number of hot patches applied", registry=reg
        )
        # labelled by baseline, so there is no sample before the first event (or track());
        # a process keeps its baseline, so this holds one series whose version is replaced
        self.version_info = prom.Info(
            "hotpatch_version",
            "Baseline and version (top of the level) running",
            ["baseline"],
            registry=reg,
        )
        self.applies = prom.Counter(
            "hotpatch_applies",
            "Hot patches applied (journal replays included), by source",
            ["source"],
            registry=reg,
        )
        self.rollbacks = prom.Counter(
            "hotpatch_rollbacks",
            "Hot patches rolled back (one rollback of several patches counts each), by source",
            ["source"],
            registry=reg,
        )
        self.rejections = prom.Counter(
            "hotpatch_rejections", "Patches refused, by source", ["source"], registry=reg
        )
        self.restarts_scheduled = prom.Counter(
            "hotpatch_restarts_scheduled",
            "Restarts scheduled (a baseline, or a patch that cannot go in hot), by patch kind",
            ["kind"],
            registry=reg,
        )
        self.apply_seconds = prom.Histogram(
            "hotpatch_apply_seconds",
            "Duration of an apply, validation included",
            buckets=APPLY_BUCKETS,
            registry=reg,
        )
        self.restart_pause_seconds = prom.Histogram(
            "hotpatch_restart_pause_seconds",
            "Pause of a memory-preserving restart: last request served by the old process "
            "to first by the new",
            buckets=PAUSE_BUCKETS,
            registry=reg,
        )
        self.worker_level = prom.Gauge(
            "hotpatch_worker_level",
            "Number of hot patches applied, per worker",
            ["worker"],
            registry=reg,
        )
        self.worker_version_info = prom.Info(
            "hotpatch_worker_version",
            "Version (and baseline) running, per worker",
            ["worker"],
            registry=reg,
        )
        self.restarts = prom.Counter(
            "hotpatch_restarts",
            "Service processes started by the supervisor, by kind (start, preserving, plain, "
            "recovery), cause (start, signal, patch, baseline, crash, other) and outcome "
            "(ok, failed)",
            ["kind", "cause", "outcome"],
            registry=reg,
        )
        self.folder_unsafe = prom.Gauge(
            "hotpatch_folder_unsafe",
            "1 while the watched folder takes no drop because it is unsafe (deleted, "
            "replaced, writable by others, owned by another user): hotpatch status says why",
            registry=reg,
        )
        self.drop_waiting = prom.Gauge(
            "hotpatch_drop_waiting",
            "1 while a drop waits in the watched folder for a resource (disk space, file "
            "descriptors, memory) to be tried again: hotpatch status says which and why",
            registry=reg,
        )
        for source in SOURCES:  # every series exists from the first scrape, at 0
            for counter in (self.applies, self.rollbacks, self.rejections):
                counter.labels(source=source)

        try:
            server, thread = prom.start_http_server(port, addr=host, registry=reg)
        except OSError as exc:
            for metric in self._metrics():  # a shared registry is left as it was
                reg.unregister(metric)
            msg = (
                f"metrics: cannot listen on {host}:{port}: {exc.strerror or exc}; "
                "choose another host or port (port=0 picks a free one)"
            )
            raise OSError(exc.errno, msg) from exc
        thread.name = f"hotpatch-metrics:{server.server_port}"
        self._server: WSGIServer | None = server
        self._thread: threading.Thread | None = thread
        self.port: int = server.server_port

    @property
    def url(self) -> str:
        """The address to scrape."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def __repr__(self) -> str:
        state = "closed" if self._server is None else self.url
        return f"<Metrics {state}>"

    # -- life cycle -------------------------------------------------------------------

    def close(self) -> None:
        """Stop serving: shut the server down, free the port, join its thread. Idempotent.

        Takes up to half a second: the server notices at its next poll.
        """
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None or thread is None:
            return
        server.shutdown()
        server.server_close()
        thread.join()

    def __enter__(self) -> Metrics:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- what the supervisor and the service report -------------------------------

    def track(self, registry: hotpatch.Registry) -> None:
        """Show ``registry``'s baseline, version and level now (the hooks keep them current)."""
        self.patch_level.set(len(registry.level))
        self.version_info.labels(baseline=str(registry.baseline)).info(
            {"version": registry.version}
        )

    def set_worker_level(
        self, worker: str, level: int, version: str, *, baseline: str | None = None
    ) -> None:
        """Record that ``worker`` runs ``level`` hot patches, topped by ``version``.

        Called by the supervisor for each worker after it changes (and at start).
        ``worker`` names a worker slot (``"0"``, ``"1"``, ...), not a pid, so the
        series survive a worker's restart; ``version`` is the top of its level, or
        its baseline; ``baseline``, if given, becomes a label of the version series.
        """
        self.worker_level.labels(worker=worker).set(level)
        info = (
            {"version": version} if baseline is None else {"version": version, "baseline": baseline}
        )
        self.worker_version_info.labels(worker=worker).info(info)

    def record_restart(self, kind: str, cause: str, *, ok: bool, paused_s: float | None) -> None:
        """Count a start or restart of a service process; a successful one's pause is observed.

        ``kind`` is how (``start``, ``preserving``, ``plain``, ``recovery``),
        ``cause`` why (one of ``CAUSES``); ``paused_s`` the pause clients saw, if
        the supervisor measured one.
        """
        self.restarts.labels(kind=kind, cause=cause, outcome="ok" if ok else "failed").inc()
        if ok and paused_s is not None:
            self.restart_pause_seconds.observe(paused_s)

    def remove_worker(self, worker: str) -> None:
        """Drop ``worker``'s series (the supervisor runs fewer workers now)."""
        for metric in (self.worker_level, self.worker_version_info):
            with contextlib.suppress(KeyError):  # not reported, or removed already
                metric.remove(worker)

    def _metrics(self) -> tuple[Collector, ...]:
        return (
            self.patch_level,
            self.version_info,
            self.applies,
            self.rollbacks,
            self.rejections,
            self.restarts_scheduled,
            self.apply_seconds,
            self.restart_pause_seconds,
            self.worker_level,
            self.worker_version_info,
            self.restarts,
            self.folder_unsafe,
            self.drop_waiting,
        )

    # -- hooks ------------------------------------------------------------------------

    @hotpatch.hookimpl
    def hotpatch_after_apply(
        self, patch: hotpatch.Patch, registry: hotpatch.Registry, result: hotpatch.ApplyResult
    ) -> None:
        last = _last(registry, ("apply", "replay"), patch.version)
        self.applies.labels(source=source_of(last.who if last is not None else "api")).inc()
        self.apply_seconds.observe(result.elapsed_s)
        self.track(registry)

    @hotpatch.hookimpl
    def hotpatch_after_rollback(
        self, registry: hotpatch.Registry, result: hotpatch.RollbackResult
    ) -> None:
        last = _last(registry, ("rollback",), ", ".join(result.versions))
        source = source_of(last.who if last is not None else "api")
        self.rollbacks.labels(source=source).inc(len(result.versions))
        self.track(registry)

    @hotpatch.hookimpl
    def hotpatch_rejected(self, version: str | None, source: str, reason: str, who: str) -> None:
        self.rejections.labels(source=source_of(who)).inc()

    @hotpatch.hookimpl
    def hotpatch_restart_scheduled(
        self, version: str, kind: str, reasons: list[str], when: float
    ) -> None:
        self.restarts_scheduled.labels(kind=kind).inc()

    @hotpatch.hookimpl
    def hotpatch_resumed(self, paused_s: float) -> None:
        self.restart_pause_seconds.observe(paused_s)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _last(
    registry: hotpatch.Registry, actions: tuple[str, ...], version: str
) -> hotpatch.HistoryEntry | None:
    """The newest history entry for this action and version."""
    for entry in reversed(registry.history):
        if entry.action in actions and entry.version == version:
            return entry
    return None
