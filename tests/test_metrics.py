"""The metrics plugin: real applies, rollbacks and rejections, scraped over real HTTP."""

from __future__ import annotations

import errno
import socket
import sys
import threading
import time
import types
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import hotpatch
from hotpatch.agent._control import request
from hotpatch_plugins.metrics import APPLY_BUCKETS, PAUSE_BUCKETS, SOURCES, Metrics, source_of

WAIT_S = 60.0  # a bound so a broken build fails instead of hanging; never a measurement

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

# Straight to the socket: an http_proxy in the environment must not intercept 127.0.0.1.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(url: str) -> Any:
    return _opener.open(url, timeout=WAIT_S)


class Scrape:
    """One scrape of ``/metrics``: the families' types and every sample's value."""

    def __init__(self, url: str) -> None:
        with fetch(url) as response:
            self.status = response.status
            self.content_type = response.headers["Content-Type"]
            text = response.read().decode()
        self.types: dict[str, str] = {}
        self.samples: Samples = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples[sample.name, frozenset(sample.labels.items())] = sample.value

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples[name, frozenset(labels.items())]

    def labelled(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: value for (n, labels), value in self.samples.items() if n == name}


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    served = Metrics(0)
    yield served
    served.close()


@pytest.fixture
def registries(metrics: Metrics) -> Iterator[Callable[..., hotpatch.Registry]]:
    """``make(**kwargs)`` -> a Registry on 1.0 reporting to ``metrics``, rolled back at teardown."""
    made: list[hotpatch.Registry] = []

    def make(**kwargs: Any) -> hotpatch.Registry:
        reg = hotpatch.Registry("1.0", plugins=[metrics], **kwargs)
        made.append(reg)
        return reg

    yield make
    for reg in made:
        if reg.level:
            reg.rollback(to="1.0")


@pytest.fixture
def target(make_module: Callable[[str], types.ModuleType]) -> types.ModuleType:
    return make_module("def price(x):\n    return x\n")


