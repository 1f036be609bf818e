"""A state directory: everything hotpatch writes goes there, and the watched folder is only read.

The folder of most of these tests is what a pod sees of a ConfigMap volume: a
real read-only bind mount of the directory the kubelet writes (``Kubelet``
replays its atomic writer there), so the agent *cannot* write in it. Where the
folder is writable, its listing and times before and after show that nothing
was written either.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from drops import wait_for
from kubelet import Kubelet, filed_bytes, outcome, patch, results

import hotpatch

SERVICES = Path(__file__).resolve().parent / "services"
CLI = [sys.executable, "-m", "hotpatch"]


@dataclass(frozen=True)
class Volume:
    """A ConfigMap volume: the kubelet writes ``source``; the pod sees ``folder``, read-only."""

    source: Path
    folder: Path


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Volume]:
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    source, folder = tmp_path / "kubelet", tmp_path / "patches"
    source.mkdir(mode=0o700)
    folder.mkdir(mode=0o700)
    made = _mount("--bind", str(source), str(folder))
    if made.returncode != 0:
        pytest.skip(f"bind mounts cannot be made here: {made.stderr.strip()}")
    try:
        ro = _mount("-o", "remount,bind,ro", str(folder))
        assert ro.returncode == 0, ro.stderr
        yield Volume(source, folder)
    finally:
        if subprocess.run(["umount", str(folder)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=True)


def snapshot(folder: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every entry under ``folder`` (and itself): inode, mode, size, modification time."""
    entries = {}
    for root, dirs, files in os.walk(folder):
        for name in [".", *dirs, *files]:
            path = Path(root) / name
            st = path.lstat()
            entries[str(path.relative_to(folder))] = (
                st.st_ino,
                st.st_mode,
                st.st_size,
                st.st_mtime_ns,
            )
    return entries


@pytest.fixture
def target(make_module: Callable[..., types.ModuleType]) -> types.ModuleType:
    return make_module("def f():\n    return 'base'\n")


@pytest.fixture
def agents() -> Iterator[Callable[..., hotpatch.Agent]]:
    started: list[hotpatch.Agent] = []

    def start(watch: Path, state: Path) -> hotpatch.Agent:
        agent = hotpatch.install(
            "1.0", watch=watch, state_dir=state, journal=state / "journal.json"
        )
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


# -- the embedding API -------------------------------------------------------------------


def test_a_read_only_folder_without_a_state_dir_is_refused(volume: Volume) -> None:
    with pytest.raises(PermissionError, match="is read-only") as refused:
        hotpatch.install("1.0", watch=volume.folder)
    assert "--state-dir DIR" in str(refused.value)
    assert "state_dir=DIR" in str(refused.value)
    assert os.listdir(volume.source) == []


def test_a_state_dir_must_be_outside_the_folder_and_needs_one(tmp_path: Path) -> None:
    folder = tmp_path / "patches"
    with pytest.raises(ValueError, match="inside the patch folder"):
        hotpatch.install("1.0", watch=folder, state_dir=folder / "state")
    with pytest.raises(ValueError, match="give watch=FOLDER too"):
        hotpatch.install("1.0", state_dir=tmp_path / "state")


