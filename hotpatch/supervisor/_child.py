"""One service process under the supervisor: started with the sockets; its channel; its exit."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hotpatch._errors import ServiceError
from hotpatch._results import LEVEL_SHOWN, LevelDigests
from hotpatch.service._channel import (
    ENV_CONTROL,
    ENV_SOCKETS,
    read_memfd,
    recv_message,
    send_message,
)

__all__ = ["Child", "ChildExited", "ChildSpec", "LevelMirror", "Message", "describe_exit"]

log = logging.getLogger("hotpatch.supervisor")

_PR_SET_PDEATHSIG = 1
_EXIT_AFTER_EOF = 1.0  # how long a closed channel waits for the exit status
LEVEL_KEYS = ("baseline", "level", "patches")  # what a level report updates in ``info``
_UNSOLICITED = frozenset({"baseline-ready", "restart", "level"})  # sent by the process itself
WHOLE_LEVEL_TIMEOUT = 60.0  # for a serving process to pass its whole level


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to start the service: its command, extra environment, working directory.

    A restart starts ``spec`` again; a baseline restart will start another spec
    (the new code tree) and fall back to the previous one if it fails.
    """

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """A control message from the service, with the fds it carried."""

    op: str
    body: dict[str, Any]
    fds: list[int]

    def close_fds(self) -> None:
        for fd in self.fds:
            os.close(fd)


class ChildExited(Exception):
    """The process exited (or closed its control channel) before saying what was expected."""


