"""The shop's HTTP service: quotes and orders, its ledger kept across restarts as preserved state.

Run it under the supervisor, from ``demos/`` (patches dropped into the folder go in live)::

    hotpatch run --bind http=127.0.0.1:8000 --watch /tmp/shop-patches --baseline 1.0 \\
        --allow-unsigned -- python -m shop
    curl 'http://127.0.0.1:8000/quote?item=widget&qty=10&customer=g1'
    curl -X POST 'http://127.0.0.1:8000/order?item=gadget&qty=2&customer=m12'
    curl 'http://127.0.0.1:8000/stats'

or alone with ``python -m shop --port 8000``. Endpoints (one request per
connection; every answer says which process and which code answered):

- ``GET /quote?item=&qty=&customer=``  the price, nothing recorded
- ``POST /order?item=&qty=&customer=`` the price, recorded in the ledger
- ``GET /stats``                       the ledger, the patch level, the pauses

A failure of the loyalty discount never blocks a sale: the order is priced
without it, the answer says ``"loyalty": "unavailable"``, and the failure is
counted (the health gate sees the exception all the same).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import hotpatch
from shop import CODE, pricing

log = logging.getLogger("shop")


class Server(ThreadingHTTPServer):
    """Serves on the socket it is given; drains: stops accepting, finishes in-flight requests."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, sock: Any, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(sock.getsockname()[:2], handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock  # the supervisor's: never shut down, it outlives this process
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

    def drain(self, timeout: float) -> None:
        """Called by hotpatch when a new process takes over: stop accepting, finish what runs."""
        self.shutdown()
        with self.idle:
            self.idle.wait_for(lambda: self.inflight == 0, timeout)


class PatchEvents:
    """hotpatch hooks: the patch level, for ``/stats``, and one log line per patch event."""

    def __init__(self) -> None:
        self.level: list[str] = []
        self.rollbacks: list[str] = []
        self.paused_s: list[float] = []

    @hotpatch.hookimpl
    def hotpatch_after_apply(self, patch: Any, registry: Any, result: Any) -> None:
        self.level = list(registry.level)
        log.info("patch %s in (%s): level %s", patch.version, patch.summary, self.level)

    @hotpatch.hookimpl
    def hotpatch_after_rollback(self, registry: Any, result: Any) -> None:
        self.level = list(result.level)
        self.rollbacks.extend(result.versions)
        log.info("rolled back %s: level %s", ", ".join(result.versions), self.level)

    @hotpatch.hookimpl
    def hotpatch_resumed(self, paused_s: float) -> None:
        self.paused_s.append(paused_s)
        log.info("serving after a memory-preserving restart; paused %.1f ms", paused_s * 1e3)


class Shop:
    """The ledger (preserved across restarts) and the pricing calls."""

    def __init__(self, events: PatchEvents) -> None:
        # Preserved state: after a memory-preserving restart these are the old
        # process's mappings, so no order is ever lost or counted twice.
        self.ledger = hotpatch.preserved(
            "ledger", lambda: {"orders": 0, "revenue": Decimal("0.00"), "loyalty_failures": 0}
        )
        self.customers = hotpatch.preserved("customers", dict)  # id -> orders
        self.lock = threading.Lock()
        self.events = events

    def price(self, query: dict[str, list[str]]) -> tuple[dict[str, Any], str]:
        try:
            item, customer = query["item"][0], query["customer"][0]
            qty = int(query["qty"][0])
        except (KeyError, ValueError):
            raise ValueError("give item, qty (an integer) and customer") from None
        if item not in pricing.CATALOGUE or qty < 1:
            raise ValueError(f"unknown item {item!r} or bad qty {qty}")
        note = "ok"
        try:
            loyalty = pricing.loyalty_discount(customer)
        except Exception:  # an optional discount must not block a sale
            loyalty, note = Decimal(0), "unavailable"
            with self.lock:
                self.ledger["loyalty_failures"] += 1
        total = pricing.quote(item, qty, loyalty)
        return {"total": str(total), "loyalty": note}, customer

    def order(self, query: dict[str, list[str]]) -> dict[str, Any]:
        body, customer = self.price(query)
        with self.lock:
            self.ledger["orders"] += 1
            self.ledger["revenue"] += Decimal(body["total"])
            self.customers[customer] = self.customers.get(customer, 0) + 1
            body["order"] = self.ledger["orders"]
        return body

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "orders": self.ledger["orders"],
                "revenue": str(self.ledger["revenue"]),
                "loyalty_failures": self.ledger["loyalty_failures"],
                "customers": len(self.customers),
                "level": self.events.level,
                "rolled_back": self.events.rollbacks,
                "paused_s": self.events.paused_s,
            }


def handler_class(shop: Shop) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/quote":
                self._priced(lambda q: shop.price(q)[0], parse_qs(url.query))
            elif url.path == "/stats":
                self._answer(200, shop.stats())
            else:
                self._answer(404, {"error": f"no such page: GET {url.path}"})

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/order":
                self._priced(shop.order, parse_qs(url.query))
            else:
                self._answer(404, {"error": f"no such page: POST {url.path}"})

        def _priced(self, how: Any, query: dict[str, list[str]]) -> None:
            try:
                body = how(query)
            except (ValueError, InvalidOperation) as exc:
                self._answer(400, {"error": str(exc)})
                return
            self._answer(200, body)

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            payload = json.dumps({**body, "code": CODE, "pid": os.getpid()}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            """One line per request would drown the demo's output: stay quiet."""

    return Handler


def health_gate(probation_s: float) -> list[object]:
    """The health gate plugin, if this installation has it: a patch whose functions raise
    in more than 5% of at least 20 calls during probation is rolled back."""
    try:
        from hotpatch_plugins.health_gate import HealthGate  # noqa: PLC0415 -- optional
    except ImportError:
        log.warning("no health gate plugin in this installation: patches are not on probation")
        return []
    return [HealthGate(window_s=probation_s, max_error_rate=0.05, min_calls=20)]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m shop", description=__doc__)
    parser.add_argument("--port", type=int, default=8000, help="when run alone (default 8000)")
    parser.add_argument(
        "--probation", type=float, default=5.0, help="health gate probation, seconds (default 5)"
    )
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(levelname)-7s [{os.getpid()}] %(name)s: %(message)s",
        stream=sys.stdout,
    )
    sock = hotpatch.listen_socket("http", default=("127.0.0.1", args.port))
    events = PatchEvents()
    shop = Shop(events)
    server = Server(sock, handler_class(shop))
    # Under the supervisor: the state arrives, the journal is replayed (through
    # the plugins), and the old process drains into this one. Alone: returns.
    hotpatch.ready(drain=server.drain, plugins=[events, *health_gate(args.probation)])

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, name="shutdown", daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    host, port = server.server_address[:2]
    log.info(
        "code %s serving on http://%s:%s: %d orders in the ledger",
        CODE,
        host,
        port,
        shop.ledger["orders"],
    )
    server.serve_forever(poll_interval=0.01)
    with server.idle:
        server.idle.wait_for(lambda: server.inflight == 0, 10.0)
    return 0
