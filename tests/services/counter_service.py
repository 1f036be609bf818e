"""A small threaded HTTP service whose counters (and optional payload) are preserved state.

Run under ``hotpatch run --bind http=HOST:PORT -- python counter_service.py`` or
alone (``--default-bind``). Endpoints (one request per connection, HTTP/1.0):

- ``/inc?c=ID``  add one to ``hits`` and to client ``ID``'s counter; with a
  payload, also rewrite one element of one payload list (``touch``-ed)
- ``/get``       the counters, and the pauses this process was told about
- ``/slow?ms=N`` answer after N ms (in-flight work for drain tests)

Every answer carries the process id and ``time.monotonic()`` when it was
handled, so a client can measure the pause across processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import counter_logic  # type: ignore[import-not-found]  # beside this file

import hotpatch

KEYS_PER_MB = 100  # payload: lists of ~10 KB pickled per key
ITEMS_PER_KEY = 180
SMALL_BYTES = 1024  # --state-shape small: many small keys, 1 KiB values (1,024 a MiB)
LARGE_BYTES = 16 * 2**20  # --state-shape large: few large values, 16 MiB each
SHAPES = ("lists", "small", "large")


class Server(ThreadingHTTPServer):
    """Serves on a socket it is given, and can drain: stop accepting, finish in-flight work."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, sock: Any, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(sock.getsockname()[:2], handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_address = sock.getsockname()[:2]
        self.inflight = 0
        self.idle = threading.Condition()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.idle:
            self.inflight += 1  # counted from accept, so a drain cannot miss it
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.idle:
                self.inflight -= 1
                self.idle.notify_all()

    def wait_idle(self, timeout: float) -> None:
        with self.idle:
            self.idle.wait_for(lambda: self.inflight == 0, timeout)

    def drain(self, timeout: float) -> None:
        self.shutdown()  # serve_forever returns: nothing accepts here any more
        self.wait_idle(timeout)


