"""The workers sharing a patch folder: who is alive, who owns it, start order, asking one.

A worker at its descriptor limit takes a request with the descriptor its
control server keeps for that (``hotpatch.agent._control_server``). When it
truly cannot -- its request still unread in the socket after ``TAKE_GRACE_S``
while ``/proc`` shows every descriptor it may have open -- ``call`` stops
waiting and answers a shortage naming the worker, its descriptors and the fix
(the owner's drop waits and is tried again).

A request that changes a worker (``deliver``, ``undo``) is *claimed*: the
caller makes an empty directory, ``.workers/<pid>.<caller>.<nonce>.claim``,
and names it in the request; the worker removes it (``take_claim``, under its
patch lock) before it acts, and refuses the request if it is gone. A caller
that stops waiting -- the worker did not take the request, no answer in time,
the connection broke -- removes it first (``Claim.withdraw``). ``rmdir`` succeeds
for one of the two only, and needs no descriptor: either the worker never acts
on a request given up (even one it reads later: left in its backlog, or its
connection held open by a child the caller forked), or the caller knows the
worker took it (``taken`` in the answer: it may have acted) and undoes it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import socket
import stat
import struct
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hotpatch._process import alive
from hotpatch._shortage import shortage_of
from hotpatch.agent._control import MAX_REQUEST_BYTES, exchange, request, with_address
from hotpatch.agent._control_server import ControlServer
from hotpatch.agent._names import PIDFILE_NAME, WORKERS_DIR

__all__ = [
    "PEER_TIMEOUT_S",
    "REJOIN_S",
    "Claim",
    "Roster",
    "announce",
    "ask_owner",
    "call",
    "call_until",
    "fds_short",
    "live_workers",
    "other_workers",
    "owner_pid",
    "register",
    "remove_stale",
    "request_bytes",
    "send",
    "start_lock",
    "take_claim",
    "usable",
    "workers_dir",
]

log = logging.getLogger("hotpatch")

START_LOCK = "start.lock"
START_WAIT_S = 120.0  # past it a worker starts anyway (a peer hangs in its start-up)
PEER_TIMEOUT_S = 10.0
REJOIN_S = 10.0  # how long a live worker whose socket went is waited for to register again
TAKE_GRACE_S = 2.0  # a request a worker at its descriptor limit has not taken so long: given up
LOOK_EVERY_S = 0.5  # how often /proc is looked at after that
RETRY_S = 30.0  # ``call_until``: how long a worker that cannot answer now is tried again
_RETRIED = (None, "Shortage", "Busy")  # error types of answers worth asking again
CLAIM_SUFFIX = ".claim"
_CLAIM = re.compile(r"(\d+)\.(\d+)\.[0-9a-f]{16}\.claim")  # worker, caller, nonce


def request_bytes(max_bytes: int) -> int:
    """The longest request a worker's control socket takes: a delivery carries a patch file
    of up to ``max_bytes`` as JSON text (each byte at most six: ``\\u00XX``) beside the
    room of any other request. Only this user and root may connect to it."""
    return MAX_REQUEST_BYTES + 6 * max_bytes


def workers_dir(folder: Path) -> Path:
    """``folder/.workers``, made if missing; refused unless a directory of this user's."""
    workers = folder / WORKERS_DIR
    if not workers.exists() and not workers.is_symlink():
        with contextlib.suppress(FileExistsError):  # another worker made it first
            workers.mkdir(mode=0o700)
    st = workers.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        msg = (
            f"{workers} must be a directory owned by this service's user "
            f"(uid {os.geteuid()}), not a link or a file; remove it and start again"
        )
        raise PermissionError(msg)
    return workers


def live_workers(folder: Path) -> dict[int, Path]:
    """``pid -> socket`` of the workers registered in ``folder``; stale sockets are removed."""
    found: dict[int, Path] = {}
    try:
        entries = list((folder / WORKERS_DIR).iterdir())
    except FileNotFoundError:
        return found
    for path in entries:
        if path.suffix == CLAIM_SUFFIX:
            _remove_orphan_claim(path)
            continue
        if path.suffix != ".sock" or not path.stem.isdigit():
            continue
        pid = int(path.stem)
        if pid != os.getpid() and not alive(pid):
            remove_stale(path)
            continue
        found[pid] = path
    return found


def remove_stale(path: Path) -> None:
    """Remove the socket of a worker that is gone (only a socket, never another file)."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
            log.info("removed the control socket %s of a worker that is gone", path)


@contextlib.contextmanager
def start_lock(workers: Path) -> Iterator[None]:
    """Hold the flock on ``workers/start.lock``: the workers of a folder start one at a time."""
    fd = os.open(workers / START_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + START_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    log.warning(
                        "worker %d: another worker has been starting for %.0f s; starting anyway",
                        os.getpid(),
                        START_WAIT_S,
                    )
                    break
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)


def owner_pid(folder: Path) -> int | None:
    """The pid in ``.hotpatch.json``: the worker that owns ``folder`` (``None``: unknown)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        pid = json.loads((folder / PIDFILE_NAME).read_bytes()).get("pid")
        return pid if isinstance(pid, int) else None
    return None