def test_a_configmap_on_a_read_only_mount_is_taken_once_per_content(
    tmp_path: Path,
    volume: Volume,
    target: types.ModuleType,
    agents: Callable[..., hotpatch.Agent],
) -> None:
    state = tmp_path / "state"
    kubelet = Kubelet(volume.source)
    fix = patch(f"{target.__name__}:f", "1.0.1", "one")
    kubelet.write({"fix.py": fix})
    before = snapshot(volume.source)
    agent = agents(volume.folder, state)
    record = outcome(state, "fix.py")
    assert record["outcome"] == "applied", record
    assert target.f() == "one"
    assert filed_bytes(state, "fix.py") == fix
    assert snapshot(volume.source) == before
    assert agent.state_dir == state
    assert agent.socket == state / ".hotpatch.sock"
    written = set(os.listdir(state))
    assert {".hotpatch.json", ".hotpatch.lock", ".hotpatch.sock", ".hotpatch.outcomes.jsonl"} <= (
        written
    )
    assert {"applied", "rejected", "pending", ".staging", ".configmap"} <= written

    more = patch(f"{target.__name__}:f", "1.0.2", "two")
    kubelet.write({"fix.py": fix, "more.py": more})
    before = snapshot(volume.source)
    assert outcome(state, "more.py")["outcome"] == "applied"
    changed = patch(f"{target.__name__}:f", "1.0.3", "three")
    kubelet.write({"fix.py": changed, "more.py": more})
    assert outcome(state, "fix.py", 2)["outcome"] == "applied"
    assert target.f() == "three"
    assert len(results(state, "more.py")) == 1
    assert len(results(state, "fix.py")) == 2
    assert agent.registry is not None
    assert agent.registry.level == ("1.0.1", "1.0.2", "1.0.3")
    lines = (state / ".hotpatch.outcomes.jsonl").read_text().splitlines()
    assert [json.loads(line)["version"] for line in lines] == ["1.0.1", "1.0.2", "1.0.3"]

    # Stopped and started again with the same state directory (a restarted container
    # whose emptyDir survives): the journal brings the level back, and what was taken
    # is not taken again -- only the ConfigMap's new key is.
    agent.stop()
    agent = agents(volume.folder, state)
    assert agent.registry is not None
    assert agent.registry.level == ("1.0.1", "1.0.2", "1.0.3")
    later = patch(f"{target.__name__}:f", "1.0.4", "four")
    kubelet.write({"fix.py": changed, "more.py": more, "later.py": later})
    before = snapshot(volume.source)
    assert outcome(state, "later.py")["outcome"] == "applied"
    assert target.f() == "four"
    assert len(results(state, "fix.py")) == 2
    assert len(results(state, "more.py")) == 1
    assert snapshot(volume.source) == before


def test_plain_drops_stay_in_a_folder_that_is_only_read(
    tmp_path: Path, target: types.ModuleType, agents: Callable[..., hotpatch.Agent]
) -> None:
    """Writable here, so that a write would succeed: nothing is written all the same."""
    folder, state, outbox = tmp_path / "patches", tmp_path / "state", tmp_path / "outbox"
    folder.mkdir(mode=0o700)
    outbox.mkdir()
    first = agents(folder, state)
    (outbox / "fix.py").write_bytes(patch(f"{target.__name__}:f", "1.0.1", "one"))
    (outbox / "notes.txt").write_text("not a patch")
    os.rename(outbox / "fix.py", folder / "fix.py")
    os.rename(outbox / "notes.txt", folder / "notes.txt")
    before = snapshot(folder)
    record = outcome(state, "fix.py")
    assert record["outcome"] == "applied", record
    assert record["kept"]["file"] == "fix.py"
    assert "not a patch" in outcome(state, "notes.txt")["reason"]
    assert target.f() == "one"
    assert snapshot(folder) == before

    # Rewritten in place: another file, taken again.
    (folder / "fix.py").write_bytes(patch(f"{target.__name__}:f", "1.0.2", "two"))
    before = snapshot(folder)
    assert outcome(state, "fix.py", 2)["outcome"] == "applied"
    assert target.f() == "two"
    copy = state / "applied" / "fix.1.py"
    wait_for(copy.exists, "the copy filed beside its result")  # written just after it
    assert copy.read_bytes() == (folder / "fix.py").read_bytes()

    # A restart takes neither file again; a new one is taken.
    first.stop()
    agent = agents(folder, state)
    (outbox / "next.py").write_bytes(patch(f"{target.__name__}:f", "1.0.3", "three"))
    os.rename(outbox / "next.py", folder / "next.py")
    assert outcome(state, "next.py")["outcome"] == "applied"
    assert len(results(state, "fix.py")) == 2
    assert len(results(state, "notes.txt")) == 1
    assert agent.registry is not None
    assert agent.registry.level == ("1.0.1", "1.0.2", "1.0.3")
    assert sorted(os.listdir(folder)) == ["fix.py", "next.py", "notes.txt"]
    after = snapshot(folder)  # the folder changed by the rename of next.py only
    assert {k: v for k, v in after.items() if k not in (".", "next.py")} == {
        k: v for k, v in before.items() if k != "."
    }