def describe_exit(returncode: int | None) -> str:
    """``"exited with status 3"``, ``"was killed by SIGKILL"``."""
    if returncode is None:
        return "closed its control channel"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: the service gets SIGKILL if the supervisor dies, so none is orphaned."""
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the supervisor died before prctl
            os._exit(1)

    return preexec


class LevelMirror:
    """The whole level of a serving process, kept from what it says of the top.

    Its answers and reports carry the top of the level (``level``, ``patches``
    with their sha256), ``level_size`` and ``below``, the digest of the patches
    under the top (``LevelDigests``): the top goes on the bottom known here if
    the digests agree. If they do not (or the bottom is not known), the report
    is kept aside, ``missing`` says so, and the whole level is asked for
    (``take_whole``); what was kept aside is then put on it, if newer.
    """

    def __init__(self) -> None:
        # [version, sha256], oldest first: the one state kept. Replaced, never changed in
        # place: what is derived from it (``level``, ``applied``, the digest) is kept
        # with the list it was made from, and made again when ``patches`` is another list.
        self.patches: list[list[Any]] = []
        self.digests: LevelDigests[list[Any]] = LevelDigests(lambda p: (str(p[0]), p[1]))
        self.unmerged: Mapping[str, Any] | None = None  # the newest report not put on yet
        self._level: tuple[list[list[Any]], list[str]] = (self.patches, [])
        self._applied: tuple[list[list[Any]], list[tuple[str, str | None]]] = (self.patches, [])
        self._whole: tuple[list[list[Any]], str] | None = None  # (patches, their digest)

    @property
    def level(self) -> list[str]:
        """The versions of ``patches``, oldest first: one list until the level changes
        (``info["level"]`` is it; not to be changed in place)."""
        patches = self.patches
        if self._level[0] is not patches:
            self._level = (patches, [str(p[0]) for p in patches])
        return self._level[1]

    @property
    def applied(self) -> list[tuple[str, str | None]]:
        """``(version, sha256)`` of the level, oldest first: one list until the level changes
        (the folder's pipeline compares every drop with it; not to be changed in place)."""
        patches = self.patches
        if self._applied[0] is not patches:
            self._applied = (patches, [(str(v), sha) for v, sha in patches])
        return self._applied[1]

    def digest_at(self, n: int) -> str:
        """The digest of the level's first ``n`` patches (``""`` for none): a sha256 chained
        over each one's version and sha256, oldest first (``LevelDigests``). The whole
        level's is kept until the level changes (``patches`` is then another list)."""
        patches = self.patches
        if n != len(patches):
            return self.digests.digest(patches, n)
        if self._whole is None or self._whole[0] is not patches:
            self._whole = (patches, self.digests.digest(patches, n))
        return self._whole[1]

    def shown(self, *, whole: bool) -> dict[str, Any]:
        """The level as the status shows it: ``level`` (all of it, or its top ``LEVEL_SHOWN``
        versions: what the status file holds), ``level_size`` and ``level_digest`` (of all
        of it). What it costs does not grow with the level, but for ``whole``."""
        level = self.level
        return {
            "level": list(level) if whole else level[-LEVEL_SHOWN:],
            "level_size": len(level),
            "level_digest": self.digest_at(len(self.patches)),
        }

    @property
    def missing(self) -> bool:
        """The last report could not be put on the bottom known here: the level is stale."""
        return self.unmerged is not None

    def take(self, report: Mapping[str, Any]) -> bool:
        """Put ``report``'s top on the bottom known here; ``False`` if its digest differs."""
        patches = [list(p) for p in report.get("patches") or []]
        size = report.get("level_size")
        if not isinstance(size, int):  # the whole level
            self.patches, self.unmerged = patches, None
            return True
        bottom = size - len(patches)
        if len(report.get("level") or []) != len(patches) or bottom < 0:
            self.unmerged = report
            return False
        known = bottom <= len(self.patches)
        if not known or self.digests.digest(self.patches, bottom) != report.get("below"):
            self.unmerged = report
            return False
        if patches != self.patches[bottom:]:
            self.patches = [*self.patches[:bottom], *patches]
        self.unmerged = None
        return True

    def take_whole(self, whole: Mapping[str, Any]) -> None:
        """The whole level the process passed (``whole-level``), then the report kept aside
        if it is newer."""
        self.patches = [list(p) for p in whole.get("patches") or []]
        report, self.unmerged = self.unmerged, None
        if report is not None and int(report.get("level_seq") or 0) > int(
            whole.get("level_seq") or 0
        ):
            self.take(report)


def read_whole_level(fds: list[int]) -> dict[str, Any] | None:
    """The whole level a process passed in a memfd (``None`` without one); closes the fds."""
    if not fds:
        return None
    data = read_memfd(fds)
    try:
        whole = json.loads(data)
    except ValueError:
        log.warning("a whole patch level passed in a memfd is not JSON")
        return None
    return whole if isinstance(whole, dict) else None


class Child:
    """A running service process, seen from the supervisor's event loop."""

    _ids = itertools.count(1)

    def __init__(
        self, process: subprocess.Popen[bytes], channel: socket.socket, generation: int
    ) -> None:
        self.process = process
        self.pid = process.pid
        self.channel = channel
        self.generation = generation
        self.started = time.monotonic()
        self.ready_at: float | None = None
        self.exited_at: float | None = None
        self.retiring = False  # told to drain or stop: its exit is expected
        self.info: dict[str, Any] = {}  # what it said when loaded: sys.path, baseline, level
        self.mirror = LevelMirror()  # its whole level (``info``'s), kept from its reports
        self._fetching: asyncio.Task[None] | None = None  # asking for the whole level
        self.on_level: Callable[[Child], None] | None = None  # told of an unsolicited level
        # told when it calls hotpatch.ready_for_baseline(): it counts for the planned
        # baseline pending at that moment, and is not remembered for a later one
        self.on_baseline_ready: Callable[[Child], None] | None = None
        # told when it asks to be replaced (hotpatch's handler got an outside SIGTERM)
        self.on_restart_asked: Callable[[Child, str], None] | None = None
        self.lock = asyncio.Lock()  # one request/reply exchange at a time
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._loop = asyncio.get_running_loop()
        self._inbox: collections.deque[Message] = collections.deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._eof = False
        self._pidfd = os.pidfd_open(self.pid)
        try:
            self._loop.add_reader(self.channel.fileno(), self._read)
            self._loop.add_reader(self._pidfd, self._reap)
        except BaseException:
            self._loop.remove_reader(self.channel.fileno())
            os.close(self._pidfd)
            raise

    @classmethod
    def spawn(
        cls, spec: ChildSpec, listeners: Mapping[str, socket.socket], generation: int
    ) -> Child:
        """Start ``spec`` with the listening sockets and a control channel (inherited fds)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            env = {**os.environ, **spec.env}
            env[ENV_SOCKETS] = ",".join(f"{n}={s.fileno()}" for n, s in listeners.items())
            env[ENV_CONTROL] = str(theirs.fileno())
            process = subprocess.Popen(
                spec.argv,
                env=env,
                cwd=spec.cwd,
                pass_fds=[*(s.fileno() for s in listeners.values()), theirs.fileno()],
                preexec_fn=_die_with_parent(os.getpid()),  # noqa: PLW1509 -- single-threaded parent
                process_group=0,  # terminal signals go to the supervisor, which decides
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        try:
            return cls(process, ours, generation)
        except BaseException:  # it cannot be watched (pidfd_open: no descriptor left): undone
            ours.close()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # its group: process_group=0
            process.wait()
            raise

    def __repr__(self) -> str:
        return f"<Child pid={self.pid} generation={self.generation}>"

    @property
    def alive(self) -> bool:
        return not self.exited.done()

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    # -- messages

    def send(self, message: Mapping[str, Any], fds: Iterable[int] = ()) -> None:
        """Send a control message (it is small: the socket buffer takes it at once)."""
        try:
            send_message(self.channel, message, fds)
        except (BlockingIOError, BrokenPipeError, ConnectionError) as exc:
            msg = f"process {self.pid} cannot be told {message['op']!r}: {exc}"
            raise ChildExited(msg) from exc

    async def expect(self, *ops: str, timeout: float, request: int | None = None) -> Message:
        """The next message among ``ops`` (others are logged and dropped).

        Raises ``ChildExited`` if the process exits first, ``TimeoutError``
        after ``timeout`` seconds. With ``request``, only the reply carrying
        that id counts (a late reply to an abandoned request is dropped).
        """
        async with asyncio.timeout(max(timeout, 0.0)):
            while True:
                while self._inbox:
                    message = self._inbox.popleft()
                    if message.op in ops and (request is None or message.body.get("id") == request):
                        return message
                    log.debug("process %d: dropping unexpected %r", self.pid, message.op)
                    message.close_fds()
                if self._eof or not self.alive:
                    if self.alive:  # the channel closes just before the exit is seen
                        await self.wait_exit(_EXIT_AFTER_EOF)
                    msg = f"process {self.pid} {describe_exit(self.returncode)}"
                    raise ChildExited(msg)
                self._wakeup = self._loop.create_future()
                await self._wakeup

    def loaded(self, message: Message) -> None:
        """What the process said once loaded, its whole level from the memfd it passed."""
        self.info = dict(message.body)
        whole = read_whole_level(message.fds)
        if whole is not None:
            self.mirror.take_whole(whole)
        elif "level" in self.info and not self.mirror.take(self.info):  # none passed
            self._ask_whole_level()  # (no descriptor left there for the memfd)
        self.info.pop("below", None)
        if "level" in self.info or whole is not None:
            self.info.update(level=self.mirror.level, patches=self.mirror.patches)
        if whole is not None:
            self.info["level_seq"] = max(
                int(whole.get("level_seq") or 0), int(self.info.get("level_seq") or 0)
            )

    def update_level(self, report: Mapping[str, Any]) -> bool:
        """Take the level a reply or report carries, unless a newer one was seen; changed?

        The report carries the top of the level: ``mirror`` keeps the whole of it (and
        asks the process for all of it when the bottom known here is not the process's).
        """
        seq = report.get("level_seq")
        known = self.info.get("level_seq")
        if seq is not None and known is not None and int(seq) <= int(known):
            return False
        before = {k: self.info.get(k) for k in LEVEL_KEYS}
        if "baseline" in report:
            self.info["baseline"] = report["baseline"]
        if "level" in report:
            if not self.mirror.take(report):
                self._ask_whole_level()
            self.info.update(level=self.mirror.level, patches=self.mirror.patches)
        if seq is not None:
            self.info["level_seq"] = seq
        return before != {k: self.info.get(k) for k in LEVEL_KEYS}

    def _ask_whole_level(self) -> None:
        """Ask the process for its whole level (once it serves), unless being asked."""
        if self._fetching is None or self._fetching.done():
            log.warning(
                "process %d: the patch level it reports does not follow the one known here; "
                "asking it for the whole level",
                self.pid,
            )
            self._fetching = self._loop.create_task(self._fetch_whole_level())

    async def _fetch_whole_level(self) -> None:
        while self.alive and self.ready_at is None:  # it answers requests once it serves
            await asyncio.sleep(0.05)
        try:
            async with self.lock:
                request = Child.request_id()
                self.send({"op": "whole-level", "id": request})
                message = await self.expect(
                    "whole-level", timeout=WHOLE_LEVEL_TIMEOUT, request=request
                )
        except (ChildExited, TimeoutError) as exc:
            log.warning("process %d did not pass its whole patch level: %s", self.pid, exc)
            return
        whole = read_whole_level(message.fds)
        if whole is None:
            log.warning("process %d answered without its whole patch level", self.pid)
            return
        before = {k: self.info.get(k) for k in LEVEL_KEYS}
        self.mirror.take_whole(whole)
        log.info(
            "process %d passed its whole patch level (%d patches)", self.pid, len(self.mirror.level)
        )
        self.info.update(level=self.mirror.level, patches=self.mirror.patches)
        seq = max(int(whole.get("level_seq") or 0), int(self.info.get("level_seq") or 0))
        self.info["level_seq"] = seq
        if before != {k: self.info.get(k) for k in LEVEL_KEYS} and self.on_level is not None:
            self.on_level(self)

    @staticmethod
    def request_id() -> int:
        return next(Child._ids)

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _read(self) -> None:
        while not self._eof:
            try:
                received = recv_message(self.channel)
            except BlockingIOError:
                return
            except (OSError, ServiceError, ValueError) as exc:
                log.warning("process %d: bad control message (%s)", self.pid, exc)
                received = None
            if received is None:
                self._eof = True
                self._loop.remove_reader(self.channel.fileno())
            else:
                message, fds = received
                if message["op"] in _UNSOLICITED:  # events, not replies
                    for fd in fds:
                        os.close(fd)
                    self._event(message)
                    continue
                self._inbox.append(Message(message["op"], message, fds))
            self._wake()

    def _event(self, message: Mapping[str, Any]) -> None:
        """A message the process sends by itself, told to whoever listens."""
        op = message["op"]
        if op == "baseline-ready":  # it called hotpatch.ready_for_baseline()
            if self.on_baseline_ready is not None:
                self.on_baseline_ready(self)
        elif op == "restart":  # it asks to be replaced
            if self.on_restart_asked is not None:
                self.on_restart_asked(self, str(message.get("reason") or "asked"))
        elif self.update_level(message) and self.on_level is not None:  # its level changed
            self.on_level(self)

    def _reap(self) -> None:
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = -1
        returncode = self.process.wait()
        self.exited_at = time.monotonic()
        self._read()  # what it said just before exiting still counts
        self.exited.set_result(returncode)
        self._wake()

    # -- ending

    def signal(self, signum: int) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    async def wait_exit(self, timeout: float) -> int | None:
        """The exit status, or ``None`` if it is still running after ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(asyncio.shield(self.exited), max(timeout, 0.0))
        except TimeoutError:
            return None

    async def terminate(self, grace: float) -> int:
        """SIGTERM, then SIGKILL after ``grace`` seconds; wait until it is gone."""
        self.signal(signal.SIGTERM)
        if (returncode := await self.wait_exit(grace)) is not None:
            return returncode
        return await self.kill()

    async def kill(self) -> int:
        """SIGKILL, and wait until it is gone."""
        self.signal(signal.SIGKILL)
        return await asyncio.shield(self.exited)

    def close(self) -> None:
        """Release the channel (after the process exited)."""
        if not self._eof:
            self._eof = True
            self._loop.remove_reader(self.channel.fileno())
        self.channel.close()
        for message in self._inbox:
            message.close_fds()
        self._inbox.clear()
