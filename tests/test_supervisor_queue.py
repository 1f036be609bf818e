"""A restart asked for while another one runs (SIGHUP, a baseline, a patch needing a restart):
merged into it if it has not started its new process yet, queued after it otherwise, never lost.

Real supervisor, real service processes, real clients. The service is slow to
start (``--start-delay``), so the second request surely lands during the first
restart; ``--started-from FILE`` shows which code on disk a process started with.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_baselines import answer_tag, drop_bundle, make_bundle
from test_supervisor import Supervised, request, supervise, wait_for
from test_supervisor_patches import drop, logic_patch, result_of, under_load, watching

__all__ = ["supervise"]  # the fixture, shared with test_supervisor

pytestmark = pytest.mark.e2e

DELAY = ("--start-delay", "1.0")


def started_from(supervised: Supervised) -> str:
    answer: str = request(supervised.address, "/get")["started_from"]
    return answer


def restarting(supervised: Supervised) -> dict[str, Any]:
    """Wait until a restart has started its new process (which reads the code first)."""
    return supervised.wait(lambda s: s["starting"] is not None, "a new process starting")


def started_log(supervised: Supervised, count: int) -> None:
    """Wait until ``count`` processes said what they started from."""
    wait_for(lambda: supervised.log().count("started from ") >= count, f"{count} starts")


def settled(supervised: Supervised, restarts: int) -> dict[str, Any]:
    return supervised.wait(
        lambda s: (
            sum(s["restarts"].values()) >= restarts
            and s["state"] == "running"
            and s["starting"] is None
            and s["child"]["ready"]
        ),
        f"{restarts} starts and restarts, then running",
    )


def test_a_sighup_during_a_restart_is_queued_and_runs_the_code_on_disk_then(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    code = tmp_path / "code"
    code.write_text("one")
    supervised = supervise(*DELAY, "--started-from", str(code))
    with under_load(supervised) as load:
        supervised.process.send_signal(signal.SIGHUP)
        restarting(supervised)
        started_log(supervised, 2)  # the new process has read "one"
        code.write_text("two")
        supervised.process.send_signal(signal.SIGHUP)  # during the first restart
        status = settled(supervised, 3)
        wait_for(lambda: load.served_by(status["child"]["pid"]), "a request to the last one")
    assert status["restarts"] == {"start": 1, "preserving": 2}
    assert started_from(supervised) == "two"
    load.check(request(supervised.address, "/get")["counters"])


def test_sighups_before_the_new_process_starts_are_merged(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    code = tmp_path / "code"
    code.write_text("one")
    supervised = supervise(*DELAY, "--started-from", str(code))
    code.write_text("two")
    for _ in range(3):
        supervised.process.send_signal(signal.SIGHUP)
    status = settled(supervised, 2)
    assert started_from(supervised) == "two"
    assert 1 <= status["restarts"]["preserving"] <= 3


@pytest.mark.slow
def test_a_baseline_arriving_during_a_restart_goes_in_after_it(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    code = tmp_path / "code"
    code.write_text("one")
    folder, supervised = watching(supervise, tmp_path, *DELAY, "--started-from", str(code))
    with under_load(supervised) as load:
        supervised.process.send_signal(signal.SIGHUP)
        restarting(supervised)
        drop_bundle(folder, make_bundle(tmp_path, "2.0", "baseline-2.0"))
        result = result_of(folder, "release-2.0", supervised)
        assert result["outcome"] == "applied", result
        status = settled(supervised, 3)
        wait_for(lambda: load.served_by(status["child"]["pid"]), "a request to the last one")
    assert status["restarts"] == {"start": 1, "preserving": 2}
    assert status["patches"]["baseline"] == "2.0"
    assert answer_tag(supervised) == "baseline-2.0"
    load.check(request(supervised.address, "/get")["counters"])


@pytest.mark.slow
def test_a_second_baseline_arriving_during_the_first_ones_restart_runs_at_the_end(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    folder, supervised = watching(supervise, tmp_path, *DELAY)
    with under_load(supervised) as load:
        drop_bundle(folder, make_bundle(tmp_path, "2.0", "baseline-2.0"))
        restarting(supervised)
        drop_bundle(folder, make_bundle(tmp_path, "3.0", "baseline-3.0"))
        assert result_of(folder, "release-2.0", supervised)["outcome"] == "applied"
        assert result_of(folder, "release-3.0", supervised)["outcome"] == "applied"
        status = settled(supervised, 3)
        wait_for(lambda: load.served_by(status["child"]["pid"]), "a request to the last one")
    assert status["patches"]["baseline"] == "3.0"
    assert answer_tag(supervised) == "baseline-3.0"
    load.check(request(supervised.address, "/get")["counters"])


@pytest.mark.slow
def test_a_patch_needing_a_restart_dropped_during_a_restart_goes_in_after_it(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    folder, supervised = watching(supervise, tmp_path, *DELAY)
    with under_load(supervised) as load:
        supervised.process.send_signal(signal.SIGHUP)
        restarting(supervised)
        drop(folder, "big-1.0.1.py", logic_patch("1.0.1", "restarted", head=", restart=True"))
        result = result_of(folder, "big-1.0.1.py", supervised)
        assert result["outcome"] == "applied", result
        assert result["via"] == "restart"
        status = settled(supervised, 3)
        wait_for(lambda: load.served_by(status["child"]["pid"]), "a request to the last one")
    assert status["patches"]["level"] == ["1.0.1"]
    assert answer_tag(supervised) == "restarted"
    load.check(request(supervised.address, "/get")["counters"])


@pytest.mark.slow
def test_a_sighup_during_a_baseline_restart_restarts_again_on_the_new_baseline(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    code = tmp_path / "code"
    code.write_text("one")
    folder, supervised = watching(supervise, tmp_path, *DELAY, "--started-from", str(code))
    with under_load(supervised) as load:
        drop_bundle(folder, make_bundle(tmp_path, "2.0", "baseline-2.0"))
        restarting(supervised)
        started_log(supervised, 2)
        code.write_text("two")
        supervised.process.send_signal(signal.SIGHUP)
        assert result_of(folder, "release-2.0", supervised)["outcome"] == "applied"
        status = settled(supervised, 3)
        wait_for(lambda: load.served_by(status["child"]["pid"]), "a request to the last one")
    assert status["restarts"] == {"start": 1, "preserving": 2}
    assert answer_tag(supervised) == "baseline-2.0"  # the SIGHUP kept the new baseline
    assert started_from(supervised) == "two"
    load.check(request(supervised.address, "/get")["counters"])
