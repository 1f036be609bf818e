"""The service side of the supervisor's channel: one runtime per process, its control thread.

The runtime holds the process's sockets and its hand-over phase, and is
made of two parts: its ``PreservedState`` (``_rounds``: the mappings and
their rounds) and its ``PatchLevels`` (``_patches``: the registry the
supervisor's patch messages drive).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

from hotpatch._errors import ServiceError
from hotpatch._logging import show_log_lines
from hotpatch._plugins import PluginHost
from hotpatch.service._channel import (
    ENV_BASELINE,
    ENV_BIND,
    ENV_CONTROL,
    ENV_JOURNAL,
    ENV_SOCKETS,
    DescriptorsLost,
    open_listener,
    parse_address,
    parse_bind,
    read_memfd,
    recv_message,
    send_message,
    write_memfd,
)
from hotpatch.service._listeners import Gate, Listener
from hotpatch.service._patches import PatchLevels
from hotpatch.service._rounds import PreservedDict, PreservedState

__all__ = ["Runtime", "get_runtime", "reset"]

log = logging.getLogger("hotpatch.service")
_LOOP_REFUSALS = 1000  # non-blocking accepts refused in a drain: an event loop spinning

_EXIT_WAIT = 60.0  # longest the interpreter's exit waits for a hand-over in progress
_DRAIN_TIMEOUT = 5.0  # until the supervisor says its --drain-timeout


class Runtime:
    """What this process knows about its supervisor, sockets and preserved state."""

    def __init__(self, environ: MutableMapping[str, str]) -> None:
        # Taken out of the environment, so that processes the service starts
        # do not believe they were started by the supervisor.
        control = environ.pop(ENV_CONTROL, "")
        passed = environ.pop(ENV_SOCKETS, "")
        self.binds = dict(parse_bind(item) for item in environ.get(ENV_BIND, "").split(",") if item)
        self.passed: dict[str, int] = {}
        for item in filter(None, passed.split(",")):
            name, _, fd = item.partition("=")
            self.passed[name] = int(fd)
            os.set_inheritable(int(fd), False)
        self.channel: socket.socket | None = None
        baseline: str | None = None
        journal: str | None = None
        if control:
            self.channel = socket.socket(fileno=int(control))
            self.channel.set_inheritable(False)
            baseline = environ.pop(ENV_BASELINE, None) or None
            journal = environ.pop(ENV_JOURNAL, None) or None
        self.start_patch: tuple[dict[str, Any], bytes] | None = None  # to apply before serving
        self.listeners: dict[str, socket.socket] = {}
        self.lock = threading.RLock()
        self.state = PreservedState(self.lock)
        self.plugins = PluginHost()
        self.patches = PatchLevels(self.channel, baseline, journal, self.plugins)
        self.phase = "start"  # -> "loaded" (chain received) -> "ready"
        self.drain: Callable[[float], object] | None = None
        self.resumed: list[Callable[[float], object]] = []
        self.handover_at_exit: float | None = None
        # A service relying on SIGTERM with no handler of its own: hotpatch's
        # handler stops it (``_wind_down``). ``stopping``: None, "asked" (an outside
        # SIGTERM asked the supervisor for a restart), "stopping", "ended".
        self.gate = Gate()
        self.drain_timeout = _DRAIN_TIMEOUT
        self.stopping: str | None = None
        self._sigterm = self._on_sigterm  # the very object installed, to know it again
        # Held while the control thread answers the supervisor: the
        # interpreter's exit waits for it, so a service whose main returns as
        # soon as it stops serving cannot cut the final round short.
        self.exchange = threading.Lock()

    # -- sockets

    def listen_socket(self, name: str, default: str | tuple[str, int] | None) -> socket.socket:
        with self.lock:
            if name in self.listeners:
                return self.listeners[name]
            if self.channel is not None:
                if name not in self.passed:
                    have = ", ".join(sorted(self.passed)) or "none"
                    msg = (
                        f"listen_socket({name!r}): the supervisor passed no socket named "
                        f"{name!r} (it passed: {have}); add --bind {name}=HOST:PORT to hotpatch run"
                    )
                    raise ServiceError(msg)
                listener = Listener(fileno=self.passed[name])
                listener.gate = self.gate
                sock: socket.socket = listener
            else:
                address = self.binds.get(name)
                if address is None and default is not None:
                    address = parse_address(default) if isinstance(default, str) else default
                if address is None:
                    msg = (
                        f"listen_socket({name!r}): no supervisor passed a socket and no address "
                        f"is known; pass default='127.0.0.1:8000' or set "
                        f"{ENV_BIND}={name}=HOST:PORT"
                    )
                    raise ServiceError(msg)
                sock = open_listener(*address)
            self.listeners[name] = sock
            return sock

    # -- state

    def preserved(self, name: str, factory: Callable[[], Mapping[Any, Any]]) -> PreservedDict:
        """The mapping ``name``: the old process's (the chain is pulled first), or ``factory()``."""
        declared = self.state.declared(name)
        if declared is not None:
            return declared
        if self.channel is not None and self.phase == "start":
            self._load()
        return self.state.preserved(name, factory)

    # -- the hand-over, in the new process

    def _send(self, message: Mapping[str, Any], fds: Iterable[int] = ()) -> None:
        assert self.channel is not None
        send_message(self.channel, message, fds)

    def _send_level(self, message: Mapping[str, Any]) -> None:
        """``message`` with the whole level in a memfd (of any size), if there is a registry."""
        whole = self.patches.whole_level()
        try:
            fd = None if whole is None else write_memfd(whole, "hotpatch-level")
        except OSError as exc:  # no descriptor left: the supervisor asks again later
            log.warning("cannot pass the whole patch level to the supervisor: %s", exc)
            fd = None
        if fd is None:
            self._send(message)
            return
        try:
            self._send(message, [fd])
        finally:
            os.close(fd)

    def _recv(self, *ops: str) -> tuple[dict[str, Any], list[int]]:
        assert self.channel is not None
        received = recv_message(self.channel)
        if received is None:
            msg = "the supervisor closed the control channel during the hand-over"
            raise ServiceError(msg)
        message, fds = received
        if message["op"] not in ops:
            for fd in fds:
                os.close(fd)
            msg = f"unexpected {message['op']!r} from the supervisor (expected {', '.join(ops)})"
            raise ServiceError(msg)
        return message, fds

    def _receive_rounds(self, until: str) -> dict[str, Any]:
        while True:
            message, fds = self._recv("state", "start-patch", until)
            if message["op"] == until:
                for fd in fds:
                    os.close(fd)
                return message
            if message["op"] == "start-patch":
                self.start_patch = (message, read_memfd(fds))
                continue
            self.state.apply_round(fds[0], int(message["size"]))

    def _load(self) -> None:
        """Pull the snapshot and its rounds while the old process still serves.

        Done at the first ``preserved()`` (or ``ready()``), and once more at
        ``ready()``: what the old process changed while this one went on starting
        (seconds, for a large state to load or a service that warms up) is copied
        then, not in the pause. The first round of a restart was pulled as it began,
        so it says nothing of that time.
        """
        with self.lock:
            if self.phase not in ("start", "loaded"):
                return
            while True:
                self._send({"op": "pull"})
                if not self._receive_rounds(until="pulled")["more"]:
                    break
            self.phase = "loaded"

    def ready(
        self,
        drain: Callable[[float], object] | None,
        resumed: Callable[[float], object] | None,
        plugins: Iterable[object],
    ) -> None:
        with self.lock:
            if self.phase == "ready":
                msg = "hotpatch.ready() was already called in this process"
                raise ServiceError(msg)
            self.drain = drain
            if drain is None and self.channel is not None:
                self._take_sigterm()
            if resumed is not None:
                self.resumed.append(resumed)
            for plugin in plugins:
                self.plugins.manager.register(plugin)
            if self.channel is None:
                self.phase = "ready"
                return
            if self.phase == "start":
                self._load()  # no preserved() before: the snapshot first
            self._load()  # and what the old process changed while this one went on starting
            start_patch, self.start_patch = self.start_patch, None
            loaded = self.patches.load(start_patch)
            self._send_level({"op": "loaded", **loaded})
            if loaded.get("error"):
                raise ServiceError(loaded["error"])
            handover = self._receive_rounds(until="handover")
            self.patches.resync()
            self.state.limit = int(handover.get("limit", self.state.limit))
            self.drain_timeout = float(handover.get("drain_timeout", self.drain_timeout))
            if self.state.extra:
                self.plugins.notify("hotpatch_restore_state", state=dict(self.state.extra))
            self._send({"op": "ready", "at": time.monotonic(), "pid": os.getpid()})
            self.phase = "ready"
            self.state.keep_reserve()  # for the final round, even at the descriptor limit
        atexit.register(self._at_exit)
        threading.Thread(target=self._serve, name="hotpatch-control", daemon=True).start()
        stopped_at = handover.get("stopped_at")
        if stopped_at is not None:
            self._resumed(time.monotonic() - float(stopped_at))

    def baseline_ready(self) -> None:
        """Tell the supervisor now suits a planned baseline (nothing without one, or not ready)."""
        if self.channel is not None and self.phase == "ready":
            self._send({"op": "baseline-ready"})

    def _resumed(self, paused_s: float) -> None:
        for callback in self.resumed:
            try:
                callback(paused_s)
            except Exception:
                log.exception("resumed callback %r failed; carrying on", callback)
        self.plugins.notify("hotpatch_resumed", paused_s=paused_s)

    # -- the control thread, once serving

    def _serve(self) -> None:
        assert self.channel is not None
        while True:
            try:
                received = recv_message(self.channel)
            except DescriptorsLost as exc:  # the channel is fine: only this request fails
                with self.exchange:
                    if (reply := self.patches.unreceived(exc)) is not None:
                        self._send(reply)
                continue
            except (OSError, ServiceError):
                log.exception("the control channel failed; stopping the service")
                received = None
            if received is None:
                log.warning("the supervisor went away; stopping the service")
                self._stop(5.0)
                return
            message, fds = received
            if message["op"] == "patch":
                data = read_memfd(fds)
                with self.exchange:
                    reply = self.patches.apply_patch(message, data)
                    self._send({**reply, "op": "patched", "id": message.get("id")})
                continue
            if message["op"] == "check":  # `hotpatch verify` through the supervisor
                data = read_memfd(fds)
                with self.exchange:
                    reply = self.patches.check_patch(message, data)
                    self._send({**reply, "op": "checked", "id": message.get("id")})
                continue
            for fd in fds:
                os.close(fd)
            with self.exchange:
                self._answer(message)

    def _answer(self, message: Mapping[str, Any]) -> None:
        op = message["op"]
        self.state.limit = int(message.get("limit", self.state.limit))
        if op == "pull":
            self._pull(message)
        elif op == "drain":
            self._drain(float(message["timeout"]))
        elif op == "stop":
            self._stop(float(message["timeout"]))
        elif op == "health":
            self._send({"op": "health", "id": message.get("id"), **self._health(message)})
        elif op == "rollback":
            reply = self.patches.rollback(message)
            self._send({"op": "rolled-back", "id": message.get("id"), **reply})
        elif op == "whole-level":  # the supervisor lost track of the level's bottom
            self._send_level({"op": "whole-level", "id": message.get("id")})
        elif op == "journal":  # a restart that keeps the code comes next
            self._send({"op": "journal", "id": message.get("id"), **self.patches.keep_journal()})
        elif op == "history":
            self._send({"op": "history", "id": message.get("id"), **self.patches.history(message)})
        elif op == "announce":
            log.info("restart scheduled: %s", "; ".join(message.get("reasons", [])))
            self.plugins.notify(
                "hotpatch_restart_scheduled",
                version=str(message.get("version")),
                kind=str(message.get("kind")),
                reasons=list(message.get("reasons", [])),
                when=float(message.get("when", 0.0)),
            )
        else:
            log.warning("ignoring unknown control message %r", op)

    def _health(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """The ``hotpatch_health_check`` hooks (and the HTTP probe, if asked), run here."""
        answers = self.plugins.notify("hotpatch_health_check", registry=self.patches.registry)
        reasons = [f"{answers.count(False)} hotpatch_health_check hook(s) answered False"]
        if False not in answers:
            reasons = []
        url = message.get("url")
        if url:
            reasons.extend(self._probe(str(url), float(message.get("timeout", 5.0))))
        return {"ok": not reasons, "reasons": reasons, **self.patches.level_info()}

    def _probe(self, path: str, timeout: float) -> list[str]:
        """GET ``path`` on the first listening socket's address, from inside this worker.

        The listening sockets are shared by every worker, so whichever worker
        accepts answers the probe: it checks that the service answers. What a
        single worker says about itself is its ``hotpatch_health_check`` hooks.
        """
        import http.client  # noqa: PLC0415
        from http import HTTPStatus  # noqa: PLC0415

        if not self.listeners:
            return [f"HTTP probe {path}: this process listens on no socket"]
        host, port = next(iter(self.listeners.values())).getsockname()[:2]
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            connection.request("GET", path)
            status = connection.getresponse().status
        except OSError as exc:
            return [f"HTTP probe GET {path} failed: {exc}"]
        finally:
            connection.close()
        return (
            []
            if HTTPStatus.OK <= status < HTTPStatus.BAD_REQUEST
            else [f"HTTP probe GET {path} answered {status}"]
        )

    def _pull(self, message: Mapping[str, Any]) -> None:
        reply: dict[str, Any] = {"id": message.get("id")}
        start = time.monotonic()
        try:
            fd, size, records = self.state.take_round(full=bool(message.get("full")))
        except Exception as exc:
            log.exception("cannot write a state round")
            self._send({**reply, "op": "state-error", "error": str(exc)})
            return
        try:
            reply.update(op="state", size=size, records=records, seconds=time.monotonic() - start)
            self._send(reply, [fd])
        finally:
            os.close(fd)

    def _drain(self, timeout: float) -> None:
        stopped_at = time.monotonic()
        if self.drain is not None:
            self.gate.close(hold=False)  # its accept loop is being stopped: no waiting there
            try:
                self.drain(timeout)
            except Exception:
                log.exception("drain callback failed; handing over the state anyway")
            self._handover(stopped_at)
        elif self._handles_sigterm():
            self._wind_down(timeout, handover_from=stopped_at)
        else:
            # The service's own SIGTERM handler stops it; the state goes when the
            # interpreter exits, once the connections in flight are done.
            self.handover_at_exit = stopped_at
            self.drain_timeout = timeout
            self.gate.close(hold=False)
            os.kill(os.getpid(), signal.SIGTERM)

    def _handover(self, stopped_at: float) -> None:
        extra: dict[str, Any] = {}
        for part in self.plugins.notify("hotpatch_save_state"):
            extra.update(part)
        reply: dict[str, Any] = {"op": "handover", "stopped_at": stopped_at}
        # Sealed first: a change from now on raises where it is made, instead of
        # being lost with the process.
        self.state.seal("handed over to the next process")
        try:
            fd, size, records = self.state.take_round(full=False, extra=extra, final=True)
        except Exception as exc:
            log.exception("cannot write the final state round")
            self._send({**reply, "error": str(exc), "drained_at": time.monotonic()})
            return
        try:
            reply.update(size=size, records=records, drained_at=time.monotonic())
            self._send(reply, [fd])
        finally:
            os.close(fd)
        if late := self.state.changed_since_sealed():
            log.error(
                "preserved state changed while its final round was taken, and the change is "
                "lost: %s; finish work in flight before handing over",
                ", ".join(late[:10]),
            )

    def _stop(self, timeout: float) -> None:
        if self.drain is not None:
            self.gate.close(hold=False)
            try:
                self.drain(timeout)
            except Exception:
                log.exception("drain callback failed while stopping")
        elif self._handles_sigterm():
            self._wind_down(timeout, handover_from=None)
        else:
            self.gate.close(hold=False)
            os.kill(os.getpid(), signal.SIGTERM)

    def _at_exit(self) -> None:
        if self.exchange.acquire(timeout=_EXIT_WAIT):
            self.exchange.release()
        if self.handover_at_exit is not None:
            left = self.handover_at_exit + self.drain_timeout - time.monotonic()
            self._wait_in_flight(left)
            self._handover(self.handover_at_exit)
            self.handover_at_exit = None

    # -- SIGTERM, for a service relying on it without a handler of its own

    def _take_sigterm(self) -> None:
        """Install hotpatch's SIGTERM handler, unless the service has one (or cannot)."""
        current = signal.getsignal(signal.SIGTERM)
        if current is signal.SIG_IGN:
            log.warning(
                "SIGTERM is ignored in this process and hotpatch.ready() has no drain=: "
                "a restart cannot stop it, and kills it after --drain-timeout (the changes "
                "since the last round are lost); pass drain= to ready()"
            )
        if current is not signal.SIG_DFL:
            return  # the service's own: it stops the service, the state goes at exit
        if threading.current_thread() is not threading.main_thread():
            log.warning(
                "hotpatch.ready() without drain= was called outside the main thread, so "
                "hotpatch cannot handle SIGTERM for the service: a restart would lose the "
                "changes since the last round; call ready() from the main thread, or pass drain="
            )
            return
        signal.signal(signal.SIGTERM, self._sigterm)

    def _handles_sigterm(self) -> bool:
        return signal.getsignal(signal.SIGTERM) is self._sigterm

    def _on_sigterm(self, signum: int, frame: object) -> None:
        """hotpatch's SIGTERM handler (main thread).

        Sent by hotpatch once the work is handed over: end the main thread. Sent
        by someone else to a serving process: ask the supervisor to replace it
        by a memory-preserving restart (it drains this one as for any restart),
        so nothing is lost; a second one, or one the supervisor cannot hear,
        stops the process at once (its requests in flight still finish).
        """
        if self.stopping == "ended":
            raise SystemExit(0)  # the work is done and handed over: main unwinds
        if self.stopping is None and self.phase == "ready" and self.channel is not None:
            self.stopping = "asked"
            try:
                self._send({"op": "restart", "reason": f"process {os.getpid()} got SIGTERM"})
            except OSError:
                pass  # no supervisor to ask: stop here
            else:
                return
        if self.stopping in (None, "asked"):
            self.stopping = "stopping"
            threading.Thread(
                target=self._stop_on_signal, name="hotpatch-sigterm", daemon=True
            ).start()

    def _stop_on_signal(self) -> None:
        with self.exchange:
            if self.stopping != "ended":
                self._wind_down(self.drain_timeout, handover_from=None)

    def _wind_down(self, timeout: float, *, handover_from: float | None) -> None:
        """Take no new connection, let those in flight finish, hand over, end the process."""
        self.stopping = "stopping"
        self.gate.close()
        self._wait_in_flight(timeout)
        if self.gate.refused_at_once >= _LOOP_REFUSALS:
            log.warning(
                "an event loop asked this stopping process to accept %d times while its work "
                "in flight finished (each connection waiting for the next process wakes it, "
                "and it spins): give ready() a drain callback that closes the server",
                self.gate.refused_at_once,
            )
        if handover_from is not None:
            self._handover(handover_from)
        self.stopping = "ended"
        self.gate.end()
        main = threading.main_thread()
        if main.is_alive() and main.ident is not None:
            signal.pthread_kill(main.ident, signal.SIGTERM)  # the handler ends main now

    def _wait_in_flight(self, timeout: float) -> None:
        if not self.gate.wait_idle(max(timeout, 0.0)):
            log.warning(
                "%d connection(s) still in flight after the drain timeout (%gs); handing over "
                "without them (a change they make to preserved state is refused)",
                self.gate.in_flight(),
                timeout,
            )


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> Runtime:
    global _runtime  # noqa: PLW0603 -- one runtime per process, by design
    with _runtime_lock:
        if _runtime is None:
            show_log_lines(os.environ)  # a supervised service: its lines in the log too
            _runtime = Runtime(os.environ)
        return _runtime


def reset() -> None:
    """Forget the runtime (tests): close the sockets it opened itself."""
    global _runtime  # noqa: PLW0603
    with _runtime_lock:
        if _runtime is not None:
            atexit.unregister(_runtime._at_exit)
            if (
                _runtime._handles_sigterm()
                and threading.current_thread() is threading.main_thread()
            ):
                signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as it found it
            for sock in _runtime.listeners.values():
                with contextlib.suppress(OSError):
                    sock.close()
            if _runtime.channel is not None:
                _runtime.channel.close()
        _runtime = None
