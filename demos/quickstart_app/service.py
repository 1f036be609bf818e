"""The quickstart service: an HTTP pricing endpoint that embeds the hotpatch agent at start-up.

Run it on its own from ``demos/`` (any patch dropped into the folder goes in live)::

    python -m quickstart_app --watch /tmp/shop-patches --port 8000
    curl 'http://127.0.0.1:8000/price?amount=0.99&pct=50'
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from urllib.parse import parse_qs, urlsplit

import hotpatch
from quickstart_app import pricing

BASELINE = "2.3"  # the version of the code this process starts from


class PriceHandler(BaseHTTPRequestHandler):
    """``GET /price?amount=0.99&pct=50`` -> ``{"price": "0.49"}``."""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path != "/price":
            self._answer(404, {"error": f"no such page: {url.path}; try /price?amount=0.99&pct=50"})
            return
        try:
            amount = Decimal(query["amount"][0])
            pct = int(query["pct"][0])
        except (KeyError, ValueError, InvalidOperation):
            self._answer(400, {"error": "give amount (a decimal) and pct (an integer)"})
            return
        # Looked up at call time, as any caller would: the agent patches the
        # function object itself, so even a reference taken earlier sees the fix.
        self._answer(200, {"price": str(pricing.apply_discount(amount, pct))})

    def _answer(self, status: int, body: dict[str, str]) -> None:
        payload = json.dumps(body).encode() + b"\n"  # a line, for curl
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        """One line per request would drown the demo's output: stay quiet."""


class Server(ThreadingHTTPServer):
    """A thread per connection; a backlog for bursts of connections."""

    daemon_threads = True
    request_queue_size = 128


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quickstart_app", description=__doc__)
    parser.add_argument("--watch", required=True, help="the patch folder (created mode 0700)")
    parser.add_argument("--journal", help="where the patch level is kept across restarts")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 (default): any free port")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)-7s %(message)s", stream=sys.stdout)

    # The one line a service adds to take patches: the agent runs in background
    # threads; the main loop below does not change.
    agent = hotpatch.install(baseline=BASELINE, watch=args.watch, journal=args.journal)

    with agent, Server((args.host, args.port), PriceHandler) as server:

        def stop(signum: int, frame: FrameType | None) -> None:
            # shutdown() waits for serve_forever(), which runs in this (main) thread.
            threading.Thread(target=server.shutdown, name="shutdown").start()

        signal.signal(signal.SIGTERM, stop)
        port = server.server_address[1]
        print(f"listening on http://{args.host}:{port} (baseline {BASELINE})", flush=True)
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C, when run by hand
            server.serve_forever(poll_interval=0.1)
    print("stopped", flush=True)
    return 0
