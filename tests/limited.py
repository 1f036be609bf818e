"""A real service process at its descriptor limit, for the tests of running short of descriptors.

The service (an embedded agent, ``solo``, or a pre-fork worker, ``workers``)
is told on its stdin to lower its own ``RLIMIT_NOFILE`` with
``resource.setrlimit`` and fill its descriptors with real open files
(``fill FREE LEAVE``: FREE left while a drop is taken, LEAVE once a patch is
in), to take every descriptor for a while once a rollback is done
(``squeeze-undo SECONDS``), to give them all back (``free``) and to call the
patched function (``f``). ``fork-hold SECONDS``: once a patch is in here, fork
a child every 0.1 s for SECONDS, as a service using ``multiprocessing``'s fork
does; each keeps every descriptor it inherited (the owner's connections to the
workers among them) until ``release`` or until its parent exits. Flags after
the mode: ``refuse`` (a plugin of this process refuses every patch),
``deliver-timeout=SECONDS`` (a worker's ``install(deliver_timeout=)``).
``stall``: the next patch applied here hangs (as a slow import would) until
``unstall``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

from drops import DropFolder, wait_for

SERVICE = textwrap.dedent(
    """\
    import errno, os, resource, sys, threading, time
    sys.path.insert(0, sys.argv[3])
    import app_mod
    import hotpatch

    held = []
    filler = os.path.join(sys.argv[3], "app_mod.py")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lock = threading.Lock()
    squeeze = []  # descriptors to leave free once a patch is in (the service's load took the rest)


    def take(leave):
        with lock:
            while True:
                try:
                    held.append(os.open(filler, os.O_RDONLY))
                except OSError as exc:
                    assert exc.errno == errno.EMFILE, exc
                    break
            for _ in range(leave):
                os.close(held.pop())


    undo_squeeze = []  # seconds every descriptor is taken for once a rollback is done
    fork_hold = []  # seconds to fork children that hold every descriptor, once a patch is in
    holders = []  # their pids
    release = os.path.join(sys.argv[3], "release-holders")
    stall = []  # the next apply here waits until this event is set


    def hold_forks(seconds):
        parent, end = os.getpid(), time.monotonic() + seconds
        while time.monotonic() < end:
            pid = os.fork()
            if pid == 0:  # every descriptor of the parent's is inherited, and kept
                while os.getppid() == parent and not os.path.exists(release):
                    time.sleep(0.05)
                os._exit(0)
            holders.append(pid)
            time.sleep(0.1)


    def give_back():
        with lock:
            while held:
                os.close(held.pop())


    class Load:
        @hotpatch.hookimpl
        def hotpatch_after_apply(self, patch, registry, result):
            if squeeze:
                take(squeeze.pop())
            if fork_hold:
                threading.Thread(target=hold_forks, args=(fork_hold.pop(),), daemon=True).start()
            if stall:
                stall.pop().wait()

        @hotpatch.hookimpl
        def hotpatch_after_rollback(self, registry, result):
            if undo_squeeze:  # the service's load takes every descriptor for a while
                take(0)
                threading.Timer(undo_squeeze.pop(), give_back).start()

        @hotpatch.hookimpl
        def hotpatch_validate(self, patch, report):
            if "refuse" in sys.argv[5:]:
                return "this worker refuses every patch"
            return None


    if sys.argv[1] == "workers":
        options = {}
        for flag in sys.argv[5:]:
            if flag.startswith("deliver-timeout="):
                options["deliver_timeout"] = float(flag.partition("=")[2])
        agent = hotpatch.install(
            "1.0", watch=sys.argv[2], workers=True, entry_points=False, plugins=[Load()],
            **options,
        )
    else:
        agent = hotpatch.install("1.0", watch=sys.argv[2], journal=sys.argv[4], plugins=[Load()])
    print("ready", flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        if command == "fill":  # a lower limit, every descriptor but N taken by a real file
            used = len(os.listdir("/proc/self/fd"))
            resource.setrlimit(resource.RLIMIT_NOFILE, (used + 64, hard))
            take(int(args[0]))
            squeeze[:] = [int(args[1])]
            print("full", flush=True)
        elif command == "squeeze-undo":
            undo_squeeze[:] = [float(args[0])]
            used = len(os.listdir("/proc/self/fd"))
            resource.setrlimit(resource.RLIMIT_NOFILE, (used + 64, hard))
            print("armed", flush=True)
        elif command == "fork-hold":
            fork_hold[:] = [float(args[0])]
            print("armed", flush=True)
        elif command == "stall":
            unstall = threading.Event()
            stall[:] = [unstall]
            print("armed", flush=True)
        elif command == "unstall":
            unstall.set()
            print("unstalled", flush=True)
        elif command == "release":
            open(release, "w").close()
            while holders:
                os.waitpid(holders.pop(), 0)
            print("released", flush=True)
        elif command == "free":
            with lock:
                squeeze.clear()
                while held:
                    os.close(held.pop())
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            print("freed", flush=True)
        elif command == "f":
            print("f", app_mod.f(), flush=True)
    agent.stop()
    print("level", ",".join(agent.registry.level), flush=True)
    """
)

PIPELINE_FDS = 16  # free while the drop is read, staged, verified and journalled
APP = "def f():\n    return 0\n"


def good_patch(version: str, value: int) -> str:
    return (
        "from hotpatch import Patch\n"
        f"patch = Patch(version={version!r}, baseline='1.0')\n"
        "@patch.replace('app_mod:f')\n"
        f"def f():\n    return {value}\n"
    )


def json_breaking_patch(version: str) -> str:
    return (
        "from hotpatch import Patch\n"
        f"patch = Patch(version={version!r}, baseline='1.0')\n"
        "@patch.replace('json:dumps')\n"
        "def dumps(obj, *args, **kwargs):\n    raise RuntimeError('json is broken')\n"
    )


# Where Path.read_bytes is defined (3.13: inherited from pathlib._abc.PathBase).
READ_BYTES = f"{pathlib.Path.read_bytes.__module__}:{pathlib.Path.read_bytes.__qualname__}"


def read_breaking_patch(version: str) -> str:
    """Breaks reading a file back (the filed outcome), nothing the control socket uses."""
    return (
        "from hotpatch import Patch\n"
        f"patch = Patch(version={version!r}, baseline='1.0')\n"
        f"@patch.replace({READ_BYTES!r})\n"
        "def read_bytes(self):\n"
        "    raise OSError(5, 'reads are broken')\n"
    )


class Service:
    """A real service process with an embedded agent (``solo``) or as a pre-fork worker."""

    def __init__(self, folder: DropFolder, mode: str, *flags: str) -> None:
        modules = folder.root / "modules"
        modules.mkdir(exist_ok=True)
        (modules / "app_mod.py").write_text(APP)
        self.log = folder.root / f"{mode}-{len(list(folder.root.glob('*.log')))}.log"
        with self.log.open("w") as stderr:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    SERVICE,
                    mode,
                    *map(str, (folder.path, modules, folder.journal)),
                    *flags,
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self.lines: list[str] = []
        self._said = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.expect("ready")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._said:
                self.lines.append(line.strip())
                self._said.notify_all()

    def expect(self, word: str) -> str:
        def said() -> str | None:
            return next((line for line in self.lines if line.split()[:1] == [word]), None)

        with self._said:
            self._said.wait_for(lambda: said() is not None or self.process.poll() is not None, 60)
        found = said()
        assert found is not None, f"{word!r} not said:\n{self.logged()[-3000:]}"
        self.lines.remove(found)
        return found

    def tell(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def logged(self) -> str:
        return self.log.read_text()

    def finish(self) -> str:
        assert self.process.stdin is not None
        self.process.stdin.close()
        level = self.expect("level")
        self.process.wait(60)
        return level

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._reader.join(60)
        for pipe in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()


@contextlib.contextmanager
def running() -> Iterator[Any]:
    """``start(folder, mode, *flags)`` -> a ``Service``; every one started is killed after."""
    started: list[Service] = []

    def start(folder: DropFolder, mode: str, *flags: str) -> Service:
        started.append(Service(folder, mode, *flags))
        return started[-1]

    try:
        yield start
    finally:
        for service in started:
            service.kill()


def settled(folder: DropFolder, service: Service, name: str) -> None:
    """``name`` filed somewhere, or the agent saying it waits for a resource."""

    def done() -> bool:
        if not os.path.lexists(folder.path / name):
            return True
        return f"{name} waits" in service.logged()

    wait_for(done, f"{name} to be filed or to wait")


def outcome(folder: DropFolder, name: str) -> tuple[str, dict[str, Any]]:
    def where() -> str | None:
        if os.path.lexists(folder.path / name):
            return None
        for sub in ("applied", "rejected", "pending", "failed"):
            result = folder.path / sub / f"{name}.result.json"
            if result.exists():
                return sub
        return None

    wait_for(lambda: where() is not None, f"{name} to be filed")
    sub = where()
    assert sub is not None
    return sub, json.loads((folder.path / sub / f"{name}.result.json").read_text())
