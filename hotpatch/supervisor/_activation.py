"""Sockets passed by systemd socket activation, matched to ``hotpatch run --bind`` names.

systemd (or ``systemd-socket-activate``) opens the listening sockets itself,
keeps them, and passes them to each start of the service as descriptors 3,
4, ... with ``LISTEN_FDS`` (how many), ``LISTEN_PID`` (for which process) and
``LISTEN_FDNAMES`` (``FileDescriptorName=`` of the ``.socket`` unit, one per
descriptor, ``:``-separated). So the sockets outlive even the supervisor: a
restart of ``hotpatch run`` finds the connections that arrived meanwhile in
the backlog.

Each passed socket must be named like a ``--bind`` and listen on its address;
a ``--bind`` without a passed socket is bound by the supervisor as usual. The
variables are removed from the environment once read, so the service under
the supervisor never takes the descriptors for its own.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from collections.abc import Iterable, MutableMapping

from hotpatch.service._channel import format_address

__all__ = ["FIRST_FD", "passed_sockets"]

FIRST_FD = 3  # SD_LISTEN_FDS_START
_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_UNIT_HINT = "FileDescriptorName= in the .socket unit"

Bind = tuple[str, tuple[str, int]]


def passed_sockets(
    binds: Iterable[Bind], environ: MutableMapping[str, str] = os.environ
) -> dict[str, socket.socket]:
    """The sockets systemd passed to this process, by ``--bind`` name; ``{}`` if none.

    Raises ``ValueError`` naming what does not fit: a passed socket no
    ``--bind`` names, one listening elsewhere than its ``--bind`` says, one
    that is not a listening TCP socket, malformed variables. What was taken
    is closed again then (the holder, systemd, keeps its own descriptors).
    """
    count, pid = environ.get("LISTEN_FDS"), environ.get("LISTEN_PID")
    if count is None or pid != str(os.getpid()):
        return {}  # none, or passed to another process (the variables were inherited)
    names_value = environ.get("LISTEN_FDNAMES")
    for variable in _VARIABLES:
        environ.pop(variable, None)
    try:
        n = int(count)
    except ValueError:
        msg = f"LISTEN_FDS={count!r} is not a number of sockets"
        raise ValueError(msg) from None
    names = names_value.split(":") if names_value is not None else []
    if len(names) != n:
        msg = (
            f"systemd passed {n} socket(s) named {names_value!r}: give each a name, the "
            f"name of its --bind ({_UNIT_HINT})"
        )
        raise ValueError(msg)
    wanted = dict(binds)
    taken: dict[str, socket.socket] = {}
    try:
        for fd, name in zip(range(FIRST_FD, FIRST_FD + n), names, strict=True):
            sock = _listening(fd, name)
            taken[name] = sock  # closed with the others if anything below refuses
            _check(sock, name, wanted, fd)
    except BaseException:
        for sock in taken.values():
            sock.close()
        raise
    return taken


def _listening(fd: int, name: str) -> socket.socket:
    """The socket at ``fd``, made not inheritable; ``ValueError`` unless it listens on TCP."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        msg = f"systemd's socket {name!r} (descriptor {fd}) cannot be used: {exc.strerror or exc}"
        raise ValueError(msg) from None
    sock.set_inheritable(False)  # the supervisor passes it on its own way
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if (
        sock.family not in (socket.AF_INET, socket.AF_INET6)
        or sock.type != socket.SOCK_STREAM
        or not listening
    ):
        sock.close()
        msg = (
            f"systemd's socket {name!r} (descriptor {fd}) is not a listening TCP socket: "
            "hotpatch run --bind takes ListenStream=HOST:PORT sockets"
        )
        raise ValueError(msg)
    return sock


def _check(sock: socket.socket, name: str, wanted: dict[str, tuple[str, int]], fd: int) -> None:
    """``sock`` must be the one ``--bind name=HOST:PORT`` asks for."""
    address = sock.getsockname()[:2]
    if name not in wanted:
        msg = (
            f"systemd passed a socket named {name!r} (descriptor {fd}, listening on "
            f"{format_address(address)}) that no --bind names: add --bind "
            f"{name}={format_address(address)}, or rename it ({_UNIT_HINT})"
        )
        raise ValueError(msg)
    host, port = wanted[name]
    if not (port in (0, address[1]) and _same_host(host, address[0], port)):
        msg = (
            f"--bind {name}={format_address((host, port))}, but the socket systemd passed as "
            f"{name!r} listens on {format_address(address)}: make the .socket unit's "
            "ListenStream= and --bind name the same address"
        )
        raise ValueError(msg)


def _same_host(host: str, ip: str, port: int) -> bool:
    """Does ``host`` (an address or a name) stand for the address ``ip``?"""
    found = ipaddress.ip_address(ip.split("%", 1)[0])
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host.strip("[]")) == found
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return any(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) == found for info in infos)
