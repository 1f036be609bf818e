"""`hotpatch watch` on a supervisor's folder: a rollout's last steps come before its outcome.

The supervisor writes a rollout's last step to its status file, then files the
outcome (its log line, its result file). The watcher reads the status file and
the log one after the other; when both were written between its two reads, it
saw the outcome and not the step written before it, stopped at ``--count 1``
and never showed the rollout's end (found under load by
test_supervisor_cli::test_an_apply_rolls_through_the_workers_and_shows_its_progress).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import queue
from pathlib import Path
from typing import Any

from hotpatch.agent._outcome_log import LogTail, OutcomeLog
from hotpatch.cli._follow import RolloutFollower, _follow

ROLLOUT: dict[str, Any] = {
    "what": "patch fix-1.0.3.py",
    "state": "running",
    "domains": [[0], [1]],
    "batches": [{"batch": 1}, {"batch": 2}],
    "changed": [0, 1],
    "unhealthy": [],
    "progress": ["t1 batch 1/2: workers [0]", "t2 batch 2/2: workers [1]"],
    "started": "t0",
}


class SupervisorBetweenReads(LogTail):
    """A real tail of a real log; before its first read the supervisor ends the rollout
    (its last step in the status file) and files the outcome (a line in the log)."""

    def __init__(self, folder: Path, status_file: Path) -> None:
        super().__init__(folder)
        self.folder, self.status_file, self.ended = folder, status_file, False

    def read(self) -> list[dict[str, Any]]:
        if not self.ended:
            self.ended = True
            done = {**ROLLOUT, "state": "done", "progress": [*ROLLOUT["progress"], "t3 done"]}
            self.status_file.write_text(json.dumps({"rollouts": [done]}))
            OutcomeLog(self.folder).append(
                {
                    "event": "outcome",
                    "version": "1.0.3",
                    "outcome": "applied",
                    "time": "t4",
                    "source": "folder",
                }
            )
        return super().read()


def test_a_rollouts_last_step_is_shown_before_its_outcome(tmp_path: Path) -> None:
    status_file = tmp_path / "status.json"
    status_file.write_text(json.dumps({"rollouts": []}))
    shown = io.StringIO()  # stdout, where both go
    follower = RolloutFollower(status_file, shown, tty=False, named=True)
    status_file.write_text(json.dumps({"rollouts": [ROLLOUT]}))  # under way
    tail = SupervisorBetweenReads(tmp_path, status_file)
    with contextlib.redirect_stdout(shown):
        _follow(argparse.Namespace(count=1, json=False), queue.Queue(), tail, follower)
    tail.close()
    assert shown.getvalue().splitlines() == [
        "t1  rollout patch fix-1.0.3.py: batch 1/2: workers [0]",
        "t2  rollout patch fix-1.0.3.py: batch 2/2: workers [1]",
        "t3  rollout patch fix-1.0.3.py: done",
        "t4  1.0.3  applied  from folder",
    ]
