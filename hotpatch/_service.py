"""The service side of the supervisor: listening sockets, preserved state, the restart hand-over.

A service calls three functions, and runs the same with or without ``hotpatch run``::

    sock = hotpatch.listen_socket("http", default="127.0.0.1:8000")
    counters = hotpatch.preserved("counters", dict)
    ...build the server on ``sock``...
    hotpatch.ready(drain=server_drain, resumed=resync_clocks)
    server.serve_forever()

Under the supervisor, ``listen_socket`` takes the socket the supervisor owns
(it stays open across restarts, so connections wait in its backlog), and
``preserved`` and ``ready`` carry the declared state from the old process to
the new one. State crosses as *rounds*: sealed memfds (shared memory, never a
file on disk) holding a stream of records, each an 8-byte length and a pickle:

    ("full",)                    the round replaces everything before it
    ("n", name)                  the preserved mapping ``name`` exists
    ("s", name, key, value)      ``name[key] = value``
    ("d", name, key)             ``del name[key]``
    ("x", extra)                 what ``hotpatch_save_state`` hooks returned

The first round is a full snapshot; later rounds hold only the keys marked
dirty since the round before, which is why a restart's pause depends on what
the service wrote lately, not on how much state it keeps. The control channel
to the supervisor is a ``SOCK_SEQPACKET`` socket carrying one JSON object per
message, with the memfds attached (``SCM_RIGHTS``).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import gc
import json
import logging
import mmap
import os
import pickle
import re
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any, BinaryIO, Self

from hotpatch._hookspecs import hookimpl
from hotpatch._plugins import PluginHost

__all__ = [
    "ENV_BASELINE",
    "ENV_BIND",
    "ENV_CONTROL",
    "ENV_JOURNAL",
    "ENV_SOCKETS",
    "PreservedDict",
    "ServiceError",
    "format_address",
    "listen_socket",
    "open_listener",
    "parse_address",
    "parse_bind",
    "preserved",
    "ready",
    "ready_for_baseline",
    "recv_message",
    "send_message",
]

log = logging.getLogger("hotpatch.service")

ENV_SOCKETS = "HOTPATCH_SOCKETS"  # "http=3,admin=4": listening sockets the supervisor passed
ENV_CONTROL = "HOTPATCH_CONTROL"  # fd of the control channel to the supervisor
ENV_BIND = "HOTPATCH_BIND"  # "http=127.0.0.1:8000,...": addresses when running alone
# Under the supervisor with --watch: the process keeps a Registry on this
# baseline and journal, replayed before it says it is loaded.
ENV_BASELINE = "HOTPATCH_BASELINE"
ENV_JOURNAL = "HOTPATCH_JOURNAL"

DEFAULT_BACKLOG = 1024
MAX_MESSAGE = 1 << 16
MAX_FDS = 4
_FRAME = struct.Struct("<Q")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_RETRIES = 3
_EXIT_WAIT = 60.0  # longest the interpreter's exit waits for a hand-over in progress
# A round is written by the control thread while the service serves: every
# this much pickling it lets the serving threads have the GIL, so their
# requests do not queue behind it (the interpreter would only switch every
# sys.getswitchinterval(), once per blocking call of theirs).
_YIELD_EVERY_S = 0.002


class ServiceError(RuntimeError):
    """The service side cannot do what was asked: no such socket, state not picklable, ..."""


# -- addresses and listening sockets ------------------------------------------------


def parse_address(text: str) -> tuple[str, int]:
    """``"127.0.0.1:8000"`` or ``"[::1]:8000"`` -> ``(host, port)``."""
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:  # noqa: PLR2004
        msg = f"{text!r} is not HOST:PORT; write e.g. 127.0.0.1:8000 or [::1]:8000"
        raise ValueError(msg)
    return host, int(port)


def parse_bind(text: str) -> tuple[str, tuple[str, int]]:
    """``"http=127.0.0.1:8000"`` -> ``("http", ("127.0.0.1", 8000))``."""
    name, sep, address = text.partition("=")
    if not sep or not _NAME.fullmatch(name):
        msg = f"{text!r} is not NAME=HOST:PORT; write e.g. http=127.0.0.1:8000"
        raise ValueError(msg)
    return name, parse_address(address)


def format_address(address: Any) -> str:
    """A socket address as ``host:port`` (``[host]:port`` for IPv6)."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def open_listener(host: str, port: int, *, backlog: int = DEFAULT_BACKLOG) -> socket.socket:
    """A TCP socket listening on ``host:port``, with ``SO_REUSEADDR`` and a large backlog.

    The backlog matters: connections that arrive while no process accepts (a
    restart's pause) wait in it; once it is full, clients fall back to SYN
    retries of a second or more.
    """
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