class AsyncServer:
    """The same service on asyncio streams (``--server asyncio``): a loop accepting on the
    passed socket, each request answered in the loop's thread pool."""

    def __init__(self, sock: Any, respond: Callable[[str, Any], dict[str, Any] | None]) -> None:
        self.sock = sock
        self.respond = respond
        self.inflight = 0
        self.idle = threading.Condition()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_asked: asyncio.Event | None = None
        self.stopped = threading.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self.idle:
            self.inflight += 1
        try:
            request_line = await reader.readline()
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            path = request_line.split()[1].decode()
            loop = asyncio.get_running_loop()
            body = await loop.run_in_executor(None, self.respond, path, self)
            if body is None:
                writer.write(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            else:
                data = json.dumps(body).encode()
                head = "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n"
                writer.write(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
            await writer.drain()
        finally:
            writer.close()
            with self.idle:
                self.inflight -= 1
                self.idle.notify_all()

    async def main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop_asked = asyncio.Event()
        server = await asyncio.start_server(self.handle, sock=self.sock)
        await self.stop_asked.wait()
        server.close()  # no more accepts here (closes this process's copy of the socket)
        # Each connection accepted is a task from the accept on (before handle() runs):
        # wait for them all, which asyncio.run would cancel.
        deadline = time.monotonic() + 30.0
        while len(asyncio.all_tasks()) > 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.002)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        try:
            asyncio.run(self.main())
        finally:
            self.stopped.set()

    def shutdown(self) -> None:
        while self.loop is None or self.stop_asked is None:
            time.sleep(0.001)
        self.loop.call_soon_threadsafe(self.stop_asked.set)
        self.stopped.wait()

    def wait_idle(self, timeout: float) -> None:
        with self.idle:
            self.idle.wait_for(lambda: self.inflight == 0, timeout)

    def drain(self, timeout: float) -> None:
        self.shutdown()
        self.wait_idle(timeout)


def build_payload(megabytes: int, shape: str = "lists") -> dict[str, Any]:
    """``megabytes`` of state: lists of strings, many small values, or a few large ones."""
    if shape == "small":
        filler = b"s" * (SMALL_BYTES - 8)
        return {f"s{k:07d}": b"%08d" % k + filler for k in range(megabytes * 2**20 // SMALL_BYTES)}
    if shape == "large":
        size = min(LARGE_BYTES, megabytes * 2**20)
        return {f"l{k:03d}": bytes([k % 256]) * size for k in range(payload_keys(megabytes, shape))}
    return {
        f"k{k:06d}": [f"{k:06d}-{i:04d}-{'x' * 40}" for i in range(ITEMS_PER_KEY)]
        for k in range(megabytes * KEYS_PER_MB)
    }


def payload_keys(megabytes: int, shape: str) -> int:
    """How many keys ``build_payload`` makes."""
    if shape == "small":
        return megabytes * 2**20 // SMALL_BYTES
    if shape == "large":
        return max(1, megabytes * 2**20 // LARGE_BYTES) if megabytes else 0
    return megabytes * KEYS_PER_MB


class Plugin:
    """hotpatch hooks: carries the list of process ids across restarts, records pauses."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.resumed: list[float] = []
        self.scheduled: list[dict[str, Any]] = []
        self.registry: Any = None  # the registry patches reach this process through

    @hotpatch.hookimpl
    def hotpatch_after_apply(self, patch: Any, registry: Any, result: Any) -> None:
        self.registry = registry

    @hotpatch.hookimpl
    def hotpatch_restart_scheduled(
        self, version: str, kind: str, reasons: list[str], when: float
    ) -> None:
        self.scheduled.append({"version": version, "kind": kind, "reasons": reasons, "when": when})

    @hotpatch.hookimpl
    def hotpatch_health_check(self, registry: Any) -> bool:
        return bool(counter_logic.healthy())

    @hotpatch.hookimpl
    def hotpatch_save_state(self) -> dict[str, Any]:
        return {"pids": [*self.pids, os.getpid()]}

    @hotpatch.hookimpl
    def hotpatch_restore_state(self, state: dict[str, Any]) -> None:
        self.pids = state["pids"]

    @hotpatch.hookimpl
    def hotpatch_resumed(self, paused_s: float) -> None:
        self.resumed.append(paused_s)


def handler_class(
    counters: dict[str, int],
    payload: dict[str, Any] | None,
    lock: threading.Lock,
    resumed: list[float],
    plugin: Plugin,
    *,
    expected_keys: int = 0,
    started_from: str | None = None,
    inc_delay_s: float = 0.0,
) -> type[BaseHTTPRequestHandler]:
    keys = sorted(payload) if payload else []
    touch: Callable[[str], None] = getattr(payload, "touch", lambda key: None)

    def respond(path: str, server: Any) -> dict[str, Any] | None:
        """The answer to ``GET path`` (``None``: not found), for either kind of server."""
        url = urlsplit(path)
        query = parse_qs(url.query)
        body: dict[str, Any] = {"pid": os.getpid(), "tag": counter_logic.tag()}
        body["started_from"] = started_from
        if url.path == "/inc":
            time.sleep(inc_delay_s)
            client = f"c{query.get('c', ['anon'])[0]}"
            with lock:
                counters["hits"] += 1
                counters[client] = counters.get(client, 0) + 1
                body["hits"] = counters["hits"]
                if payload is not None and keys:
                    key = random.choice(keys)
                    value = payload[key]
                    if isinstance(value, list):
                        value[random.randrange(len(value))] = f"{body['hits']:010d}-{'y' * 40}"
                        touch(key)
                    elif len(value) <= SMALL_BYTES:  # a small value: replaced (tracked)
                        payload[key] = b"%08d" % body["hits"] + value[8:]
                    # a large value is only read: changed, it would cross whole
        elif url.path == "/get":
            with lock:
                body["counters"] = dict(counters)
                body["resumed"] = list(resumed)
                body["payload_keys"] = len(payload) if payload is not None else None
                body["payload_expected"] = expected_keys
                body["plugin"] = {
                    "pids": plugin.pids,
                    "resumed": plugin.resumed,
                    "scheduled": plugin.scheduled,
                }
                body["inflight"] = getattr(server, "inflight", None)
        elif url.path == "/baseline-ready":
            hotpatch.ready_for_baseline()
        elif url.path == "/slow":
            time.sleep(int(query.get("ms", ["100"])[0]) / 1000)
        else:
            return None
        body["t"] = time.monotonic()
        return body

    class Handler(BaseHTTPRequestHandler):
        answer = staticmethod(respond)

        def do_GET(self) -> None:
            body = respond(self.path, self.server)
            if body is None:
                self.send_error(404)
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def service_plugins(args: argparse.Namespace, plugin: Plugin) -> list[object]:
    plugins: list[object] = [plugin] if args.plugin else []
    if args.health_gate:
        from hotpatch_plugins.health_gate import HealthGate

        plugins.append(HealthGate(window_s=600.0, min_calls=10**6, max_errors=args.health_gate))
    return plugins


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tag", default="", help="ignored; lets tests find their processes")
    parser.add_argument("--default-bind", default=None)
    parser.add_argument("--crash-if-exists", type=Path)
    parser.add_argument("--hang-if-exists", type=Path)
    parser.add_argument(
        "--drain",
        choices=("callback", "sigterm", "none", "hasty"),
        default="callback",
        help="how it stops: a drain callback, its own SIGTERM handler, or neither "
        "(Python's default SIGTERM, which hotpatch handles for it), or a hasty callback "
        "that returns before the work in flight is done",
    )
    parser.add_argument(
        "--inc-delay-ms", type=float, default=0.0, help="/inc works this long before counting"
    )
    parser.add_argument(
        "--start-delay", type=float, default=0.0, help="seconds to wait before ready()"
    )
    parser.add_argument(
        "--started-from",
        type=Path,
        metavar="FILE",
        help="read FILE at start; /get answers what it held (code on disk, as a restart sees it)",
    )
    parser.add_argument("--state-mb", type=int, default=0)
    parser.add_argument("--state-shape", choices=SHAPES, default="lists")
    parser.add_argument("--cold-file", type=Path, help="keep state in this file, not in memory")
    parser.add_argument("--poll", type=float, default=0.005)
    parser.add_argument(
        "--server",
        choices=("threads", "asyncio"),
        default="threads",
        help="socketserver's threads, or an asyncio loop on the same socket",
    )
    parser.add_argument("--plugin", action="store_true", help="use the hotpatch hooks too")
    parser.add_argument(
        "--rollback-on-drain-if-exists",
        type=Path,
        metavar="FLAG",
        help="with --plugin: while draining, roll the last patch back (as a plugin might)",
    )
    parser.add_argument(
        "--health-gate",
        type=int,
        metavar="ERRORS",
        help="put patches on probation: roll one back at this many errors of its functions",
    )
    return parser.parse_args()


def starting(args: argparse.Namespace) -> str | None:
    """What ``--started-from`` holds (said in the log), after the ``--start-delay``."""
    started_from = args.started_from.read_text() if args.started_from else None
    if started_from is not None:
        print(f"started from {started_from!r} pid {os.getpid()}", flush=True)
    time.sleep(args.start_delay)
    return started_from


def declare_ready(
    how: str,
    server: Server | AsyncServer,
    save: Callable[[float], None],
    resumed: list[float],
    plugins: list[object],
) -> None:
    """``hotpatch.ready()``, with the way to stop that ``--drain`` names."""
    if how == "sigterm":

        def on_sigterm(signum: int, frame: Any) -> None:
            threading.Thread(target=server.shutdown, daemon=True).start()

        signal.signal(signal.SIGTERM, on_sigterm)
        hotpatch.ready(resumed=resumed.append, plugins=plugins)
    elif how == "none":  # SIGTERM as Python leaves it: hotpatch handles it
        hotpatch.ready(resumed=resumed.append, plugins=plugins)
    elif how == "hasty":  # stops accepting, but returns before in-flight work is done

        def hasty(timeout: float) -> None:
            threading.Thread(target=server.shutdown, daemon=True).start()

        hotpatch.ready(drain=hasty, resumed=resumed.append, plugins=plugins)
    else:
        hotpatch.ready(drain=save, resumed=resumed.append, plugins=plugins)


def main() -> int:
    args = parse_args()

    sock = hotpatch.listen_socket("http", default=args.default_bind)
    if args.crash_if_exists and args.crash_if_exists.exists():
        print(f"counter_service: {args.crash_if_exists} exists, crashing", file=sys.stderr)
        return 3
    if args.hang_if_exists and args.hang_if_exists.exists():
        time.sleep(3600)

    counters: dict[str, int]
    payload: dict[str, Any] | None
    shape = args.state_shape
    if args.cold_file is not None:
        # The cold way: a file, written when stopping, read when starting.
        if args.cold_file.exists():
            counters, payload = pickle.loads(args.cold_file.read_bytes())
        else:
            counters, payload = {"hits": 0}, build_payload(args.state_mb, shape)
    else:
        counters = hotpatch.preserved("counters", lambda: {"hits": 0})
        payload = None
        if args.state_mb:
            payload = hotpatch.preserved("payload", lambda: build_payload(args.state_mb, shape))

    started_from = starting(args)
    lock = threading.Lock()
    resumed: list[float] = []
    plugin = Plugin()
    plugins = service_plugins(args, plugin)
    expected_keys = payload_keys(args.state_mb, shape)
    handler = handler_class(
        counters,
        payload,
        lock,
        resumed,
        plugin,
        expected_keys=expected_keys,
        started_from=started_from,
        inc_delay_s=args.inc_delay_ms / 1000,
    )
    server: Server | AsyncServer
    if args.server == "asyncio":
        server = AsyncServer(sock, handler.answer)  # type: ignore[attr-defined]
    else:
        server = Server(sock, handler)

    def save(timeout: float) -> None:
        server.drain(timeout)
        flag = args.rollback_on_drain_if_exists
        if flag is not None and flag.exists() and plugin.registry is not None:
            plugin.registry.rollback(who="drain")  # after the new process replayed the journal
        if args.cold_file is not None:
            tmp = args.cold_file.with_suffix(".tmp")
            tmp.write_bytes(pickle.dumps((counters, payload), protocol=5))
            tmp.replace(args.cold_file)

    declare_ready(args.drain, server, save, resumed, plugins)
    host, port = sock.getsockname()[:2]
    print(f"serving on {host}:{port} pid {os.getpid()}", flush=True)
    server.serve_forever(poll_interval=args.poll)
    server.wait_idle(30.0)  # in-flight requests finish before the process exits
    return 0


if __name__ == "__main__":
    sys.exit(main())
