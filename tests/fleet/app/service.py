"""The service each fleet host runs under ``hotpatch run``: prices, health, preserved hits.

- ``/price``  the price of 100 cents (``logic.price``), counted in the preserved ``hits``
- ``/health`` 200 when ``logic.healthy()``, else 503 (the rollout's HTTP health check)
- ``/state``  the preserved hits and every process id that served them
"""

from __future__ import annotations

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import logic  # type: ignore[import-not-found]  # beside this file, or a baseline's code root

import hotpatch


class Health:
    @hotpatch.hookimpl
    def hotpatch_health_check(self, registry: Any) -> bool:
        return bool(logic.healthy())


def main() -> int:
    state = hotpatch.preserved("state", lambda: {"hits": 0, "pids": []})
    state["pids"].append(os.getpid())
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body: dict[str, Any] = {"pid": os.getpid()}
            status = 200
            if self.path == "/price":
                with lock:
                    state["hits"] += 1
                body["price"] = logic.price(100)
            elif self.path == "/health":
                status = 200 if logic.healthy() else 503
            elif self.path == "/state":
                with lock:
                    body.update(hits=state["hits"], pids=list(state["pids"]))
            else:
                status = 404
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    sock = hotpatch.listen_socket("http")
    server = ThreadingHTTPServer(sock.getsockname()[:2], Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.daemon_threads = False  # so that server_close() waits for the requests in flight

    def drain(timeout: float) -> None:
        server.shutdown()  # serve_forever() returns: nothing new is accepted
        server.server_close()  # the requests in flight answered (and counted) before handover

    hotpatch.ready(drain=drain, plugins=[Health()])
    server.serve_forever(poll_interval=0.01)
    return 0


if __name__ == "__main__":
    sys.exit(main())
