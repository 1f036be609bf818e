"""Demo: five workers, a patch rolled through update domains, a bad patch halted and rolled back.

Run it: ``python demos/rolling_workers.py`` (under a minute). A small HTTP
service runs under ``hotpatch run --workers 5``: five processes sharing one
listening socket, each with its own state and journal. A load generator
sends requests all along. A good patch is dropped into the watched folder
and rolls through the workers one update domain (here one worker, 20%) at a
time, each batch health-checked before the next. Then a bad patch -- its
``healthy()`` says no -- is given to ``hotpatch apply``, which shows the
rollout as it goes: it fails the health check of the first batch, the
rollout halts and that worker is rolled back (the other four never see it),
and the command exits 1 saying why.
Exit status 0 only if all of that held and no request failed.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from _narrate import read_json, say

WORKERS = 5
WAIT = 40.0

SERVICE = '''
"""A tiny service: /price answers from price_logic; the health hook asks price_logic too."""
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import hotpatch
import price_logic


class Health:
    @hotpatch.hookimpl
    def hotpatch_health_check(self, registry):
        return price_logic.healthy()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"pid": os.getpid(), "price": price_logic.price(100)}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


sock = hotpatch.listen_socket("http")
server = ThreadingHTTPServer(sock.getsockname()[:2], Handler, bind_and_activate=False)
server.socket.close()
server.socket = sock
server.daemon_threads = False  # so that server_close() waits for the requests in flight


def drain(timeout):
    server.shutdown()  # serve_forever() returns: nothing new is accepted
    server.server_close()  # the requests in flight answered before the handover


hotpatch.ready(drain=drain, plugins=[Health()])
server.serve_forever(poll_interval=0.01)
'''

LOGIC = """
def price(cents):
    return cents * 2  # the bug: should be cents + 20% tax


def healthy():
    return True
"""

GOOD = """
from hotpatch import Patch
patch = Patch(version="1.0.1", baseline="1.0", summary="the right price: +20% tax")

@patch.replace("price_logic:price")
def price(cents):
    return cents * 6 // 5
"""

BAD = """
from hotpatch import Patch
patch = Patch(version="1.0.2", baseline="1.0", summary="a patch whose health check fails")

@patch.replace("price_logic:price")
def price(cents):
    return cents * 6 // 5 + 1

@patch.replace("price_logic:healthy")
def healthy():
    return False
"""


class Load:
    """Client threads, a new connection per request, counting what happened."""

    def __init__(self, port: int, clients: int = 4) -> None:
        self.port = port
        self.sent = self.failed = self.refused = 0
        self.prices: dict[int, int] = {}
        self.answered_by: dict[int, set[int]] = {}  # price -> the pids that answered it
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def run(self) -> None:
        while not self.stopping.is_set():
            outcome: Any
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                connection.request("GET", "/price")
                answer = json.loads(connection.getresponse().read())
                outcome = answer["price"]
                connection.close()
            except ConnectionRefusedError:
                outcome = "refused"
            except Exception:
                outcome = "failed"
            with self.lock:
                self.sent += 1
                if outcome == "refused":
                    self.refused += 1
                elif outcome == "failed":
                    self.failed += 1
                else:
                    self.prices[outcome] = self.prices.get(outcome, 0) + 1
                    self.answered_by.setdefault(outcome, set()).add(answer["pid"])
            time.sleep(0.005)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(WAIT)


def wait_result(folder: Path, name: str, status_file: Path, shown: set[str]) -> dict[str, Any]:
    """The drop's outcome; meanwhile print the rollout's progress lines as they come."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        rollout = read_json(status_file).get("rollout") or {}
        for line in rollout.get("progress", []):
            if line not in shown:
                shown.add(line)
                say(f"  rollout {rollout['what']}: {line.split(' ', 1)[1]}")
        for outcome in ("applied", "rejected", "pending"):
            path = folder / outcome / f"{name}.result.json"
            if path.exists():
                result: dict[str, Any] = json.loads(path.read_text())
                time.sleep(0.1)
                return {**result, "dir": outcome}
        time.sleep(0.02)
    msg = f"no outcome for {name} within {WAIT:g}s"
    raise TimeoutError(msg)


def apply_with_cli(folder: Path, patch: Path) -> int:
    """``hotpatch apply`` through the supervisor, its output relayed as it comes (in a pipe
    the rollout's progress is a line per step); its exit code."""
    command = [sys.executable, "-m", "hotpatch", "apply", "--folder", str(folder), str(patch)]
    cli = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert cli.stdout is not None
    for line in cli.stdout:
        say(f"  hotpatch | {line.rstrip()}")
    return cli.wait(WAIT)


