"""The vital check after an apply, in a process at its descriptor limit (embedded agent, workers).

After each apply the agent checks that it can still file an outcome and answer
its control socket; under ``hotpatch run`` the same check uses a socket pair
made beforehand (``hotpatch._shortage.SparePair``). Here a real service process
lowers its own ``RLIMIT_NOFILE`` with ``resource.setrlimit`` and fills its
descriptors with real open files, leaving a few free. A good patch dropped then
must end applied, or wait with the resource named until descriptors are back --
never be rolled back and refused as one that broke the agent. A patch that does
break the vital path (``json.dumps`` raising) is still rolled back.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from drops import DropFolder, wait_for

SERVICE = textwrap.dedent(
    """\
    import errno, os, resource, sys, threading
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


    class Load:
        @hotpatch.hookimpl
        def hotpatch_after_apply(self, patch, registry, result):
            if squeeze:
                take(squeeze.pop())


    if sys.argv[1] == "workers":
        agent = hotpatch.install(
            "1.0", watch=sys.argv[2], workers=True, entry_points=False, plugins=[Load()]
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


class Service:
    """A real service process with an embedded agent (``solo``) or as a pre-fork worker."""

    def __init__(self, folder: DropFolder, mode: str) -> None:
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


@pytest.fixture
def services() -> Any:
    started: list[Service] = []

    def start(folder: DropFolder, mode: str) -> Service:
        started.append(Service(folder, mode))
        return started[-1]

    yield start
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


@pytest.mark.parametrize("mode", ["solo", "workers"])
@pytest.mark.parametrize("leave", [0, 1, 2])
def test_a_good_patch_at_the_descriptor_limit_is_applied_or_waits_never_refused(
    tmp_path: Path, services: Any, mode: str, leave: int
) -> None:
    # Descriptors enough to take the drop (PIPELINE_FDS free); once the patch is in, the
    # service's load takes all but ``leave``: the vital check runs at the limit.
    folder = DropFolder(tmp_path)
    service = services(folder, mode)
    staged = folder.write("a.py", good_patch("1.0.1", 1))
    service.tell(f"fill {PIPELINE_FDS} {leave}")
    service.expect("full")
    folder.put(staged)
    settled(folder, service, "a.py")
    service.tell("free")
    service.expect("freed")
    where, result = outcome(folder, "a.py")
    assert (where, result["outcome"]) == ("applied", "applied"), (result, service.logged())
    assert "broke what the agent needs" not in service.logged()
    service.tell("f")
    assert service.expect("f") == "f 1"
    assert service.finish() == "level 1.0.1"


def test_workers_whose_owner_cannot_reach_another_for_want_of_descriptors_wait(
    tmp_path: Path, services: Any
) -> None:
    # Two workers; the owner (the first) takes the patch, then its load takes every
    # descriptor: it cannot reach the other worker. Not the patch's fault: undone where
    # it went in, the drop waits, and goes in everywhere once descriptors are back.
    folder = DropFolder(tmp_path)
    owner, other = services(folder, "workers"), services(folder, "workers")
    staged = folder.write("a.py", good_patch("1.0.1", 1))
    owner.tell(f"fill {PIPELINE_FDS} 0")
    owner.expect("full")
    folder.put(staged)
    wait_for(
        lambda: "a.py waits: out of file descriptors" in owner.logged(),
        "the owner to say the drop waits for descriptors",
    )
    assert not os.path.lexists(folder.path / "rejected" / "a.py")
    owner.tell("free")
    owner.expect("freed")
    where, result = outcome(folder, "a.py")
    assert (where, result["outcome"]) == ("applied", "applied"), (result, owner.logged())
    for each in (owner, other):
        each.tell("f")
        assert each.expect("f") == "f 1"
    assert "broke what the agent needs" not in owner.logged() + other.logged()
    assert owner.finish() == other.finish() == "level 1.0.1"


@pytest.mark.parametrize("mode", ["solo", "workers"])
def test_a_patch_breaking_the_vital_path_at_the_descriptor_limit_is_still_rolled_back(
    tmp_path: Path, services: Any, mode: str
) -> None:
    folder = DropFolder(tmp_path)
    service = services(folder, mode)
    staged = folder.write("json.py", json_breaking_patch("1.0.1"))
    service.tell(f"fill {PIPELINE_FDS} 1")
    service.expect("full")
    folder.put(staged)
    settled(folder, service, "json.py")
    service.tell("free")
    service.expect("freed")
    where, result = outcome(folder, "json.py")
    assert where == "rejected", (result, service.logged())
    assert "rolled back" in result["reason"]
    assert service.finish() == "level"
