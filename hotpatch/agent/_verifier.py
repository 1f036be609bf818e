"""The verification process: started ahead of need, it forks a fresh child to import each patch.

This module runs in that process (``serve``), never in the service; the
service's side is ``hotpatch.agent._verify``. The verifier runs
``sys.executable -I -B`` (no environment variables, no user site, no ``.pyc``
written) in a session of its own, with the service's ``sys.path``. It imports
what a check needs (hotpatch) and the modules it is asked to warm (the
modules patches target, libraries the service has loaded), then, for each
patch, forks a child that starts a session of its own, dies with the verifier
(``PR_SET_PDEATHSIG``), loads the patch file, resolves every target and
migration module -- applying nothing -- and writes a report. The patch's code
runs only in that child.

When the check ends (a report, an exit, a signal, or the timeout), the
verifier kills the child's process group and then every process left: it is
a subreaper, so a daemon the patch started -- double-forked, in a session of
its own -- comes back to it and is killed too. It watches its socket
throughout: when the service ends (the socket's end of file), so do the
check and the verifier.

The verifier never forks with more than one thread: a module whose import
starts a thread is reported ``unsafe`` and the verifier ends (the service
starts a new one without that module). It imports only files that were on
disk before it started -- so nothing a patch wrote while it was checked
ever runs in it -- and before each check it compares the files of the
modules it imported with what they were: a changed file (new code on disk,
a baseline) is reported ``stale`` and the service starts a fresh verifier,
so a patch is always checked against the code on disk, as a process started
then would see it.

Messages are JSON objects, each after its length (4 bytes, big-endian).
Service -> verifier: ``warm`` (``modules``) and ``check`` (``path``,
``timeout``, ``max_bytes``). Verifier -> service: ``ready`` once, then per
``warm`` a ``warmed`` (``done``, ``failed``, ``unsafe``), per ``check``
either ``stale`` or ``started`` (``pid``) then ``result`` (with the modules
the check imported, which the service may ask it to warm next).
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import importlib.abc
import importlib.machinery
import json
import os
import select
import signal
import socket
import struct
import sys
import time
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hotpatch._errors import PatchError
from hotpatch._loader import MODULE_PREFIX, load_patch
from hotpatch._targets import import_module, is_nested, resolve, resolve_class, resolve_nested
from hotpatch.agent._proctree import become_subreaper, die_with_parent, kill_children
from hotpatch.agent._resources import shortage_of

__all__ = ["BOOTSTRAP", "MAX_MESSAGE", "pack", "serve", "unpack_size"]

# The verifier finds hotpatch where the service did, then switches to the service's sys.path.
BOOTSTRAP = (
    "import json, sys\n"
    "config = json.loads(sys.argv[1])\n"
    "sys.path.insert(0, config['root'])\n"
    "from hotpatch.agent._verifier import serve\n"
    "serve(config)\n"
)
MAX_MESSAGE = 16 << 20
_HEADER = struct.Struct("!I")
_MAX_REPORT = 1 << 20
_STDERR_TAIL = 2000
_POLL_S = 0.05  # only without pidfd_open
# File times come from a coarser clock: a file changed this close to the start counts as after.
_MTIME_MARGIN_NS = 1_000_000_000
# fork() failing with EAGAIN: the user's processes (threads count) are at RLIMIT_NPROC, or the
# machine's at kernel.pid_max / kernel.threads-max -- the machine's shortage, not the patch's.
_NO_PROCESS = "out of processes (RLIMIT_NPROC, ulimit -u; or kernel.pid_max, kernel.threads-max)"


def pack(message: dict[str, Any]) -> bytes:
    """One message on the wire: its length, then its JSON."""
    data = json.dumps(message).encode()
    return _HEADER.pack(len(data)) + data


def unpack_size(header: bytes) -> int:
    """The length a message's header announces; ``ValueError`` past ``MAX_MESSAGE``."""
    (size,) = _HEADER.unpack(header)
    if size > MAX_MESSAGE:
        msg = f"a verifier message of {size} bytes is over the limit of {MAX_MESSAGE}"
        raise ValueError(msg)
    return int(size)


def _receive(sock: socket.socket) -> dict[str, Any] | None:
    """The next message, or ``None`` at the end of file (the service is gone)."""
    header = _exactly(sock, _HEADER.size)
    if header is None:
        return None
    body = _exactly(sock, unpack_size(header))
    if body is None:
        return None
    message = json.loads(body)
    if not isinstance(message, dict):
        msg = "a verifier message is not a JSON object"
        raise TypeError(msg)
    return message


