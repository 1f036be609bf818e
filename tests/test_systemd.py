"""systemd socket activation, with the real ``systemd-socket-activate`` holding the sockets.

systemd keeps a ``.socket`` unit's listening sockets in PID 1 and passes them to
each start of the service. Here ``systemd-socket-activate`` opens them and execs
a shell that plays PID 1's part: it keeps the descriptors and starts ``hotpatch
run`` again each time it exits, telling each start that the sockets are its own
(``LISTEN_PID``), as systemd does for each start of a unit.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_supervisor import REPO, SERVICE, WAIT, Load, processes_with, wait_for

from hotpatch.service._channel import parse_address
from hotpatch.supervisor import read_status
from hotpatch.supervisor._cli import build_parser

pytestmark = pytest.mark.e2e

# PID 1's part: start the supervisor until told to stop, each start told its pid.
HOLDER = """\
while [ ! -e "$STOP" ]; do
    sh -c 'echo $$ >> "$PIDS"; LISTEN_PID=$$ exec "$@"' start "$@"
done
"""


@pytest.fixture(scope="module")
def socket_activate() -> str:
    """``systemd-socket-activate``, installed from Debian's systemd package if missing."""
    found = shutil.which("systemd-socket-activate")
    if found is None:
        install = subprocess.run(
            "apt-get update -qq && apt-get install -y -qq --no-install-recommends systemd",
            shell=True,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        found = shutil.which("systemd-socket-activate")
        assert found, f"cannot install systemd-socket-activate: {install.stderr[-2000:]}"
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Activated:
    """``systemd-socket-activate -l ... --fdname=...`` running ``command``, with its log."""

    def __init__(
        self,
        activate: str,
        listen: list[tuple[str, int]],
        names: list[str],
        command: list[str],
        env: dict[str, str] | None = None,
    ) -> None:
        self.addresses = listen
        args = [activate, *(f"--listen=127.0.0.1:{port}" for _, port in listen)]
        # It passes on PATH, HOME and TERM only, as systemd gives a unit its Environment=.
        args += [f"--setenv={name}={value}" for name, value in (env or {}).items()]
        args += [f"--fdname={':'.join(names)}", *command]
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO
        )
        assert self.process.stdout is not None
        for _ in listen:  # "Listening on 127.0.0.1:PORT as 3."
            line = self.process.stdout.readline()
            assert line.startswith("Listening on"), line
        # It starts its command on the first connection, which waits in the backlog.

    def poke(self) -> None:
        """A connection, so that the command starts (it is not answered here)."""
        with socket.create_connection(self.addresses[0], timeout=WAIT):
            pass

    def output(self) -> str:
        out, _ = self.process.communicate(timeout=WAIT)
        return out

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()


@pytest.fixture
def activated(socket_activate: str) -> Iterator[list[Activated]]:
    started: list[Activated] = []
    yield started
    for one in started:
        one.kill()


def supervisor(tag: str, status: Path, *binds: str) -> list[str]:
    bind_options = [option for bind in binds for option in ("--bind", bind)]
    return [
        sys.executable,
        "-m",
        "hotpatch",
        "run",
        *bind_options,
        "--status-file",
        str(status),
        "--",
        sys.executable,
        str(SERVICE),
        "--tag",
        tag,
    ]


def serving(status_file: Path, other_than: int | None = None) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        status = read_status(status_file) or {}
        child = status.get("child") or {}
        fresh = child.get("pid") != other_than
        if status.get("state") == "running" and child.get("ready") and fresh:
            return status
        return None

    result: dict[str, Any] = wait_for(ready, "a supervisor serving a new process")
    return result