def _patch(write_patch: Callable[..., Path], mod: types.ModuleType, version: str) -> Path:
    return write_patch(
        f"""
        from hotpatch import Patch
        patch = Patch(version="{version}", baseline="1.0")

        @patch.replace("{mod.__name__}:price")
        def price(x):
            return x * 2
        """,
        name=f"{version}.py",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _by_source(scrape: Scrape, name: str) -> dict[str, float]:
    return {dict(labels)["source"]: value for labels, value in scrape.labelled(name).items()}


def _bucket_counts(scrape: Scrape, name: str) -> dict[float, float]:
    return {float(dict(labels)["le"]): v for labels, v in scrape.labelled(f"{name}_bucket").items()}


# -- the exposition ---------------------------------------------------------------------------


def test_a_fresh_endpoint_exposes_every_metric_at_zero(metrics: Metrics) -> None:
    assert metrics.port > 0
    assert metrics.url == f"http://127.0.0.1:{metrics.port}/metrics"
    scrape = Scrape(metrics.url)
    assert scrape.status == 200
    assert scrape.content_type.startswith("text/plain")
    # (the text format shows each counter's and histogram's creation time as a gauge)
    assert {n: t for n, t in scrape.types.items() if not n.endswith("_created")} == {
        "hotpatch_patch_level": "gauge",
        "hotpatch_version_info": "gauge",
        "hotpatch_applies": "counter",
        "hotpatch_rollbacks": "counter",
        "hotpatch_rejections": "counter",
        "hotpatch_restarts_scheduled": "counter",
        "hotpatch_apply_seconds": "histogram",
        "hotpatch_restart_pause_seconds": "histogram",
        "hotpatch_worker_level": "gauge",
        "hotpatch_worker_version_info": "gauge",
        "hotpatch_restarts": "counter",
        "hotpatch_folder_unsafe": "gauge",
        "hotpatch_drop_waiting": "gauge",
    }
    assert scrape("hotpatch_patch_level") == 0
    assert scrape("hotpatch_folder_unsafe") == scrape("hotpatch_drop_waiting") == 0
    for counter in ("hotpatch_applies_total", "hotpatch_rollbacks_total"):
        assert _by_source(scrape, counter) == dict.fromkeys(SOURCES, 0)
    assert _by_source(scrape, "hotpatch_rejections_total") == dict.fromkeys(SOURCES, 0)
    assert scrape("hotpatch_apply_seconds_count") == 0
    assert scrape("hotpatch_restart_pause_seconds_count") == 0
    assert sorted(_bucket_counts(scrape, "hotpatch_apply_seconds")) == [
        *APPLY_BUCKETS,
        float("inf"),
    ]
    assert sorted(_bucket_counts(scrape, "hotpatch_restart_pause_seconds")) == [
        *PAUSE_BUCKETS,
        float("inf"),
    ]
    assert scrape.labelled("hotpatch_worker_level") == {}
    assert scrape.labelled("hotpatch_restarts_total") == {}  # labelled by what happened
    # A private registry: nothing of the process (gc, platform) leaks into it.
    assert not [name for name in scrape.types if not name.startswith("hotpatch_")]


def test_applies_rollbacks_and_rejections_are_counted(
    metrics: Metrics, registries: Callable[..., hotpatch.Registry], target, write_patch
) -> None:
    reg = registries()
    first = reg.apply(hotpatch.load_patch(_patch(write_patch, target, "1.0.1")))
    second = reg.apply(hotpatch.load_patch(_patch(write_patch, target, "1.0.2")), who="uid:1000")

    scrape = Scrape(metrics.url)
    assert scrape("hotpatch_patch_level") == 2
    assert scrape("hotpatch_version_info", baseline="1.0", version="1.0.2") == 1
    assert len(scrape.labelled("hotpatch_version_info")) == 1
    assert _by_source(scrape, "hotpatch_applies_total") == {
        **dict.fromkeys(SOURCES, 0),
        "api": 1,
        "control": 1,
    }
    elapsed = [first.elapsed_s, second.elapsed_s]
    assert scrape("hotpatch_apply_seconds_count") == 2
    assert scrape("hotpatch_apply_seconds_sum") == pytest.approx(sum(elapsed))
    for le, count in _bucket_counts(scrape, "hotpatch_apply_seconds").items():
        assert count == sum(e <= le for e in elapsed), le

    stale = _patch(write_patch, target, "1.0.0.5")
    with pytest.raises(hotpatch.VersionConflict):
        reg.apply(hotpatch.load_patch(stale), who="folder:/srv/patches")
    missing = write_patch(
        """
        from hotpatch import Patch
        patch = Patch(version="1.0.3", baseline="1.0")

        @patch.replace("no_such_module_for_metrics:price")
        def price(x):
            return x
        """
    )
    with pytest.raises(hotpatch.TargetNotFound):
        reg.apply(hotpatch.load_patch(missing))
    reg.rollback(to="1.0", who="uid:0")

    scrape = Scrape(metrics.url)
    assert scrape("hotpatch_patch_level") == 0
    assert scrape.labelled("hotpatch_version_info") == {
        frozenset({("baseline", "1.0"), ("version", "1.0")}): 1
    }
    assert _by_source(scrape, "hotpatch_rejections_total") == {
        **dict.fromkeys(SOURCES, 0),
        "folder": 1,
        "api": 1,
    }
    # a rollback of two patches counts both
    assert _by_source(scrape, "hotpatch_rollbacks_total") == {
        **dict.fromkeys(SOURCES, 0),
        "control": 2,
    }
    assert scrape("hotpatch_apply_seconds_count") == 2  # rejections are not applies
    assert target.price(3) == 3


def test_a_journal_replay_counts_as_an_apply_from_the_journal(
    metrics: Metrics, registries: Callable[..., hotpatch.Registry], target, write_patch, tmp_path
) -> None:
    journal = tmp_path / "journal.json"
    first = hotpatch.Registry("1.0", journal=journal)
    first.apply(hotpatch.load_patch(_patch(write_patch, target, "1.0.1")))
    first._stack.clear()  # forget it here, so a second registry replays it (a restart)
    replayed = registries(journal=journal)
    assert replayed.level == ("1.0.1",)
    scrape = Scrape(metrics.url)
    assert _by_source(scrape, "hotpatch_applies_total")["journal"] == 1
    assert scrape("hotpatch_patch_level") == 1
    assert scrape("hotpatch_version_info", baseline="1.0", version="1.0.1") == 1


def test_restart_pauses_and_scheduled_restarts_come_from_the_hooks(
    metrics: Metrics, registries: Callable[..., hotpatch.Registry]
) -> None:
    reg = registries()
    pauses = [0.004, 0.012, 0.3]
    for paused_s in pauses:  # what the service does after a memory-preserving restart
        reg.plugins.notify("hotpatch_resumed", paused_s=paused_s)
    reg.plugins.notify(
        "hotpatch_restart_scheduled",
        version="2.0",
        kind="unplanned-baseline",
        reasons=["a baseline patch"],
        when=time.time(),
    )
    scrape = Scrape(metrics.url)
    assert scrape("hotpatch_restart_pause_seconds_count") == 3
    assert scrape("hotpatch_restart_pause_seconds_sum") == pytest.approx(sum(pauses))
    buckets = _bucket_counts(scrape, "hotpatch_restart_pause_seconds")
    assert (buckets[0.001], buckets[0.005], buckets[0.025], buckets[0.5]) == (0, 1, 2, 3)
    assert scrape("hotpatch_restarts_scheduled_total", kind="unplanned-baseline") == 1


def test_worker_levels_set_by_the_supervisor(metrics: Metrics) -> None:
    metrics.set_worker_level("0", 2, "1.0.2")
    metrics.set_worker_level("1", 1, "1.0.1")
    metrics.set_worker_level("1", 2, "1.0.2")  # rolled on: the old version series goes
    metrics.set_worker_level("2", 0, "1.0")
    scrape = Scrape(metrics.url)
    assert {dict(k)["worker"]: v for k, v in scrape.labelled("hotpatch_worker_level").items()} == {
        "0": 2,
        "1": 2,
        "2": 0,
    }
    assert set(scrape.labelled("hotpatch_worker_version_info")) == {
        frozenset({("worker", "0"), ("version", "1.0.2")}),
        frozenset({("worker", "1"), ("version", "1.0.2")}),
        frozenset({("worker", "2"), ("version", "1.0")}),
    }
    metrics.set_worker_level("3", 0, "1.1", baseline="1.1")
    labels = frozenset({("worker", "3"), ("version", "1.1"), ("baseline", "1.1")})
    assert Scrape(metrics.url)("hotpatch_worker_version_info", **dict(labels)) == 1
    metrics.remove_worker("3")
    metrics.remove_worker("2")
    metrics.remove_worker("never-reported")
    scrape = Scrape(metrics.url)
    assert {dict(k)["worker"] for k in scrape.labelled("hotpatch_worker_level")} == {"0", "1"}
    assert len(scrape.labelled("hotpatch_worker_version_info")) == 2


def test_restarts_by_kind_cause_and_outcome_and_their_pauses(metrics: Metrics) -> None:
    metrics.record_restart("start", "start", ok=True, paused_s=None)
    metrics.record_restart("preserving", "signal", ok=True, paused_s=0.004)
    metrics.record_restart("preserving", "patch", ok=True, paused_s=0.02)
    metrics.record_restart("preserving", "patch", ok=False, paused_s=0.5)  # failed: no pause
    scrape = Scrape(metrics.url)
    assert {
        (labels["kind"], labels["cause"], labels["outcome"]): value
        for labels, value in (
            (dict(k), v) for k, v in scrape.labelled("hotpatch_restarts_total").items()
        )
    } == {
        ("start", "start", "ok"): 1,
        ("preserving", "signal", "ok"): 1,
        ("preserving", "patch", "ok"): 1,
        ("preserving", "patch", "failed"): 1,
    }
    assert scrape("hotpatch_restart_pause_seconds_count") == 2
    assert _bucket_counts(scrape, "hotpatch_restart_pause_seconds")[0.005] == 1


def test_track_shows_the_baseline_before_any_patch(metrics: Metrics) -> None:
    assert Scrape(metrics.url).labelled("hotpatch_version_info") == {}
    metrics.track(hotpatch.Registry("2.3"))
    scrape = Scrape(metrics.url)
    assert scrape("hotpatch_version_info", baseline="2.3", version="2.3") == 1


def test_who_is_reduced_to_a_low_cardinality_source() -> None:
    assert source_of("api") == "api"
    assert source_of("journal") == "journal"
    assert source_of("folder:/srv/shop/patches") == "folder"
    assert source_of("folder") == "folder"
    assert source_of("uid:1000") == "control"
    assert source_of("someone") == "other"
    assert source_of("") == "other"


def test_scrapes_during_concurrent_applies_see_consistent_counts(
    metrics: Metrics, registries: Callable[..., hotpatch.Registry], target, write_patch
) -> None:
    reg = registries()
    paths = [_patch(write_patch, target, f"1.0.{i}") for i in range(1, 21)]
    patches = [hotpatch.load_patch(p) for p in paths]
    seen: list[float] = []
    done = threading.Event()

    def scraper() -> None:
        while not done.is_set():
            scrape = Scrape(metrics.url)
            seen.append(scrape("hotpatch_applies_total", source="api"))

    thread = threading.Thread(target=scraper)
    thread.start()
    try:
        for patch in patches:
            reg.apply(patch)
            reg.rollback()
    finally:
        done.set()
        thread.join()
    assert seen == sorted(seen)  # a counter never goes back
    scrape = Scrape(metrics.url)
    assert scrape("hotpatch_applies_total", source="api") == 20
    assert scrape("hotpatch_rollbacks_total", source="api") == 20
    assert scrape("hotpatch_patch_level") == 0


# -- the agent ------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.005)


def test_through_install_with_a_watched_folder(
    metrics: Metrics, target: types.ModuleType, write_patch, tmp_path: Path
) -> None:
    folder = tmp_path / "watched"
    folder.mkdir(mode=0o700)
    agent = hotpatch.install("1.0", watch=folder, plugins=[metrics], entry_points=False)
    try:
        assert agent.registry is not None
        metrics.track(agent.registry)
        assert Scrape(metrics.url)("hotpatch_version_info", baseline="1.0", version="1.0") == 1

        good = _patch(write_patch, target, "1.0.1")
        good.rename(folder / good.name)
        wait_for((folder / "applied" / good.name).exists, "the patch to be applied")
        bad = write_patch("this is not python(\n", name="broken.py")
        bad.rename(folder / bad.name)
        wait_for((folder / "rejected" / bad.name).exists, "the bad file to be rejected")
        assert target.price(3) == 6

        scrape = Scrape(metrics.url)
        assert scrape("hotpatch_patch_level") == 1
        assert scrape("hotpatch_version_info", baseline="1.0", version="1.0.1") == 1
        assert scrape("hotpatch_applies_total", source="folder") == 1
        assert scrape("hotpatch_rejections_total", source="folder") == 1
        assert scrape("hotpatch_apply_seconds_count") == 1

        answer = request(folder / ".hotpatch.sock", {"cmd": "rollback"})
        assert answer["ok"] is True, answer
        scrape = Scrape(metrics.url)
        assert scrape("hotpatch_rollbacks_total", source="control") == 1
        assert scrape("hotpatch_patch_level") == 0
        assert target.price(3) == 3
    finally:
        agent.stop()
        if agent.registry is not None and agent.registry.level:
            agent.registry.rollback(to="1.0")


# -- life cycle and refusals ------------------------------------------------------------------


def _thread_names() -> set[str]:
    return {t.name for t in threading.enumerate()}


def test_close_stops_the_server_joins_its_thread_and_frees_the_port() -> None:
    port = _free_port()
    metrics = Metrics(port)
    assert metrics.port == port
    assert f"hotpatch-metrics:{port}" in _thread_names()
    assert Scrape(metrics.url).status == 200
    url = metrics.url
    metrics.close()
    assert f"hotpatch-metrics:{port}" not in _thread_names()
    with pytest.raises(urllib.error.URLError) as info:
        fetch(url)
    assert isinstance(info.value.reason, ConnectionRefusedError)
    with socket.socket() as s:  # the port is free again: nothing listens on it
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as any server would
        s.bind(("127.0.0.1", port))
        s.listen()
    metrics.close()  # idempotent
    assert "closed" in repr(metrics)
    again = Metrics(port)  # and a new endpoint can take it
    try:
        assert Scrape(again.url).status == 200
    finally:
        again.close()


def test_context_manager_closes() -> None:
    with Metrics(0) as metrics:
        url = metrics.url
        assert Scrape(url).status == 200
        assert repr(metrics) == f"<Metrics {url}>"
    with pytest.raises(urllib.error.URLError):
        fetch(url)


def test_a_port_in_use_is_refused_and_leaves_a_shared_registry_as_it_was() -> None:
    shared = CollectorRegistry()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match=r"cannot listen on 127\.0\.0\.1:\d+: .*port=0") as info:
            Metrics(port, registry=shared)
    assert info.value.errno == errno.EADDRINUSE
    assert list(shared.collect()) == []
    with Metrics(0, registry=shared) as metrics:  # no "duplicated timeseries": all unregistered
        assert metrics.registry is shared
        assert Scrape(metrics.url)("hotpatch_patch_level") == 0
        assert {f.name for f in shared.collect()} >= {"hotpatch_patch_level", "hotpatch_applies"}


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::", "example.com", ""])
def test_a_non_loopback_host_is_refused(host: str) -> None:
    with pytest.raises(ValueError, match="pass allow_remote=True") as info:
        Metrics(0, host)
    assert f"host {host!r} is not a loopback address" in str(info.value)