def _exactly(sock: socket.socket, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _threads() -> int:
    """Threads of this process, Python's and native ones alike."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading  # noqa: PLC0415 - only where /proc is missing

        return threading.active_count()


def serve(config: dict[str, Any]) -> None:  # pragma: no cover - runs in the verifier
    """The verifier's main loop: answer ``warm`` and ``check`` until the service goes away."""
    sock = socket.socket(fileno=int(config["fd"]))
    sys.dont_write_bytecode = True
    sys.meta_path.insert(0, _OlderFilesOnly(time.time_ns() - _MTIME_MARGIN_NS))
    sys.path[:] = config["sys_path"]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service decides when this ends
    subreaper = become_subreaper()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # warmed modules' prints go nowhere; checks get pipes of their own
        os.dup2(devnull, fd)
    os.close(devnull)
    files = _Files()
    files.update()
    with contextlib.suppress(OSError):  # a send failing: the service is gone
        sock.sendall(pack({"op": "ready", "pid": os.getpid(), "subreaper": subreaper}))
        _serve(sock, files)
    kill_children()
    os._exit(0)


def _serve(sock: socket.socket, files: _Files) -> None:
    while True:
        request = _receive(sock)
        if request is None:
            break
        if request.get("op") == "warm":
            answer = _warm([str(m) for m in request.get("modules", ())])
            files.update()
            sock.sendall(pack(answer))
            if answer["unsafe"] is not None:
                break  # forking now could deadlock a child: the service starts a new verifier
        elif request.get("op") == "check":
            changed = files.changed()
            if changed is not None:
                sock.sendall(pack({"op": "stale", "file": changed}))
                break
            if not _check(sock, request):
                break  # the service is gone
        else:
            break


def _warm(modules: list[str]) -> dict[str, Any]:
    """Import ``modules`` into this process, stopping at one that leaves a thread running."""
    done: list[str] = []
    failed: list[str] = []
    for name in modules:
        if name in sys.modules:  # with a module imported before
            done.append(name)
            continue
        try:
            importlib.import_module(name)
        except BaseException:
            failed.append(name)
        else:
            done.append(name)
        if _threads() > 1:
            return {"op": "warmed", "done": done, "failed": failed, "unsafe": name}
    return {"op": "warmed", "done": done, "failed": failed, "unsafe": None}


class _OlderFilesOnly(importlib.abc.MetaPathFinder):
    """Refuses to import, into the verifier, a file changed since it started.

    A check child removes it: it imports what is on disk, as a new process would.
    """

    def __init__(self, started_ns: int) -> None:
        self.started_ns = started_ns

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is None:
                continue
            origin = spec.origin if spec.has_location else None
            if origin is not None:
                try:
                    changed = os.stat(origin).st_mtime_ns >= self.started_ns
                except OSError:
                    changed = True
                if changed:
                    msg = f"{origin} changed after the verifier started: not imported into it"
                    raise ImportError(msg, name=fullname)
            return spec
        return None


class _Files:
    """The source files of the modules imported here, with what they were when imported."""

    def __init__(self) -> None:
        self._known: set[str] = set()
        self._stats: dict[str, tuple[int, int, int]] = {}

    def update(self) -> None:
        for name, module in list(sys.modules.items()):
            if name in self._known:
                continue
            self._known.add(name)
            file = getattr(module, "__file__", None)
            if isinstance(file, str) and file not in self._stats:
                with contextlib.suppress(OSError):
                    self._stats[file] = _identity(file)

    def changed(self) -> str | None:
        """A file that differs from when its module was imported, if any."""
        for file, seen in self._stats.items():
            try:
                now = _identity(file)
            except OSError:
                return file
            if now != seen:
                return file
        return None


def _identity(file: str) -> tuple[int, int, int]:
    st = os.stat(file)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


# -- one check -------------------------------------------------------------------------


def _check(sock: socket.socket, request: dict[str, Any]) -> bool:
    """Fork a child to check the patch, wait for it, kill what it left; ``False``: service gone."""
    timeout = float(request["timeout"])
    start = time.perf_counter()
    parent = os.getpid()
    for stream in (sys.stdout, sys.stderr):  # nothing of the verifier's in the child's output
        with contextlib.suppress(Exception):
            stream.flush()
    made: list[int] = []  # the pipes' ends, closed here if the child cannot be had
    try:
        made += os.pipe()
        made += os.pipe()
        pid = os.fork()
    except OSError as exc:  # out of descriptors, memory or processes: the patch was not tried
        for fd in made:
            os.close(fd)
        shortage = shortage_of(exc) or (_NO_PROCESS if exc.errno == errno.EAGAIN else None)
        why = f"no child could be started to import it: {exc}"
        sock.sendall(pack({"op": "result", "fork_failed": why, "shortage": shortage}))
        return True
    report_r, report_w, output_r, output_w = made
    if pid == 0:  # the check child
        try:
            _child(parent, report_w, output_w, str(request["path"]), int(request["max_bytes"]))
        finally:
            os._exit(70)
    os.close(report_w)
    os.close(output_w)
    sock.sendall(pack({"op": "started", "pid": pid}))
    try:
        report, output, timed_out, service_gone = _collect(sock, pid, report_r, output_r, timeout)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # unreaped, so the group cannot be someone else's
        _, status = os.waitpid(pid, 0)
        kill_children()  # what escaped the group (a daemon) came back to this subreaper
        os.close(report_r)
        os.close(output_r)
    if service_gone:
        return False
    answer: dict[str, Any] = {
        "op": "result",
        "timed_out": timed_out,
        "status": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "report": None,
        "output": output.decode("utf-8", "replace")[-_STDERR_TAIL:],
        "elapsed_s": time.perf_counter() - start,
    }
    with contextlib.suppress(ValueError):
        parsed = json.loads(report) if report else None
        answer["report"] = parsed if isinstance(parsed, dict) else None
    sock.sendall(pack(answer))
    return True


def _collect(
    sock: socket.socket, pid: int, report_r: int, output_r: int, timeout: float
) -> tuple[bytes, bytes, bool, bool]:
    """(report, output, timed out, service gone): read until the child exits or the timeout.

    The child is left unreaped (a zombie keeps its pid, so its process group
    cannot be reused before it is killed).
    """
    deadline = time.monotonic() + timeout
    buffers = {report_r: bytearray(), output_r: bytearray()}
    poller = select.poll()
    for fd in buffers:
        os.set_blocking(fd, False)
        poller.register(fd, select.POLLIN)
    poller.register(sock.fileno(), select.POLLIN)
    pidfd: int | None = None
    with contextlib.suppress(AttributeError, OSError):
        pidfd = os.pidfd_open(pid)
        poller.register(pidfd, select.POLLIN)
    try:
        while not _exited(pid):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return bytes(buffers[report_r]), bytes(buffers[output_r]), True, False
            wait = remaining if pidfd is not None else min(remaining, _POLL_S)
            for fd, _ in poller.poll(wait * 1000):
                if fd == sock.fileno():
                    # Nothing else may come while a check runs: readable is the end of file.
                    return b"", b"", False, True
                if fd in buffers and not _drain(fd, buffers[fd]):
                    poller.unregister(fd)
    finally:
        if pidfd is not None:
            os.close(pidfd)
    for fd, buffer in buffers.items():  # what it wrote just before exiting
        _drain(fd, buffer)
    return bytes(buffers[report_r]), bytes(buffers[output_r]), False, False


def _exited(pid: int) -> bool:
    """Has ``pid`` exited? Does not reap it."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _drain(fd: int, buffer: bytearray) -> bool:
    """Read what is available; ``False`` at end of file. Keeps only a bounded amount."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not chunk:
            return False
        buffer += chunk
        if len(buffer) > _MAX_REPORT * 2:
            del buffer[: len(buffer) - _MAX_REPORT]


# -- in the check child ------------------------------------------------------------------


def _child(parent: int, report_w: int, output_w: int, path: str, max_bytes: int) -> None:
    """Load the patch at ``path``, report on ``report_w``, then end at once."""
    os.setsid()  # a process group of its own: killed as a whole
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(output_w, 1)  # the patch's prints go to the output; the report has its own pipe
    os.dup2(output_w, 2)
    _close_fds_but(0, 1, 2, report_w)  # the service's socket among them: the patch never has it
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _OlderFilesOnly)]
    importlib.invalidate_caches()  # files added since the verifier started are found
    before = set(sys.modules)
    try:
        report = _check_patch(Path(path), max_bytes)
        report["imported"] = [
            name
            for name in sys.modules
            if name not in before and not name.startswith(MODULE_PREFIX)
        ]
    except PatchError as exc:
        report = {
            "ok": False,
            "error": str(exc),
            "error_type": type(exc).__name__,
            "patch": exc.patch,
            "target": exc.target,
            "shortage": shortage_of(exc),  # out of memory, descriptors...: not the patch
        }
    except Exception as exc:  # anything the loader did not expect
        report = {
            "ok": False,
            "error": f"verification of {path} failed: {type(exc).__name__}: {exc}",
            "error_type": "VerificationFailed",
            "shortage": shortage_of(exc),
        }
    except BaseException as exc:  # KeyboardInterrupt and the like, raised by the patch
        report = {
            "ok": False,
            "error": (
                f"patch file {Path(path).name} raised {type(exc).__name__} while importing; "
                "remove it"
            ),
            "error_type": "VerificationFailed",
        }
    data = json.dumps(report).encode()
    while data:
        data = data[os.write(report_w, data) :]
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    # Non-daemon threads or atexit handlers the patch started must not keep it alive.
    os._exit(0)


def _close_fds_but(*keep: int) -> None:
    try:
        fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _check_patch(path: Path, max_bytes: int) -> dict[str, Any]:
    """Load the patch and resolve what it names, changing nothing."""
    patch = load_patch(path, max_bytes=max_bytes)
    version = patch.version
    for replacement in patch.replacements:
        if replacement.is_class:
            resolve_class(replacement.target, patch=version)
        elif is_nested(replacement.target):
            resolve_nested(replacement.target, patch=version, in_code=True)
        else:
            resolve(replacement.target, patch=version)
    for migration in (*patch.migrations, *patch.unmigrations):
        import_module(migration.module, patch=version, target=migration.module)
    return {
        "ok": True,
        "version": version,
        "baseline": patch.baseline,
        "targets": list(patch.targets),
    }
