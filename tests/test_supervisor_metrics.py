"""``hotpatch run --metrics``: a real supervisor's metrics, scraped over real HTTP."""

from __future__ import annotations

import argparse
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_metrics import Scrape
from test_supervisor import REPO, SERVICE, WAIT, Supervised, supervise
from test_supervisor_cli import hotpatch
from test_supervisor_patches import BASE_OPTIONS, drop, logic_patch, result_of
from test_workers import all_serving, unhealthy_patch

from hotpatch.supervisor._cli import parse_metrics_address
from hotpatch.supervisor._metrics import open_metrics

pytestmark = pytest.mark.e2e

__all__ = ["supervise"]  # the fixture, shared with test_supervisor

STARTED = {"kind": "start", "cause": "start", "outcome": "ok"}


def scrape_until(
    supervised: Supervised, predicate: Callable[[Scrape], object], what: str
) -> Scrape:
    """Scrape the supervisor's endpoint until ``predicate`` holds (the bridge looks 4x a second)."""
    url = supervised.status()["metrics"]
    deadline = time.monotonic() + WAIT
    scrape = Scrape(url)
    while not predicate(scrape):
        if time.monotonic() > deadline or supervised.process.poll() is not None:
            pytest.fail(
                f"no metrics showing {what}; last scrape {scrape.samples}\n{supervised.log()}"
            )
        time.sleep(0.05)
        scrape = Scrape(url)
    return scrape


def workers(scrape: Scrape) -> dict[str, float]:
    return {dict(k)["worker"]: v for k, v in scrape.labelled("hotpatch_worker_level").items()}


def versions(scrape: Scrape) -> dict[str, tuple[str, str]]:
    return {
        labels["worker"]: (labels["version"], labels["baseline"])
        for labels in map(dict, scrape.labelled("hotpatch_worker_version_info"))
    }


def restarts(scrape: Scrape, **labels: str) -> float:
    return scrape.samples.get(("hotpatch_restarts_total", frozenset(labels.items())), 0.0)


def pauses(scrape: Scrape) -> float:
    return scrape("hotpatch_restart_pause_seconds_count")


# -- the option ---------------------------------------------------------------------------


def test_the_address_must_be_loopback_host_and_port() -> None:
    assert parse_metrics_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_metrics_address("[::1]:9100") == ("::1", 9100)
    with pytest.raises(argparse.ArgumentTypeError, match="not a loopback address"):
        parse_metrics_address("0.0.0.0:9100")
    with pytest.raises(argparse.ArgumentTypeError, match="not HOST:PORT"):
        parse_metrics_address("9100")


def test_without_prometheus_client_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'pyhotpatch\[metrics\]'"):
        open_metrics("127.0.0.1", 0)


def run_cli(*options: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "hotpatch.supervisor", "run", "--bind", "http=127.0.0.1:0"]
    command += [*options, "--", sys.executable, str(SERVICE)]
    return subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=WAIT, cwd=REPO
    )


def test_the_cli_refuses_a_remote_address_and_a_port_in_use() -> None:
    refused = run_cli("--metrics", "0.0.0.0:9100")
    assert refused.returncode == 2
    assert "not a loopback address" in refused.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        in_use = run_cli("--metrics", f"127.0.0.1:{port}")
    assert in_use.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in in_use.stderr


# -- a real service ---------------------------------------------------------------------