@pytest.mark.slow
def test_requests_are_served_across_restarts_of_the_supervisor_itself(
    socket_activate: str, activated: list[Activated], tmp_path: Path
) -> None:
    port = free_port()
    tag = f"hotpatch-systemd-{os.getpid()}-{port}"
    status_file, pids, stop = tmp_path / "status.json", tmp_path / "pids", tmp_path / "stop"
    command = supervisor(tag, status_file, f"http=127.0.0.1:{port}", "admin=127.0.0.1:0")
    holder = Activated(
        socket_activate,
        [("127.0.0.1", port)],
        ["http"],
        ["sh", "-c", HOLDER, "holder", *command],
        env={"STOP": str(stop), "PIDS": str(pids)},
    )
    activated.append(holder)
    # A request sent as the supervisor stops waits in the backlog until a new supervisor and
    # a new service process have started from nothing: as long as this test allows for that
    # (WAIT, in serving()), not the 30 s of a request that a running process answers (at
    # load 25 on 2 cores one took longer: TimeoutError).
    # Its first connection starts the holder's command.
    with Load(("127.0.0.1", port), timeout=WAIT) as load:
        status = serving(status_file)
        # The passed socket is the --bind http; admin, not passed, was bound as usual.
        assert status["sockets"]["http"] == f"127.0.0.1:{port}"
        assert status["sockets"]["admin"] != f"127.0.0.1:{port}"
        environ = Path(f"/proc/{status['child']['pid']}/environ").read_bytes()
        assert b"LISTEN_FDS=" not in environ  # the service never takes systemd's sockets
        children = [status["child"]["pid"]]
        for _ in range(2):  # stop the supervisor itself; the holder starts it again
            wait_for(lambda c=children[-1]: load.served_by(c), "requests served")
            supervisor_pid = int(pids.read_text().split()[-1])
            os.kill(supervisor_pid, signal.SIGTERM)
            status = serving(status_file, other_than=children[-1])
            assert int(pids.read_text().split()[-1]) != supervisor_pid
            children.append(status["child"]["pid"])
        wait_for(lambda: load.served_by(children[-1]), "requests served by the third start")
    stop.touch()  # the load has stopped: now the holder may let the sockets go
    os.kill(int(pids.read_text().split()[-1]), signal.SIGTERM)
    assert load.refused == 0, load.refused
    assert load.failed == [], load.failed
    assert all(load.served_by(pid) for pid in children)
    assert len(set(children)) == 3
    holder.output()
    assert holder.process.returncode == 0
    wait_for(lambda: not processes_with(tag) or None, "the service processes to end", timeout=10)


@pytest.mark.parametrize(
    ("binds", "error"),
    [
        (
            ["web=127.0.0.1:{port}"],
            "systemd passed a socket named 'http' (descriptor 3, listening on 127.0.0.1:{port}) "
            "that no --bind names: add --bind http=127.0.0.1:{port}, or rename it "
            "(FileDescriptorName= in the .socket unit)",
        ),
        (
            ["http=127.0.0.1:{other}"],
            "--bind http=127.0.0.1:{other}, but the socket systemd passed as 'http' listens on "
            "127.0.0.1:{port}: make the .socket unit's ListenStream= and --bind name the same "
            "address",
        ),
    ],
    ids=["no-bind", "other-address"],
)
def test_a_passed_socket_that_does_not_fit_its_bind_is_refused_at_start(
    socket_activate: str,
    activated: list[Activated],
    tmp_path: Path,
    binds: list[str],
    error: str,
) -> None:
    port, other = free_port(), free_port()
    tag = f"hotpatch-systemd-refused-{port}"
    command = supervisor(
        tag, tmp_path / "status.json", *(b.format(port=port, other=other) for b in binds)
    )
    one = Activated(socket_activate, [("127.0.0.1", port)], ["http"], command)
    activated.append(one)
    one.poke()
    output = one.output()
    assert one.process.returncode == 2, output
    assert error.format(port=port, other=other) in output, output
    assert not processes_with(tag)  # refused before the service started


# -- the units in docs/ -----------------------------------------------------------------

UNITS = REPO / "docs" / "systemd"


def unit(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` -> its values (a key may repeat), continuation lines joined."""
    values: dict[str, list[str]] = {}
    section = ""
    text = path.read_text().replace("\\\n", " ")
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        values.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return values


def test_the_documented_units_fit_together_and_hotpatch_run() -> None:
    socket_file, service_file = UNITS / "hotpatch-shop.socket", UNITS / "hotpatch-shop.service"
    page = (REPO / "docs" / "systemd.md").read_text()
    for path in (socket_file, service_file):
        assert path.read_text() in page, f"docs/systemd.md does not show {path.name} as it is"
    sockets, service = unit(socket_file), unit(service_file)
    assert socket_file.name in service["Unit.Requires"][0].split()

    (exec_start,) = service["Service.ExecStart"]
    argv = shlex.split(exec_start)
    assert Path(argv[0]).name == "hotpatch"
    assert argv[1] == "run"
    split = argv.index("--")
    options = build_parser().parse_args(argv[1:split])  # from "run" on
    binds = dict(options.bind)
    names, listens = sockets["Socket.FileDescriptorName"], sockets["Socket.ListenStream"]
    assert len(names) == len(listens)
    for name, listen in zip(names, listens, strict=True):
        assert binds[name] == parse_address(listen), (name, listen)
