"""The agent's vital path, tried after every apply: can it still file an outcome and answer?

A patch may replace any Python function of the service's process, the
standard library's included (``json.dumps``, ``socket.socket.accept``,
``pathlib``). What the agent needs to file an outcome (serialise a record,
write a file completely, read it back) and to answer its control socket (a
``status`` request through the real socket: its reading, its handler, its
answer) is tried once the patch is in, within the agent's ``vital_timeout``
(``install(vital_timeout=)``, default ``VITAL_TIMEOUT_S``), in a thread of its
own so that a patch that makes either hang cannot hang the
agent. ``VitalCheck`` says what broke; the applier then rolls the patch back.
The thread waits for the next check once one is done (a burst does not start
a thread per drop); one whose check did not finish in time is left to it, and
the next check gets a new one.

A process at its descriptor limit cannot connect to its socket, nor accept a
connection: that is a shortage, not something the patch broke. For it the
check keeps a connection to the control server made before the apply (a
``SparePair``, one end served by the server as a connection that never idles
out), and asks through it when the socket itself cannot be reached for want
of descriptors; when no such pair can be made before the apply, the patch is
not taken now (``reserve`` raises; the drop waits and is tried again). The
same way it keeps two descriptors (``SpareFds``): given up to write and read
back the result file when no other is free, and to the applier to journal the
rollback of a patch that broke the vital path. A check that cannot be made
even so raises ``Shortage``: the applier rolls the patch back and the drop
waits (a patch is never kept unchecked).

A disk that takes more than ``vital_timeout`` to take the result file
(frozen, or too slow) is not the patch's doing either: the check tells the
time spent in the disk's own calls (``os`` functions, written in C: no patch
replaces them) from the rest; late in them, it raises ``Shortage``
(``SLOW_DISK``): the applier rolls the patch back and the drop waits, to be
tried again, instead of refusing it as breaking the agent.

The agent's own stop closes its control socket (and then its scratch
directory): a check that, once the agent began to stop (``stopping``), cannot
ask the socket any more, or finds its scratch directory gone, was cut short by
the stop, not failed by the patch; it raises ``StoppedDuringCheck`` and the
applier keeps the patch.

The check's result file is renamed back to its temporary name once read,
not removed, and the next check writes over it: a burst of drops neither
makes nor frees a file for each check (on ext4 without a journal, making a
file looks past every inode freed in the last seconds, so a file made and
removed per drop made each drop of a burst cost more than the one before).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hotpatch._results import as_json_reads
from hotpatch._shortage import RESOURCES, Shortage, SpareFds, SparePair, is_fd_shortage, shortage_of
from hotpatch.agent._control import AgentBusy, exchange, request
from hotpatch.agent._control_server import ControlServer
from hotpatch.agent._local import StoppedDuringCheck
from hotpatch.agent._outcome import result_bytes, temporary_name, write_durably

__all__ = ["SLOW_DISK", "VITAL_TIMEOUT_S", "VitalCheck"]

log = logging.getLogger("hotpatch")

# The default of ``install(vital_timeout=)``: for the whole check; a working agent takes
# milliseconds.
VITAL_TIMEOUT_S = 10.0
_SCRATCH_TRIES = 3  # writes of the result file while its directory keeps going away
_SCRATCH_GONE = "the scratch directory went away during the write"
# What ran short when the check's time went by in the disk's calls (``Shortage.resource``).
SLOW_DISK = "a disk that does not take writes in time (frozen, or too slow)"


class VitalCheck:
    """Tries the agent's vital path: a result file in ``scratch``, ``status`` on ``socket``.

    ``scratch``: a private directory of the agent's (a result file is written
    there, read back, and kept under its temporary name for the next check to
    write over); ``socket``: its control socket, if it serves one;
    ``server``: the server of that socket, once it serves (the spare connection);
    ``timeout``: seconds the whole check may take (the agent's ``vital_timeout``).
    """

    def __init__(
        self,
        scratch: Path,
        socket: Path | None,
        *,
        timeout: float,
        ask: dict[str, Any] | None = None,
    ) -> None:
        self.scratch = scratch
        self.socket = socket
        self.timeout = timeout
        self.ask = ask if ask is not None else {"cmd": "status"}  # a request answered at once
        self.server: ControlServer | None = None
        self._spare = SparePair()
        self._fds = SpareFds(2)  # the result file, and the journal of a rollback
        # The result files of the checks that finished, kept for the next ones: a check
        # that hangs keeps its own, and checks at the same time each write their own.
        self._lock = threading.Lock()
        self._files: list[tuple[int, Path]] = []  # (pid, path): a forked child starts afresh
        self._numbers = itertools.count()
        self._idle: list[_Runner] = []  # threads whose last check finished in time
        # Closed (under ``_lock``): a check still running then (a control request the
        # agent's stop did not wait for) makes nothing that would be kept after it.
        self._closed = False
        # The agent began to stop: its socket and scratch directory go from now on.
        self._stopping = False

    def served_by(self, server: ControlServer) -> None:
        """``server`` serves ``socket`` now: its spare connection is made at once, while
        descriptors are free (else before the next apply)."""
        self.server = server
        try:
            self.reserve()
        except OSError as exc:
            log.warning("cannot make the vital check's spare connection yet: %s", exc)

    def stopping(self) -> None:
        """The agent began to stop: its control socket closes, then its scratch directory
        goes. A check that cannot reach them from now on is cut short by the stop
        (``StoppedDuringCheck``), not failed by the patch."""
        with self._lock:
            self._stopping = True

    def close(self) -> None:
        """The spare connection and descriptors, and the threads waiting for a check, go (the
        agent stops). A check still running finishes without making them again."""
        with self._lock:
            self._closed = self._stopping = True
            self._drop_spare()
            self._fds.release()
            idle, self._idle = self._idle, []
        for runner in idle:
            runner.stop()
        for runner in idle:
            runner.join()

    @contextlib.contextmanager
    def released(self) -> Iterator[int]:
        """The descriptors kept for the check, given up while the block runs (the journal
        of a rollback at the limit): how many; taken again after, unless closed meanwhile."""
        freed = self._fds.release()
        try:
            yield freed
        finally:
            with self._lock:
                if not self._closed:
                    self._fds.try_reserve()

    def reserve(self) -> None:
        """Before an apply: the spare connection, made now if there is none (or the
        server closed it: stopped and started again); ``OSError`` if it cannot be made.
        Nothing once closed."""
        with self._lock:  # as close(): what is made here is closed there, never after
            if self._closed:
                return
            self._fds.reserve()
            server = self.server
            if server is None or self.socket is None:
                return
            pair = self._spare.pair
            if pair is not None and pair[1].fileno() == -1:  # the server closed its end
                self._drop_spare()
            if self._spare.pair is None:
                server.adopt(self._spare.reserve()[1])

    def __call__(self, record: dict[str, Any]) -> str | None:
        """``None`` when the agent can file ``record`` and answer; else what is broken.

        ``StoppedDuringCheck`` when the agent began to stop and the socket did not
        answer (or the scratch directory went): the stop's doing, not the patch's.
        """
        found: list[str | None] = []
        short: list[Shortage] = []
        cut: list[StoppedDuringCheck] = []
        answering = threading.Event()  # filing passed: the check asks the socket
        disk = threading.Event()  # set while the check waits in the disk's calls
        left: list[socket.socket] = []  # our end of the spare connection, given up on
        lock = threading.Lock()  # the caller gives up waiting under it
        done = threading.Event()

        def run() -> None:
            try:
                result = self._file(record, disk)
                if result is None:
                    answering.set()
                    result = self._answer()
            except Shortage as exc:  # the check could not be made: not the patch's fault
                short.append(exc)
                result = None
            except StoppedDuringCheck as exc:  # the agent's stop took the scratch directory
                cut.append(exc)
                result = None
            except BaseException as exc:
                result = f"{type(exc).__name__}: {exc}"
            with lock:  # either the caller takes the result, or it left the connection here
                found.append(result)
                done.set()
                ends = list(left)
            for end in ends:  # the server closes its own once it reads the end
                end.close()

        runner = self._runner()
        runner.run(run)
        done.wait(self.timeout)
        with lock:
            late = not done.is_set()
            if late:
                pair = self._spare.pair
                self._spare.spoil(close=False)  # the thread may still use it: left to it
                left.extend(pair[:1] if pair is not None else ())
        if late:
            runner.stop()  # once (if ever) the check returns: never used again
            return self._late(asked=answering.is_set(), on_disk=disk.is_set())
        with self._lock:
            if self._closed:  # the agent stopped during the check: no thread waits after it
                runner.stop()
            else:
                self._idle.append(runner)
        return self._verdict(found[0], short, cut, asked=answering.is_set())

    def _late(self, *, asked: bool, on_disk: bool) -> str:
        """A check that did not finish in time: what broke; raised when it was the agent's
        stop (the socket it ``asked``) or the disk (waited ``on_disk``), not the patch."""
        if asked and self._stopped():
            msg = f"its control socket, closing, did not answer within {self._wait()}"
            raise StoppedDuringCheck(msg)
        if on_disk:
            msg = (
                f"the check after the apply waited {self._wait()} for the disk of "
                f"{self.scratch} to take its result file (written, synced): whether the agent "
                "can still file outcomes with the patch is not known; see that the disk "
                "takes writes (not frozen, not saturated)"
            )
            raise Shortage(SLOW_DISK, msg)
        return (
            "filing an outcome and answering the control socket did not finish within "
            + self._wait()
        )

    def _wait(self) -> str:
        """The check's wait as its messages name it: the setting, and how to change it."""
        return (
            f"vital_timeout ({self.timeout:g} s; install(..., vital_timeout=SECONDS) gives "
            "more when a slow machine needs longer)"
        )

    def _verdict(
        self,
        found: str | None,
        short: list[Shortage],
        cut: list[StoppedDuringCheck],
        *,
        asked: bool,
    ) -> str | None:
        """A finished check's result: what broke, or raised (``Shortage``, or
        ``StoppedDuringCheck`` when the socket it ``asked`` failed once the agent stops)."""
        if cut:
            raise cut[0]
        if asked and (short or found is not None) and self._stopped():
            why = short[0].detail if short else found
            msg = f"filing was checked; its control socket was closed by the stop ({why})"
            raise StoppedDuringCheck(msg)
        if short:
            raise short[0]
        return found

    def _stopped(self) -> bool:
        """Has the agent begun to stop?"""
        with self._lock:
            return self._stopping

    def _runner(self) -> _Runner:
        """A thread of this process waiting for a check (not one running another), or a
        new one."""
        with self._lock:
            while self._idle:
                runner = self._idle.pop()
                if runner.alive():
                    return runner
        return _Runner()

    def _file(self, record: dict[str, Any], disk: threading.Event) -> str | None:
        """Write ``record`` as a result file and read it back; what went wrong, if anything.

        The scratch directory gone under the write (the watched folder deleted or
        replaced meanwhile: the folder's guard reports that) is not the patch's
        doing: the file is tried again in the directory made again, and a folder
        that keeps going away is left to the guard. Gone once the agent began to
        stop: its stop removed it (``StoppedDuringCheck``).
        """
        broken: str | None = None
        for _ in range(_SCRATCH_TRIES):
            try:
                broken = self._file_once(record, disk)
            except OSError:  # no descriptor left: with the ones kept for it
                broken = self._file_spared(record, disk)
            if broken is not _SCRATCH_GONE:
                return broken
            if self._stopped():
                msg = "its scratch directory was removed by the stop before a result was written"
                raise StoppedDuringCheck(msg)
        return None

    def _file_spared(self, record: dict[str, Any], disk: threading.Event) -> str | None:
        """``_file_once`` with the descriptors kept for it; ``Shortage`` if it still cannot."""
        failed: OSError | None = None
        with self._fds.released() as freed:
            if freed:
                try:
                    return self._file_once(record, disk)
                except OSError as exc:
                    failed = exc
        why = failed if failed is not None else "no descriptor was kept for it"
        msg = f"the check after the apply could not write its result file ({why})"
        raise Shortage(RESOURCES_FDS, msg) from failed

    def _take(self) -> Path:
        """A result file's name of this process no other check is using."""
        pid = os.getpid()
        with self._lock:
            while self._files:
                owner, path = self._files.pop()
                if owner == pid:
                    return path
            return self.scratch / f".vital-check.{pid}.{next(self._numbers)}.json"

    def _give_back(self, path: Path) -> None:
        """Keep ``path``'s file under its temporary name for the next check; else (or once
        closed: no next check) remove it."""
        try:
            os.rename(path, temporary_name(path))
        except OSError:
            for leftover in (path, temporary_name(path)):
                with contextlib.suppress(OSError):
                    leftover.unlink()
            return
        with self._lock:
            if not self._closed:
                self._files.append((os.getpid(), path))
                return
        with contextlib.suppress(OSError):
            temporary_name(path).unlink()

    def _file_once(self, record: dict[str, Any], disk: threading.Event) -> str | None:
        """Write and read back; ``disk`` is set while only the disk's calls run (``os``: making
        the directory, writing and syncing the file; not reading it back, which a frozen disk
        does not hold, and which the agent does with ``pathlib``)."""
        expected = as_json_reads(record)  # what a reader must find, worked out without json
        path = self._take()
        try:
            # Made again if it went (the folder's staging deleted, or the folder replaced),
            # not when the agent's stop removed it.
            make = not self._stopped()
            scratch, target = os.fspath(self.scratch), os.fspath(path)
            tmp = os.fspath(temporary_name(path))
            payload = result_bytes(record)  # json: the patch's to break
            disk.set()
            try:
                if make:
                    try:  # noqa: SIM105 -- only os here: contextlib is a patch's to replace
                        os.mkdir(scratch, 0o700)
                    except FileExistsError:
                        pass
                write_durably(target, tmp, payload)
            finally:
                disk.clear()
            try:
                found = json.loads(path.read_bytes())
            except ValueError as exc:
                return f"a result file it wrote is not JSON ({exc})"
        except OSError as exc:
            if is_fd_shortage(exc):
                raise  # tried again with the descriptors kept for it
            if _resource(exc):
                return None  # the disk, not the patch: filing reports it itself
            if isinstance(exc, FileNotFoundError) and not self.scratch.is_dir():
                return _SCRATCH_GONE
            return f"writing a result file failed: {type(exc).__name__}: {exc}"
        finally:
            self._give_back(path)
        if found != expected:
            return "a result file it wrote does not read back as written"
        return None

    def _answer(self) -> str | None:
        """Ask the control socket for ``status``; what went wrong, if anything."""
        if self.socket is None:
            return None
        since = time.monotonic()
        try:
            answer = request(
                self.socket,
                self.ask,
                timeout=self.timeout,
                unanswerable=lambda: self._cannot_accept(since),
            )
        except AgentBusy:
            return None  # answered: the backlog is full of other clients
        except OSError as exc:
            if shortage_of(exc) is None:
                return f"the control socket did not answer: {type(exc).__name__}: {exc}"
            return self._answer_spare(exc)  # no descriptor to connect or to accept with
        except ValueError as exc:
            return f"the control socket did not answer: {type(exc).__name__}: {exc}"
        return _judge(answer)

    def _cannot_accept(self, since: float) -> OSError | None:
        """While the answer is awaited: the server could not accept since ``since``, for
        want of descriptors."""
        why = self.server.accept_short(since) if self.server is not None else None
        return None if why is None else OSError(errno.EMFILE, f"cannot accept: {why}")

    def _answer_spare(self, short: OSError) -> str | None:
        """Ask through the spare connection (the socket's own handler, no new descriptor)."""
        pair = self._spare.pair
        if pair is None or pair[1].fileno() == -1:
            msg = (
                f"the check after the apply could not reach the control socket ({short}) and "
                "had no connection kept for that: whether it still answers is not known"
            )
            raise Shortage(shortage_of(short) or RESOURCES_FDS, msg)
        try:
            answer = exchange(pair[0], self.ask, timeout=self.timeout, peer="this process")
        except (OSError, ValueError) as exc:
            self._drop_spare()
            return (
                f"the control socket did not answer (through the connection kept for a process "
                f"out of descriptors): {type(exc).__name__}: {exc}"
            )
        broken = _judge(answer)
        if broken is not None:
            self._drop_spare()
        return broken

    def _drop_spare(self) -> None:
        """Not used again: our end closed; the server closes its own once it reads the end."""
        pair = self._spare.pair
        self._spare.spoil(close=False)
        if pair is not None:
            pair[0].close()


class _Runner:
    """A thread that runs what it is given, one call after the other, until stopped.

    It waits on a ``queue.SimpleQueue`` (written in C: a patch cannot replace
    what it waits with). A thread of the process before a fork is not alive in
    the child.
    """

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._pid = os.getpid()
        self._thread = threading.Thread(
            target=self._serve, name="hotpatch-vital-check", daemon=True
        )
        self._thread.start()

    def run(self, call: Callable[[], None]) -> None:
        self._calls.put(call)

    def stop(self) -> None:
        """The thread ends once the call it runs, if any, returns."""
        self._calls.put(None)

    def join(self) -> None:
        """Once stopped, while idle: until the thread has ended (a moment)."""
        if self.alive() and self._thread is not threading.current_thread():
            self._thread.join(VITAL_TIMEOUT_S)

    def alive(self) -> bool:
        return self._pid == os.getpid() and self._thread.is_alive()

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            call()


RESOURCES_FDS = RESOURCES[errno.EMFILE]


def _judge(answer: dict[str, Any]) -> str | None:
    if answer.get("ok") is not True and answer.get("error_type") != "Busy":
        return f"the control socket answered with an error: {answer.get('error')}"
    return None


def _resource(exc: OSError) -> bool:
    """Out of disk space, quota or descriptors: not something a patch did to the code."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE)