# -- control messages -----------------------------------------------------------------


def send_message(sock: socket.socket, message: Mapping[str, Any], fds: Iterable[int] = ()) -> None:
    """Send one JSON message, with ``fds`` attached, on a ``SOCK_SEQPACKET`` socket."""
    socket.send_fds(sock, [json.dumps(message).encode()], list(fds))


def recv_message(sock: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    """Receive one message and its fds; ``None`` when the peer has closed the channel."""
    data, fds, flags, _ = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
    if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
        for fd in fds:
            os.close(fd)
        msg = "a control message was truncated (too large or too many fds)"
        raise ServiceError(msg)
    if not data:
        return None
    message = json.loads(data)
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        for fd in fds:
            os.close(fd)
        msg = f"malformed control message {data[:200]!r}"
        raise ServiceError(msg)
    return message, fds


# -- preserved state -----------------------------------------------------------------


class PreservedDict(dict[Any, Any]):
    """A dict whose changes since the last hand-over round are known, per top-level key.

    Tracked: assignment, ``del``, ``pop``, ``popitem``, ``setdefault``,
    ``update``, ``|=`` and ``clear``; ``d[k] += 1`` is an assignment, so it
    is tracked too. **Not tracked**: changing a value in place (``d[k].append(x)``,
    ``d[k]["field"] = 1``): call ``d.touch(k)`` afterwards, or assign the
    changed value again. A change that is neither tracked nor touched reaches
    the new process only if a later round carries that key for another reason.

    The unit that crosses is a whole top-level value, pickled on its own:
    keep values moderate in size (a restart re-sends every value changed
    since the last round), and do not rely on two values sharing one object
    (after a restart each has its own copy). Keys and values must pickle.
    """

    __slots__ = ("_dirty", "name")

    def __init__(self, name: str, contents: Mapping[Any, Any] | None = None, /) -> None:
        dict.__init__(self, contents or {})
        self.name = name
        self._dirty: set[Any] = set()

    # Mutate first, then mark: a round that swaps the dirty set in between
    # sees the new value, and the late mark only re-sends it.

    def __setitem__(self, key: Any, value: Any) -> None:
        dict.__setitem__(self, key, value)
        self._dirty.add(key)

    def __delitem__(self, key: Any) -> None:
        dict.__delitem__(self, key)
        self._dirty.add(key)

    def pop(self, key: Any, *default: Any) -> Any:
        value = dict.pop(self, key, *default)
        self._dirty.add(key)
        return value

    def popitem(self) -> tuple[Any, Any]:
        key, value = dict.popitem(self)
        self._dirty.add(key)
        return key, value

    def setdefault(self, key: Any, default: Any = None) -> Any:
        value = dict.setdefault(self, key, default)
        self._dirty.add(key)  # conservatively: the caller may be about to change it
        return value

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __ior__(self, other: Any) -> Self:  # type: ignore[misc]
        self.update(other)
        return self

    def clear(self) -> None:
        while True:
            try:
                key, _ = dict.popitem(self)
            except KeyError:
                return
            self._dirty.add(key)

    def touch(self, *keys: Hashable) -> None:
        """Declare that the values under ``keys`` were changed in place."""
        self._dirty.update(keys)

    def copy(self) -> dict[Any, Any]:
        """A plain ``dict`` copy (copies are not preserved)."""
        return dict(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))

    def __repr__(self) -> str:
        return f"PreservedDict({self.name!r}, {dict.__repr__(self)})"

    def _take_dirty(self) -> set[Any]:
        dirty, self._dirty = self._dirty, set()
        return dirty