def other_workers(folder: Path) -> dict[int, Path]:
    """``pid -> socket`` of the live workers of ``folder`` but this one."""
    peers = live_workers(folder)
    peers.pop(os.getpid(), None)
    return peers


def call(
    pid: int,
    sock: Path,
    payload: dict[str, Any],
    *,
    claim: bool = False,
    timeout: float,
) -> dict[str, Any] | None:
    """One worker's answer to ``payload``, awaited up to ``timeout`` (``deliver_timeout``);
    ``None`` when it exited meanwhile.

    Not answered: ``{"ok": False, "error": ...}``, with ``error_type`` ``Shortage``
    and ``shortage`` (the resource) when this worker could not ask, or the other
    one is at its descriptor limit.

    ``claim``: the request is claimed (see the module's docstring). Not answered,
    the answer has ``withdrawn`` (the worker will never act on it) or ``taken``
    (it took the request: it may have acted on it, or still may)."""
    token: Claim | None = None
    if claim:
        try:
            token = Claim.make(pid, sock)
        except FileNotFoundError:  # its socket's folder went: as a socket gone
            return None
        except OSError as exc:
            answer = {"ok": False, "error": f"worker {pid} not asked: {exc}", "withdrawn": True}
            short = shortage_of(exc)
            if short is not None:
                answer.update(error_type="Shortage", shortage=short)
            return answer
        payload = {**payload, "claim": token.path.name}
    try:
        answer = _ask(pid, sock, payload, token, timeout)
    except OSError as exc:
        return _unanswered(pid, sock, exc, token)
    if token is not None:
        token.withdraw()  # not taken if it refused first (uid, a damaged delivery)
    return answer


def _unanswered(pid: int, sock: Path, exc: OSError, token: Claim | None) -> dict[str, Any] | None:
    """``call``'s answer when ``pid`` gave none: gone (``None``), short, taken, withdrawn."""
    taken = token is not None and not token.withdraw()
    if isinstance(exc, (FileNotFoundError, ConnectionRefusedError)) or not alive(pid):
        remove_stale(sock)
        return None
    answer: dict[str, Any] = {"ok": False, "error": f"no answer from worker {pid}: {exc}"}
    if taken:
        answer["taken"] = True
        answer["error"] += "; it had taken the request: it may have acted on it"
    elif token is not None:
        answer["withdrawn"] = True
    theirs = exc.theirs if isinstance(exc, NotTaken) else None
    if theirs is None and shortage_of(exc) is None:
        theirs = fds_short(pid)  # no answer in time, or its backlog full: at its limit?
    if theirs is not None:
        answer.update(error_type="Shortage", shortage=_their_shortage(pid, theirs))
        return answer
    short = shortage_of(exc)
    if short is not None:  # this worker could not ask: not the patch's fault
        answer.update(error_type="Shortage", shortage=short)
    return answer


def call_until(
    pid: int,
    sock: Path,
    payload: dict[str, Any],
    *,
    within: float = RETRY_S,
    claim: bool = False,
    timeout: float,
) -> dict[str, Any] | None:
    """``call``, asked again (pausing longer each time) while the answer is that the worker
    could not be asked now (a shortage on either side, no answer, busy), up to ``within``.

    With ``claim``, each try is claimed anew: ``payload`` must be one that can be done
    twice (an undo, a rollback to a level) -- a try given up may have been taken."""
    deadline = time.monotonic() + within
    pause = 0.05
    while True:
        answer = call(pid, sock, payload, claim=claim, timeout=timeout)
        if answer is None or answer.get("ok") or answer.get("error_type") not in _RETRIED:
            return answer
        if time.monotonic() + pause > deadline:
            return answer
        time.sleep(pause)
        pause = min(pause * 2, 1.0)


class NotTaken(OSError):
    """A worker at its descriptor limit has not taken the request (it is still unread)."""

    def __init__(self, pid: int, waited: float, theirs: str) -> None:
        super().__init__(
            errno.EMFILE, f"worker {pid} did not take the request in {waited:.1f} s ({theirs})"
        )
        self.theirs = theirs


