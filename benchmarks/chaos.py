"""Chaos: a real service under ``hotpatch run`` and client load while faults are injected.

For a bounded time (``--seconds``, default 120) a small HTTP service runs
under ``hotpatch.supervisor run --watch``: client threads each send
``/inc?c=ID`` one after the other, and the service counts every request per
client in ``hotpatch.preserved`` state and answers the new count (plain
text, so a patch of ``json`` breaks hotpatch, not the answers). Meanwhile
faults of every class of issue 13 are injected at random:

* **patches** -- good ones (the load the others hide in), and bad or hostile
  ones: raising, exiting or looping at import, an unknown target, a target
  inside hotpatch, a patch breaking ``json.dumps`` (the vital path), a
  migration that raises, a migration that never returns;
* **drops** that are not patches: a symlink, a FIFO, a file over the size
  limit, a name that is not a patch, a name that is not UTF-8;
* **the process**: SIGHUP (a memory-preserving restart), SIGKILL of the
  serving process, the serving process at its file descriptor limit
  (``RLIMIT_NOFILE``) for 0.2-2 s right after a good patch is dropped (that
  patch must still end ``applied``);
* **the folder**: made writable by others for a moment, then put back; an
  outcome folder deleted; the whole folder replaced by a new one (each renamed
  away, so that what the fault took away can still be accounted for; the
  journal lives outside the folder);
* **control clients**: bursts of concurrent ``status`` requests, and idle
  connections that never send anything.

Then it stops injecting, lets the folder settle, stops the load and checks:

* every drop ended in exactly one outcome (one file and its result in one of
  ``applied/``, ``rejected/``, ``pending/``), or is still waiting in the folder;
  a good patch ends ``applied``, every bad one ``rejected`` -- also one sent to
  or taken by a serving process as it was SIGKILLed (it goes to the process
  replacing it: counted apart as applied after a SIGKILL) -- but one whose
  folder was replaced while it was verified is refused (its staged copy went
  away with the folder): counted apart;
* the journal is a prefix of the patches applied, in the order applied;
* the preserved state counts every answered request exactly: each client's
  answers count 1, 2, 3, ... with no gap and no repeat, except where the
  serving process was SIGKILLed (what it counted since its last state round
  is lost, by design: reported as ``reset by SIGKILL``), and the final
  counters equal each client's last answer;
* no request failed unless a SIGKILL hit it while in flight;
* every control request was answered (``Busy`` counts as an answer), but
  while the folder holding the socket was being replaced;
* no process is left behind once ``hotpatch run`` stops.

With ``--disk-full`` (root: the folder and the journal go on a tmpfs of their
own) the filesystem is also filled for a moment at random, right after a good
patch is dropped: that patch must still end ``applied`` -- held while the disk
is full, never rejected. The drops held for a resource are counted by resource
and by where it ran short (the serving process's journal, filing the outcome,
the supervisor).

With ``--sigterm`` the service relies on SIGTERM to stop (``ready()`` without
``drain=``), so the restarts test hotpatch's hand-over of such a service.

Usage: ``python benchmarks/chaos.py [--seconds S] [--seed N] [--sigterm] [--disk-full] [--quick]
[--json PATH]``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from _common import PY, RESULTS, print_table, write_json

NAME = "chaos"
REPO = Path(__file__).resolve().parents[1]
CLIENTS = 4
CONTROL_CLIENTS = 2
BASELINE = "1.0"
MIGRATION_TIMEOUT_S = 1.0
VERIFY_TIMEOUT_S = 2.0
SIGKILL_EVERY_S = 15.0  # at most one SIGKILL in this time (the supervisor's crash budget)
DISK_MB = 128  # --disk-full: the folder's filesystem
SETTLE_S = 120.0  # after the injecting: for the folder to file every drop
WAIT_S = 60.0
OUTCOMES = ("applied", "rejected", "pending")
# A replaced folder's control socket is served again within this (the agent takes it over).
REPLACED_EXCUSE_S = 10.0

SERVICE = """
import os, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import chaos_logic
import hotpatch


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, sock):
        super().__init__(sock.getsockname()[:2], Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.inflight = 0
        self.idle = threading.Condition()

    def process_request(self, request, client_address):
        with self.idle:
            self.inflight += 1
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.idle:
                self.inflight -= 1
                self.idle.notify_all()

    def drain(self, timeout):
        self.shutdown()
        with self.idle:
            self.idle.wait_for(lambda: self.inflight == 0, timeout)


counters = hotpatch.preserved("counters", dict)
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/inc":
            client = parse_qs(url.query)["c"][0]
            with lock:
                counters[client] = counters.get(client, 0) + 1
                body = f"{os.getpid()} {counters[client]} {chaos_logic.tag()}"
        elif url.path == "/get":
            with lock:
                body = " ".join(f"{k}={v}" for k, v in sorted(counters.items()))
        else:
            self.send_error(404)
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        pass


server = Server(hotpatch.listen_socket("http"))
if "--sigterm" in sys.argv:  # stops on SIGTERM, the usual convention: hotpatch hands over
    hotpatch.ready()
else:
    hotpatch.ready(drain=server.drain)
server.serve_forever(poll_interval=0.005)
with server.idle:
    server.idle.wait_for(lambda: server.inflight == 0, 30)
"""

LOGIC = """
def tag():
    return "base"
"""


# -- the patches -------------------------------------------------------------------------


def _patch(version: str, body: str) -> str:
    head = (
        f"from hotpatch import Patch\npatch = Patch(version={version!r}, baseline={BASELINE!r})\n"
    )
    return head + textwrap.dedent(body)


def _replace_tag(value: str) -> str:
    return f"@patch.replace('chaos_logic:tag')\ndef tag():\n    return {value!r}\n"


PATCHES: dict[str, Any] = {
    "good": lambda v: _patch(v, _replace_tag(f"v{v}")),
    "raises at import": lambda v: _patch(v, "raise RuntimeError('broken at import')\n"),
    "exits at import": lambda v: _patch(v, "import os\nif __name__ != 'x':\n    os._exit(3)\n"),
    "loops at import": lambda v: _patch(v, "while True:\n    pass\n"),
    "unknown target": lambda v: _patch(
        v, "@patch.replace('chaos_logic:nowhere')\ndef nowhere():\n    return 1\n"
    ),
    "targets hotpatch": lambda v: _patch(
        v, "@patch.replace('hotpatch._registry:Registry.apply')\ndef apply(*a, **k):\n    pass\n"
    ),
    "breaks json": lambda v: _patch(
        v,
        "@patch.replace('json:dumps')\ndef dumps(obj, *args, **kwargs):\n"
        "    raise RuntimeError('json is broken')\n",
    ),
    "migration raises": lambda v: _patch(
        v,
        _replace_tag(f"m{v}")
        + "@patch.migrate('chaos_logic')\ndef up(module):\n    raise ValueError('no')\n",
    ),
    "migration hangs": lambda v: _patch(
        v,
        _replace_tag(f"h{v}") + "@patch.migrate('chaos_logic')\ndef up(module):\n    import time\n"
        "    time.sleep(3600)\n",
    ),
}
# What each patch kind must end as (a good patch may also be refused: a version it
# lost to, none here, or applied hot).
EXPECTED = dict.fromkeys(PATCHES, "rejected") | {"good": "applied"}

DROPS = ("symlink", "fifo", "huge", "not a patch", "not UTF-8")
PROCESS = ("SIGHUP restart", "SIGKILL service", "out of descriptors")
FOLDER = ("folder writable by others", "outcome folder deleted", "folder replaced")
CONTROL = ("control burst", "idle control clients")


# -- the parts ----------------------------------------------------------------------------


class Service:
    """``hotpatch run --watch`` of the chaos service, in a folder of its own."""

    def __init__(self, root: Path, disk: Path, *, sigterm: bool = False) -> None:
        self.root = root  # the code, the status file and the log
        self.disk = disk  # the folder, the journal, what is dropped or taken away
        self.tag = f"hotpatch-chaos-{uuid.uuid4().hex}"
        code = root / "code"
        code.mkdir()
        (code / "chaos_service.py").write_text(SERVICE)
        (code / "chaos_logic.py").write_text(LOGIC)
        self.folder = disk / "patches"
        self.status_file = root / "status.json"
        self.log_file = root / "supervisor.log"
        command = [sys.executable, "-m", "hotpatch.supervisor", "run"]
        command += ["--bind", "http=127.0.0.1:0", "--status-file", str(self.status_file)]
        command += ["--watch", str(self.folder), "--baseline", BASELINE, "--allow-unsigned"]
        command += ["--verify-timeout", str(VERIFY_TIMEOUT_S), "--max-restarts", "50"]
        command += ["--snapshot-interval", "1", "--journal", str(disk / "journal.json")]
        command += ["--", sys.executable, str(code / "chaos_service.py"), "--tag", self.tag]
        command += ["--sigterm"] if sigterm else []
        env = dict(os.environ, HOTPATCH_MIGRATION_TIMEOUT=str(MIGRATION_TIMEOUT_S))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root
            )
        self.wait(lambda s: s.get("state") == "running" and (s.get("child") or {}).get("ready"))

    def status(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return {}
        return data

    def wait(self, predicate: Any, timeout: float = WAIT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if status and predicate(status):
                return status
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        log = self.log_file.read_text(errors="replace")[-3000:]
        msg = f"gave up waiting for the service:\n{log}"
        raise RuntimeError(msg)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.status()["sockets"]["http"].rsplit(":", 1)
        return host, int(port)

    @property
    def child(self) -> int | None:
        child = self.status().get("child") or {}
        pid = child.get("pid")
        return int(pid) if pid else None

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def http_get(address: tuple[str, int], path: str, timeout: float = 60.0) -> str:
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        data = bytearray()
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200") and not head.startswith(b"HTTP/1.1 200"):
        msg = f"answer {head[:40]!r}"
        raise ConnectionError(msg)
    return body.decode()


class Load:
    """Client threads, each counting its own requests one after the other."""

    def __init__(self, address: tuple[str, int], kills: list[tuple[float, int]]) -> None:
        self.address = address
        self.kills = kills  # (when, pid) of every SIGKILL, appended by the injector
        self.lock = threading.Lock()
        self.answers: dict[str, list[tuple[int, int, float]]] = collections.defaultdict(list)
        self.failures: list[tuple[str, float, float, str]] = []  # client, sent, failed, why
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(f"k{i}",), daemon=True) for i in range(CLIENTS)
        ]
        for thread in self.threads:
            thread.start()

    def _run(self, client: str) -> None:
        while not self.stopping.is_set():
            sent = time.monotonic()
            try:
                pid, count, _ = http_get(self.address, f"/inc?c={client}").split()
            except (OSError, ValueError) as exc:
                with self.lock:
                    self.failures.append((client, sent, time.monotonic(), repr(exc)))
                time.sleep(0.05)
                continue
            with self.lock:
                self.answers[client].append((int(pid), int(count), sent))
            time.sleep(0.002)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(WAIT_S * 2)

    def excused(self, sent: float, failed: float) -> bool:
        """A SIGKILL hit the request in flight."""
        return any(sent - 0.5 <= when <= failed for when, _ in self.kills)

    def verdict(self, final: dict[str, int]) -> dict[str, Any]:
        killed = {pid for _, pid in self.kills}
        lost, resets, answered = 0, 0, 0
        problems: list[str] = []
        for client, answers in sorted(self.answers.items()):
            answered += len(answers)
            last_pid, last = None, 0
            for pid, count, _ in answers:
                if count != last + 1:
                    if last_pid in killed and pid != last_pid:
                        resets += 1  # what the killed process counted since its last round
                    elif count == last + 2 and self._failed_between(client, answers, count):
                        pass  # a request that failed after it was counted (a SIGKILL)
                    else:
                        lost += abs(count - (last + 1))
                        problems.append(f"{client}: {last} then {count} (pids {last_pid}, {pid})")
                last_pid, last = pid, count
            if final.get(client) != last:
                problems.append(f"{client}: final counter {final.get(client)}, last answer {last}")
                lost += abs((final.get(client) or 0) - last)
        failed = [f for f in self.failures if not self.excused(f[1], f[2])]
        return {
            "answered": answered,
            "failed": len(failed),
            "failed_excused": len(self.failures) - len(failed),
            "failures": [f"{c}: {why}" for c, _, _, why in failed[:10]],
            "lost": lost,
            "reset_by_sigkill": resets,
            "problems": problems[:20],
        }

    def _failed_between(self, client: str, answers: list[Any], count: int) -> bool:
        sent = next(s for _, c, s in answers if c == count)
        before = max((s for _, c, s in answers if c < count), default=0.0)
        return any(c == client and before <= s <= sent for c, s, _, _ in self.failures)


class Control:
    """Clients of the control socket: ``status`` now and then, and in bursts."""

    def __init__(self, socket_path: Path) -> None:
        self.path = socket_path
        self.lock = threading.Lock()
        self.answered = 0
        self.busy = 0
        self.failed: list[tuple[float, str]] = []  # when, why
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, daemon=True) for _ in range(CONTROL_CLIENTS)
        ]
        for thread in self.threads:
            thread.start()

    def ask(self) -> None:
        from hotpatch.agent._control import AgentBusy, request

        try:
            answer = request(self.path, {"cmd": "status"}, timeout=30.0)
        except AgentBusy:
            with self.lock:
                self.busy += 1
            return
        except (OSError, ValueError) as exc:
            with self.lock:
                self.failed.append((time.monotonic(), repr(exc)))
            return
        with self.lock:
            if answer.get("ok") or answer.get("error_type") == "Busy":
                self.answered += 1
                self.busy += answer.get("error_type") == "Busy"
            else:
                self.failed.append((time.monotonic(), str(answer.get("error"))))

    def _run(self) -> None:
        while not self.stopping.is_set():
            self.ask()
            time.sleep(0.2)

    def burst(self, clients: int) -> None:
        threads = [threading.Thread(target=self.ask, daemon=True) for _ in range(clients)]
        for thread in threads:
            thread.start()

    def idle(self, clients: int, hold_s: float) -> None:
        def hold() -> None:
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(self.path))
                time.sleep(hold_s)

        for _ in range(clients):
            threading.Thread(target=hold, daemon=True).start()

    def unexcused(self, replaced: list[float]) -> list[str]:
        """Failures, but for those while the folder (and its socket) was being replaced."""
        return [
            why
            for when, why in self.failed
            if not any(t <= when <= t + REPLACED_EXCUSE_S for t in replaced)
        ]

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(WAIT_S)


# -- the injector --------------------------------------------------------------------------


class Chaos:
    """Injects one random fault at a time and remembers what it dropped."""

    def __init__(
        self, service: Service, rng: random.Random, control: Control, *, disk_full: bool
    ) -> None:
        self.service = service
        self.rng = rng
        self.control = control
        self.outbox = service.disk / "outbox"
        self.outbox.mkdir()
        self.faults: collections.Counter[str] = collections.Counter()
        self.drops: list[tuple[str, str, str | None]] = []  # (name, kind, version)
        self.kills: list[tuple[float, int]] = []
        self.gone: list[Path] = []  # folders renamed away (deleted, for the agent): kept here
        self.replaced: list[float] = []  # when the folder was replaced
        self.last_kill = -SIGKILL_EVERY_S
        self.serial = 0
        self.kinds = [*PATCHES, *DROPS, *PROCESS, *FOLDER, *CONTROL]
        if disk_full:
            self.kinds.append("disk full")
        weights = {"good": 8, "SIGHUP restart": 2, "loops at import": 0.5, "huge": 0.3}
        self.weights = [weights.get(kind, 1.0) for kind in self.kinds]

    def version(self) -> str:
        self.serial += 1
        return f"{BASELINE}.{self.serial}"

    def inject(self) -> None:
        kind = self.rng.choices(self.kinds, self.weights)[0]
        if kind == "SIGKILL service" and time.monotonic() - self.last_kill < SIGKILL_EVERY_S:
            kind = "SIGHUP restart"
        try:
            getattr(self, "_" + kind.replace(" ", "_").replace("-", "_"), self._patch)(kind)
        except OSError as exc:  # the disk is full: this fault could not be set up
            self.faults[f"({kind}: {exc.strerror})"] += 1
            return
        self.faults[kind] += 1

    def _drop(self, name: str, data: bytes | None, kind: str, version: str | None) -> None:
        """Write elsewhere, then rename into the folder (the documented way)."""
        source = self.outbox / name
        if data is not None:
            source.write_bytes(data)
        os.rename(source, self.service.folder / name)
        self.drops.append((name, kind, version))

    def _patch(self, kind: str) -> None:
        version = self.version()
        text = PATCHES[kind](version)
        self._drop(f"p{self.serial:05d}-{kind.replace(' ', '-')}.py", text.encode(), kind, version)

    def _symlink(self, kind: str) -> None:
        version = self.version()
        real = self.outbox / f"real-{self.serial}.py"
        real.write_text(PATCHES["good"](version))
        name = f"p{self.serial:05d}-symlink.py"
        os.symlink(real, self.outbox / name)
        self._drop(name, None, kind, version)

    def _fifo(self, kind: str) -> None:
        self.serial += 1
        name = f"p{self.serial:05d}-fifo.py"
        os.mkfifo(self.outbox / name)
        self._drop(name, None, kind, None)

    def _huge(self, kind: str) -> None:
        version = self.version()
        text = PATCHES["good"](version) + "#" * (11 * 2**20) + "\n"
        self._drop(f"p{self.serial:05d}-huge.py", text.encode(), kind, version)

    def _not_a_patch(self, kind: str) -> None:
        self.serial += 1
        self._drop(f"p{self.serial:05d}-notes.txt", b"not a patch\n", kind, None)

    def _not_UTF_8(self, kind: str) -> None:  # noqa: N802 - named for the fault
        version = self.version()
        name = os.fsdecode(f"p{self.serial:05d}-".encode() + b"\xff\xfe.py")
        self._drop(name, PATCHES["good"](version).encode(), kind, version)

    def _SIGHUP_restart(self, kind: str) -> None:  # noqa: N802
        self.service.process.send_signal(signal.SIGHUP)

    def _SIGKILL_service(self, kind: str) -> None:  # noqa: N802
        pid = self.service.child
        if pid is None:
            return
        self.kills.append((time.monotonic(), pid))
        self.last_kill = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def _out_of_descriptors(self, kind: str) -> None:
        """The serving process at its descriptor limit for a moment, a good patch dropped then."""
        pid = self.service.child
        if pid is None:
            return
        try:
            soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
            used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
            lowest = min(set(range(len(used) + 1)) - used)  # no new descriptor below it
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest, hard))
        except (ProcessLookupError, FileNotFoundError):
            return  # it died meanwhile (a SIGKILL's recovery)
        try:
            self._patch("good")  # taken while the process cannot receive its memfd
            time.sleep(self.rng.uniform(0.2, 2.0))
        finally:
            with contextlib.suppress(ProcessLookupError):
                resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))

    def _folder_writable_by_others(self, kind: str) -> None:
        folder = self.service.folder
        os.chmod(folder, 0o777)
        time.sleep(self.rng.uniform(0.05, 0.5))
        os.chmod(folder, 0o700)

    def _outcome_folder_deleted(self, kind: str) -> None:
        folder = self.service.folder
        outcome = self.rng.choice(OUTCOMES)
        away = self.service.disk / f"gone-{len(self.gone)}"
        away.mkdir()
        with contextlib.suppress(FileNotFoundError):
            os.rename(folder / outcome, away / outcome)  # deleted, as far as the agent knows
        self.gone.append(away)

    def _folder_replaced(self, kind: str) -> None:
        """The folder renamed away (deleted, for the agent), then made again after a moment."""
        folder = self.service.folder
        away = self.service.disk / f"gone-{len(self.gone)}"
        self.replaced.append(time.monotonic())
        os.rename(folder, away)
        self.gone.append(away)
        time.sleep(self.rng.uniform(0.0, 0.5))
        folder.mkdir(mode=0o700)

    def _disk_full(self, kind: str) -> None:
        """The folder's filesystem filled up for a moment (a tmpfs of its own)."""
        self._patch("good")  # taken while the disk is full
        filler = self.service.disk / "filler"
        block = b"\0" * (1 << 20)
        try:
            with filler.open("wb") as out:
                while True:
                    out.write(block)
                    out.flush()
        except OSError:
            pass
        time.sleep(self.rng.uniform(0.2, 2.0))
        filler.unlink()

    def _control_burst(self, kind: str) -> None:
        self.control.burst(self.rng.randint(20, 60))

    def _idle_control_clients(self, kind: str) -> None:
        self.control.idle(self.rng.randint(5, 20), self.rng.uniform(1.0, 8.0))


# -- the checks -----------------------------------------------------------------------------


def filed(folders: list[Path], name: str) -> list[tuple[str, dict[str, Any] | None]]:
    """Where ``name`` was filed: (outcome folder, its result) for each place it is, in the
    folder and in what was renamed away from it (a deleted folder, an outcome folder)."""
    places = []
    for folder in folders:
        for outcome in OUTCOMES:
            path = folder / outcome / name
            if os.path.lexists(path):
                result = None
                with contextlib.suppress(OSError, ValueError):
                    result = json.loads((folder / outcome / f"{name}.result.json").read_bytes())
                places.append((outcome, result))
    return places


def unsettled(chaos: Chaos) -> list[str]:
    """Drops not filed yet: waiting in the folder, or taken from it and still being worked on.

    A drop gone from the folder is not done: hotpatch run may hold it through a
    restart (sent again to the process replacing one killed as it took it), and
    stopping hotpatch run then files it pending. One taken away with its folder
    is done: nothing will file it.
    """
    folders = [chaos.service.folder, *chaos.gone]
    return [
        name
        for name, _, _ in chaos.drops
        if not filed(folders, name) and not any(os.path.lexists(f / name) for f in chaos.gone)
    ]


def check_drops(chaos: Chaos) -> dict[str, Any]:
    folder = chaos.service.folder
    folders = [folder, *chaos.gone]
    unknown: list[str] = []  # versions whose drop was taken away with its folder
    by_outcome: collections.Counter[str] = collections.Counter()
    by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    problems: list[str] = []
    applied: list[str] = []
    hit = 0  # good patches applied by the next process: the one taking it was SIGKILLed
    replaced = 0  # patches refused as their folder was replaced while they were verified
    for name, kind, version in chaos.drops:
        places = filed(folders, name)
        if not places:
            where = "waiting" if os.path.lexists(folder / name) else "lost"
            if where == "lost" and any(os.path.lexists(f / name) for f in chaos.gone):
                where = "taken away"  # it waits in a folder the fault renamed away
                if version is not None:
                    unknown.append(version)
            by_outcome[where] += 1
            by_kind[kind][where] += 1
            if where == "lost":
                problems.append(f"{name!r}: neither filed nor in the folder")
            continue
        if len(places) > 1:
            problems.append(f"{name!r}: filed {len(places)} times ({[p for p, _ in places]})")
        outcome, result = places[0]
        by_outcome[outcome] += 1
        by_kind[kind][outcome] += 1
        if result is None:
            problems.append(f"{name!r}: filed in {outcome}/ without a readable result")
        elif kind in PATCHES and outcome != EXPECTED[kind]:
            reason = str(result.get("reason"))
            if chaos.replaced and outcome == "rejected" and _staging_gone(reason):
                # Its staged copy went away with the folder while it was verified: refused
                # with that reason (known: the folder's life cycle, not the patch).
                replaced += 1
            else:
                problems.append(f"{name!r} ({kind}) ended {outcome}: {result.get('reason')}")
        if result is not None and result.get("outcome") == "applied" and version is not None:
            applied.append(version)
            if "SIGKILL" in str(result.get("reason")):
                hit += 1  # sent again to the process replacing the one killed taking it
    return {
        "drops": len(chaos.drops),
        "by_outcome": dict(by_outcome),
        "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "applied": applied,
        "unknown": unknown,
        "applied_after_sigkill": hit,
        "refused_by_replacement": replaced,
        "problems": problems,
    }


def _staging_gone(reason: str) -> bool:
    return "/.staging/" in reason and "No such file or directory" in reason


def check_journal(path: Path, applied: list[str], unknown: list[str]) -> dict[str, Any]:
    """Is the journal's level a prefix of the patches applied, in order?

    A drop taken away with its folder while it was applied has no result to say
    so: its version may be in the journal or not.
    """
    from hotpatch._errors import JournalError
    from hotpatch._journal import Journal

    try:
        state = Journal(path).read()
    except JournalError as exc:
        return {"level": None, "prefix": False, "error": repr(exc)}
    level = [] if state is None else [e.version for e in state.level]
    known = [v for v in level if v not in unknown]
    return {"level": level, "prefix": known == applied[: len(known)], "applied": len(applied)}


def held_for_resources(log: str) -> dict[str, int]:
    """Drops the folder held for want of a resource (the ERROR said once each), by resource
    and where it ran short: the serving process (its journal), filing the outcome, or the
    supervisor (staging, verification)."""
    held: collections.Counter[str] = collections.Counter()
    for line in log.splitlines():
        if " ERROR patch folder " in line and " waits: " in line:
            resource = line.split(" waits: ", 1)[1].split(":", 1)[0].split(" (", 1)[0]
            if "the serving process" in line or "the new process ran short" in line:
                where = "the serving process"
            elif "cannot be filed" in line:
                where = "filing the outcome"
            else:
                where = "the supervisor"
            held[f"{resource}, in {where}"] += 1
    return dict(held)


def _keep(log: str, path: Path | None) -> None:
    """Copy hotpatch run's whole log to ``path`` (its folder made), if there is one."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(log)


def leftovers(tag: str, root: Path) -> list[int]:
    """Live processes whose command line names this run (the service, verifiers, daemons)."""
    marks = (tag.encode(), str(root).encode())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(mark in cmdline for mark in marks):
            found.append(int(entry.name))
    return found


# -- the run --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/chaos.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=120.0, help="how long to inject faults")
    parser.add_argument("--seed", type=int, default=None, help="for the random choices")
    parser.add_argument("--quick", action="store_true", help="20 s instead of --seconds")
    parser.add_argument(
        "--sigterm",
        action="store_true",
        help="the service stops on SIGTERM (ready() without drain=) instead of draining",
    )
    parser.add_argument(
        "--disk-full",
        action="store_true",
        help="also fill the folder's filesystem now and then (a tmpfs: needs root)",
    )
    parser.add_argument("--json", type=Path, default=RESULTS / f"{NAME}-{PY}.json", metavar="PATH")
    return parser.parse_args(argv)


def run(
    seconds: float,
    seed: int,
    *,
    disk_full: bool = False,
    sigterm: bool = False,
    keep_log: Path | None = None,
) -> dict[str, Any]:
    """The run; with ``keep_log``, hotpatch run's whole log is copied there on a violation."""
    rng = random.Random(seed)
    with (
        tempfile.TemporaryDirectory(prefix="hotpatch-chaos-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        root = Path(tmp)
        disk = root
        if disk_full:  # the folder and the journal on a filesystem of their own, to fill
            disk = root / "disk"
            disk.mkdir()
            mount = ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m,mode=0700", "tmpfs", str(disk)]
            subprocess.run(mount, check=True)
            stack.callback(subprocess.run, ["umount", "-l", str(disk)], check=False)
        service = Service(root, disk, sigterm=sigterm)
        control = Control(service.folder / ".hotpatch.sock")
        chaos = Chaos(service, rng, control, disk_full=disk_full)
        load = Load(service.address, chaos.kills)
        started = time.monotonic()
        try:
            while time.monotonic() - started < seconds:
                chaos.inject()
                time.sleep(rng.uniform(0.05, 0.6))
            injected_s = time.monotonic() - started
            settle = time.monotonic() + SETTLE_S
            while time.monotonic() < settle:
                status = service.status()
                if not unsettled(chaos) and status.get("state") == "running":
                    break
                time.sleep(0.2)
            service.wait(
                lambda s: s.get("state") == "running" and (s.get("child") or {}).get("ready")
            )
            time.sleep(0.5)
            load.stop()
            control.stop()
            final = dict(
                item.split("=", 1)
                for item in http_get(service.address, "/get").split()
                if "=" in item
            )
            counters = {k: int(v) for k, v in final.items()}
        finally:
            load.stopping.set()
            control.stopping.set()
            code = service.stop()
        drops = check_drops(chaos)
        control_failed = control.unexcused(chaos.replaced)
        journal = check_journal(disk / "journal.json", drops["applied"], drops["unknown"])
        requests = load.verdict(counters)
        deadline = time.monotonic() + 20
        while (left := leftovers(service.tag, root)) and time.monotonic() < deadline:
            time.sleep(0.2)
        violations = [
            *drops["problems"],
            *requests["problems"],
            *requests["failures"],
            *(
                ["the journal is not a prefix of the patches applied"]
                if not journal["prefix"]
                else []
            ),
            *(f"control: {why}" for why in control_failed[:10]),
            *([f"processes left behind: {left}"] if left else []),
            *([f"hotpatch run ended with status {code}"] if code != 0 else []),
        ]
        log = service.log_file.read_text(errors="replace")
        log_tail = log[-4000:] if violations else ""
        _keep(log, keep_log if violations else None)
        return {
            "sigterm": sigterm,
            "disk_full": disk_full,
            "log_tail": log_tail,
            "seconds": round(injected_s, 1),
            "seed": seed,
            "faults": dict(sorted(chaos.faults.items())),
            "drops": {k: v for k, v in drops.items() if k != "problems"},
            "journal": journal,
            "requests": {k: v for k, v in requests.items() if k not in ("problems", "failures")},
            "control": {
                "answered": control.answered,
                "busy": control.busy,
                "failed": len(control_failed),
                "failed_folder_replaced": len(control.failed) - len(control_failed),
            },
            "held_for_resources": held_for_resources(log),
            "left_behind": left,
            "violations": violations,
        }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seconds = 20.0 if args.quick else args.seconds
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    keep_log = args.json.with_suffix(".log")
    results = run(seconds, seed, disk_full=args.disk_full, sigterm=args.sigterm, keep_log=keep_log)
    print(f"chaos: {results['seconds']} s of faults under load, seed {seed}")
    print_table("faults injected", ["fault", "count"], sorted(results["faults"].items()))
    drops = results["drops"]
    columns = (*OUTCOMES, "waiting", "taken away", "lost")
    rows = [
        [kind, *(counts.get(o, 0) for o in columns)] for kind, counts in drops["by_kind"].items()
    ]
    print_table("drops by outcome", ["drop", *columns], rows)
    req, ctl, journal = results["requests"], results["control"], results["journal"]
    print_table(
        "checks",
        ["what", "count"],
        [
            ["drops", drops["drops"]],
            ["patches applied", len(drops["applied"])],
            ["patches applied after a SIGKILL hit them", drops["applied_after_sigkill"]],
            ["patches refused, folder replaced in their check", drops["refused_by_replacement"]],
            ["journal level", len(journal["level"] or [])],
            ["journal a prefix of the applied", "yes" if journal["prefix"] else "NO"],
            ["requests answered", req["answered"]],
            ["requests failed (healthy process)", req["failed"]],
            ["requests failed under a SIGKILL", req["failed_excused"]],
            ["updates lost", req["lost"]],
            ["counts reset by SIGKILL", req["reset_by_sigkill"]],
            ["control requests answered", ctl["answered"]],
            ["control requests busy", ctl["busy"]],
            ["control requests failed", ctl["failed"]],
            ["control requests failed, folder being replaced", ctl["failed_folder_replaced"]],
            *(
                [f"drops held: {resource}", count]
                for resource, count in sorted(results["held_for_resources"].items())
            ),
            ["processes left behind", len(results["left_behind"])],
        ],
    )
    if results["violations"]:
        print("\nVIOLATIONS:")
        for line in results["violations"]:
            print(f"  {line}")
        print(f"\nthe end of hotpatch run's log:\n{results['log_tail']}")
        print(f"\nits whole log: {keep_log}")
    else:
        print("\nviolations: none")
    write_json(args.json, NAME, args.quick, results)
    return 1 if results["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
