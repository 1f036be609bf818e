"""Real pre-fork servers: gunicorn -w 3 (WSGI) and uvicorn --workers 3 (ASGI) take one drop."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from drops import wait_for

from hotpatch.agent._control import request
from hotpatch.agent._names import WORKERS_DIR

SERVERS = Path(__file__).resolve().parents[1] / "demos" / "servers"
WAIT_S = 90.0  # a bound so a broken build fails instead of hanging; never a measurement
WORKERS = 3
MAX_REQUESTS = 3000  # enough for every worker to answer; bounds the loop


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def command(server: str, port: int) -> list[str]:
    if server == "gunicorn":
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "gunicorn.conf.py",
            "--workers",
            str(WORKERS),
            "--bind",
            f"127.0.0.1:{port}",
            "wsgi_app:app",
        ]
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "asgi_app:app",
        "--workers",
        str(WORKERS),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--app-dir",
        str(SERVERS),
        "--no-access-log",
    ]


class Server:
    """A real server process group serving one of the example apps."""

    def __init__(self, name: str, root: Path):
        self.name = name
        self.folder = root / "patches"
        self.folder.mkdir(mode=0o700, exist_ok=True)  # a restarted server: the same folder
        self.port = free_port()
        self.log = (root / f"{name}.log").open("a")
        env = {**os.environ, "HOTPATCH_FOLDER": str(self.folder), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            command(name, self.port),
            cwd=SERVERS,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def workers(self) -> set[int]:
        """The pids of the live workers registered in the folder."""
        pids = set()
        for sock in (self.folder / WORKERS_DIR).glob("*.sock"):
            try:
                answer = request(sock, {"cmd": "worker"}, timeout=10.0)
            except OSError:
                continue
            pids.add(int(answer["pid"]))
        return pids

    def get(self) -> dict[str, Any] | None:
        """``GET /`` on a new connection; ``None`` if the server did not answer."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            answer: dict[str, Any] = json.loads(response.read())
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()
        return answer

    def answers(self, until: Callable[[dict[int, int]], bool]) -> dict[int, int]:
        """Send requests (several at a time, so every worker gets some) until ``until(seen)``.

        ``seen`` maps each pid that answered to the last ``vat`` it answered.
        """
        seen: dict[int, int] = {}
        with ThreadPoolExecutor(6) as pool:
            for _ in range(MAX_REQUESTS // 6):
                for answer in pool.map(lambda _: self.get(), range(6)):
                    if answer is not None:
                        seen[answer["pid"]] = answer["vat"]
                if until(seen):
                    return seen
        pytest.fail(f"{self.name}: after {MAX_REQUESTS} requests only {seen} answered")

    def ready(self) -> set[int]:
        wait_for(
            lambda: self.proc.poll() is None and len(self.workers()) == WORKERS,
            f"{self.name} to start {WORKERS} workers (log: {self.log.name})",
            WAIT_S,
        )
        wait_for(self.get, f"{self.name} to answer on port {self.port}", WAIT_S)
        return self.workers()

    def drop(self, source: Path) -> None:
        staged = self.folder.parent / f"{source.name}.part"
        shutil.copyfile(source, staged)
        os.rename(staged, self.folder / source.name)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        # Workers too, even if the master is gone: the whole session.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.log.close()


def caught_up(sock: Path, what: str) -> dict[str, Any]:
    """A worker's state once it has started: it answers its socket from before it has caught
    up with the workers started before it, saying "starting" until then."""
    states: list[dict[str, Any]] = []

    def asked() -> bool:
        states.append(request(sock, {"cmd": "worker"}))
        return bool(states[-1]["state"] != "starting")

    wait_for(asked, what, WAIT_S)
    return states[-1]


@pytest.fixture(params=["gunicorn", "uvicorn"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    started = Server(request.param, tmp_path)
    yield started
    started.stop()


def test_one_drop_patches_every_worker_and_a_replaced_worker_comes_up_patched(
    server: Server,
) -> None:
    pids = server.ready()
    assert len(pids) == WORKERS

    # The bug, in whichever worker answers.
    before = server.answers(lambda seen: len(seen) >= 1)
    assert set(before.values()) == {399}

    server.drop(SERVERS / "fixes" / "fix_vat.py")
    result_file = server.folder / "applied" / "fix_vat.py.result.json"
    wait_for(result_file.exists, "the result of fix_vat.py", WAIT_S)
    result = json.loads(result_file.read_text())
    assert result["outcome"] == "applied", result
    assert result["version"] == "1.0.1"
    assert sorted(w["pid"] for w in result["workers"]) == sorted(pids)
    assert [w["outcome"] for w in result["workers"]] == ["applied"] * WORKERS
    # The result file is written first, then the drop is moved beside it.
    wait_for((server.folder / "applied" / "fix_vat.py").exists, "fix_vat.py filed", WAIT_S)
    assert list((server.folder / "rejected").iterdir()) == []
    # hotpatch's own lines are in the server's log, from every worker, with nothing set up
    log = Path(server.log.name).read_text()
    for pid in pids:
        assert f"hotpatch[{pid}] INFO applied patch 1.0.1" in log, log

    # Every worker serves the fix; none still serves the bug.
    seen = server.answers(lambda seen: pids <= set(seen))
    assert set(seen.values()) == {400}

    # A worker killed outright is replaced, and the new one serves the fix from the start.
    victim = sorted(pids)[-1]
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: len(server.workers() - pids) == 1 and len(server.workers()) == WORKERS,
        f"{server.name} to replace worker {victim}",
        WAIT_S,
    )
    (newcomer,) = server.workers() - pids
    sock = server.folder / WORKERS_DIR / f"{newcomer}.sock"
    state = caught_up(sock, f"worker {newcomer} started (log: {server.log.name})")
    assert state["level"] == ["1.0.1"]
    seen = server.answers(lambda seen: newcomer in seen)
    assert seen[newcomer] == 400
    assert set(seen.values()) == {400}
    # The dead worker's socket was removed when the newcomer looked for its peers.
    assert not (server.folder / WORKERS_DIR / f"{victim}.sock").exists()


def test_the_level_survives_a_restart_of_the_whole_server(tmp_path: Path) -> None:
    first = Server("gunicorn", tmp_path)
    try:
        before = first.ready()
        first.drop(SERVERS / "fixes" / "fix_vat.py")
        result_file = first.folder / "applied" / "fix_vat.py.result.json"
        wait_for(result_file.exists, "the result of fix_vat.py", WAIT_S)
        assert json.loads(result_file.read_text())["outcome"] == "applied"
        assert set(first.answers(lambda seen: before <= set(seen)).values()) == {400}
    finally:
        first.stop()  # every worker at once, as a deploy or a reboot does

    again = Server("gunicorn", tmp_path)
    try:
        pids = again.ready()
        assert not pids & before  # new processes, and nothing dropped since
        for pid in pids:
            sock = again.folder / WORKERS_DIR / f"{pid}.sock"
            state = caught_up(sock, f"worker {pid} started (log: {again.log.name})")
            assert state["level"] == ["1.0.1"]
        seen = again.answers(lambda seen: pids <= set(seen))
        assert set(seen.values()) == {400}
        assert sorted(p.name for p in (again.folder / "applied").iterdir()) == [
            "fix_vat.py",
            "fix_vat.py.result.json",
        ]
    finally:
        again.stop()


def test_forgetting_workers_true_says_what_to_do(tmp_path: Path) -> None:
    # uvicorn --workers 2 imports the app twice; without workers=True the second
    # worker finds the folder taken: its error must name the fix.
    (tmp_path / "single_app.py").write_text(
        "import os\n"
        "import hotpatch\n"
        'agent = hotpatch.install("1.0", watch=os.environ["HOTPATCH_FOLDER"])\n'
        "async def app(scope, receive, send):\n"
        "    pass\n"
    )
    folder = tmp_path / "patches"
    folder.mkdir(mode=0o700)
    log_path = tmp_path / "uvicorn.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "single_app:app",
                "--workers",
                "2",
                "--port",
                str(free_port()),
                "--app-dir",
                str(tmp_path),
            ],
            cwd=tmp_path,
            env={**os.environ, "HOTPATCH_FOLDER": str(folder), "PYTHONUNBUFFERED": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: "already watched" in log_path.read_text(), "the second worker's error", WAIT_S
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log_path.read_text()
    assert "every worker must call hotpatch.install(..., workers=True)" in text, text