class _RoundWriter:
    """Writes framed pickled records into a memfd, within a size limit."""

    def __init__(self, out: BinaryIO, limit: int) -> None:
        self.out = out
        self.limit = limit
        self.size = 0
        self.records = 0
        self.since_yield = time.perf_counter()

    def write(self, record: tuple[Any, ...]) -> None:
        self._frame(pickle.dumps(record, protocol=5))

    def entry(self, state: PreservedDict, key: Any) -> None:
        for _ in range(_RETRIES):
            try:
                value = dict.__getitem__(state, key)
            except KeyError:
                self.write(("d", state.name, key))
                return
            try:
                payload = pickle.dumps(("s", state.name, key, value), protocol=5)
            except RuntimeError:
                continue  # another thread changed the value while it was pickled; again
            except Exception as exc:
                msg = (
                    f"preserved({state.name!r}) key {key!r} cannot be pickled "
                    f"({type(exc).__name__}: {exc}); keep only picklable values in preserved state"
                )
                raise ServiceError(msg) from exc
            self._frame(payload)
            return
        state.touch(key)  # changing faster than it pickles: the next round carries it

    def _frame(self, payload: bytes) -> None:
        self.size += _FRAME.size + len(payload)
        if self.size > self.limit:
            msg = (
                f"the preserved state is larger than the hand-over limit "
                f"({self.limit / 2**20:.0f} MB); raise --state-mb or keep less state"
            )
            raise ServiceError(msg)
        self.out.write(_FRAME.pack(len(payload)))
        self.out.write(payload)
        self.records += 1
        if time.perf_counter() - self.since_yield > _YIELD_EVERY_S:
            time.sleep(0)
            self.since_yield = time.perf_counter()


def read_round(fd: int, size: int) -> Iterator[tuple[Any, ...]]:
    """The records of a round, read straight from the shared memory (no copy)."""
    if size == 0:
        return
    with mmap.mmap(fd, size, prot=mmap.PROT_READ) as mapped:
        view = memoryview(mapped)
        try:
            position = 0
            while position < size:
                (length,) = _FRAME.unpack_from(view, position)
                position += _FRAME.size
                with view[position : position + length] as payload:
                    yield pickle.loads(payload)
                position += length
        finally:
            view.release()


def _seal(fd: int) -> None:
    seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)


# -- the runtime: one per process ------------------------------------------------------------


