"""Running short under a real agent: a full disk, a file size limit, no descriptors left.

The faults are real: a small tmpfs filled to the last block (mounted here, as
root), ``RLIMIT_FSIZE`` and ``RLIMIT_NOFILE`` of a real agent process lowered
with ``prlimit``. Each time the drop must wait in the folder with the resource
named (log and status), be tried again, go in once the resource is back, and
never be overtaken by a later version.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from drops import WAIT_S, DropFolder, wait_for

import hotpatch
from hotpatch.agent import _resources
from hotpatch.agent._control import request

FS_BYTES = 256 * 1024
FS_INODES = 4096  # few enough to use up in a test (``SmallDisk.use_up_inodes``)


def patch_text(module: str, version: str, value: int, *, padding: int = 0) -> str:
    return (
        "from hotpatch import Patch\n\n"
        f"patch = Patch(version={version!r}, baseline='1.0')\n\n"
        f"@patch.replace('{module}:f')\n"
        "def f():\n"
        f"    return {value!r}\n" + "#" * padding
    )


class SmallDisk:
    """A tmpfs of ``FS_BYTES`` mounted at ``path``; ``fill()`` takes its last block."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / ".filler"

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
        # Nothing more fits, not even a small file.
        with pytest.raises(OSError, match="No space left") as full:
            (self.path / ".probe").write_bytes(b"x" * 100)
        assert full.value.errno == errno.ENOSPC
        (self.path / ".probe").unlink(missing_ok=True)

    def use_up_inodes(self) -> None:
        """Every inode taken (blocks left): no file can be made, nor a name linked."""
        folder = self.path / ".inodes"
        folder.mkdir(exist_ok=True)
        with pytest.raises(OSError, match="No space left") as full:  # noqa: PT012 -- until full
            for n in range(FS_INODES + 1):
                os.close(os.open(folder / str(n), os.O_WRONLY | os.O_CREAT, 0o600))
        assert full.value.errno == errno.ENOSPC

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)
        shutil.rmtree(self.path / ".inodes", ignore_errors=True)


@contextlib.contextmanager
def tmpfs(mount: Path, options: str) -> Iterator[SmallDisk]:
    """A tmpfs mounted at ``mount`` (made here) with ``options``, unmounted after; the
    test is skipped where one cannot be mounted (not root)."""
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"{options},mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield SmallDisk(mount)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    with tmpfs(tmp_path / "small", f"size={FS_BYTES},nr_inodes={FS_INODES}") as disk:
        yield disk


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    # Retries as they run, only sooner: a test waits seconds, not half a minute.
    monkeypatch.setattr(_resources, "BACKOFF_MIN_S", 0.05)
    monkeypatch.setattr(_resources, "BACKOFF_MAX_S", 0.5)


@pytest.fixture
def target(make_module: Callable[[str], types.ModuleType]) -> types.ModuleType:
    return make_module("def f():\n    return 0\n")


@pytest.fixture
def agents() -> Iterator[list[hotpatch.Agent]]:
    started: list[hotpatch.Agent] = []
    yield started
    for agent in started:
        agent.stop()
        if agent.registry is not None and agent.registry.level:
            agent.registry.rollback(to="1.0")


def waiting(agent: hotpatch.Agent) -> dict[str, Any]:
    answer = agent.status()["waiting"]
    return answer if isinstance(answer, dict) else {}


def retried(agent: hotpatch.Agent, name: str, what: str, *, attempts: int = 3) -> dict[str, Any]:
    """Wait until ``name`` has waited for ``what`` through ``attempts`` tries; its ``waiting``."""
    wait_for(
        lambda: (
            waiting(agent).get("file") == name
            and what in str(waiting(agent).get("reason"))
            and waiting(agent).get("attempts", 0) >= attempts
        ),
        f"{name} to be tried {attempts} times for want of {what}",
    )
    return waiting(agent)


class Rejections:
    """A plugin that records the versions it hears rejected."""

    def __init__(self) -> None:
        self.versions: list[str | None] = []

    @hotpatch.hookimpl
    def hotpatch_rejected(self, version: str | None) -> None:
        self.versions.append(version)


def loud(caplog: pytest.LogCaptureFixture, *words: str) -> bool:
    return any(
        r.levelno >= logging.ERROR and all(w in r.getMessage() for w in words)
        for r in caplog.records
    )


