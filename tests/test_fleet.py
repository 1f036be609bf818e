"""The Ansible collection rolls patches across real hosts: network namespaces, sshd, `hotpatch run`.

Five hosts, each a network namespace with its own address, a real OpenSSH server and
the service under ``hotpatch run`` (``tests/fleet/netns.py``), driven over SSH by
``ansible-playbook hotpatch.fleet.rollout`` from ``ansible-core``. These tests run
once per ``make test`` (``make test-fleet``, on Python 3.12); they skip only where
network namespaces cannot be made.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet.load import Load
from fleet.netns import CannotMakeHosts, Fleet, Host

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

GOOD = """
from hotpatch import Patch
patch = Patch(version="1.0.1", baseline="1.0", summary="the right price: +20% tax")

@patch.replace("logic:price")
def price(cents):
    return cents * 6 // 5
"""

# It verifies (imports, its targets resolve) and applies hot, then fails the health check.
BAD = """
from hotpatch import Patch
patch = Patch(version="1.0.2", baseline="1.0", summary="a price that breaks the health check")

@patch.replace("logic:price")
def price(cents):
    return cents * 6 // 5 + 1

@patch.replace("logic:healthy")
def healthy():
    return False
"""

BUNDLE_TOML = """
[patch]
version = "1.1"
kind = "unplanned-baseline"
summary = "release 1.1: the price fix in the shipped code"
[code]
root = "src"
"""

LOGIC_1_1 = '''
"""Release 1.1 of the fleet's service logic."""


def price(cents):
    return cents * 6 // 5 + 5  # 1.1: a handling fee


def healthy():
    return True
