"""The throwaway child process that imports a patch before the service does.

``verify_in_child`` runs ``sys.executable`` in isolated mode (``-I -B``: no
environment variables, no user site, no ``.pyc`` written) in a new session, so
its whole process group can be killed. The child sets ``sys.path`` to the
service's, loads the patch file, resolves every target and migration module
against that code -- applying nothing -- and writes a JSON report to its
original stdout (the patch's own prints go to stderr). It must neither exit
nor outlive the timeout; whatever it started is killed with it.

This is a safety net against patches that break the process at import, not a
sandbox: the child runs with the service's user and rights. Signatures decide
who may patch.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotpatch._errors import PatchError, VerificationFailed
from hotpatch._loader import DEFAULT_MAX_BYTES, load_patch
from hotpatch._targets import import_module, resolve, resolve_class

__all__ = ["VerifyReport", "verify_in_child"]

# The child finds hotpatch where this process did, then switches to the service's sys.path.
_BOOTSTRAP = (
    "import json, sys\n"
    "config = json.loads(sys.argv[1])\n"
    "sys.path.insert(0, config['root'])\n"
    "from hotpatch.agent._verify import _child_main\n"
    "_child_main(config)\n"
)
_ROOT = str(Path(__file__).resolve().parent.parent)
_MAX_REPORT = 1 << 20
_STDERR_TAIL = 2000
_POLL_S = 0.05  # only without pidfd_open (not Linux)


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What the child found: the patch imports and these targets resolve."""

    version: str
    baseline: str
    targets: tuple[str, ...]
    elapsed_s: float


def verify_in_child(
    path: str | os.PathLike[str],
    *,
    sys_path: Sequence[str],
    timeout: float = 10.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> VerifyReport:
    """Load the patch at ``path`` in a short-lived child whose ``sys.path`` is ``sys_path``.

    Raises ``VerificationFailed`` with a reason a person understands when the
    patch fails to load, a target or migration module does not resolve, the
    child exits or dies at import, or it does not finish within ``timeout``
    seconds (its process group is killed).
    """
    start = time.perf_counter()
    file = Path(path).absolute()
    name = file.name
    config = {
        "root": _ROOT,
        "path": str(file),
        "sys_path": [str(p) for p in sys_path],
        "max_bytes": max_bytes,
    }
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", "-c", _BOOTSTRAP, json.dumps(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group: killed as a whole
            close_fds=True,
        )
    except OSError as exc:
        msg = f"patch file {name}: the verification child could not start: {exc}"
        raise VerificationFailed(msg) from exc
    try:
        out, err, timed_out = _collect(proc, timeout)
    finally:
        _kill_group(proc)
    elapsed = time.perf_counter() - start
    if timed_out:
        msg = (
            f"patch file {name} did not finish importing within {timeout:g} s: killed. "
            "A patch must not block, wait or loop at import; move that work into a function"
        )
        raise VerificationFailed(msg)
    code = proc.returncode
    tail = _tail(err)
    if code == 0 and out:
        return _report(out, name, elapsed)
    if code is not None and code < 0:
        try:
            signame = signal.Signals(-code).name
        except ValueError:
            signame = f"signal {-code}"
        msg = f"patch file {name} killed the verification child at import ({signame}){tail}"
        raise VerificationFailed(msg)
    msg = (
        f"patch file {name} exits at import (os._exit({code}) or equivalent: the verification "
        f"child ended with status {code} before reporting); a patch must not end the "
        f"process{tail}"
    )
    raise VerificationFailed(msg)


def _collect(proc: subprocess.Popen[bytes], timeout: float) -> tuple[bytes, bytes, bool]:
    """Read the child's output until it exits or the timeout; (stdout, stderr, timed out).

    The child is left unreaped (a zombie keeps its pid, so its process group
    cannot be reused before ``_kill_group``).
    """
    assert proc.stdout is not None
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    out, err = bytearray(), bytearray()
    buffers = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    pidfd: int | None = None
    with selectors.DefaultSelector() as selector:
        for fd in buffers:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        if hasattr(os, "pidfd_open"):
            with contextlib.suppress(OSError):
                pidfd = os.pidfd_open(proc.pid)
                selector.register(pidfd, selectors.EVENT_READ)
        try:
            while not _exited(proc.pid):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return bytes(out), bytes(err), True
                wait = remaining if pidfd is not None else min(remaining, _POLL_S)
                for key, _ in selector.select(wait):
                    if key.fd in buffers and not _drain(key.fd, buffers[key.fd]):
                        selector.unregister(key.fd)
        finally:
            if pidfd is not None:
                os.close(pidfd)
    for fd, buffer in buffers.items():  # what it wrote just before exiting
        _drain(fd, buffer)
    return bytes(out), bytes(err), False


def _exited(pid: int) -> bool:
    """Has ``pid`` exited? Does not reap it."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _drain(fd: int, buffer: bytearray) -> bool:
    """Read what is available; False at end of file. Keeps only a bounded amount."""
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


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the child's process group (grandchildren included), then reap the child."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _tail(err: bytes) -> str:
    text = err.decode("utf-8", "replace").strip()
    if not text:
        return ""
    if len(text) > _STDERR_TAIL:
        text = "..." + text[-_STDERR_TAIL:]
    return f"; its last output: {text}"


def _report(out: bytes, name: str, elapsed: float) -> VerifyReport:
    try:
        data = json.loads(out)
        if data["ok"]:
            return VerifyReport(
                version=str(data["version"]),
                baseline=str(data["baseline"]),
                targets=tuple(str(t) for t in data["targets"]),
                elapsed_s=elapsed,
            )
        error, patch, target = str(data["error"]), data.get("patch"), data.get("target")
    except (ValueError, KeyError, TypeError):
        msg = f"patch file {name}: the verification child wrote no readable report"
        raise VerificationFailed(msg) from None
    raise VerificationFailed(error, patch=patch, target=target)


# -- in the child ----------------------------------------------------------------------


def _child_main(config: dict[str, Any]) -> None:  # pragma: no cover - runs in the child
    """Entry point of the verification child: report on stdout, then end at once."""
    sys.dont_write_bytecode = True
    sys.path[:] = config["sys_path"]
    report_fd = os.dup(1)
    os.dup2(2, 1)  # the patch's prints go to stderr; stdout carries only the report
    try:
        report = _check(Path(config["path"]), int(config["max_bytes"]))
    except PatchError as exc:
        report = {
            "ok": False,
            "error": str(exc),
            "error_type": type(exc).__name__,
            "patch": exc.patch,
            "target": exc.target,
        }
    except Exception as exc:  # anything the loader did not expect
        report = {
            "ok": False,
            "error": f"verification of {config['path']} failed: {type(exc).__name__}: {exc}",
            "error_type": "VerificationFailed",
        }
    data = json.dumps(report).encode()
    while data:
        data = data[os.write(report_fd, data) :]
    sys.stderr.flush()
    # Non-daemon threads or atexit handlers the patch started must not keep it alive.
    os._exit(0)


def _check(path: Path, max_bytes: int) -> dict[str, Any]:
    """Load the patch and resolve what it names, changing nothing."""
    patch = load_patch(path, max_bytes=max_bytes)
    version = patch.version
    for replacement in patch.replacements:
        if replacement.is_class:
            resolve_class(replacement.target, patch=version)
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