def test_allow_remote_serves_on_all_interfaces() -> None:
    with Metrics(0, "0.0.0.0", allow_remote=True) as metrics:
        assert Scrape(f"http://127.0.0.1:{metrics.port}/metrics")("hotpatch_patch_level") == 0


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.1.2.3"])
def test_loopback_hosts_are_served(host: str) -> None:
    with Metrics(0, host) as metrics:
        assert Scrape(metrics.url).status == 200


@pytest.mark.parametrize("port", [-1, 65536, True, "9100", 1.5])
def test_a_bad_port_is_refused(port: Any) -> None:
    with pytest.raises(ValueError, match=r"is not a TCP port; pass 0\.\.65535"):
        Metrics(port)


def test_without_prometheus_client_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'pyhotpatch\[metrics\]'") as info:
        Metrics(0)
    assert info.value.name == "prometheus_client"


def test_a_plugin_that_is_closed_still_counts_and_the_registry_is_unharmed(
    registries: Callable[..., hotpatch.Registry], metrics: Metrics, target, write_patch
) -> None:
    metrics.close()
    reg = registries()
    reg.apply(hotpatch.load_patch(_patch(write_patch, target, "1.0.1")))
    assert target.price(2) == 4
    assert metrics.registry.get_sample_value("hotpatch_applies_total", {"source": "api"}) == 1