'''


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    try:
        made = Fleet(tmp_path_factory.mktemp("fleet"), 5)
        made.__enter__()
    except CannotMakeHosts as exc:
        pytest.skip(f"no namespace hosts here: {exc}")
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def hosts(fleet: Fleet) -> list[Host]:
    """The fleet's hosts, each with a fresh service at baseline 1.0 and its link up."""
    fleet.reset()
    return fleet.hosts


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def good(fleet: Fleet, tmp_path: Path) -> Path:
    patch = write(tmp_path / "fix-1.0.1.py", GOOD)
    fleet.sign(patch)
    return patch


@pytest.fixture
def bad(fleet: Fleet, tmp_path: Path) -> Path:
    patch = write(tmp_path / "sick-1.0.2.py", BAD)
    fleet.sign(patch)
    return patch


def timeline(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def outcomes(events: list[dict[str, Any]], action: str) -> list[tuple[int, str, str]]:
    """(batch, host, status) of each result of ``action``, in order."""
    return [
        (e["batch"], e["host"], e["status"])
        for e in events
        if e["event"] in ("task", "item") and e["action"] == action
    ]


def status(host: Host) -> dict[str, Any]:
    """``hotpatch status --json`` of the host's supervisor (over its control socket)."""
    answer: dict[str, Any] = json.loads(
        subprocess.run(
            [sys.executable, "-m", "hotpatch", "status", "--json", "--folder", str(host.folder)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    )
    return answer


def levels(hosts: list[Host]) -> dict[str, list[str]]:
    return {h.name: status(h)["patches"]["level"] for h in hosts}


def explain(run: subprocess.CompletedProcess[str]) -> str:
    return f"ansible-playbook exited {run.returncode}\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"


def test_good_patch_goes_through_in_batches_of_one_under_load_and_again_changes_nothing(
    fleet: Fleet, hosts: list[Host], good: Path, tmp_path: Path
) -> None:
    events = tmp_path / "timeline.jsonl"
    with Load(hosts) as load:
        run = fleet.playbook(good, timeline=events)
    assert run.returncode == 0, explain(run)
    drops = outcomes(timeline(events), "hotpatch.fleet.patch")
    # 20% of five hosts: five batches of one, in inventory order, each applied.
    assert drops == [(i, f"host{i}", "changed") for i in range(1, 6)]
    assert levels(hosts) == {h.name: ["1.0.1"] for h in hosts}
    assert not load.errors, load.errors[:10]
    for host in hosts:
        assert load.served[host.name] > 0
        assert load.prices[host.name][120] > 0  # the fixed price, served while it rolled
        assert host.get("/price")[1]["price"] == 120

    # The same rollout again changes nothing: no host changed, no file dropped.
    files = {h.name: sorted(p.name for p in h.folder.rglob("*")) for h in hosts}
    again = tmp_path / "again.jsonl"
    rerun = fleet.playbook(good, timeline=again, hotpatch_batch="100%")
    assert rerun.returncode == 0, explain(rerun)
    end = next(e for e in timeline(again) if e["event"] == "end")
    assert {h: s["changed"] for h, s in end["hosts"].items()} == {h.name: 0 for h in hosts}
    assert sorted(outcomes(timeline(again), "hotpatch.fleet.patch")) == [
        (1, f"host{i}", "ok") for i in range(1, 6)
    ]
    assert {h.name: sorted(p.name for p in h.folder.rglob("*")) for h in hosts} == files


def test_bad_patch_stops_after_the_first_batch_and_is_rolled_back(
    fleet: Fleet, hosts: list[Host], bad: Path, tmp_path: Path
) -> None:
    events = tmp_path / "timeline.jsonl"
    run = fleet.playbook(bad, timeline=events)
    assert run.returncode != 0, explain(run)
    got = timeline(events)
    assert [e["batch"] for e in got if e["event"] == "batch"] == [1]  # no second batch
    assert outcomes(got, "hotpatch.fleet.patch") == [(1, "host1", "changed")]
    assert outcomes(got, "hotpatch.fleet.status") == [(1, "host1", "failed")]
    assert (1, "host1", "changed") in outcomes(got, "hotpatch.fleet.rollback")
    assert "answered 503" in run.stdout
    assert levels(hosts) == {h.name: [] for h in hosts}  # rolled back; the rest never had it
    assert hosts[0].get("/health")[0] == 200
    for host in hosts[1:]:
        assert not list((host.folder / "applied").iterdir())


def test_a_host_that_is_down_counts_against_max_fail_percentage(
    fleet: Fleet, hosts: list[Host], good: Path, tmp_path: Path
) -> None:
    fleet.take_down(hosts[1])
    events = tmp_path / "timeline.jsonl"
    run = fleet.playbook(good, timeline=events)
    assert run.returncode != 0, explain(run)
    got = timeline(events)
    # host1 took it; host2 is down: its batch fails, the rollout stops there and the
    # host it changed is rolled back; host3 to host5 are never touched.
    assert [e["batch"] for e in got if e["event"] == "batch"] == [1, 2]
    drops = outcomes(got, "hotpatch.fleet.patch")
    assert drops == [(1, "host1", "changed"), (2, "host2", "unreachable")]
    rolled = [(e["host"], e["status"]) for e in got if e["event"] == "item"]
    assert rolled == [("host1", "changed")]
    assert "host2 is down" in run.stdout
    fleet.bring_up(hosts[1])
    assert levels(hosts) == {h.name: [] for h in hosts}


def test_within_max_fail_percentage_a_down_host_does_not_stop_the_rollout(
    fleet: Fleet, hosts: list[Host], good: Path, tmp_path: Path
) -> None:
    # One batch of all five hosts, one down: 20% failed is not beyond 20%.
    fleet.take_down(hosts[4])
    events = tmp_path / "timeline.jsonl"
    run = fleet.playbook(good, timeline=events, hotpatch_batch="100%")
    assert run.returncode != 0, explain(run)  # host5 failed, and Ansible says so
    got = timeline(events)
    assert not [e for e in got if e["event"] == "item"]  # nothing rolled back
    fleet.bring_up(hosts[4])
    assert levels(hosts) == {**{h.name: ["1.0.1"] for h in hosts[:4]}, "host5": []}
    # A second host down makes it 40%: the rollout stops and the changed hosts roll back.
    fleet.take_down(hosts[3])
    fleet.take_down(hosts[4])
    second = tmp_path / "second.jsonl"
    patch = write(tmp_path / "again" / "fix-1.0.3.py", GOOD.replace("1.0.1", "1.0.3"))
    fleet.sign(patch)
    run = fleet.playbook(patch, timeline=second, hotpatch_batch="100%")
    assert run.returncode != 0, explain(run)
    rolled = sorted(e["host"] for e in timeline(second) if e["event"] == "item")
    assert rolled == ["host1", "host2", "host3"]
    fleet.bring_up(hosts[3])
    fleet.bring_up(hosts[4])
    assert levels(hosts) == {**{h.name: ["1.0.1"] for h in hosts[:4]}, "host5": []}


def test_check_mode_verifies_and_changes_nothing(
    fleet: Fleet, hosts: list[Host], good: Path
) -> None:
    run = fleet.playbook(good, check=True, hotpatch_batch="100%")
    assert run.returncode == 0, explain(run)
    assert "+  - 1.0.1" in run.stdout  # diff mode: the level it would have
    assert levels(hosts) == {h.name: [] for h in hosts}
    for host in hosts:
        assert not list((host.folder / "applied").iterdir())
    # A patch the service would refuse fails in check mode: test_fleet_modules.py.


def test_a_baseline_goes_through_memory_preserving_restarts_host_by_host(
    fleet: Fleet, hosts: list[Host], tmp_path: Path
) -> None:
    bundle = tmp_path / "release-1.1"
    write(bundle / "patch.toml", BUNDLE_TOML)
    write(bundle / "src" / "logic.py", LOGIC_1_1)
    fleet.sign(bundle)
    events = tmp_path / "timeline.jsonl"
    with Load(hosts) as load:
        run = fleet.playbook(bundle, timeline=events)
    assert run.returncode == 0, explain(run)
    got = timeline(events)
    drops = [e for e in got if e["event"] == "task" and e["action"] == "hotpatch.fleet.patch"]
    assert [(e["batch"], e["host"], e["outcome"]) for e in drops] == [
        (i, f"host{i}", "applied") for i in range(1, 6)
    ]
    assert all(e["paused_s"] is not None and e["baseline"] == "1.1" for e in drops)
    assert not load.errors, load.errors[:10]
    for host in hosts:
        answer = status(host)
        assert answer["patches"]["baseline"] == "1.1"
        assert answer["last_restart"]["kind"] == "preserving"
        state = host.get("/state")[1]
        assert len(state["pids"]) == 2  # the process before the restart, and the one after
        # Every request served, before the restart and after it, is counted in one state.
        assert state["hits"] == load.served[host.name]
        assert load.prices[host.name][125] > 0  # 1.1's price, served after its restart
