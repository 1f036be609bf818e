"""The smallest complete service for ``hotpatch run``: the standard library's HTTP server.

It serves on the socket the supervisor owns, keeps a hit counter across
memory-preserving restarts (``kill -HUP`` the supervisor), and drains when a
new process takes over::

    hotpatch run --bind http=127.0.0.1:8000 -- python demos/minimal_service.py

Alone (``python demos/minimal_service.py``) it binds 127.0.0.1:8000 itself.
"""

import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import hotpatch

sock = hotpatch.listen_socket("http", default="127.0.0.1:8000")  # the supervisor's socket
hits = hotpatch.preserved("hits", dict)  # survives restarts: the old process hands it over
lock = threading.Lock()


class Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        with lock:
            hits["/"] = hits.get("/", 0) + 1
            count = hits["/"]
        body = f"hello #{count} from process {os.getpid()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = False  # so that server_close() waits for the requests in flight

    def __init__(self) -> None:
        # bind_and_activate=False: bind nothing, serve on the supervisor's socket
        super().__init__(sock.getsockname()[:2], Hello, bind_and_activate=False)
        self.socket.close()
        self.socket = sock

    def drain(self, timeout_s: float) -> None:
        """Called by hotpatch in the old process when a new one is ready to take over."""
        self.shutdown()  # serve_forever() returns: nothing new is accepted
        self.server_close()  # waits for the requests in flight; closes only our copy


server = Server()
hotpatch.ready(drain=server.drain)  # after a restart: the old process's state is in
server.serve_forever()
