"""The hand-over: start a service process, give it the state, drain the old one into it.

A memory-preserving restart runs in the order of SPEC §6:

1. announce (log, status ``restarting``) -- the supervisor's part;
2. start the new process; meanwhile ask the old one for a state round, so the
   chain of rounds the supervisor holds is fresh;
3. the new process imports and pulls the chain, then smaller and smaller
   rounds (pre-copy), all while the old process serves;
4. the old process drains (stops accepting, finishes in-flight work) and
   sends the final round -- only what changed since the last one;
5. the new process applies it, says ready and starts accepting from the
   backlog that kept the waiting connections; the old one retires.

The pause is step 4 to 5: from the old process stopping to the new one
being ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from hotpatch._shortage import shortage_of
from hotpatch.service._channel import ENV_BASELINE, ENV_JOURNAL, ENV_VITAL_TIMEOUT, write_memfd
from hotpatch.supervisor._bundle import Release
from hotpatch.supervisor._child import Child, ChildExited, ChildSpec, Message, describe_exit
from hotpatch.supervisor._records import PatchJob, StateError, SupervisorConfig
from hotpatch.supervisor._state import Chunk, StateChain
from hotpatch.supervisor._status import utc_now

__all__ = ["BringUpFailed", "HandedOver", "Handover", "memfd"]

log = logging.getLogger("hotpatch.supervisor")

PRECOPY_DONE_BYTES = 256 * 1024  # a round this small: drain now
PRECOPY_MAX_ROUNDS = 8
PULL_TIMEOUT = 60.0  # for the service to write one round
HANDOVER_GRACE = 2.0  # after the drain timeout, for the final round
RETIRE_GRACE = 5.0  # after the drain timeout, for the old process to exit
STOP_GRACE = 2.0  # SIGTERM to SIGKILL


class BringUpFailed(Exception):
    """A new process did not come up; says whether the old one was drained meanwhile."""

    def __init__(
        self,
        message: str,
        *,
        old_drained: bool,
        stopped_at: float | None,
        new_pid: int | None = None,
        shortage: str | None = None,
    ) -> None:
        super().__init__(message)
        self.old_drained = old_drained
        self.stopped_at = stopped_at
        self.new_pid = new_pid
        self.shortage = shortage  # the resource that ran out, if that was why


class _StartRefused(Exception):
    """The new process said it cannot run: its journal, or the patch it was started for.

    ``shortage``: it could not for want of a resource (its journal's disk full).
    """

    def __init__(self, message: str, shortage: str | None = None) -> None:
        super().__init__(message)
        self.shortage = shortage


def memfd(data: bytes, name: str = "hotpatch-patch") -> int:
    """A memfd holding ``data`` (close-on-exec), to pass to a process over its channel."""
    return write_memfd(data, name)


@dataclass(frozen=True, slots=True)
class HandedOver:
    """How a bring-up went: the pause (``None`` if nobody was serving), the state's fate, and
    the size of the final round (what crossed in the pause; ``None`` if there was none)."""

    paused_s: float | None
    state: str
    final_bytes: int | None = None


class _Feed:
    """What of the chain a new process has been sent: it gets each round once, in order."""

    def __init__(self, child: Child, chain: StateChain) -> None:
        self.child = child
        self.chain = chain
        self.sent = 0
        self.epoch = chain.epoch

    def send(self) -> None:
        if self.epoch != self.chain.epoch:  # replaced meanwhile: again (it starts with "full")
            self.sent, self.epoch = 0, self.chain.epoch
        for chunk in self.chain.chunks[self.sent :]:
            body = {"op": "state", "size": chunk.size, "records": chunk.records, "full": chunk.full}
            self.child.send(body, [chunk.fd])
        self.sent = len(self.chain)


def _round_of(child: Child, message: Message, *, full: bool) -> Chunk:
    """The state round a ``state`` or ``handover`` message passed: its first fd.

    Any other fd it carried (a buggy or hostile process) is closed; a round
    whose size or record count cannot be read is closed too (``StateError``).
    """
    fd, extra = message.fds[0], message.fds[1:]
    for other in extra:
        os.close(other)
    if extra:
        log.warning(
            "process %d passed %d descriptors with its state round, where one is expected; "
            "the %d others are closed",
            child.pid,
            len(message.fds),
            len(extra),
        )
    try:
        size, records = int(message.body["size"]), int(message.body["records"])
    except (KeyError, TypeError, ValueError) as exc:
        os.close(fd)
        msg = (
            f"process {child.pid} passed a state round without a readable size and record "
            f"count ({type(exc).__name__}: {exc})"
        )
        raise StateError(msg) from None
    return Chunk(fd, size, records, full)


class Handover:
    """The service processes of one supervisor and the chain of state rounds they hand on.

    It is given the supervisor's listening sockets (the same dict, filled when
    they are opened) and three callbacks: a process exited, a process changed
    its patch level by itself, and something the status shows changed.
    """

    def __init__(
        self,
        config: SupervisorConfig,
        listeners: dict[str, socket.socket],
        *,
        on_exit: Callable[[Child], None],
        on_level: Callable[[Child], None],
        on_baseline_ready: Callable[[Child], None],
        on_restart_asked: Callable[[Child, str], None],
        on_change: Callable[[], None],
    ) -> None:
        self.config = config
        self.listeners = listeners
        self.on_exit = on_exit
        self.on_level = on_level
        self.on_baseline_ready = on_baseline_ready
        self.on_restart_asked = on_restart_asked
        self.on_change = on_change
        self.chain = StateChain()
        self.starting: Child | None = None
        self.children: set[Child] = set()
        self.snapshots = 0
        self.snapshot_at: str | None = None
        self.snapshot_error: str | None = None
        self.service_sys_path: list[str] | None = None
        self.sys_path_known = threading.Event()
        self._generation = 0
        self._pulls: set[asyncio.Task[Any]] = set()  # abandoned by a failed start, still running
        self._retiring: set[asyncio.Task[None]] = set()

    # -- bringing a process up

    async def bring_up(
        self,
        old: Child | None,
        *,
        down_since: float | None,
        carry_state: bool,
        release: Release | None,
        start_patch: PatchJob | None = None,
    ) -> tuple[Child, HandedOver]:
        """Start a process, give it the state, drain ``old`` (if any) into it; until ready.

        ``release``: the code to run (``None``: the code the supervisor started with).
        """
        new = self._start_child(down_since, release)
        if start_patch is not None:
            fd = memfd(start_patch.data)
            try:
                body = {"op": "start-patch", "name": start_patch.name, "path": start_patch.path}
                with contextlib.suppress(ChildExited):  # seen as an exit below
                    new.send({**body, "who": start_patch.who}, [fd])
            finally:
                os.close(fd)
        source = old if carry_state else None
        # Freshen the chain while the new process starts and imports.
        refresh = asyncio.create_task(self.pull(source)) if source is not None else None
        feed = _Feed(new, self.chain) if carry_state else None
        drained, stopped_at, final = False, down_since, None
        try:
            await self._precopy(new, source, refresh, feed)
            # The pause starts here.
            if source is not None:
                drained = True
                stopped_at, final = await self.drain(source)
                state = "complete" if final is not None else "from-snapshot"
            else:
                state = "from-snapshot" if feed and not self.chain.empty else "fresh"
            if feed is not None:
                feed.send()
            handover = {
                "stopped_at": stopped_at,
                "limit": self.config.state_limit,
                "state": state,
                "drain_timeout": self.config.drain_timeout,
            }
            new.send({"op": "handover", **handover})
            message = await new.expect("ready", timeout=self.config.ready_timeout)
        except (ChildExited, TimeoutError, StateError, _StartRefused) as exc:
            await self._discard(new)
            raise BringUpFailed(
                self._why(new, exc),
                old_drained=drained,
                stopped_at=stopped_at,
                new_pid=new.pid,
                shortage=exc.shortage if isinstance(exc, _StartRefused) else None,
            ) from exc
        except BaseException:
            new.signal(signal.SIGKILL)
            raise
        finally:
            self.starting = None
            if refresh is not None and not refresh.done():
                # Never abandoned: the old process has forgotten what the
                # round holds, so the round must reach the chain.
                self._pulls.add(refresh)
                refresh.add_done_callback(self._pulls.discard)
        new.ready_at = float(message.body["at"])
        paused = None if stopped_at is None else max(new.ready_at - stopped_at, 0.0)
        return new, HandedOver(paused, state, final.size if final is not None else None)

    def _child_spec(self, release: Release | None) -> ChildSpec:
        """The command, with the baseline, journal and check after an apply's wait, and a
        release's code first on sys.path."""
        spec = self.config.spec
        env = dict(spec.env)
        baseline = release.version if release is not None else self.config.baseline
        if baseline is not None:
            env[ENV_BASELINE] = baseline
            env[ENV_VITAL_TIMEOUT] = repr(self.config.vital_timeout)
            if self.config.journal is not None:
                env[ENV_JOURNAL] = str(self.config.journal)
        if release is not None:
            # Safe path: neither the script's folder nor the working directory goes
            # before the new code tree (which would run the old code again).
            inherited = env.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(release.code_root), inherited]))
            env["PYTHONSAFEPATH"] = "1"
        return ChildSpec(spec.argv, env, spec.cwd)

    def _start_child(self, down_since: float | None, release: Release | None) -> Child:
        self._generation += 1
        try:
            new = Child.spawn(self._child_spec(release), self.listeners, self._generation)
        except OSError as exc:
            msg = f"cannot start {self.config.spec.argv[0]!r}: {exc.strerror or exc}"
            raise BringUpFailed(
                msg, old_drained=False, stopped_at=down_since, shortage=shortage_of(exc)
            ) from exc
        self.children.add(new)
        new.exited.add_done_callback(lambda _: self.on_exit(new))
        new.on_level = self.on_level
        new.on_baseline_ready = self.on_baseline_ready
        new.on_restart_asked = self.on_restart_asked
        self.starting = new
        self.on_change()
        return new

    async def _precopy(
        self,
        new: Child,
        source: Child | None,
        refresh: asyncio.Task[Chunk] | None,
        feed: _Feed | None,
    ) -> None:
        """Answer the new process's pulls, with smaller and smaller rounds, until it is loaded."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.ready_timeout
        rounds, last = 0, 0
        while True:
            message = await new.expect("pull", "loaded", timeout=deadline - loop.time())
            if message.op == "loaded":
                new.loaded(message)
                if (sys_path := message.body.get("sys_path")) is not None:
                    self.service_sys_path = list(sys_path)
                    self.sys_path_known.set()
                if error := message.body.get("error"):
                    raise _StartRefused(
                        f"the new process {new.pid} cannot start: {error}",
                        message.body.get("shortage"),
                    )
                return
            if source is not None and source.alive:
                pull = refresh if rounds == 0 and refresh else self.pull(source, full=False)
                chunk = await self._round(pull)
                rounds += 1
                last = chunk.size if chunk is not None else 0
            if feed is not None:
                feed.send()
            more = source is not None and source.alive and last > PRECOPY_DONE_BYTES
            new.send({"op": "pulled", "more": more and rounds < PRECOPY_MAX_ROUNDS})

    def _why(self, new: Child, exc: Exception) -> str:
        if isinstance(exc, TimeoutError):
            return f"the new process {new.pid} was not ready within {self.config.ready_timeout:g}s"
        if isinstance(exc, StateError):
            return f"the state could not be handed over: {exc}"
        if isinstance(exc, _StartRefused):
            return str(exc)
        if new.alive:
            return f"the new process {new.pid} closed its control channel"
        return f"the new process {new.pid} {describe_exit(new.returncode)} before it was ready"

    # -- state rounds

    async def _round(self, pull: Coroutine[Any, Any, Chunk] | asyncio.Task[Chunk]) -> Chunk | None:
        """A state round from the old process, ``None`` if it died meanwhile."""
        try:
            return await pull
        except ChildExited:
            return None

    async def pull(self, child: Child, *, full: bool | None = None) -> Chunk:
        """Ask ``child`` for a state round and add it to the chain."""
        async with child.lock:
            if full is None:
                full = self.chain.needs_full()
            full = full or self.chain.empty or self.chain.stale
            request = Child.request_id()
            child.send(
                {"op": "pull", "id": request, "full": full, "limit": self.config.state_limit}
            )
            try:
                message = await child.expect(
                    "state", "state-error", timeout=PULL_TIMEOUT, request=request
                )
            except TimeoutError as exc:
                # If the round comes after all, it is dropped: the next one must be full.
                self.chain.stale = True
                msg = f"process {child.pid} sent no state round within {PULL_TIMEOUT:g}s"
                raise StateError(msg) from exc
            if message.op == "state-error" or not message.fds:
                message.close_fds()
                error = message.body.get("error", "no memfd attached")
                msg = f"process {child.pid} cannot hand over its state: {error}"
                raise StateError(msg)
            chunk = _round_of(child, message, full=full)
            self.chain.add(chunk)
            self.snapshots += 1
            self.snapshot_at = utc_now()
            self.snapshot_error = None
            return chunk

    async def drain(self, old: Child) -> tuple[float, Chunk | None]:
        """Stop ``old`` taking work and take its final round: ``(stopped_at, final round)``,
        ``None`` for the round if the state since the last one is lost."""
        async with old.lock:
            sent_at = time.monotonic()
            timeout = self.config.drain_timeout
            old.retiring = True
            try:
                old.send({"op": "drain", "timeout": timeout, "limit": self.config.state_limit})
                message = await old.expect("handover", timeout=timeout + HANDOVER_GRACE)
            except ChildExited as exc:
                log.warning("%s before handing over; changes since the last round are lost", exc)
                return old.exited_at or sent_at, None
            except TimeoutError:
                log.warning(
                    "process %d did not hand over within %gs (--drain-timeout); killing it; "
                    "changes since the last round are lost",
                    old.pid,
                    timeout,
                )
                await old.kill()
                return sent_at, None
            try:
                stopped_at = float(message.body.get("stopped_at", sent_at))
            except (TypeError, ValueError):  # not a time: when it was told to drain, then
                stopped_at = sent_at
            if message.body.get("error") or not message.fds:
                message.close_fds()
                log.warning(
                    "process %d could not write its final round (%s); changes since the last "
                    "round are lost",
                    old.pid,
                    message.body.get("error"),
                )
                return stopped_at, None
            try:
                chunk = _round_of(old, message, full=False)
                self.chain.add(chunk)
            except (StateError, ValueError) as exc:
                log.warning("process %d: %s; changes since the last round are lost", old.pid, exc)
                return stopped_at, None
            return stopped_at, chunk

    # -- ending processes

    def forget(self, child: Child) -> None:
        """Let go of a process that has exited (its channel, its place among the children)."""
        if not child.alive:
            child.close()
            self.children.discard(child)

    async def _discard(self, child: Child) -> None:
        """A process that never served: no drain, just gone."""
        await child.kill()
        self.forget(child)

    def retire_later(self, child: Child) -> None:
        """Let a process that handed over exit by itself, in the background."""
        task = asyncio.create_task(self._retire(child))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, child: Child) -> None:
        """Wait for a process that handed over to exit by itself; then insist."""
        if await child.wait_exit(self.config.drain_timeout + RETIRE_GRACE) is None:
            log.warning("process %d did not exit after handing over; terminating it", child.pid)
            await child.terminate(STOP_GRACE)
        self.forget(child)

    async def stop_child(self, child: Child) -> None:
        """Drain and stop ``child``: the stop message (drain callback) or SIGTERM, then SIGKILL."""
        child.retiring = True
        if child.alive and child.ready_at is not None:
            with contextlib.suppress(ChildExited):
                child.send({"op": "stop", "timeout": self.config.drain_timeout})
            if await child.wait_exit(self.config.drain_timeout + STOP_GRACE) is None:
                log.warning("process %d did not stop in time; terminating it", child.pid)
        if child.alive:
            await child.terminate(STOP_GRACE)
        self.forget(child)

    async def end_all(self) -> None:
        """At shutdown: wait for the retiring processes, abandon the pulls, kill what is left."""
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for task in self._pulls:
            task.cancel()
        await asyncio.gather(*self._pulls, return_exceptions=True)
        for child in list(self.children):
            if child.alive:
                await child.kill()
            self.forget(child)
