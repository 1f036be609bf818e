"""Stopping the folder's watch: watchdog's shutdown race stays out of the service's stderr."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hotpatch.agent._observer import SHUTDOWN_RACE

# A service that configured no logging starts and stops its agent while files keep
# changing in the folder (a deploy writing its next drop under a temporary name). Each
# stop loses the race with some chance (about 1 in 10 here): 60 stops all but surely do.
SERVICE = """\
import subprocess, sys, time
import hotpatch

folder = sys.argv[1]
writer = subprocess.Popen([sys.executable, "-c", WRITER, folder])
try:
    for _ in range(int(sys.argv[2])):
        agent = hotpatch.install(
            "1.0", watch=folder, entry_points=False, control_socket=False, verify=False
        )
        time.sleep(0.01)
        agent.stop()
finally:
    writer.kill()
    writer.wait()
print("stopped cleanly", flush=True)
"""
WRITER = """\
import os, sys
path = os.path.join(sys.argv[1], ".next.py.part")
while True:
    with open(path, "w") as out:
        out.write("# being written")
"""


def test_an_agent_stopping_while_files_change_prints_nothing_of_watchdog(tmp_path: Path) -> None:
    folder = tmp_path / "patches"
    folder.mkdir(mode=0o700)
    script = tmp_path / "service.py"
    script.write_text(f"WRITER = {WRITER!r}\n{SERVICE}")
    run = subprocess.run(
        [sys.executable, str(script), str(folder), "60"],
        capture_output=True,
        text=True,
        env={"HOTPATCH_LOG": "off", "PATH": "/usr/bin:/bin"},
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == "stopped cleanly\n"
    assert run.stderr == ""


def test_the_message_still_shows_from_anything_else(caplog: pytest.LogCaptureFixture) -> None:
    """Only the emitters of an observer being stopped are held back, and only that line."""
    logger = logging.getLogger("watchdog.observers.inotify")
    with caplog.at_level(logging.WARNING, logger="watchdog"):
        logger.error(SHUTDOWN_RACE)
        other = threading.Thread(target=logger.warning, args=("Inotify queue overflowed",))
        other.start()
        other.join()
    assert [r.getMessage() for r in caplog.records] == [SHUTDOWN_RACE, "Inotify queue overflowed"]
