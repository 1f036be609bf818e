"""Fleet hosts on one machine: each a network namespace with its own address, sshd and service.

``Fleet(root, count)`` makes, as root:

- a bridge in this namespace with the address 198.18.K.1/24 (198.18.0.0/15 is set aside
  for network tests, RFC 2544; K is the first /24 no interface here uses yet);
- per host a network namespace ``hpf<pid>-<i>`` joined to the bridge by a veth pair,
  its ``eth0`` at 198.18.K.(10+i), and in it
- a real OpenSSH server (Debian's ``openssh-server``, installed with apt-get when it is
  missing) that lets the fleet's generated key in as root, and
- the service ``tests/fleet/app/service.py`` under ``hotpatch run`` (port 8000, its
  own patch folder, signed patches only, health URL ``/health``).

``ansible-playbook`` (from the ``ansible-core`` package) then drives the hosts over SSH
with the collection in ``ansible_collections/``. Everything made is undone by
``close()``, even after a failure: the services and sshds (by process id, and whatever
else still runs in the namespaces), the namespaces, the bridge.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
APP = Path(__file__).resolve().parent / "app"
PORT = 8000
BASELINE = "1.0"
SSHD = Path("/usr/sbin/sshd")
SSH = Path("/usr/bin/ssh")
WAIT_S = 60.0


class CannotMakeHosts(Exception):
    """This machine cannot make namespace hosts (the reason says why): the tests skip."""


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=120)


def ensure_tools() -> None:
    """iproute2 and Debian's openssh-server, installed with apt-get when missing.

    Never starts the system's ssh service: while it installs, a ``policy-rc.d`` that
    refuses service starts is in place (unless the machine has one already).
    """
    wanted = (("iproute2", "/usr/sbin/ip"), ("openssh-server", SSHD), ("openssh-client", SSH))
    missing = [pkg for pkg, path in wanted if not Path(path).exists()]
    if not missing:
        return
    if os.geteuid() != 0:
        raise CannotMakeHosts(f"{', '.join(missing)} missing and not root to install them")
    policy = Path("/usr/sbin/policy-rc.d")
    ours = not policy.exists()
    if ours:
        policy.write_text(
            "#!/bin/sh\n# no service starts while the fleet tests install\nexit 101\n"
        )
        policy.chmod(0o755)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
        done = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:  # a stale package list: update it once and try again
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, check=False)
            done = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            msg = f"apt-get install {' '.join(missing)} failed: {done.stderr.strip()[-800:]}"
            raise RuntimeError(msg)
    finally:
        if ours:
            policy.unlink()


def probe_namespaces() -> None:
    """Try to make (and remove) a network namespace; ``CannotMakeHosts`` saying why not."""
    if os.geteuid() != 0:
        raise CannotMakeHosts("network namespaces need root (run the fleet tests as root)")
    if shutil.which("ip") is None:
        raise CannotMakeHosts("no `ip` command (iproute2)")
    name = f"hpf{os.getpid()}-probe"
    made = _run("ip", "netns", "add", name, check=False)
    if made.returncode != 0:
        raise CannotMakeHosts(f"`ip netns add` fails here: {made.stderr.strip()}")
    _run("ip", "netns", "del", name, check=False)


def _free_subnet() -> int:
    used = _run("ip", "-o", "-4", "addr", "show").stdout
    for k in range(1, 255):
        if f" 198.18.{k}." not in used:
            return k
    raise CannotMakeHosts("no free /24 in 198.18.0.0/16 for the fleet's bridge")


@dataclass
class Host:
    """One namespace host: its address, its directories, its sshd and its service."""

    index: int
    name: str
    netns: str
    address: str
    root: Path
    sshd: subprocess.Popen[bytes] | None = None
    service: subprocess.Popen[bytes] | None = None
    logs: list[Any] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        return self.root / "patches"

    @property
    def status_file(self) -> Path:
        return self.root / "status.json"

    def url(self, path: str) -> str:
        return f"http://{self.address}:{PORT}{path}"

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
        """One request to this host's service over the bridge: (HTTP status, JSON body)."""
        connection = http.client.HTTPConnection(self.address, PORT, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        finally:
            connection.close()


class Fleet:
    """``count`` namespace hosts with sshd and the service; a context manager."""

    def __init__(self, root: Path, count: int = 5) -> None:
        self.root = root
        self.count = count
        self.token = f"hpf{os.getpid()}"
        self.bridge = f"{self.token}br"
        self.hosts: list[Host] = []
        self.subnet = 0
        self.python = sys.executable
        self.bin = Path(sys.executable).parent
        self.keys = root / "keys"
        self.ssh = root / "ssh"

    # -- life cycle -------------------------------------------------------------------

    def __enter__(self) -> Fleet:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        if os.geteuid() != 0:
            raise CannotMakeHosts("network namespaces need root (run the fleet tests as root)")
        ensure_tools()
        probe_namespaces()
        self._network()
        self._ssh_keys()
        self._signing_keys()
        for host in self.hosts:
            self._start_sshd(host)
        self.start_services()
        for host in self.hosts:
            self._wait_port(host.address, 22, f"sshd on {host.name}")

    def close(self) -> None:
        """Undo everything, whatever state it is in; the first error is raised at the end."""
        errors: list[BaseException] = []
        self.close_ssh_masters()
        for host in self.hosts:
            for process in (host.service, host.sshd):
                try:
                    _stop(process)
                except Exception as exc:
                    errors.append(exc)
            self._kill_namespace_processes(host)
            _run("ip", "netns", "del", host.netns, check=False)
            for log in host.logs:
                log.close()
        if self.subnet:
            _run("ip", "link", "del", self.bridge, check=False)
        if errors:
            raise errors[0]

    # -- the network --------------------------------------------------------------------

    def _network(self) -> None:
        self.subnet = _free_subnet()
        prefix = f"198.18.{self.subnet}"
        _run("ip", "link", "add", "name", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{prefix}.1/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for i in range(1, self.count + 1):
            host = Host(
                i, f"host{i}", f"{self.token}-{i}", f"{prefix}.{10 + i}", self.root / f"host{i}"
            )
            self.hosts.append(host)
            host.root.mkdir(parents=True, exist_ok=True)
            outside, inside = f"{self.token}o{i}", f"{self.token}i{i}"
            _run("ip", "netns", "add", host.netns)
            _run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            _run("ip", "link", "set", inside, "netns", host.netns)
            _run("ip", "-n", host.netns, "link", "set", inside, "name", "eth0")
            _run("ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _run("ip", "-n", host.netns, "link", "set", "eth0", "up")
            _run("ip", "-n", host.netns, "link", "set", "lo", "up")
            _run("ip", "link", "set", outside, "master", self.bridge)
            _run("ip", "link", "set", outside, "up")

    def take_down(self, host: Host) -> None:
        """Unplug ``host``: its link goes down (the service still runs, unreachable)."""
        _run("ip", "-n", host.netns, "link", "set", "eth0", "down")

    def bring_up(self, host: Host) -> None:
        _run("ip", "-n", host.netns, "link", "set", "eth0", "up")

    def _kill_namespace_processes(self, host: Host) -> None:
        """Whatever still runs in the namespace was started here (sshd sessions, modules)."""
        pids = _run("ip", "netns", "pids", host.netns, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)

    # -- ssh ------------------------------------------------------------------------------

    def _ssh_keys(self) -> None:
        self.ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
        for key in ("client", "host"):
            if not (self.ssh / key).exists():
                _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"fleet-{key}",
                     "-f", str(self.ssh / key))  # fmt: skip
        (self.ssh / "authorized_keys").write_text((self.ssh / "client.pub").read_text())
        host_key = (self.ssh / "host.pub").read_text().split()[:2]
        (self.ssh / "known_hosts").write_text(
            "".join(f"{h.address} {' '.join(host_key)}\n" for h in self.hosts)
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation

    def _start_sshd(self, host: Host) -> None:
        config = host.root / "sshd_config"
        config.write_text(
            f"ListenAddress {host.address}:22\n"
            f"HostKey {self.ssh / 'host'}\n"
            f"PidFile {host.root / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {self.ssh / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "MaxSessions 50\n"
            "MaxStartups 50\n"
            "Subsystem sftp internal-sftp\n"
            "LogLevel ERROR\n"
        )
        log = (host.root / "sshd.log").open("ab")
        host.logs.append(log)
        host.sshd = subprocess.Popen(
            ["ip", "netns", "exec", host.netns, str(SSHD), "-D", "-e", "-f", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def ssh_options(self) -> list[str]:
        return [
            "-o", f"UserKnownHostsFile={self.ssh / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "ConnectTimeout=5",
            "-o", "ServerAliveInterval=2",
            "-o", "ServerAliveCountMax=3",
        ]  # fmt: skip

    def close_ssh_masters(self) -> None:
        """End the SSH connections Ansible keeps open (ControlPersist) to every host."""
        control = self.root / "ansible" / "cp"
        if not control.is_dir():
            return
        for host in self.hosts:
            subprocess.run(
                ["ssh", "-o", f"ControlPath={control}/%C", "-O", "exit", f"root@{host.address}"],
                capture_output=True,
                check=False,
                timeout=10,
            )

    # -- the service ------------------------------------------------------------------------

    def _signing_keys(self) -> None:
        self.keys.mkdir(exist_ok=True)
        if not (self.keys / "fleet.key").exists():
            _run(str(self.bin / "hotpatch"), "keygen", "--dir", str(self.keys), "--name", "fleet")
        (self.keys / "trusted").mkdir(exist_ok=True)
        shutil.copy(self.keys / "fleet.pub", self.keys / "trusted" / "fleet.pub")

    def sign(self, path: Path) -> Path:
        """``hotpatch sign``: ``PATH.sig`` beside the patch file or bundle."""
        _run(str(self.bin / "hotpatch"), "sign", "--key", str(self.keys / "fleet.key"), str(path))
        return path.with_name(path.name + ".sig")

    def start_service(self, host: Host) -> None:
        """``hotpatch run`` in the host's namespace, from a clean folder at baseline 1.0."""
        for stale in (host.folder, host.root / "app"):
            shutil.rmtree(stale, ignore_errors=True)
        host.status_file.unlink(missing_ok=True)
        shutil.copytree(APP, host.root / "app", ignore=shutil.ignore_patterns("__pycache__"))
        host.folder.mkdir(mode=0o700)
        log = (host.root / "service.log").open("ab")
        host.logs.append(log)
        command = [
            "ip", "netns", "exec", host.netns,
            self.python, "-m", "hotpatch", "run",
            "--bind", f"http={host.address}:{PORT}",
            "--watch", str(host.folder), "--baseline", BASELINE,
            "--trusted-keys", str(self.keys / "trusted"),
            "--health-url", "/health",
            "--status-file", str(host.status_file),
            "--snapshot-interval", "0",
            "--", self.python, str(host.root / "app" / "service.py"),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(host.root / "app")}
        host.service = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)

    def start_services(self) -> None:
        for host in self.hosts:
            self.start_service(host)
        with concurrent.futures.ThreadPoolExecutor(len(self.hosts)) as pool:
            list(pool.map(self.wait_serving, self.hosts))

    def stop_services(self) -> None:
        with concurrent.futures.ThreadPoolExecutor(len(self.hosts)) as pool:
            list(pool.map(lambda h: _stop(h.service), self.hosts))
        for host in self.hosts:
            host.service = None

    def reset(self) -> None:
        """Every host back to a fresh service at baseline 1.0, its link up."""
        self.close_ssh_masters()
        for host in self.hosts:
            self.bring_up(host)
        self.stop_services()
        self.start_services()

    def wait_serving(self, host: Host) -> None:
        def serving() -> bool:
            if host.service is not None and host.service.poll() is not None:
                log = (host.root / "service.log").read_text(errors="replace")[-3000:]
                msg = f"the service on {host.name} exited {host.service.returncode}:\n{log}"
                raise RuntimeError(msg)
            try:
                return (
                    host.get("/health", timeout=2)[0] == 200
                    and (host.folder / ".hotpatch.json").exists()
                )
            except OSError:
                return False

        _wait(serving, f"the service on {host.name}")

    def _wait_port(self, address: str, port: int, what: str) -> None:
        def accepting() -> bool:
            with contextlib.suppress(OSError), socket.create_connection((address, port), 1):
                return True
            return False

        _wait(accepting, what)

    # -- Ansible --------------------------------------------------------------------------

    def inventory(self, **group_vars: Any) -> Path:
        """An inventory of the hosts (group ``hotpatch``), as JSON (which is YAML)."""
        hosts = {
            h.name: {
                "ansible_host": h.address,
                "hotpatch_folder": str(h.folder),
                "hotpatch_health_url": h.url("/health"),
            }
            for h in self.hosts
        }
        common = {
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(self.ssh / "client"),
            "ansible_ssh_common_args": " ".join(self.ssh_options()),
            "ansible_python_interpreter": self.python,
            "hotpatch_executable": str(self.bin / "hotpatch"),
            **group_vars,
        }
        path = self.root / "inventory.yml"
        path.write_text(json.dumps({"hotpatch": {"hosts": hosts, "vars": common}}, indent=2))
        return path

    def ansible_env(self, timeline: Path | None = None) -> dict[str, str]:
        home = self.root / "ansible"
        (home / "cp").mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "ANSIBLE_COLLECTIONS_PATH": str(REPO),
            "ANSIBLE_HOME": str(home),
            "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
            "ANSIBLE_REMOTE_TEMP": str(home / "remote-tmp"),
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=60s",
            "ANSIBLE_SSH_CONTROL_PATH": f"{home}/cp/%%C",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_FORKS": str(max(self.count, 5)),
            "ANSIBLE_TIMEOUT": "10",
            "ANSIBLE_CALLBACKS_ENABLED": "hotpatch.fleet.timeline",
        }
        env.pop("PYTHONPATH", None)
        if timeline is not None:
            env["HOTPATCH_FLEET_TIMELINE"] = str(timeline)
        return env

    def playbook(
        self,
        patch: Path,
        *extra: str,
        timeline: Path | None = None,
        check: bool = False,
        **variables: Any,
    ) -> subprocess.CompletedProcess[str]:
        """``ansible-playbook hotpatch.fleet.rollout`` against the fleet; its result."""
        inventory = self.inventory()
        extra_vars = {"hotpatch_patch": str(patch), **variables}
        command = [
            str(self.bin / "ansible-playbook"), "hotpatch.fleet.rollout",
            "-i", str(inventory), "-e", json.dumps(extra_vars), *extra,
        ]  # fmt: skip
        if check:
            command += ["--check", "--diff"]
        try:
            return subprocess.run(
                command, capture_output=True, text=True, env=self.ansible_env(timeline),
                timeout=600, check=False,
            )  # fmt: skip
        finally:
            self.close_ssh_masters()


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM (a supervisor stops its service cleanly), SIGKILL after a while."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait(condition: Any, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what}: not within {timeout:g} s")


@contextlib.contextmanager
def fleet(root: Path, count: int = 5) -> Iterator[Fleet]:
    with Fleet(root, count) as made:
        yield made