def test_two_workers_levels_applies_rejections_rollbacks_and_restart_pauses(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    folder = tmp_path / "patches"
    options = ("--workers", "2", "--settle", "0.2", "--watch", str(folder))
    options = (*options, "--metrics", "127.0.0.1:0", *BASE_OPTIONS)
    supervised = supervise("--plugin", options=options, serving=False)
    all_serving(supervised, 2)
    url = supervised.status()["metrics"]
    assert url.startswith("http://127.0.0.1:")
    assert url.endswith("/metrics")
    assert not url.endswith(":0/metrics")
    assert f"serving metrics on {url}" in supervised.log()
    shown = hotpatch("status", "--folder", str(folder)).stdout
    assert re.search(rf"^metrics +{re.escape(url)}$", shown, re.MULTILINE), shown

    scrape = scrape_until(supervised, lambda s: len(workers(s)) == 2, "both workers")
    assert workers(scrape) == {"0": 0, "1": 0}
    assert versions(scrape) == {"0": ("1.0", "1.0"), "1": ("1.0", "1.0")}
    assert scrape("hotpatch_patch_level") == 0
    assert restarts(scrape, **STARTED) == 2
    assert pauses(scrape) == 0

    drop(folder, "fix-1.0.1.py", logic_patch("1.0.1", "fixed"))
    assert result_of(folder, "fix-1.0.1.py", supervised)["outcome"] == "applied"
    scrape = scrape_until(
        supervised,
        lambda s: s("hotpatch_applies_total", source="folder") == 1 and s("hotpatch_patch_level"),
        "the patch applied",
    )
    assert workers(scrape) == {"0": 1, "1": 1}
    assert versions(scrape) == {"0": ("1.0.1", "1.0"), "1": ("1.0.1", "1.0")}
    assert scrape("hotpatch_patch_level") == 1
    assert scrape("hotpatch_version_info", baseline="1.0", version="1.0.1") == 1
    assert scrape("hotpatch_rejections_total", source="folder") == 0
    assert scrape("hotpatch_apply_seconds_count") == 1  # the service's apply time

    # Refused by verification (no such target): never reaches a worker.
    bad = logic_patch("1.0.2", "x").replace("counter_logic:tag", "counter_logic:nothing_here")
    drop(folder, "bad-1.0.2.py", bad)
    assert result_of(folder, "bad-1.0.2.py", supervised)["outcome"] == "rejected"
    # Unhealthy in the first domain: worker 0 takes it, the rollout halts and rolls it back.
    drop(folder, "sick-1.0.3.py", unhealthy_patch("1.0.3"))
    assert result_of(folder, "sick-1.0.3.py", supervised)["outcome"] == "rejected"
    scrape = scrape_until(
        supervised,
        lambda s: (
            s("hotpatch_rejections_total", source="folder") == 2
            and s("hotpatch_rollbacks_total", source="other") == 1
        ),
        "two rejections and one rollback",
    )
    assert workers(scrape) == {"0": 1, "1": 1}
    assert scrape("hotpatch_applies_total", source="folder") == 1

    supervised.process.send_signal(signal.SIGHUP)  # both workers, one domain at a time
    scrape = scrape_until(supervised, lambda s: pauses(s) == 2, "two restart pauses")
    assert restarts(scrape, kind="preserving", cause="signal", outcome="ok") == 2
    assert restarts(scrape, **STARTED) == 2
    assert scrape("hotpatch_restart_pause_seconds_sum") > 0
    assert workers(scrape) == {"0": 1, "1": 1}  # the new processes replayed their journals


def test_one_worker_is_worker_0_and_a_patch_needing_a_restart_is_a_restart_pause(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    folder = tmp_path / "patches"
    options = ("--watch", str(folder), "--metrics", "127.0.0.1:0", *BASE_OPTIONS)
    supervised = supervise(options=options)
    scrape = scrape_until(supervised, lambda s: workers(s) == {"0": 0}, "worker 0")
    assert restarts(scrape, **STARTED) == 1
    drop(folder, "big-1.0.1.py", logic_patch("1.0.1", "restarted", head=", restart=True"))
    result = result_of(folder, "big-1.0.1.py", supervised)
    assert (result["outcome"], result["via"]) == ("applied", "restart")
    scrape = scrape_until(
        supervised,
        lambda s: workers(s) == {"0": 1} and s("hotpatch_applies_total", source="folder"),
        "worker 0 patched",
    )
    assert restarts(scrape, kind="preserving", cause="patch", outcome="ok") == 1
    assert pauses(scrape) == 1
    assert scrape("hotpatch_applies_total", source="folder") == 1
    assert versions(scrape) == {"0": ("1.0.1", "1.0")}

    # `hotpatch apply` and `hotpatch rollback` through the control socket count too.
    files = tmp_path / "outbox"
    files.mkdir()
    (files / "fix-1.0.2.py").write_text(logic_patch("1.0.2", "fixed"))
    bad = logic_patch("1.0.3", "x").replace("counter_logic:tag", "counter_logic:nothing_here")
    (files / "bad-1.0.3.py").write_text(bad)
    where = ("--folder", str(folder))
    assert hotpatch("apply", str(files / "fix-1.0.2.py"), *where).returncode == 0
    assert hotpatch("apply", str(files / "bad-1.0.3.py"), *where).returncode == 1
    assert hotpatch("rollback", *where).returncode == 0
    scrape = scrape_until(
        supervised,
        lambda s: (
            s("hotpatch_applies_total", source="control") == 1
            and s("hotpatch_rejections_total", source="control") == 1
            and s("hotpatch_rollbacks_total", source="other") == 1
        ),
        "the control socket's apply, rejection and rollback",
    )
    assert scrape("hotpatch_applies_total", source="folder") == 1
    assert workers(scrape) == {"0": 1}


@pytest.mark.slow
def test_a_folder_made_unsafe_shows_in_the_metrics_and_the_status(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    folder = tmp_path / "patches"
    options = ("--watch", str(folder), "--metrics", "127.0.0.1:0", *BASE_OPTIONS)
    supervised = supervise(options=options)
    scrape = scrape_until(supervised, lambda s: s("hotpatch_folder_unsafe") == 0, "the folder")
    assert scrape("hotpatch_drop_waiting") == 0
    folder.chmod(0o777)
    scrape_until(supervised, lambda s: s("hotpatch_folder_unsafe") == 1, "the folder unsafe")
    shown = hotpatch("status", "--folder", str(folder))
    assert shown.returncode == 0, shown.stderr
    line = next(line for line in shown.stdout.splitlines() if line.startswith("folder"))
    assert "UNSAFE, no drop is taken" in line
    assert f"chmod go-w {folder}" in line
    folder.chmod(0o700)
    scrape_until(supervised, lambda s: s("hotpatch_folder_unsafe") == 0, "the folder safe again")
