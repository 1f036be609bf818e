"""The shop under load, its patch folder and journal on a small disk: the disk fills, the
folder is deleted, the service restarts keeping its memory, the supervisor restarts, the
journal is deleted and the service killed.

A real supervisor (``hotpatch run``) runs the demo shop; four threads send it
requests throughout (a new connection each: quotes, and orders the shop counts
in its preserved ledger). The folder, with the journal in it, is a tmpfs of a
few MB. Through all of it: no request fails or is refused, every drop goes in
in version order, a drop that cannot be filed waits (the status names the full
disk) and goes in once there is room, the folder deleted under a burst is made
again and takes drops again, the ledger counts every order exactly once across
a memory-preserving restart, and a supervisor started again comes back at the
level it had (the journal, deleted with the folder, was written again). A
service killed while its journal is gone comes back at the baseline, and the
supervisor names the patches it lost.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from drops import wait_for
from packaging.version import Version
from test_folder_resources import SmallDisk, tmpfs

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 120.0  # bounds for a stuck run (the disk's retries back off), never measurements


def patch_text(n: int) -> str:
    return (
        "from decimal import Decimal\n\nfrom hotpatch import Patch\n\n"
        f"patch = Patch(version='1.0.{n}', baseline='1.0', summary='bulk from 10, take {n}')\n\n"
        "@patch.replace('shop.pricing:bulk_discount')\n"
        "def bulk_discount(qty):\n"
        "    return Decimal('0.10') if qty >= 10 else Decimal(0)\n"
    )


class Shop:
    """``hotpatch run`` with the demo shop, its folder on ``disk``; started and stopped here."""

    def __init__(self, disk: SmallDisk, root: Path) -> None:
        self.folder = disk.path / "patches"
        self.folder.mkdir(mode=0o700)
        self.outbox = disk.path / "outbox"  # same disk: a rename in needs no room
        self.outbox.mkdir()
        self.status_file = root / "status.json"
        self.log = root / "supervisor.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> None:
        self.status_file.unlink(missing_ok=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "demos"), str(REPO)])}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "hotpatch", "run", "--bind", "http=127.0.0.1:0"),
                    *("--watch", str(self.folder), "--baseline", "1.0", "--allow-unsigned"),
                    *("--status-file", str(self.status_file)),
                    *("--", sys.executable, "-m", "shop", "--probation", "0.2"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        wait_for(self._serving, "the shop to serve", WAIT_S)

    def _serving(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        status = self.status()
        if status.get("pid") != self.proc.pid or status.get("state") != "running":
            return False
        self.port = int(str(status["sockets"]["http"]).rpartition(":")[2])
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(WAIT_S)

    def status(self) -> dict[str, Any]:
        try:
            status: dict[str, Any] = json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return {}
        return status

    def ask(self, method: str, path: str) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path)
            answer = conn.getresponse()
            body: dict[str, Any] = json.loads(answer.read())
            assert answer.status == 200, body
            return body
        finally:
            conn.close()

    def asked_status(self) -> dict[str, Any]:
        """What ``hotpatch status --json`` says (the supervisor's control socket)."""
        done = subprocess.run(
            [sys.executable, "-m", "hotpatch", "status", "--folder", str(self.folder), "--json"],
            capture_output=True,
            text=True,
            timeout=WAIT_S,
            check=False,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert done.returncode == 0, done.stdout + done.stderr
        status: dict[str, Any] = json.loads(done.stdout)
        return status

    def level(self) -> list[str]:
        level: list[str] = self.ask("GET", "/stats")["level"]
        return level

    def drop(self, numbers: range) -> None:
        """Each patch written beside the folder, then renamed in, one after the other."""
        for n in numbers:
            (self.outbox / f"take{n}.py").write_text(patch_text(n))
        for n in numbers:
            (self.outbox / f"take{n}.py").rename(self.folder / f"take{n}.py")

    def restarted(self, kind: str, count: int, what: str) -> None:
        """Wait until the supervisor has made ``count`` restarts of ``kind`` and serves."""
        wait_for(
            lambda: (
                self.status().get("restarts", {}).get(kind) == count
                and self.status().get("state") == "running"
            ),
            what,
            WAIT_S,
        )

    def applied(self) -> set[str]:
        return {p.name for p in (self.folder / "applied").glob("*.result.json")}


class Load:
    """Four threads sending quotes and orders until stopped; every answer checked."""

    def __init__(self, shop: Shop) -> None:
        self.shop = shop
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.answered = self.orders = 0
        self.problems: list[str] = []
        self.threads = [threading.Thread(target=self._send, args=(i,)) for i in range(4)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(WAIT_S)

    def _send(self, i: int) -> None:
        method, page = ("POST", "/order") if i % 2 else ("GET", "/quote")
        while not self.stopping.is_set():
            try:
                body = self.shop.ask(method, f"{page}?item=widget&qty=10&customer=c{i}")
            except (OSError, AssertionError, ValueError) as exc:
                with self.lock:
                    self.problems.append(repr(exc))
                continue
            with self.lock:
                if body.get("total") not in ("99.90", "89.91"):  # before the first fix, after
                    self.problems.append(repr(body))
                self.answered += 1
                self.orders += method == "POST"


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    with tmpfs(tmp_path / "disk", "size=3m,nr_inodes=4096") as disk:
        shop = Shop(disk, tmp_path)
        try:
            yield shop
        finally:
            shop.stop()


def in_version_order(level: list[str]) -> bool:
    return level == sorted(level, key=Version)


@pytest.mark.e2e
@pytest.mark.slow
def test_a_full_disk_a_deleted_folder_and_restarts_under_load_lose_nothing(shop: Shop) -> None:
    disk = SmallDisk(shop.folder.parent)
    shop.start()
    with Load(shop) as load:
        wait_for(lambda: load.answered > 20, "the first answers", WAIT_S)
        shop.drop(range(1, 11))
        wait_for(lambda: len(shop.applied()) == 10, "10 drops applied", WAIT_S)
        assert shop.level() == [f"1.0.{n}" for n in range(1, 11)]

        # The next ten wait beside the folder; the disk fills; they are renamed in.
        for n in range(11, 21):
            (shop.outbox / f"take{n}.py").write_text(patch_text(n))
        disk.fill()
        for n in range(11, 21):
            (shop.outbox / f"take{n}.py").rename(shop.folder / f"take{n}.py")
        wait_for(
            lambda: "disk full" in json.dumps(shop.asked_status().get("waiting")),
            "`hotpatch status` to name the full disk",
            WAIT_S,
        )
        assert shop.level()[-1] == "1.0.10"  # nothing went in that could not be filed
        disk.filler.unlink()
        wait_for(lambda: len(shop.applied()) == 20, "the waiting drops once there is room", WAIT_S)
        assert shop.level() == [f"1.0.{n}" for n in range(1, 21)]

        # The folder deleted under a burst: what was in it goes with it, but nothing
        # half: the level stays in version order, and the folder takes drops again.
        shop.drop(range(21, 31))
        gone = shop.folder.with_name("gone")
        shop.folder.rename(gone)  # at once: the agent may be writing in it
        shutil.rmtree(gone)
        wait_for(
            lambda: f"mkdir -m 0700 {shop.folder}" in shop.log.read_text(),
            "the ERROR naming the folder and the fix",
            WAIT_S,
        )
        shop.folder.mkdir(mode=0o700)  # as the ERROR says: mkdir -m 0700 DIR
        wait_for((shop.folder / ".hotpatch.sock").exists, "the folder taken over", WAIT_S)
        kept = shop.level()
        assert in_version_order(kept), kept
        assert kept[:20] == [f"1.0.{n}" for n in range(1, 21)]
        # The journal went with the folder: a restart now must still come back at the level.
        assert shop.proc is not None
        os.kill(shop.proc.pid, signal.SIGHUP)
        shop.restarted("preserving", 1, "the memory-preserving restart")
        assert shop.level() == kept
        shop.drop(range(31, 36))
        wait_for(lambda: shop.level()[-1] == "1.0.35", "drops after the folder came back", WAIT_S)
        level = shop.level()
        assert in_version_order(level), level
        assert level[:20] == [f"1.0.{n}" for n in range(1, 21)]
        assert level[-5:] == [f"1.0.{n}" for n in range(31, 36)]

        # A memory-preserving restart under load: the ledger crosses over.
        os.kill(shop.proc.pid, signal.SIGHUP)
        shop.restarted("preserving", 2, "the memory-preserving restart under load")
        answered = load.answered
        wait_for(lambda: load.answered > answered + 20, "answers after the restart", WAIT_S)
    assert load.problems == []
    stats = shop.ask("GET", "/stats")
    assert stats["orders"] == load.orders  # every order counted once, across the restart
    assert stats["level"] == level

    # The whole supervisor stopped and started again: the level from the journal.
    shop.stop()
    shop.start()
    assert shop.level() == level


@pytest.mark.e2e
def test_a_service_killed_while_its_journal_is_gone_is_said_to_have_lost_its_patches(
    shop: Shop,
) -> None:
    """Nothing can bring the level back (the journal is what a new process replays), but
    the supervisor names what the service lost and the way: drop the patches again."""
    shop.start()
    shop.drop(range(1, 4))
    wait_for(lambda: len(shop.applied()) == 3, "3 drops applied", WAIT_S)
    (shop.folder / ".journal.json").unlink()
    died = shop.status()["child"]["pid"]
    os.kill(died, signal.SIGKILL)
    shop.restarted("recovery", 1, "the service brought back")
    assert shop.level() == []
    said = [line for line in shop.log.read_text().splitlines() if "came back at" in line]
    assert len(said) == 1, said
    assert f"without 1.0.1, 1.0.2, 1.0.3, which process {died} ran" in said[0]
    assert "drop them again" in said[0]
