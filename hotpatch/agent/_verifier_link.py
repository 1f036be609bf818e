"""The service's end of one verification process: start it, talk to it, see how it ended.

A ``VerifierProcess`` starts ``hotpatch.agent._verifier`` (a fresh
interpreter, ``-I``, its own session) with a ``sys.path``, and speaks its
protocol over a socket pair: ``warm`` (modules to import ahead), ``check`` (a
patch to import in a forked child), each answer awaited with a deadline. A
process that ends, stops answering or answers nonsense raises ``Gone`` with
how it ended; what to do then (start another, blame the patch) is
``hotpatch.agent._verify``'s ``Verifier``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hotpatch._errors import VerificationFailed
from hotpatch.agent._verifier import BOOTSTRAP, pack, unpack_size

__all__ = [
    "GRACE_S",
    "START_TIMEOUT_S",
    "Gone",
    "VerifierProcess",
    "output_tail",
    "signal_name",
]

_ROOT = str(Path(__file__).resolve().parent.parent.parent)
START_TIMEOUT_S = 60.0  # for the verifier to start and warm what it was asked to
GRACE_S = 5.0  # past a check's timeout, before the verifier itself is given up on
STDERR_TAIL = 2000


class Gone(Exception):
    """The verification process ended or stopped answering (the message says how)."""


class VerifierProcess:
    """One verification process and its socket: the messages of the protocol, with deadlines."""

    def __init__(self, sys_path: tuple[str, ...]) -> None:
        self.sys_path = sys_path
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        config = {"root": _ROOT, "fd": theirs.fileno(), "sys_path": list(sys_path)}
        try:
            self._popen: subprocess.Popen[bytes] | None = subprocess.Popen(
                [sys.executable, "-I", "-B", "-c", BOOTSTRAP, json.dumps(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,  # read only if it fails to start
                env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
                pass_fds=(theirs.fileno(),),
                start_new_session=True,  # no terminal's signals; its own process group
            )
        except OSError as exc:
            self._sock.close()
            self._popen = None
            msg = f"the verification process could not start: {exc}"
            raise VerificationFailed(msg) from exc
        finally:
            theirs.close()
        self.pid = self._popen.pid
        self._ready = False
        self._pending: list[list[str]] = []  # warm batches not acknowledged yet
        self.loaded: set[str] = set()  # what it said it imported
        self._buffer = bytearray()

    def alive(self) -> bool:
        popen = self._popen  # once: stop() sets it to None, perhaps in another thread meanwhile
        return popen is not None and popen.poll() is None

    def warm(self, modules: list[str]) -> None:
        if modules and self._popen is not None:
            with contextlib.suppress(OSError):  # gone: noticed by the next check
                self._sock.sendall(pack({"op": "warm", "modules": modules}))
                self._pending.append(modules)

    def unacknowledged(self) -> list[str]:
        return [m for batch in self._pending for m in batch]

    def settle(self) -> str | None:
        """Wait until it is ready and has warmed what it was asked to; a module found unsafe."""
        deadline = time.monotonic() + START_TIMEOUT_S
        if not self._ready:
            message = self._receive(deadline, "starting")
            if message.get("op") != "ready":
                raise Gone(f"sent {message.get('op')!r} instead of starting")
            self._ready = True
            popen = self._popen
            if popen is not None and popen.stderr is not None:
                popen.stderr.close()
        while self._pending:
            message = self._receive(deadline, "warming modules")
            self._pending.pop(0)
            self.loaded.update(str(m) for m in message.get("done", ()))
            if message.get("unsafe"):
                return str(message["unsafe"])
        return None

    def check(self, file: Path, timeout: float, max_bytes: int) -> dict[str, Any]:
        """Send one check; the ``stale`` or ``result`` answer. ``Gone`` if it stops answering."""
        request = {"op": "check", "path": str(file), "timeout": timeout, "max_bytes": max_bytes}
        try:
            self._sock.sendall(pack(request))
        except OSError as exc:
            raise Gone(f"could not be reached ({exc})") from None
        deadline = time.monotonic() + timeout + GRACE_S
        child: int | None = None
        try:
            answer = self._receive(deadline, f"checking {file.name}")
            if answer.get("op") != "started":
                return answer
            child = int(answer["pid"])
            return self._receive(deadline, f"checking {file.name}")
        except Gone:
            if child is not None:  # it dies with the verifier; its process group with it
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child, signal.SIGKILL)
            raise

    def _receive(self, deadline: float, doing: str) -> dict[str, Any]:
        try:
            header = self._exactly(4, deadline)
            body = self._exactly(unpack_size(header), deadline)
            message = json.loads(body)
        except TimeoutError:
            raise Gone(f"did not answer while {doing}") from None
        except EOFError:
            raise Gone(self._ended(doing)) from None
        except (OSError, ValueError) as exc:
            raise Gone(f"could not be read while {doing} ({exc})") from None
        if not isinstance(message, dict):
            raise Gone(f"sent something other than a message while {doing}")
        return message

    def _exactly(self, size: int, deadline: float) -> bytes:
        while len(self._buffer) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self._sock.settimeout(remaining)
            chunk = self._sock.recv(max(65536, size - len(self._buffer)))
            if not chunk:
                raise EOFError
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _ended(self, doing: str) -> str:
        """How it ended (waits a moment for its status), with what it printed at start."""
        popen = self._popen
        if popen is None:
            return f"ended while {doing}"
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(GRACE_S)
        code = popen.returncode
        how = (
            f"was killed by {signal_name(-code)}"
            if code is not None and code < 0
            else f"ended with status {code}"
        )
        tail = ""
        if not self._ready and popen.stderr is not None and not popen.stderr.closed:
            with contextlib.suppress(OSError, ValueError):
                tail = output_tail(popen.stderr.read())
        return f"{how} while {doing}{tail}"

    def stop(self) -> None:
        """Close the socket (the verifier ends with its check), then make sure and reap it."""
        self._sock.close()
        popen, self._popen = self._popen, None
        if popen is None:
            return
        try:
            popen.wait(0.5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
        if popen.stderr is not None:
            popen.stderr.close()

    def abandon(self) -> None:
        """Let go without a word (in a forked child of the service: the parent's verifier)."""
        self._sock.close()
        if self._popen is not None:
            if self._popen.stderr is not None:
                self._popen.stderr.close()
            self._popen.returncode = 0  # not this process's child to wait for
            self._popen = None


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def output_tail(err: bytes) -> str:
    text = err.decode("utf-8", "replace").strip()
    if not text:
        return ""
    if len(text) > STDERR_TAIL:
        text = "..." + text[-STDERR_TAIL:]
    return f"; its last output: {text}"