def _ask(
    pid: int, sock: Path, payload: dict[str, Any], token: Claim | None, timeout: float
) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        with_address(sock, conn.connect)
        since = time.monotonic()
        look_at = since + TAKE_GRACE_S

        def untaken() -> OSError | None:
            nonlocal look_at
            now = time.monotonic()
            if now < look_at or (token is not None and token.taken):
                return None  # the worker took the claim: its answer is awaited
            look_at = now + LOOK_EVERY_S
            if _unread(conn) <= 0:
                return None  # taken: its answer is being worked out
            theirs = fds_short(pid)
            if theirs is None:
                return None
            if token is not None and not token.withdraw():
                return None  # it read the request just now, and took it
            return NotTaken(pid, now - since, theirs)

        try:
            return exchange(
                conn, payload, timeout=timeout, peer=f"worker {pid}", unanswerable=untaken
            )
        except TimeoutError:
            msg = (
                f"none within deliver_timeout ({timeout:g} s; install(..., workers=True, "
                "deliver_timeout=SECONDS) gives more when an apply can take longer)"
            )
            raise TimeoutError(msg) from None


class Claim:
    """The claim of one request to worker ``pid``: an empty directory beside its socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.state = "open"  # or "withdrawn", "taken"

    @classmethod
    def make(cls, pid: int, sock: Path) -> Claim:
        path = sock.parent / f"{pid}.{os.getpid()}.{secrets.token_hex(8)}{CLAIM_SUFFIX}"
        os.mkdir(path, 0o700)
        return cls(path)

    @property
    def taken(self) -> bool:
        return self.state == "taken"

    def withdraw(self) -> bool:
        """Remove the claim: ``True`` when the worker can no longer take the request, ``False``
        when it took it already (or that cannot be known: taken, to be safe)."""
        if self.state == "open":
            try:
                os.rmdir(self.path)
            except OSError:
                self.state = "taken"
            else:
                self.state = "withdrawn"
        return self.state == "withdrawn"


def take_claim(workers: Path, name: object) -> str | None:
    """Take the claim ``name`` in ``workers`` (``.workers/``) for this worker: ``None`` when
    taken (its sender waits for the answer), else why the request must not be acted on."""
    found = _CLAIM.fullmatch(name) if isinstance(name, str) else None
    if found is None or int(found.group(1)) != os.getpid():
        return f"its claim {name!r} is not one made for worker {os.getpid()}"
    token = workers / found.group(0)
    try:
        os.rmdir(token)
    except FileNotFoundError:
        return (
            f"its sender, worker {found.group(2)}, stopped waiting for it before it was taken "
            "(it gave up on this worker: the drop waits to be sent again, or was removed)"
        )
    except OSError as exc:
        return f"its claim {token} could not be taken: {exc}"
    return None


def _remove_orphan_claim(path: Path) -> None:
    """Remove the claim of a request whose sender is gone: no one waits for its answer."""
    found = _CLAIM.fullmatch(path.name)
    if found is not None and not alive(int(found.group(2))):
        with contextlib.suppress(OSError):
            path.rmdir()


def _unread(conn: socket.socket) -> int:
    """Bytes sent on ``conn`` that its peer has not read yet (``SIOCOUTQ``)."""
    try:
        raw = fcntl.ioctl(conn.fileno(), termios.TIOCOUTQ, b"\0" * 4)
    except OSError:
        return 0
    value: int = struct.unpack("i", raw)[0]
    return value


def fds_short(pid: int) -> str | None:
    """``"N descriptors open, its limit N"`` when process ``pid`` has every descriptor its
    ``RLIMIT_NOFILE`` allows open (``/proc``); else, or when that cannot be read, ``None``."""
    try:
        used = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/limits", encoding="ascii") as limits:
            line = next((x for x in limits if x.startswith("Max open files")), "")
    except (OSError, ValueError):
        return None
    soft = "".join(line.split()[3:4])  # Max open files SOFT HARD files
    if not soft.isdigit():
        return None  # unlimited, or not found
    limit = int(soft)
    if used < limit:
        return None
    return f"{used} descriptors open, its limit {limit}"


def _their_shortage(pid: int, theirs: str) -> str:
    return (
        f"out of file descriptors in worker {pid} ({theirs}): raise its RLIMIT_NOFILE "
        "(ulimit -n; systemd LimitNOFILE=; the server's own setting) or find what holds "
        "its descriptors"
    )


def send(pid: int, sock: Path, payload: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    """One worker's result for a delivery (claimed), awaited up to ``timeout``; outcome
    ``gone`` when it exited meanwhile.

    Not answered, the result has ``taken`` when the worker took it (it may have applied
    it: undo it there) or ``withdrawn`` (it never will)."""
    answer = call(pid, sock, payload, claim=True, timeout=timeout)
    if answer is None:
        return {"pid": pid, "outcome": "gone", "reason": "the worker exited"}
    if "outcome" not in answer:  # refused before it was applied (uid, size, no answer)
        return {
            "pid": pid,
            "outcome": "rejected",
            "reason": answer.get("error"),
            "error_type": answer.get("error_type") or "VerificationFailed",
            **{k: answer[k] for k in ("shortage", "taken", "withdrawn") if k in answer},
        }
    answer.pop("ok", None)
    return answer


def ask_owner(folder: Path, payload: dict[str, Any], *, timeout: float) -> dict[str, Any] | None:
    """The answer of the worker that owns ``folder`` (awaited up to ``timeout``); ``None``
    when there is no other owner."""
    owner = owner_pid(folder)
    if owner is None or owner == os.getpid():
        return None
    return call(owner, folder / WORKERS_DIR / f"{owner}.sock", payload, timeout=timeout)


class Roster:
    """The workers this one has seen registered in ``folder/.workers/``: who is missing now.

    A worker's socket goes when the folder is deleted or replaced, or
    ``.workers/`` removed; each live worker registers again within a retry of
    the owner (``Ownership.keep``). Until it has, a patch sent to the workers
    would miss it: ``peers()`` waits for every worker seen before that is still
    alive, up to ``REJOIN_S``; one that did not come back by then (its agent
    stopped, or it hangs) is said at ERROR and left out.
    """

    def __init__(self, folder: Path, rejoin: float = REJOIN_S) -> None:
        self.folder = folder
        self.rejoin = rejoin
        self._lock = threading.Lock()
        self._seen: set[int] = set()  # registered at the last look
        self._missing: set[int] = set()  # seen before, alive, not registered now
        self._listening: dict[int, tuple[int, int]] = {}  # socket files found served

    def look(self) -> dict[int, Path]:
        """``pid -> socket`` of the other live workers registered now; remembers them.

        A socket file is the worker's once a connection to it was accepted (each new
        file, once): a dead one (a copy of the folder put in place) is not yet."""
        with self._lock:
            peers = other_workers(self.folder)
            for pid, sock in list(peers.items()):
                try:
                    st = sock.lstat()
                except OSError:
                    del peers[pid]
                    continue
                if self._listening.get(pid) != (st.st_dev, st.st_ino):
                    if not _accepts(sock):
                        del peers[pid]
                        continue
                    self._listening[pid] = (st.st_dev, st.st_ino)
            gone = self._seen - peers.keys()
            self._missing = {p for p in self._missing | gone if p not in peers and alive(p)}
            self._seen = set(peers)
            return peers

    def peers(self) -> dict[int, Path]:
        """The other live workers, once every one seen before has registered again."""
        deadline = time.monotonic() + self.rejoin
        peers = self.look()
        while self._missing and time.monotonic() < deadline:
            time.sleep(0.02)
            peers = self.look()
        if self._missing:
            with self._lock:
                missing, self._missing = sorted(self._missing), set()
            log.error(
                "worker %d: worker(s) %s are alive but have not registered in %s again "
                "for %.0f s (their socket went: the folder replaced, or .workers/ removed); "
                "patches go on without them: restart them to bring them to the group's level",
                os.getpid(),
                ", ".join(map(str, missing)),
                self.folder / WORKERS_DIR,
                self.rejoin,
            )
        return peers


def _accepts(sock: Path) -> bool:
    """Does a process serve ``sock`` (a connection is accepted, or the backlog is full)?"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(PEER_TIMEOUT_S)
        try:
            probe.connect(str(sock))
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        except OSError:
            return True  # served, but busy: its answers will say more
    return True