# -- hotpatch run, and the commands that find it -----------------------------------------


class Pod:
    """``hotpatch run`` on the read-only folder, as a container runs it: keys, env, the service."""

    def __init__(self, tmp_path: Path, volume: Volume) -> None:
        self.tmp_path, self.volume = tmp_path, volume
        self.keys = tmp_path / "keys"
        self.keys.mkdir()
        run([*CLI, "keygen", "--dir", str(self.keys), "--name", "k"])
        self.trusted = self.keys / "trusted"
        self.trusted.mkdir()
        (self.trusted / "k.pub").write_bytes((self.keys / "k.pub").read_bytes())
        self.state = tmp_path / "state"
        self.status = tmp_path / "status.json"
        self.env = {**os.environ, "PYTHONPATH": str(SERVICES)}
        self.env.pop("HOTPATCH_STATE_DIR", None)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def command(self) -> list[str]:
        return [
            *CLI, "run", "--bind", "http=127.0.0.1:0", "--watch", str(self.volume.folder),
            "--baseline", "1.0", "--trusted-keys", str(self.trusted),
            "--status-file", str(self.status),
            "--", sys.executable, str(SERVICES / "counter_service.py"),
        ]  # fmt: skip

    def pod_env(self) -> dict[str, str]:
        """The container's environment: the state directory named once, for every command."""
        return {**self.env, "HOTPATCH_STATE_DIR": str(self.state)}

    def start(self) -> None:
        self.starts += 1
        self.status.unlink(missing_ok=True)
        with (self.tmp_path / f"supervisor.{self.starts}.log").open("wb") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.pod_env()
            )
        pidfile = self.state / ".hotpatch.json"
        wait_for(lambda: self.status.exists() and pidfile.exists(), "the supervisor")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def signed(self, name: str, version: str, value: str) -> dict[str, bytes]:
        """``name`` and ``name.sig``, as two keys of the ConfigMap."""
        source = self.tmp_path / name
        source.write_bytes(patch("counter_logic:tag", version, value))
        run([*CLI, "sign", "--key", str(self.keys / "k.key"), str(source)])
        return {name: source.read_bytes(), f"{name}.sig": Path(f"{source}.sig").read_bytes()}

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args],
            check=False,
            capture_output=True,
            text=True,
            env=env or self.env,
            timeout=60,
        )

    def level(self, *args: str) -> list[str]:
        """``hotpatch status --json ARGS``'s patch level."""
        done = self.cli("status", "--json", *args, env=self.pod_env())
        assert done.returncode == 0, done.stderr
        level: list[str] = json.loads(done.stdout)["patches"]["level"]
        return level


def run(command: list[str]) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=60)


@pytest.fixture
def pod(tmp_path: Path, volume: Volume) -> Iterator[Pod]:
    pod = Pod(tmp_path, volume)
    yield pod
    pod.stop()