class _Runtime:
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
        self.baseline: str | None = None
        self.journal: str | None = None
        if control:
            self.channel = socket.socket(fileno=int(control))
            self.channel.set_inheritable(False)
            self.baseline = environ.pop(ENV_BASELINE, None) or None
            self.journal = environ.pop(ENV_JOURNAL, None) or None
        self.registry: Any = None  # a hotpatch.Registry, under the supervisor with a baseline
        self.start_patch: tuple[dict[str, Any], bytes] | None = None  # to apply before serving
        self.listeners: dict[str, socket.socket] = {}
        self.lock = threading.RLock()
        self.names: dict[str, PreservedDict] = {}
        self.unsent: set[str] = set()  # declared since the last round
        self.pending: dict[str, dict[Any, Any]] = {}  # received, not declared yet
        self.extra: dict[str, Any] = {}
        self.phase = "start"  # -> "loaded" (chain received) -> "ready"
        self.limit = 1 << 40
        self.drain: Callable[[float], object] | None = None
        self.resumed: list[Callable[[float], object]] = []
        self.plugins = PluginHost()
        self.handover_at_exit: float | None = None
        # Every level report carries a number taken under this lock: the
        # supervisor keeps the newest, whichever way it came (reply or report).
        self.level_lock = threading.Lock()
        self.level_seq = 0
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
                sock = socket.socket(fileno=self.passed[name])
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
        with self.lock:
            if name in self.names:
                return self.names[name]
        if self.channel is not None and self.phase == "start":
            self._load()
        with self.lock:
            if name in self.names:
                return self.names[name]
            restored = self.pending.pop(name, None)
            if restored is not None:  # already in the chain: nothing to send
                state = self.names[name] = PreservedDict(name, restored)
                return state
        contents: object = factory()  # outside the lock: it may take a while
        if not isinstance(contents, Mapping):
            msg = (
                f"preserved({name!r}, factory): the factory returned a "
                f"{type(contents).__name__}, not a mapping; preserved state is a dict "
                f"(put other objects under a key)"
            )
            raise TypeError(msg)
        with self.lock:
            if name in self.names:  # another thread declared it meanwhile
                return self.names[name]
            state = self.names[name] = PreservedDict(name, contents)
            self.unsent.add(name)
        return state

    def take_round(
        self, *, full: bool, extra: Mapping[str, Any] | None = None
    ) -> tuple[int, int, int]:
        """Write a round into a new sealed memfd: ``(fd, size, records)``."""
        fd = os.memfd_create("hotpatch-state", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        with self.lock:
            names = list(self.names.items())
            unsent, self.unsent = self.unsent, set()
            pending = [(name, list(entries.items())) for name, entries in self.pending.items()]
        taken: list[tuple[PreservedDict, set[Any]]] = []
        try:
            with open(fd, "wb", buffering=1 << 20, closefd=False) as out:
                writer = _RoundWriter(out, self.limit)
                if full:
                    writer.write(("full",))
                for name, state in names:
                    dirty = state._take_dirty()
                    taken.append((state, dirty))
                    if full or name in unsent:
                        writer.write(("n", name))
                        keys: Iterable[Any] = list(state)
                    else:
                        keys = dirty
                    for key in keys:
                        writer.entry(state, key)
                if full:
                    for name, items in pending:
                        writer.write(("n", name))
                        for key, value in items:
                            writer.write(("s", name, key, value))
                if extra:
                    writer.write(("x", dict(extra)))
            _seal(fd)
        except BaseException:
            os.close(fd)
            for state, dirty in taken:  # nothing was sent: still dirty
                state.touch(*dirty)
            with self.lock:
                self.unsent |= unsent
            raise
        return fd, writer.size, writer.records

    def apply_round(self, fd: int, size: int) -> None:
        """Apply a received round (and close its fd)."""
        collecting = gc.isenabled()
        gc.disable()  # loading makes no garbage cycles; collections would only slow it down
        try:
            for record in read_round(fd, size):
                self._apply(record)
        finally:
            os.close(fd)
            if collecting:
                gc.enable()

    def _apply(self, record: tuple[Any, ...]) -> None:
        op = record[0]
        with self.lock:
            if op == "full":
                for state in self.names.values():
                    dict.clear(state)
                self.pending.clear()
            elif op == "x":
                self.extra.update(record[1])
            else:
                name = record[1]
                target: dict[Any, Any] | None = self.names.get(name)
                if target is None:
                    target = self.pending.setdefault(name, {})
                if op == "s":
                    dict.__setitem__(target, record[2], record[3])
                elif op == "d":
                    dict.pop(target, record[2], None)

    # -- the hand-over, in the new process

    def _send(self, message: Mapping[str, Any], fds: Iterable[int] = ()) -> None:
        assert self.channel is not None
        send_message(self.channel, message, fds)

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
                self.start_patch = (message, _read_memfd(fds))
                continue
            self.apply_round(fds[0], int(message["size"]))

    def _load(self) -> None:
        """Pull the snapshot and its rounds while the old process still serves."""
        with self.lock:
            if self.phase != "start":
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
            if resumed is not None:
                self.resumed.append(resumed)
            for plugin in plugins:
                self.plugins.manager.register(plugin)
            if self.channel is None:
                self.phase = "ready"
                return
            self._load()
            loaded = self._patch_level()
            self._send({"op": "loaded", **loaded})
            if loaded.get("error"):
                raise ServiceError(loaded["error"])
            handover = self._receive_rounds(until="handover")
            self._resync_journal()
            self.limit = int(handover.get("limit", self.limit))
            if self.extra:
                self.plugins.notify("hotpatch_restore_state", state=dict(self.extra))
            self._send({"op": "ready", "at": time.monotonic(), "pid": os.getpid()})
            self.phase = "ready"
        atexit.register(self._at_exit)
        threading.Thread(target=self._serve, name="hotpatch-control", daemon=True).start()
        stopped_at = handover.get("stopped_at")
        if stopped_at is not None:
            self._resumed(time.monotonic() - float(stopped_at))

    def _resync_journal(self) -> None:
        """At the hand-over: the journal was replayed early; follow what the old process
        changed since (a plugin's rollback). Never fatal: the level is reported either way."""
        if self.registry is None:
            return
        try:
            self.registry.resync()
        except Exception:
            log.exception("cannot follow the journal %s at the hand-over", self.journal)

    def _resumed(self, paused_s: float) -> None:
        for callback in self.resumed:
            try:
                callback(paused_s)
            except Exception:
                log.exception("resumed callback %r failed; carrying on", callback)
        self.plugins.notify("hotpatch_resumed", paused_s=paused_s)

    # -- patches, under the supervisor

    def _patch_level(self) -> dict[str, Any]:
        """Replay the journal, apply the patch this restart is for; what the supervisor learns."""
        import sys  # noqa: PLC0415

        info: dict[str, Any] = {"sys_path": list(sys.path)}
        if self.baseline is None:
            return info
        from hotpatch._registry import Registry  # noqa: PLC0415 -- only under the supervisor

        try:
            self.registry = Registry(
                self.baseline,
                journal=self.journal,
                plugins=[*self._plugin_objects(), _LevelReporter(self)],
            )
        except Exception as exc:
            log.exception("cannot replay the journal %s", self.journal)
            return {**info, "error": f"{type(exc).__name__}: {exc}"}
        info["journal_report"] = self.registry.journal_report
        if self.start_patch is not None:
            message, data = self.start_patch
            self.start_patch = None
            result = self.apply_patch(message, data, restarting=True)
            info["start_patch"] = result
            if result["outcome"] not in ("applied", "unchanged"):
                info["error"] = (
                    f"the new process could not apply patch {result.get('version') or '?'}: "
                    f"{result.get('reason')}"
                )
        return {**info, **self._level_info()}

    def _plugin_objects(self) -> list[object]:
        return [p for _, p in self.plugins.manager.list_name_plugin() if p is not None]

    def _level_info(self) -> dict[str, Any]:
        registry = self.registry
        if registry is None:
            return {}
        with self.level_lock:
            return self._level_info_locked(registry)

    def _level_info_locked(self, registry: Any) -> dict[str, Any]:
        self.level_seq += 1
        return {
            "baseline": registry.baseline,
            "level": list(registry.level),
            "patches": [
                [p.version, p.source.sha256 if p.source else None] for p in registry.patches
            ],
            "level_seq": self.level_seq,
        }

    def report_level(self) -> None:
        """Tell the supervisor the registry's level changed (a plugin, or the service's code)."""
        registry, channel = self.registry, self.channel
        if registry is None or channel is None:
            return
        with self.level_lock:  # sent in the order taken: the newest report arrives last
            info = self._level_info_locked(registry)
            try:
                send_message(channel, {"op": "level", **info})
            except OSError as exc:
                log.warning("cannot report the patch level to the supervisor: %s", exc)

    def apply_patch(
        self, message: Mapping[str, Any], data: bytes, *, restarting: bool = False
    ) -> dict[str, Any]:
        """Load and apply a patch the supervisor verified; the outcome, never an exception."""
        from packaging.version import Version  # noqa: PLC0415

        from hotpatch._errors import PatchError, RestartRequired  # noqa: PLC0415
        from hotpatch._loader import load_patch_source  # noqa: PLC0415

        who = str(message.get("who") or "supervisor")
        result: dict[str, Any] = {"outcome": "rejected", "reason": None, "timings": {}}
        start = time.perf_counter()
        if self.registry is None:
            result["reason"] = (
                "this process keeps no patch registry: start hotpatch run with --watch and "
                "--baseline (or $HOTPATCH_BASELINE)"
            )
            return result
        try:
            patch = load_patch_source(data, path=str(message.get("path") or "<supervisor>"))
            result["timings"]["load_s"] = time.perf_counter() - start
            result["version"], result["targets"] = patch.version, list(patch.targets)
            sha = patch.source.sha256 if patch.source else None
            same = [p for p in self.registry.patches if p.parsed_version == Version(patch.version)]
            if same and same[0].source is not None and same[0].source.sha256 == sha:
                result["outcome"] = "unchanged"
                result["reason"] = f"patch {patch.version} is already applied with this content"
            else:
                t = time.perf_counter()
                applied = self.registry.apply(patch, who=who, restarting=restarting)
                result["timings"]["apply_s"] = time.perf_counter() - t
                result["outcome"], result["targets"] = "applied", list(applied.targets)
        except RestartRequired as exc:
            result["outcome"], result["reason"] = "restart", str(exc)
            result["reasons"], result["error_type"] = list(exc.reasons), type(exc).__name__
        except PatchError as exc:
            result["reason"], result["error_type"] = str(exc), type(exc).__name__
        except BaseException as exc:  # a patch raising SystemExit must not end the service
            log.exception("applying a patch failed unexpectedly")
            result["reason"] = f"{type(exc).__name__} while loading or applying: {exc}"
            result["error_type"] = "VerificationFailed"
        result["timings"]["total_s"] = time.perf_counter() - start
        return {**result, **self._level_info()}

    # -- the control thread, once serving

    def _serve(self) -> None:
        assert self.channel is not None
        while True:
            try:
                received = recv_message(self.channel)
            except (OSError, ServiceError):
                log.exception("the control channel failed; stopping the service")
                received = None
            if received is None:
                log.warning("the supervisor went away; stopping the service")
                self._stop(5.0)
                return
            message, fds = received
            if message["op"] == "patch":
                data = _read_memfd(fds)
                with self.exchange:
                    reply = self.apply_patch(message, data)
                    self._send({**reply, "op": "patched", "id": message.get("id")})
                continue
            if message["op"] == "check":  # `hotpatch verify` through the supervisor
                data = _read_memfd(fds)
                with self.exchange:
                    reply = self.check_patch(message, data)
                    self._send({**reply, "op": "checked", "id": message.get("id")})
                continue
            for fd in fds:
                os.close(fd)
            with self.exchange:
                self._answer(message)

    def _answer(self, message: Mapping[str, Any]) -> None:
        op = message["op"]
        self.limit = int(message.get("limit", self.limit))
        if op == "pull":
            self._pull(message)
        elif op == "drain":
            self._drain(float(message["timeout"]))
        elif op == "stop":
            self._stop(float(message["timeout"]))
        elif op == "health":
            self._send({"op": "health", "id": message.get("id"), **self._health(message)})
        elif op == "rollback":
            self._send({"op": "rolled-back", "id": message.get("id"), **self._rollback(message)})
        elif op == "history":
            self._send({"op": "history", "id": message.get("id"), **self._history(message)})
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
        answers = self.plugins.notify("hotpatch_health_check", registry=self.registry)
        reasons = [f"{answers.count(False)} hotpatch_health_check hook(s) answered False"]
        if False not in answers:
            reasons = []
        url = message.get("url")
        if url:
            reasons.extend(self._probe(str(url), float(message.get("timeout", 5.0))))
        return {"ok": not reasons, "reasons": reasons, **self._level_info()}

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

    def _rollback(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """Roll back to level ``to``, or the last patch if ``to`` is null; never raises."""
        from hotpatch._errors import PatchError  # noqa: PLC0415

        if self.registry is None:
            return {"ok": False, "error": "this process keeps no patch registry"}
        to = message.get("to")
        try:
            result = self.registry.rollback(
                to=None if to is None else str(to), who=str(message.get("who", "supervisor"))
            )
        except PatchError as exc:  # nothing to roll back, a version not in the level
            error = {"error": str(exc), "error_type": type(exc).__name__}
            return {"ok": False, **error, **self._level_info()}
        except Exception as exc:
            log.exception("rollback to %s failed", to)
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}", **self._level_info()}
        return {"ok": True, "versions": list(result.versions), **self._level_info()}

    def _history(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """The registry's applies and rollbacks, oldest first (the last ``entries`` of them)."""
        if self.registry is None:
            return {"ok": False, "error": "this process keeps no patch registry"}
        entries = list(self.registry.history)[-max(int(message.get("entries", 200)), 0) :]
        history = [h.record() for h in entries]
        return {"ok": True, "history": history, **self._level_info()}

    def check_patch(self, message: Mapping[str, Any], data: bytes) -> dict[str, Any]:
        """``Registry.check`` of patch bytes the supervisor verified: hot or not, and why."""
        from hotpatch._errors import PatchError  # noqa: PLC0415
        from hotpatch._loader import load_patch_source  # noqa: PLC0415

        if self.registry is None:
            return {"ok": False, "error": "this process keeps no patch registry"}
        try:
            patch = load_patch_source(data, path=str(message.get("path") or "<supervisor>"))
            report = self.registry.check(patch)
        except PatchError as exc:
            return {"ok": False, "error": str(exc), "error_type": type(exc).__name__}
        except BaseException as exc:  # a patch raising SystemExit must not end the service
            log.exception("checking a patch failed unexpectedly")
            error = f"{type(exc).__name__} while loading or checking the patch: {exc}"
            return {"ok": False, "error": error, "error_type": "VerificationFailed"}
        return {
            "ok": True,
            "version": report.version,
            "hot": report.hot,
            "reasons": list(report.reasons),
            "targets": list(report.targets),
            "modes": dict(report.modes),
            **self._level_info(),
        }

    def _pull(self, message: Mapping[str, Any]) -> None:
        reply: dict[str, Any] = {"id": message.get("id")}
        start = time.monotonic()
        try:
            fd, size, records = self.take_round(full=bool(message.get("full")))
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
        if self.drain is None:
            # The convention: SIGTERM; the state goes when the interpreter exits.
            self.handover_at_exit = stopped_at
            os.kill(os.getpid(), signal.SIGTERM)
            return
        try:
            self.drain(timeout)
        except Exception:
            log.exception("drain callback failed; handing over the state anyway")
        self._handover(stopped_at)

    def _handover(self, stopped_at: float) -> None:
        extra: dict[str, Any] = {}
        for part in self.plugins.notify("hotpatch_save_state"):
            extra.update(part)
        reply: dict[str, Any] = {"op": "handover", "stopped_at": stopped_at}
        try:
            fd, size, records = self.take_round(full=False, extra=extra)
        except Exception as exc:
            log.exception("cannot write the final state round")
            self._send({**reply, "error": str(exc), "drained_at": time.monotonic()})
            return
        try:
            reply.update(size=size, records=records, drained_at=time.monotonic())
            self._send(reply, [fd])
        finally:
            os.close(fd)

    def _stop(self, timeout: float) -> None:
        if self.drain is None:
            os.kill(os.getpid(), signal.SIGTERM)
            return
        try:
            self.drain(timeout)
        except Exception:
            log.exception("drain callback failed while stopping")

    def _at_exit(self) -> None:
        if self.exchange.acquire(timeout=_EXIT_WAIT):
            self.exchange.release()
        if self.handover_at_exit is not None:
            self._handover(self.handover_at_exit)
            self.handover_at_exit = None


class _LevelReporter:
    """A registry plugin of the runtime: every apply and rollback is reported to the supervisor.

    The supervisor learns of the patches it delivered from the replies, but a
    plugin (the health gate) or the service's own code may change the level
    too; without this the supervisor's status and its ``unchanged`` decisions
    would follow a level the process no longer has.
    """

    def __init__(self, runtime: _Runtime) -> None:
        self.runtime = runtime

    @hookimpl
    def hotpatch_after_apply(self, patch: Any, registry: Any, result: Any) -> None:
        self.runtime.report_level()

    @hookimpl
    def hotpatch_after_rollback(self, registry: Any, result: Any) -> None:
        self.runtime.report_level()


def _read_memfd(fds: list[int]) -> bytes:
    """The whole content of the first fd (a memfd the supervisor wrote); closes them all."""
    try:
        if not fds:
            return b""
        size = os.fstat(fds[0]).st_size
        return os.pread(fds[0], size, 0) if size else b""
    finally:
        for fd in fds:
            os.close(fd)


_runtime: _Runtime | None = None
_runtime_lock = threading.Lock()


def _get_runtime() -> _Runtime:
    global _runtime  # noqa: PLW0603 -- one runtime per process, by design
    with _runtime_lock:
        if _runtime is None:
            _runtime = _Runtime(os.environ)
        return _runtime


def _reset() -> None:
    """Forget the runtime (tests): close the sockets it opened itself."""
    global _runtime  # noqa: PLW0603
    with _runtime_lock:
        if _runtime is not None:
            atexit.unregister(_runtime._at_exit)
            for sock in _runtime.listeners.values():
                with contextlib.suppress(OSError):
                    sock.close()
            if _runtime.channel is not None:
                _runtime.channel.close()
        _runtime = None


# -- public API ----------------------------------------------------------------------------


def listen_socket(name: str, *, default: str | tuple[str, int] | None = None) -> socket.socket:
    """The listening socket ``name``.

    Under ``hotpatch run --bind NAME=HOST:PORT`` this is the supervisor's
    socket, open for the service's whole life: do not ``shutdown()`` it (that
    would stop it for every process), just stop accepting when told to drain.
    Running alone, the service binds its own socket on ``$HOTPATCH_BIND``
    (``name=HOST:PORT,...``) or else ``default``. The same object is returned
    on every call.
    """
    return _get_runtime().listen_socket(name, default)


def preserved(name: str, factory: Callable[[], Mapping[Any, Any]] = dict) -> PreservedDict:
    """The state ``name`` that survives memory-preserving restarts.

    After a restart this is the old process's mapping, loaded while the old
    process still served and brought up to date during the pause; otherwise
    (first start, or no supervisor) a new :class:`PreservedDict` holding
    ``factory()``. See :class:`PreservedDict` for which changes are tracked.
    Calling it again with the same name returns the same object.

    With ``hotpatch run --workers N`` the state is per worker: each worker
    process has its own, handed to its own successor; workers share nothing
    but the listening sockets (keep what must be shared in a database).
    """
    return _get_runtime().preserved(name, factory)


def ready(
    *,
    drain: Callable[[float], object] | None = None,
    resumed: Callable[[float], object] | None = None,
    plugins: Iterable[object] = (),
) -> None:
    """Say the service is ready to serve; start accepting when this returns.

    Under the supervisor, a restarted process first receives what changed
    in the old process's state while it drained (this is the pause), then
    calls ``resumed(paused_s)`` and the ``hotpatch_resumed`` hook of
    ``plugins`` (also used for ``hotpatch_save_state`` and
    ``hotpatch_restore_state``). ``drain(timeout_s)`` is how the old process
    is told to stop accepting: it must return once the service accepts no new
    work and its in-flight work is done (or ``timeout_s`` has passed); the
    state must not change after it returns. Without ``drain``, the process
    gets SIGTERM and hands its state over when the interpreter exits
    normally, so the service must handle SIGTERM by returning from its main.
    """
    _get_runtime().ready(drain, resumed, plugins)


def ready_for_baseline() -> None:
    """Tell the supervisor that now is a good moment for a planned baseline restart.

    A planned baseline restarts at the maintenance window, at its deadline, or
    as soon as the service calls this -- whichever comes first. Call it when
    the service is quiet (a batch finished, no long request running). It does
    nothing without a supervisor, or when no baseline is pending.
    """
    runtime = _get_runtime()
    if runtime.channel is not None and runtime.phase == "ready":
        runtime._send({"op": "baseline-ready"})