def register(folder: Path, server: ControlServer) -> bool:
    """Serve this worker's socket again if its file went (with ``.workers/``, made again) or
    is another's (a copy of the folder put in its place): ``True`` when it was made again.

    Only in a folder that is safe (else its owner's guard says what is wrong)."""
    if server.serving or not usable(folder):
        return False
    workers_dir(folder)
    server.stop()
    server.start()
    log.warning(
        "worker %d: its control socket %s was gone (the folder replaced, or %s removed); "
        "made it again",
        os.getpid(),
        server.path,
        WORKERS_DIR,
    )
    return True


def usable(folder: Path) -> bool:
    """Could ``folder`` be taken over, or registered in, now: a directory of this user's
    that no one else can write? (What is wrong otherwise is the owner's guard's to say.)"""
    try:
        st = folder.lstat()
    except OSError:
        return False
    return (
        stat.S_ISDIR(st.st_mode)
        and st.st_uid == os.geteuid()
        and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    )


def announce(folder: Path) -> None:
    """Tell the other live workers this one has started (each ``Roster`` looks again)."""
    for sock in other_workers(folder).values():
        with contextlib.suppress(OSError):  # gone, or hung: its owner finds out
            request(sock, {"cmd": "joined"}, timeout=PEER_TIMEOUT_S)