@pytest.mark.slow
def test_hotpatch_run_keeps_a_read_only_configmap_read_only(pod: Pod, volume: Volume) -> None:
    # Without a state directory: refused at start, naming the option.
    refused = subprocess.run(
        pod.command(), check=False, capture_output=True, text=True, env=pod.env, timeout=60
    )
    assert refused.returncode == 2, refused.stderr
    assert "is read-only" in refused.stderr
    assert "--state-dir DIR" in refused.stderr
    assert os.listdir(volume.source) == []

    # $HOTPATCH_STATE_DIR in the container's environment: hotpatch run keeps its
    # files there, and the commands run in the container (kubectl exec) find them.
    pod.start()
    watcher = subprocess.Popen(
        [*CLI, "watch", "--json", "--count", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=pod.pod_env(),
    )
    try:
        assert watcher.stderr is not None
        assert f"watching {pod.state}" in watcher.stderr.readline()
        kubelet = Kubelet(volume.source)
        tag = pod.signed("tag.py", "1.0.1", "from-configmap")
        kubelet.write(tag)
        before = snapshot(volume.source)
        record = outcome(pod.state, "tag.py")
        assert record["outcome"] == "applied", record
        assert record["key_id"]  # the ConfigMap's tag.py.sig was checked
        out, err = watcher.communicate(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.communicate()
    assert watcher.returncode == 0, err
    # The outcome log's line and the result file are one outcome: shown once.
    [shown] = [json.loads(line) for line in out.splitlines()]
    assert (shown["file"], shown["outcome"], shown["source"]) == ("tag.py", "applied", "folder")
    assert snapshot(volume.source) == before

    assert pod.level() == ["1.0.1"]  # found through $HOTPATCH_STATE_DIR
    assert pod.level("--folder", str(volume.folder)) == ["1.0.1"]  # the folder it watches
    done = pod.cli("status", "--json", "--state-dir", str(pod.state))  # no variable: the option
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["patches"]["state_dir"] == str(pod.state)
    lost = pod.cli("status", "--folder", str(volume.folder))  # neither: the error says how
    assert lost.returncode == 2
    assert "--state-dir DIR" in lost.stderr, lost.stderr
    lost = pod.cli("watch", str(volume.folder), "--count", "1")
    assert lost.returncode == 2
    assert "is read-only" in lost.stderr
    assert "--state-dir DIR" in lost.stderr, lost.stderr

    # The container restarts (the emptyDir stays): tag.py is not taken again; the
    # journal in the state directory brings 1.0.1 back; a new key is taken.
    pod.stop()
    pod.start()
    wait_for(lambda: pod.level() == ["1.0.1"], "the journal's level after the restart")
    kubelet.write({**tag, **pod.signed("more.py", "1.0.2", "more")})
    before = snapshot(volume.source)
    assert outcome(pod.state, "more.py")["outcome"] == "applied"
    assert pod.level() == ["1.0.1", "1.0.2"]
    assert len(results(pod.state, "tag.py")) == 1
    assert snapshot(volume.source) == before
    assert {".hotpatch.json", ".hotpatch.sock", ".journal.json", "applied"} <= set(
        os.listdir(pod.state)
    )


def test_a_kept_drop_is_taken_again_once_its_signature_comes(
    tmp_path: Path, target: types.ModuleType
) -> None:
    from hotpatch.agent._signing import generate_keypair, sign_file

    folder, state, keys = tmp_path / "patches", tmp_path / "state", tmp_path / "keys"
    keys.mkdir()
    private, public = generate_keypair(keys, "k")
    source = tmp_path / "fix.py"
    source.write_bytes(patch(f"{target.__name__}:f", "1.0.1", "signed"))
    with hotpatch.install(
        "1.0", watch=folder, state_dir=state, require_signature=True, trusted_keys=[public]
    ):
        shutil.copy(source, tmp_path / "fix.py.part")
        os.rename(tmp_path / "fix.py.part", folder / "fix.py")  # no signature yet
        assert outcome(state, "fix.py")["outcome"] == "rejected"
        signature = sign_file(source, private)
        os.rename(signature, folder / "fix.py.sig")
        assert outcome(state, "fix.py", 2)["outcome"] == "applied"
        assert target.f() == "signed"
    assert sorted(os.listdir(folder)) == ["fix.py", "fix.py.sig"]


WORKER = """\
import sys
sys.path.insert(0, sys.argv[3])
import hotpatch
agent = hotpatch.install(
    "1.0", watch=sys.argv[1], state_dir=sys.argv[2], workers=True, entry_points=False
)
print("ready", flush=True)
sys.stdin.read()  # until the test closes stdin
agent.stop()
"""


def test_workers_of_a_pre_fork_server_share_the_state_dir(tmp_path: Path, volume: Volume) -> None:
    """install(workers=True, state_dir=...): lock, .workers/, journal and outcomes in the state."""
    state, modules = tmp_path / "state", tmp_path / "modules"
    modules.mkdir()
    (modules / "app_mod.py").write_text("def f():\n    return 'base'\n")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs: list[subprocess.Popen[str]] = []

    def start() -> int:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(volume.folder), str(state), str(modules)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("ready"), f"exit {proc.poll()}"
        return proc.pid

    try:
        pids = [start(), start()]
        kubelet = Kubelet(volume.source)
        fix = patch("app_mod:f", "1.0.1", "one")
        kubelet.write({"fix.py": fix})
        before = snapshot(volume.source)
        record = outcome(state, "fix.py")
        assert record["outcome"] == "applied", record
        assert sorted(w["pid"] for w in record["workers"]) == sorted(pids)
        assert (state / ".workers" / "journal.json").exists()
        assert snapshot(volume.source) == before
        # The owner goes; the other worker takes the folder over and takes fix.py
        # not again, but the ConfigMap's next key.
        owner = json.loads((state / ".hotpatch.json").read_text())["pid"]
        os.killpg(owner, signal.SIGKILL)
        survivor = next(pid for pid in pids if pid != owner)
        wait_for(
            lambda: json.loads((state / ".hotpatch.json").read_text())["pid"] == survivor,
            "the other worker to own the folder",
        )
        kubelet.write({"fix.py": fix, "more.py": patch("app_mod:f", "1.0.2", "two")})
        assert outcome(state, "more.py")["outcome"] == "applied"
        assert len(results(state, "fix.py")) == 1
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


def test_missing_outcome_folders_are_made_again_in_the_state_dir(
    tmp_path: Path, target: types.ModuleType, agents: Callable[..., hotpatch.Agent]
) -> None:
    folder, state, outbox = tmp_path / "patches", tmp_path / "state", tmp_path / "outbox"
    folder.mkdir(mode=0o700)
    outbox.mkdir()
    agents(folder, state)
    shutil.rmtree(state / "rejected")
    (outbox / "notes.txt").write_text("not a patch")
    os.rename(outbox / "notes.txt", folder / "notes.txt")
    assert "not a patch" in outcome(state, "notes.txt")["reason"]
    assert sorted(os.listdir(folder)) == ["notes.txt"]


def test_a_state_dir_others_can_write_takes_no_drop_until_it_is_closed_again(
    tmp_path: Path, target: types.ModuleType, agents: Callable[..., hotpatch.Agent]
) -> None:
    folder, state, outbox = tmp_path / "patches", tmp_path / "state", tmp_path / "outbox"
    folder.mkdir(mode=0o700)
    outbox.mkdir()
    agent = agents(folder, state)
    state.chmod(0o777)  # anyone could now plant result files, so a patch is never taken
    wait_for(lambda: not agent.status()["folder"]["safe"], "the guard to see it")
    assert "state directory" in agent.status()["folder"]["problem"]
    assert "chmod go-w" in agent.status()["folder"]["problem"]
    (outbox / "fix.py").write_bytes(patch(f"{target.__name__}:f", "1.0.1", "one"))
    os.rename(outbox / "fix.py", folder / "fix.py")
    wait_for(lambda: "fix.py" in agent.status()["pending"], "fix.py to wait")
    assert results(state, "fix.py") == []
    assert target.f() == "base"
    state.chmod(0o700)
    assert outcome(state, "fix.py")["outcome"] == "applied"
    assert agent.status()["folder"]["safe"]
    assert target.f() == "one"


def test_a_state_dir_deleted_while_running_is_said_and_made_good_again(
    tmp_path: Path, target: types.ModuleType
) -> None:
    folder, state, outbox = tmp_path / "patches", tmp_path / "state", tmp_path / "outbox"
    folder.mkdir(mode=0o700)
    outbox.mkdir()
    with hotpatch.install("1.0", watch=folder, state_dir=state) as agent:
        shutil.rmtree(state)
        wait_for(lambda: not agent.status()["folder"]["safe"], "the guard to see it")
        problem = agent.status()["folder"]["problem"]
        assert f"state directory {state} is gone" in problem
        assert f"mkdir -m 0700 {state}" in problem
        state.mkdir(mode=0o700)  # the fix it names
        wait_for(lambda: agent.status()["folder"]["safe"], "the state directory to be taken")
        (outbox / "fix.py").write_bytes(patch(f"{target.__name__}:f", "1.0.1", "one"))
        os.rename(outbox / "fix.py", folder / "fix.py")
        assert outcome(state, "fix.py")["outcome"] == "applied"
        wait_for((state / ".hotpatch.json").exists, "the pidfile made again")
        wait_for((state / ".hotpatch.sock").exists, "the control socket made again")
    assert sorted(os.listdir(folder)) == ["fix.py"]