# -- a full disk -------------------------------------------------------------------------


@pytest.mark.parametrize("full", ["folder", "journal"])
def test_a_full_disk_keeps_the_drop_and_retries_it_in_version_order(
    tmp_path: Path,
    *,
    small_disk: SmallDisk,
    target: types.ModuleType,
    agents: list[hotpatch.Agent],
    caplog: pytest.LogCaptureFixture,
    full: str,
) -> None:
    # "folder": staging the drop for its verification finds no space; "journal":
    # recording the level does (the apply is undone by the registry).
    drops = DropFolder(small_disk.path if full == "folder" else tmp_path)
    journal = (small_disk.path if full == "journal" else tmp_path) / "journal.json"
    heard = Rejections()
    agent = hotpatch.install(
        "1.0",
        watch=drops.path,
        journal=journal,
        control_socket=False,
        verify=full == "folder",
        plugins=[heard],
    )
    agents.append(agent)
    first = drops.write("a.py", patch_text(target.__name__, "1.0.1", 1))
    second = drops.write("b.py", patch_text(target.__name__, "1.0.2", 2))
    small_disk.fill()
    drops.put(first)
    held = retried(agent, "a.py", "disk full")
    assert "nothing of it was applied" in held["reason"]
    assert held["fix"] == "free the resource (it is tried again), or remove a.py to give up"
    again = retried(agent, "a.py", "disk full", attempts=held["attempts"] + 1)
    assert again["since"] == held["since"] is not None  # one wait, since it began
    assert loud(caplog, str(drops.path), "a.py waits", "disk full", "tried again")
    drops.put(second)  # a later version, which must not go first
    wait_for(lambda: agent.status()["pending"] == ["a.py", "b.py"], "both drops to wait")
    retried(agent, "a.py", "disk full", attempts=held["attempts"] + 2)
    assert agent.registry is not None
    assert agent.registry.level == ()
    assert (drops.path / "a.py").exists()
    assert (drops.path / "b.py").exists()
    # Not a rejection, neither in the log nor to the plugins: it is kept and tried again.
    assert not [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert heard.versions == []

    small_disk.free()
    assert drops.filed("a.py")["outcome"] == "applied"
    assert drops.filed("b.py")["outcome"] == "applied"
    assert agent.registry.level == ("1.0.1", "1.0.2")
    assert [h.version for h in agent.registry.history] == ["1.0.1", "1.0.2"]
    assert target.f() == 2
    assert agent.status()["waiting"] is None
    assert '"1.0.2"' in journal.read_text()  # recorded once there was room
    assert drops.listing("rejected") == []


def test_an_outcome_that_cannot_be_filed_waits_and_nothing_overtakes_it(
    small_disk: SmallDisk,
    target: types.ModuleType,
    agents: list[hotpatch.Agent],
    caplog: pytest.LogCaptureFixture,
) -> None:
    drops = DropFolder(small_disk.path)
    agent = hotpatch.install("1.0", watch=drops.path, control_socket=False, verify=False)
    agents.append(agent)
    first = drops.write("a.py", patch_text(target.__name__, "1.0.1", 1))
    second = drops.write("b.py", patch_text(target.__name__, "1.0.2", 2))
    small_disk.fill()
    drops.put(first)
    held = retried(agent, "a.py", "disk full")
    assert "its outcome (applied) cannot be filed" in held["reason"]
    assert loud(caplog, "a.py waits", "disk full")
    assert agent.registry is not None
    assert agent.registry.level == ("1.0.1",)  # applied: only its filing waits
    drops.put(second)
    retried(agent, "a.py", "disk full", attempts=held["attempts"] + 2)
    assert agent.registry.level == ("1.0.1",)

    small_disk.free()
    result = drops.filed("a.py")
    assert result["outcome"] == "applied"  # the outcome it had, not a second try's
    assert drops.filed("b.py")["outcome"] == "applied"
    assert agent.registry.level == ("1.0.1", "1.0.2")
    assert drops.listing("applied") == ["a.py", "a.py.result.json", "b.py", "b.py.result.json"]


# -- limits of a real agent process ----------------------------------------------------------

AGENT = textwrap.dedent(
    """\
    import logging
    import sys
    import hotpatch

    if sys.argv[4:] == ["quiet-watchdog"]:  # a service that wants nothing of watchdog's below ERROR
        logging.getLogger("watchdog").setLevel(logging.ERROR)

    agent = hotpatch.install(
        "1.0",
        watch=sys.argv[1],
        journal=sys.argv[2],
        control_socket=False,
        verify=sys.argv[3] == "verify",
    )
    print("started", flush=True)
    sys.stdin.read()  # until the test is done
    agent.stop()
    print("level", ",".join(agent.registry.level), flush=True)
    """
)


class AgentProcess:
    """A real agent in a process of its own; its log lines (stderr) collected as they come."""

    def __init__(
        self,
        tmp_path: Path,
        drops: DropFolder,
        *,
        verify: bool = False,
        quiet_watchdog: bool = False,
    ) -> None:
        modules = tmp_path / "child_modules"
        modules.mkdir()
        (modules / "child_target.py").write_text("def f():\n    return 0\n")
        script = tmp_path / "agent.py"
        script.write_text(AGENT)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(modules), os.environ.get("PYTHONPATH", "")]),
        }
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(drops.path),
                str(drops.journal),
                "verify" if verify else "-",
                *(["quiet-watchdog"] if quiet_watchdog else []),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        assert self.process.stderr is not None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        assert self.process.stdout is not None
        assert self.process.stdout.readline() == "started\n", self.lines

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def __repr__(self) -> str:
        return "".join(self.lines[-30:])

    def logged(self, *words: str) -> bool:
        return any(all(w in line for w in words) for line in list(self.lines))

    def limit(self, which: int, soft: int) -> None:
        _, hard = resource.prlimit(self.process.pid, which)
        resource.prlimit(self.process.pid, which, (soft, hard))

    def unlimit(self, which: int) -> None:
        _, hard = resource.prlimit(self.process.pid, which)
        resource.prlimit(self.process.pid, which, (hard, hard))

    def finish(self) -> str:
        out, _ = self.process.communicate("", timeout=WAIT_S)
        self._reader.join(WAIT_S)
        return out

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


