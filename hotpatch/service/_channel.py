"""The supervisor channel's wire: environment names, addresses, listening sockets, messages."""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Iterable, Mapping
from typing import Any

from hotpatch._errors import ServiceError

__all__ = [
    "DEFAULT_BACKLOG",
    "ENV_BASELINE",
    "ENV_BIND",
    "ENV_CONTROL",
    "ENV_JOURNAL",
    "ENV_SOCKETS",
    "ENV_VITAL_TIMEOUT",
    "MAX_FDS",
    "MAX_MESSAGE",
    "SHORTAGE",
    "VITAL_TIMEOUT_S",
    "DescriptorsLost",
    "format_address",
    "open_listener",
    "open_listeners",
    "parse_address",
    "parse_bind",
    "read_memfd",
    "recv_message",
    "send_message",
    "write_memfd",
]

ENV_SOCKETS = "HOTPATCH_SOCKETS"  # "http=3,admin=4": listening sockets the supervisor passed
ENV_CONTROL = "HOTPATCH_CONTROL"  # fd of the control channel to the supervisor
ENV_BIND = "HOTPATCH_BIND"  # "http=127.0.0.1:8000,...": addresses when running alone
# Under the supervisor with --watch: the process keeps a Registry on this
# baseline and journal, replayed before it says it is loaded.
ENV_BASELINE = "HOTPATCH_BASELINE"
ENV_JOURNAL = "HOTPATCH_JOURNAL"
# Seconds the check after each apply (does a message still cross a channel of the
# supervisor's kind?) may take before the patch is rolled back: ``hotpatch run
# --vital-timeout``, passed on to each serving process; a working process takes ~1 ms.
ENV_VITAL_TIMEOUT = "HOTPATCH_VITAL_TIMEOUT"
VITAL_TIMEOUT_S = 10.0

# The outcome of a patch a serving process could not take for want of a resource
# (its journal's disk full, no memory): not the patch's fault, nothing of it was
# applied. The answer names the ``resource``; the supervisor keeps the drop, first
# in line, and tries it again (never a rejection).
SHORTAGE = "shortage"

DEFAULT_BACKLOG = 1024
MAX_MESSAGE = 1 << 16
MAX_FDS = 4
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


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


def open_listeners(
    binds: Iterable[tuple[str, tuple[str, int]]], into: dict[str, socket.socket]
) -> None:
    """Open every bind not yet in ``into`` and add it there (``hotpatch run --bind``).

    A failure raises ``OSError`` naming the bind; the sockets already in
    ``into`` are the caller's to close.
    """
    for name, (host, port) in binds:
        if name in into:
            continue
        try:
            into[name] = open_listener(host, port)
        except OSError as exc:
            msg = f"cannot listen on {name}={format_address((host, port))}: {exc.strerror or exc}"
            raise OSError(exc.errno, msg) from exc


# -- control messages -----------------------------------------------------------------


def send_message(sock: socket.socket, message: Mapping[str, Any], fds: Iterable[int] = ()) -> None:
    """Send one JSON message, with ``fds`` attached, on a ``SOCK_SEQPACKET`` socket."""
    socket.send_fds(sock, [json.dumps(message).encode()], list(fds))


class DescriptorsLost(ServiceError):
    """A whole message arrived, but not the fds it carried: this process has no free one.

    The kernel sets ``MSG_CTRUNC`` when it cannot install a passed descriptor in
    the receiver (its ``RLIMIT_NOFILE`` reached). The channel is fine; only the
    request that came with fds cannot be done now. ``message`` is that request.
    """

    def __init__(self, message: dict[str, Any]) -> None:
        super().__init__(
            f"the descriptors of a {message.get('op')!r} message could not be received: "
            "this process is out of file descriptors (RLIMIT_NOFILE, ulimit -n)"
        )
        self.message = message


def recv_message(sock: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    """Receive one message and its fds; ``None`` when the peer has closed the channel.

    Raises ``DescriptorsLost`` for a whole message whose fds could not be taken
    (no free descriptor here), ``ServiceError`` for a truncated or malformed one.
    """
    data, fds, flags, _ = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
    if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
        for fd in fds:
            os.close(fd)
        if not flags & socket.MSG_TRUNC and (message := _parsed(data)) is not None:
            raise DescriptorsLost(message)
        msg = "a control message was truncated (too large or too many fds)"
        raise ServiceError(msg)
    if not data:
        return None
    message = _parsed(data)
    if message is None:  # its fds are closed: nothing else will know of them
        for fd in fds:
            os.close(fd)
        msg = f"malformed control message {data[:200]!r}"
        raise ServiceError(msg)
    return message, fds


def _parsed(data: bytes) -> dict[str, Any] | None:
    """A control message's JSON object with its ``op``; ``None`` if it is not one."""
    try:
        message = json.loads(data)
    except ValueError:
        return None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        return None
    return message


def write_memfd(data: bytes, name: str) -> int:
    """A memfd holding ``data`` (close-on-exec), to pass over a channel; the caller closes it."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.pwrite(fd, data, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_memfd(fds: list[int]) -> bytes:
    """The whole content of the first fd (a memfd the supervisor wrote); closes them all."""
    try:
        if not fds:
            return b""
        size = os.fstat(fds[0]).st_size
        return os.pread(fds[0], size, 0) if size else b""
    finally:
        for fd in fds:
            os.close(fd)
