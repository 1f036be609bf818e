"""New code that takes over and fails its health check is rolled back; state and journal kept."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_baselines import drop_bundle, make_bundle
from test_supervisor import Supervised, request, supervise, wait_for
from test_supervisor_cli import hotpatch
from test_supervisor_patches import drop, logic_patch, result_of, under_load, watching
from test_workers import all_serving

from hotpatch._journal import Journal

pytestmark = pytest.mark.e2e

__all__ = ["supervise"]  # the fixture, shared with test_supervisor

HOT = "hot-on-1.0"
SICK_HOOK = "1 hotpatch_health_check hook(s) answered False"


def drop_release(supervised: Supervised, folder: Path, logic: str) -> dict[str, Any]:
    """Drop baseline 2.0, whose ``counter_logic`` is ``logic``, into ``folder``; its result."""
    bundle = make_bundle(folder.parent, "2.0", "unused")
    (bundle / "src" / "counter_logic.py").write_text(textwrap.dedent(logic))
    drop_bundle(folder, bundle)
    return result_of(folder, "release-2.0", supervised)


SICK_LOGIC = """
    def tag():
        return "sick-2.0"

    def healthy():
        return False
"""

# Fault injection in the new code: the process dies right after the old one
# handed its work over, before it says ready.
DIES_AFTER_HANDOVER = """
    import os

    from hotpatch.service._runtime import Runtime

    _receive = Runtime._receive_rounds

    def _receive_then_die(self, until):
        message = _receive(self, until)
        if until == "handover":
            os._exit(9)
        return message

    Runtime._receive_rounds = _receive_then_die

    def tag():
        return "never-served"

    def healthy():
        return True
"""


def journal(folder: Path, name: str = ".journal.json") -> tuple[str, list[str]]:
    state = Journal(folder / name).read()
    assert state is not None
    return state.baseline, [e.version for e in state.level]


def with_hot_patch(supervised: Supervised, folder: Path) -> None:
    drop(folder, "fix-1.0.1.py", logic_patch("1.0.1", HOT))
    assert result_of(folder, "fix-1.0.1.py", supervised)["outcome"] == "applied"
    assert request(supervised.address, "/get")["tag"] == HOT


def assert_back_on_the_old_code(supervised: Supervised, folder: Path) -> dict[str, Any]:
    status = supervised.wait(
        lambda s: s["state"] == "running" and s["child"] and s["child"]["ready"],
        "a process serving the old code",
    )
    assert status["patches"]["baseline"] == "1.0"
    assert status["patches"]["level"] == ["1.0.1"]
    assert status["patches"]["code_root"] is None
    assert journal(folder) == ("1.0", ["1.0.1"])
    answer = request(supervised.address, "/get")
    assert answer["tag"] == HOT
    assert answer["pid"] == status["child"]["pid"]
    return status


def test_a_baseline_whose_new_process_fails_its_health_check_is_rolled_back(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    folder, supervised = watching(supervise, tmp_path, "--plugin", options=("--health-url", "/get"))
    first = supervised.child_pid
    with under_load(supervised) as load:
        with_hot_patch(supervised, folder)
        result = drop_release(supervised, folder, SICK_LOGIC)
        assert result["dir"] == "rejected", result
        assert result["outcome"] == "rejected"
        assert "failed its health check" in result["reason"]
        assert SICK_HOOK in result["reason"]
        assert "rolled back to baseline 1.0 at level 1.0.1" in result["reason"]
        assert result["health"] == [SICK_HOOK]  # the details, for machines
        assert result["rolled_back"] == "baseline 1.0 at level 1.0.1"
        status = assert_back_on_the_old_code(supervised, folder)
        restart = status["last_restart"]
        assert restart["ok"] is False
        assert restart["health"] == [SICK_HOOK]
        assert restart["rolled_back"] == "baseline 1.0 at level 1.0.1"
        shown = hotpatch("status", "--folder", str(folder)).stdout
        assert "preserving failed, paused" in shown
        assert "rolled back to baseline 1.0 at level 1.0.1" in shown
        assert restart["old_pid"] == first
        assert restart["new_pid"] == status["child"]["pid"]
        assert restart["state"] == "complete"
        last = status["patches"]["last"]
        assert last["outcome"] == "rejected"
        assert last["health"] == [SICK_HOOK]
        assert last["rolled_back"] == "baseline 1.0 at level 1.0.1"
        rollback = status["child"]["pid"]
        wait_for(lambda: load.served_by(rollback), "a request to the rolled-back process")
    body = request(supervised.address, "/get")
    load.check(body["counters"])  # exactly, across both restarts
    # The state went through the unhealthy process and back (hotpatch_save_state).
    sick = body["plugin"]["pids"][1]
    assert body["plugin"]["pids"] == [first, sick]
    assert len(set(load.pids)) in (2, 3)  # the sick process may have served some
    assert set(load.pids) <= {first, sick, rollback}
    log = supervised.log()
    assert f"the new process {sick} took over and failed its health check" in log
    # A later restart keeps the old baseline and its hot patch.
    outcome = supervised.restart()
    assert outcome["ok"], outcome
    assert request(supervised.address, "/get")["tag"] == HOT


def test_a_patch_applied_through_a_restart_whose_process_is_unhealthy_is_rolled_back(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    folder, supervised = watching(supervise, tmp_path, "--plugin", options=("--settle", "0.2"))
    first = supervised.child_pid
    sick = logic_patch(
        "1.0.2",
        "sick",
        head=", restart=True",
        extra="""
        @patch.replace("counter_logic:healthy")
        def healthy():
            return False
        """,
    )
    with under_load(supervised) as load:
        with_hot_patch(supervised, folder)
        drop(folder, "big-1.0.2.py", sick)
        result = result_of(folder, "big-1.0.2.py", supervised)
        assert result["dir"] == "rejected", result
        assert result["via"] == "restart"
        assert SICK_HOOK in result["reason"]
        assert "patch 1.0.2 was applied through a restart" in result["reason"]
        assert "rolled back to baseline 1.0 at level 1.0.1" in result["reason"]
        assert result["health"] == [SICK_HOOK]
        assert result["restart"]["rolled_back"] == result["rolled_back"]
        status = assert_back_on_the_old_code(supervised, folder)
        assert status["last_restart"]["state"] == "complete"
        assert status["last_restart"]["health"] == [SICK_HOOK]
        assert status["patches"]["last"]["rolled_back"] == "baseline 1.0 at level 1.0.1"
        rollback = status["child"]["pid"]
        wait_for(lambda: load.served_by(rollback), "a request to the rolled-back process")
    body = request(supervised.address, "/get")
    load.check(body["counters"])
    assert body["plugin"]["pids"][0] == first
    assert len(body["plugin"]["pids"]) == 2
    # The same version, healthy this time, goes in.
    drop(folder, "big-again.py", logic_patch("1.0.2", "healthy", head=", restart=True"))
    result = result_of(folder, "big-again.py", supervised)
    assert result["outcome"] == "applied", result
    assert journal(folder) == ("1.0", ["1.0.1", "1.0.2"])


def test_a_baseline_whose_new_process_dies_after_the_handover_keeps_the_old_hot_patches(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    folder, supervised = watching(supervise, tmp_path)
    first = supervised.child_pid
    with under_load(supervised) as load:
        with_hot_patch(supervised, folder)
        result = drop_release(supervised, folder, DIES_AFTER_HANDOVER)
        assert result["dir"] == "rejected", result
        assert "exited with status 9 before it was ready" in result["reason"]
        assert "no longer serves" in result["reason"]
        status = assert_back_on_the_old_code(supervised, folder)
        assert status["last_restart"]["kind"] == "recovery"
        assert status["last_restart"]["ok"]
        recovered = status["child"]["pid"]
        assert recovered != first
        wait_for(lambda: load.served_by(recovered), "a request to the recovered process")
    # The old process handed its final round over before the new one died.
    load.check(request(supervised.address, "/get")["counters"])
    assert set(load.pids) == {first, recovered}


DIES_WHEN_ASKED = """
    import os

    def tag():
        return "dies-when-asked"

    def healthy():
        os._exit(7)