@pytest.fixture
def agent_process(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    started: list[AgentProcess] = []

    def start(
        drops: DropFolder, *, verify: bool = False, quiet_watchdog: bool = False
    ) -> AgentProcess:
        started.append(AgentProcess(tmp_path, drops, verify=verify, quiet_watchdog=quiet_watchdog))
        return started[-1]

    yield start
    for process in started:
        process.kill()


def test_a_file_size_limit_keeps_the_drop_until_it_is_raised(
    tmp_path: Path, agent_process: Callable[..., AgentProcess]
) -> None:
    drops = DropFolder(tmp_path)
    agent = agent_process(drops)
    # The journal holds each patch's text: a large patch cannot be recorded under the limit.
    agent.limit(resource.RLIMIT_FSIZE, 4096)
    drops.drop("big.py", patch_text("child_target", "1.0.1", 1, padding=8192))
    drops.drop("later.py", patch_text("child_target", "1.0.2", 2))
    wait_for(
        lambda: agent.logged("big.py waits", "file size limit exceeded (RLIMIT_FSIZE"),
        "the agent to say what it waits for",
    )
    assert agent.logged("ERROR", str(drops.path))
    assert not (drops.path / "applied").exists() or drops.listing("applied") == []
    agent.unlimit(resource.RLIMIT_FSIZE)
    assert drops.filed("big.py")["outcome"] == "applied"
    assert drops.filed("later.py")["outcome"] == "applied"
    assert agent.finish() == "level 1.0.1,1.0.2\n"


def test_no_descriptor_left_keeps_the_drop_until_there_are_some(
    tmp_path: Path, agent_process: Callable[..., AgentProcess]
) -> None:
    drops = DropFolder(tmp_path)
    agent = agent_process(drops)
    first = drops.write("a.py", patch_text("child_target", "1.0.1", 1))
    second = drops.write("b.py", patch_text("child_target", "1.0.2", 2))
    # No descriptor number left below the limit: the next open() fails with EMFILE.
    open_fds = {int(fd) for fd in os.listdir(f"/proc/{agent.process.pid}/fd")}
    agent.limit(resource.RLIMIT_NOFILE, min(set(range(len(open_fds) + 1)) - open_fds))
    drops.put(first)
    drops.put(second)
    wait_for(
        lambda: agent.logged("a.py waits", "out of file descriptors in this process"),
        "the agent to say what it waits for",
    )
    assert (drops.path / "a.py").exists()
    assert (drops.path / "b.py").exists()
    agent.unlimit(resource.RLIMIT_NOFILE)
    assert drops.filed("a.py")["outcome"] == "applied"
    assert drops.filed("b.py")["outcome"] == "applied"
    assert agent.finish() == "level 1.0.1,1.0.2\n"


# -- the inotify queue overflows ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("quiet_watchdog", [False, True], ids=["watchdog-warns", "watchdog-quiet"])
def test_events_lost_to_a_full_inotify_queue_are_made_up_by_looking_again(
    tmp_path: Path, agent_process: Callable[..., AgentProcess], quiet_watchdog: bool
) -> None:
    """Also in a service that set watchdog's logger to ERROR: the folder hears of the
    overflow from its own watch, not from a warning that service turned off."""
    drops = DropFolder(tmp_path)
    agent = agent_process(drops, quiet_watchdog=quiet_watchdog)
    queue = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    lost = drops.write("lost.py", patch_text("child_target", "1.0.1", 1))
    # The agent stopped (a starved process would do the same): the kernel queues its
    # events until the queue is full, then drops them -- the drop's among them.
    os.kill(agent.process.pid, signal.SIGSTOP)
    try:
        for n in range(queue):  # a dotfile made and closed: two events each, ignored
            (drops.path / f".noise{n}").write_bytes(b"")
        for n in range(queue):
            (drops.path / f".noise{n}").unlink()
        drops.put(lost)
    finally:
        os.kill(agent.process.pid, signal.SIGCONT)
    assert drops.filed("lost.py")["outcome"] == "applied"
    assert agent.logged("inotify queue overflow", "looking at the whole folder again")
    assert agent.finish() == "level 1.0.1\n"


# -- memory in verification -----------------------------------------------------------------


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_a_verification_out_of_memory_keeps_the_drop_until_memory_is_back(
    tmp_path: Path, agent_process: Callable[..., AgentProcess]
) -> None:
    drops = DropFolder(tmp_path)
    agent = agent_process(drops, verify=True)
    drops.drop("first.py", patch_text("child_target", "1.0.1", 1))
    drops.filed("first.py")  # the verifier is up and warm
    (verifier,) = children(agent.process.pid)
    # The verifier, and the child it forks per patch, may not grow by 32 MiB more.
    status = Path(f"/proc/{verifier}/status").read_text().splitlines()
    size_kib = int(next(line.split()[1] for line in status if line.startswith("VmSize:")))
    limit = (size_kib << 10) + (32 << 20)
    resource.prlimit(verifier, resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
    ballast = "BALLAST = bytearray(128 << 20)  # a patch that needs memory to import\n"
    drops.drop("big.py", ballast + patch_text("child_target", "1.0.2", 2))
    drops.drop("later.py", patch_text("child_target", "1.0.3", 3))
    wait_for(
        lambda: agent.logged("ERROR", "big.py waits: out of memory", "verifying patch file big.py"),
        "the agent to say what it waits for",
    )
    assert (drops.path / "big.py").exists()
    assert (drops.path / "later.py").exists()
    resource.prlimit(verifier, resource.RLIMIT_AS, (resource.RLIM_INFINITY,) * 2)
    assert drops.filed("big.py")["outcome"] == "applied"
    assert drops.filed("later.py")["outcome"] == "applied"
    assert agent.finish() == "level 1.0.1,1.0.2,1.0.3\n"


def test_hotpatch_apply_on_a_full_disk_changes_nothing_and_says_why(
    tmp_path: Path, small_disk: SmallDisk, target: types.ModuleType, agents: list[hotpatch.Agent]
) -> None:
    drops = DropFolder(small_disk.path)
    agent = hotpatch.install("1.0", watch=drops.path, verify=True)
    agents.append(agent)
    fix = tmp_path / "fix.py"
    fix.write_text(patch_text(target.__name__, "1.0.1", 1))
    small_disk.fill()
    assert agent.socket is not None
    answer = request(agent.socket, {"cmd": "apply", "path": str(fix)})
    assert answer["ok"] is False
    assert answer["error_type"] == "Shortage"
    assert "disk full" in answer["error"]
    assert "send it again once the resource is free" in answer["error"]
    assert agent.registry is not None
    assert agent.registry.level == ()
    small_disk.free()
    assert request(agent.socket, {"cmd": "apply", "path": str(fix)})["outcome"] == "applied"
    assert target.f() == 1