def drop(folder: Path, name: str, text: str) -> None:
    tmp = folder / f".{name}.part"
    tmp.write_text(textwrap.dedent(text))
    tmp.rename(folder / name)


def levels(status: dict[str, Any]) -> list[list[str]]:
    return [list(w["level"]) for w in status.get("workers", [])]


def main() -> int:  # noqa: PLR0915 -- a script, told as it happens
    checks: list[tuple[str, bool]] = []
    with tempfile.TemporaryDirectory(prefix="hotpatch-rolling-") as tmp:
        root = Path(tmp)
        (root / "service.py").write_text(SERVICE)
        (root / "price_logic.py").write_text(textwrap.dedent(LOGIC))
        folder, status_file = root / "patches", root / "status.json"
        command = [
            sys.executable, "-m", "hotpatch.supervisor", "run",
            "--workers", str(WORKERS), "--settle", "0.5",
            "--bind", "http=127.0.0.1:0", "--status-file", str(status_file),
            "--watch", str(folder), "--baseline", "1.0", "--allow-unsigned",
            "--", sys.executable, str(root / "service.py"),
        ]  # fmt: skip
        say(f"$ hotpatch run --workers {WORKERS} --watch patches/ ... -- python service.py")
        log = (root / "supervisor.log").open("wb")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *sys.path])}
        supervisor = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        load: Load | None = None
        try:
            deadline = time.monotonic() + WAIT
            status: dict[str, Any] = {}
            while time.monotonic() < deadline:
                status = read_json(status_file)
                workers = status.get("workers", [])
                if len(workers) == WORKERS and all(w["pid"] for w in workers):
                    break
                if supervisor.poll() is not None:
                    break
                time.sleep(0.05)
            else:
                say("FAILED: the workers did not start")
                return 1
            port = int(status["sockets"]["http"].rsplit(":", 1)[1])
            pids = [w["pid"] for w in status["workers"]]
            say(f"{WORKERS} workers serving on 127.0.0.1:{port}: pids {pids}")
            say(f"update domains: {status['domains']} (at most 20% of the workers at a time)")
            load = Load(port)
            time.sleep(1.0)
            say(f"load running: prices seen {load.prices} (the bug: 100 -> 200)")

            shown: set[str] = set()
            say("dropping fix-1.0.1.py (the right price)")
            drop(folder, "fix-1.0.1.py", GOOD)
            good = wait_result(folder, "fix-1.0.1.py", status_file, shown)
            status = read_json(status_file)
            say(f"outcome: {good['outcome']} -> {good['dir']}/; worker levels {levels(status)}")
            batches = status["rollout"]["batches"]
            checks.append(("the good patch applied", good["outcome"] == "applied"))
            checks.append(("it reached all 5 workers", levels(status) == [["1.0.1"]] * WORKERS))
            checks.append(("one worker per batch", all(len(b["workers"]) == 1 for b in batches)))
            time.sleep(0.5)

            sick = root / "sick-1.0.2.py"
            sick.write_text(textwrap.dedent(BAD))
            say("$ hotpatch apply --folder patches/ sick-1.0.2.py   (its health check fails)")
            code = apply_with_cli(folder, sick)
            status = read_json(status_file)
            rollout = status["rollout"]
            say(f"hotpatch apply exited {code}; worker levels {levels(status)}")
            checks.append(("the bad patch was refused (exit 1)", code == 1))
            checks.append(("halted in the first batch", len(rollout["batches"]) == 1))
            checks.append(("rolled back", rollout["state"] == "rolled-back"))
            checks.append(("every worker at 1.0.1", levels(status) == [["1.0.1"]] * WORKERS))
            time.sleep(0.5)
        finally:
            if load is not None:
                load.stop()
            supervisor.send_signal(signal.SIGTERM)
            try:
                supervisor.wait(WAIT)
            except subprocess.TimeoutExpired:
                supervisor.kill()
                supervisor.wait()
            log.close()
        assert load is not None
        say(
            f"requests  {load.sent} sent, {load.failed} failed, {load.refused} refused; "
            f"prices seen {dict(sorted(load.prices.items()))}"
        )
        checks.append(("no request failed or was refused", load.failed == load.refused == 0))
        checks.append(("the right price was served", load.prices.get(120, 0) > 0))
        sick = load.answered_by.get(121, set())
        checks.append(("the bad patch served from one worker at most", len(sick) <= 1))
        checks.append(("the supervisor stopped cleanly", supervisor.returncode == 0))
        failed = [name for name, ok in checks if not ok]
        for name, ok in checks:
            say(f"{'ok' if ok else 'FAILED'}: {name}")
        if failed:
            print((root / "supervisor.log").read_text(errors="replace")[-4000:], file=sys.stderr)
            return 1
    say("demo OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