"""


def test_new_code_that_dies_in_its_health_check_is_rolled_back_from_the_last_round(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    folder, supervised = watching(supervise, tmp_path, "--plugin")
    with_hot_patch(supervised, folder)
    for _ in range(5):
        request(supervised.address, "/inc?c=0")
    result = drop_release(supervised, folder, DIES_WHEN_ASKED)
    assert result["dir"] == "rejected", result
    assert "no health answer" in result["reason"]
    assert "exited with status 7" in result["reason"]
    assert "rolled back to baseline 1.0 at level 1.0.1" in result["reason"]
    status = assert_back_on_the_old_code(supervised, folder)
    assert status["last_restart"]["state"] == "from-snapshot"  # the dead one sent nothing
    assert request(supervised.address, "/get")["counters"] == {"hits": 5, "c0": 5}


# Each process of this code appends a line to MARKS at import; from the second
# one on, every process of it is unhealthy: the first batch passes, the second fails.
COUNTED_LOGIC = """
    import os

    MARKS = {marks!r}
    fd = os.open(MARKS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, b"started\\n")
    os.close(fd)

    def tag():
        return "new-2.0"

    def healthy():
        with open(MARKS) as marks:
            return len(marks.readlines()) < 2
"""


@pytest.mark.slow
def test_a_halted_baseline_rollout_rolls_the_changed_workers_back(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    folder, supervised = watching(
        supervise, tmp_path, "--plugin", options=("--workers", "3", "--settle", "0"), serving=False
    )
    all_serving(supervised, 3)
    marks = tmp_path / "marks"
    with under_load(supervised, workers=True) as load:
        drop(folder, "fix-1.0.1.py", logic_patch("1.0.1", HOT))
        assert result_of(folder, "fix-1.0.1.py", supervised)["outcome"] == "applied"
        result = drop_release(supervised, folder, COUNTED_LOGIC.format(marks=str(marks)))
    assert load.refused == 0
    assert load.failed == []
    assert result["dir"] == "rejected", result
    assert "rollout halted after batch 2" in result["reason"]
    back = "rolled back to baseline 1.0 at level 1.0.1"
    assert f"worker 0: {back}, worker 1: {back}" in result["reason"]
    status = supervised.status()
    rollout = status["rollout"]
    assert rollout["rolled_back"] == {"0": back, "1": back}
    assert rollout["state"] == "rolled-back"
    assert rollout["changed"] == [0, 1]
    assert sorted(rollout["unhealthy"]) == [0, 1]
    assert [w["baseline"] for w in status["workers"]] == ["1.0", "1.0", "1.0"]
    assert [w["level"] for w in status["workers"]] == [["1.0.1"]] * 3
    for worker in range(3):
        assert journal(folder, f".journal.worker{worker}.json") == ("1.0", ["1.0.1"])
    assert marks.read_text().count("started") == 2  # worker 2 never ran the new code
    assert {request(supervised.address, "/get")["tag"] for _ in range(12)} == {HOT}
