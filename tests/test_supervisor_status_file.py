"""The supervisor's status file says what its folder's control socket says of the folder.

``hotpatch status`` asks the folder's control socket; monitoring reads the
``--status-file``, which is there when the socket is not (the socket goes with
a deleted folder). A real supervisor runs the counter service and watches a
real folder, with one process and with ``--workers 2``: a drop that waits for
a full disk (a small tmpfs) and the folder deleted under it are in the status
file as they happen -- what, since when, what to do -- and gone from it once
they clear. No periodic state snapshot runs (``--snapshot-interval 0``), so a
rewrite of the file is one that the change itself made.
"""

from __future__ import annotations

import datetime
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_folder_resources import SmallDisk, small_disk
from test_supervisor import Supervised, supervise, wait_for
from test_supervisor_patches import BASE_OPTIONS, logic_patch
from test_supervisor_resources import big, outcome_of, put, rejections, stage

__all__ = ["small_disk", "supervise"]  # the fixtures

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # a real supervisor's back-off: seconds

OPTIONS = ("--snapshot-interval", "0", *BASE_OPTIONS)
WORKERS = {"one-process": (), "two-workers": ("--workers", "2", "--settle", "0")}
SAFE = {"safe": True, "problem": None, "since": None}


def watching(
    supervise: Callable[..., Supervised], folder: Path, workers: tuple[str, ...], *options: str
) -> Supervised:
    """A supervisor watching ``folder``, once its service serves and its folder is watched."""
    options = (*workers, "--watch", str(folder), *options, *OPTIONS)
    supervised = supervise(options=options, serving=not workers)  # a fleet: its workers, next
    supervised.wait(
        lambda s: s.get("folder") is not None and all(w["pid"] for w in s.get("workers", [])),
        "the service to serve and the folder to be watched",
    )
    wait_for((folder / ".hotpatch.sock").exists, "the folder's control socket")
    return supervised


def when(stamp: str) -> datetime.datetime:
    """An ISO 8601 UTC time of the status file (``...Z`` or ``...+00:00``)."""
    moment = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert moment.utcoffset() == datetime.timedelta(0), stamp
    return moment


def waiting(status: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = status.get("waiting") or {}
    return found


@pytest.mark.parametrize("workers", WORKERS.values(), ids=WORKERS)
def test_the_status_file_names_a_drop_waiting_for_the_disk_until_it_goes_in(
    supervise: Callable[..., Supervised],
    tmp_path: Path,
    small_disk: SmallDisk,
    workers: tuple[str, ...],
) -> None:
    # The journal (each worker's, under --workers) on the small disk: the serving
    # process cannot record the level, so the drop waits, first in line.
    folder = tmp_path / "patches"
    folder.mkdir(mode=0o700)
    journal = small_disk.path / "journal.json"
    supervised = watching(supervise, folder, workers, "--journal", str(journal))
    assert supervised.status()["waiting"] is None
    staged = stage(folder, "a-1.0.1.py", big(logic_patch("1.0.1", "one")))
    small_disk.fill()
    put(staged)

    status = supervised.wait(
        lambda s: waiting(s).get("file") == "a-1.0.1.py", "the status file to name the drop"
    )
    held = status["waiting"]
    assert "disk full" in held["reason"], held
    assert "nothing of it was applied" in held["reason"], held
    assert held["fix"] == "free the resource (it is tried again), or remove a-1.0.1.py to give up"
    assert when(held["since"]) <= when(status["updated"])
    assert held["attempts"] >= 1
    assert status["folder"] == SAFE  # the folder is fine: it is the disk
    assert status["patches"]["level"] == []
    # Each attempt rewrites it; the wait is the same one, since the same time.
    later = supervised.wait(
        lambda s: waiting(s).get("attempts", 0) > held["attempts"], "the next attempt in it"
    )["waiting"]
    assert (later["file"], later["since"]) == (held["file"], held["since"])

    small_disk.free()
    status = supervised.wait(
        lambda s: s["waiting"] is None and s["patches"]["level"] == ["1.0.1"],
        "the status file to show the drop gone in, and none waiting",
    )
    assert status["folder"] == SAFE
    assert outcome_of(folder, "a-1.0.1.py", supervised)[0] == "applied"
    assert rejections(folder) == []


@pytest.mark.parametrize("workers", WORKERS.values(), ids=WORKERS)
def test_the_status_file_says_the_folder_is_gone_while_its_socket_is_gone_too(
    supervise: Callable[..., Supervised], tmp_path: Path, workers: tuple[str, ...]
) -> None:
    folder = tmp_path / "patches"
    folder.mkdir(mode=0o700)
    socket = folder / ".hotpatch.sock"
    supervised = watching(supervise, folder, workers)
    assert supervised.status()["folder"] == SAFE

    # Renamed away, then removed: gone from its path at once (a removal in place races
    # with the agent making its pidfile and socket again while the folder is still there).
    folder.rename(tmp_path / "removed")
    shutil.rmtree(tmp_path / "removed")
    status = supervised.wait(
        lambda s: s["folder"] not in (SAFE, None), "the status file to say the folder is gone"
    )
    gone = status["folder"]
    assert gone["safe"] is False
    assert f"patch folder {folder} is gone" in gone["problem"]
    assert f"`mkdir -m 0700 {folder}`" in gone["problem"]  # what to do
    assert when(gone["since"]) <= when(status["updated"])
    assert not socket.exists()  # nothing to ask `hotpatch status` through: the file says it
    assert status["waiting"] is None

    folder.mkdir(mode=0o700)  # as it says
    status = supervised.wait(
        lambda s: s["folder"] == SAFE, "the status file to say the folder is safe again"
    )
    wait_for(socket.exists, "the control socket made again")
    put(stage(folder, "a-1.0.1.py", logic_patch("1.0.1", "one")))
    assert outcome_of(folder, "a-1.0.1.py", supervised)[0] == "applied"
    supervised.wait(lambda s: s["patches"]["level"] == ["1.0.1"], "the level in the status file")
