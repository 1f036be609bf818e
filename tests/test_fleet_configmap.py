"""Patches delivered as Kubernetes delivers a ConfigMap volume: the kubelet's steps, replayed.

``Kubelet.write`` does what the kubelet's atomic writer does to a ConfigMap
volume, in the same order: the files in a new ``..<timestamp>`` directory, a
``..data_tmp`` symlink to it renamed over ``..data``, the visible links
``NAME -> ..data/NAME`` of new keys, the links of removed keys gone, the old
directory removed. A real agent (``hotpatch.install``) and a real
``hotpatch run`` watch the folder.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from drops import wait_for
from kubelet import Kubelet, filed_bytes, outcome, patch, results

import hotpatch

SERVICES = Path(__file__).resolve().parent / "services"


@pytest.fixture
def target(make_module: Callable[..., types.ModuleType]) -> types.ModuleType:
    return make_module("def f():\n    return 'base'\n")


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Callable[[], hotpatch.Agent]]:
    started: list[hotpatch.Agent] = []

    def start() -> hotpatch.Agent:
        agent = hotpatch.install(
            "1.0", watch=tmp_path / "patches", journal=tmp_path / "journal.json"
        )
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


def test_each_file_is_taken_once_and_a_changed_one_again(
    tmp_path: Path, target: types.ModuleType, agents: Callable[[], hotpatch.Agent]
) -> None:
    folder = tmp_path / "patches"
    agent = agents()
    kubelet = Kubelet(folder)
    fix = patch(f"{target.__name__}:f", "1.0.1", "one")
    first = kubelet.write({"fix.py": fix})
    record = outcome(folder, "fix.py")
    assert record["outcome"] == "applied"
    assert record["configmap"]["data"] == first
    assert target.f() == "one"
    assert os.readlink(folder / "fix.py") == "..data/fix.py"  # the kubelet's link stays
    assert filed_bytes(folder, "fix.py") == fix  # the bytes that went in

    # A new version of the ConfigMap: fix.py unchanged, more.py new. fix.py is not
    # taken again (its sha256 was); more.py is.
    more = patch(f"{target.__name__}:f", "1.0.2", "two")
    kubelet.write({"fix.py": fix, "more.py": more})
    assert outcome(folder, "more.py")["outcome"] == "applied"
    assert len(results(folder, "fix.py")) == 1
    assert agent.registry.level == ("1.0.1", "1.0.2")

    # The same name with new content is a new drop.
    changed = patch(f"{target.__name__}:f", "1.0.3", "three")
    kubelet.write({"fix.py": changed, "more.py": more})
    again = outcome(folder, "fix.py", 2)
    assert again["outcome"] == "applied"
    assert again["configmap"]["sha256"] != record["configmap"]["sha256"]
    assert target.f() == "three"
    assert len(results(folder, "more.py")) == 1


def test_a_restart_takes_nothing_twice(
    tmp_path: Path, target: types.ModuleType, agents: Callable[[], hotpatch.Agent]
) -> None:
    folder = tmp_path / "patches"
    agent = agents()
    kubelet = Kubelet(folder)
    fix = patch(f"{target.__name__}:f", "1.0.1", "one")
    kubelet.write({"fix.py": fix})
    outcome(folder, "fix.py")
    agent.stop()
    # A new agent on the same folder (the journal brings 1.0.1 back) reads what is
    # there at start: fix.py's result says it was taken; only later.py is new.
    agent = agents()
    kubelet.write({"fix.py": fix, "later.py": patch(f"{target.__name__}:f", "1.0.2", "two")})
    assert outcome(folder, "later.py")["outcome"] == "applied"
    assert len(results(folder, "fix.py")) == 1
    assert agent.registry.level == ("1.0.1", "1.0.2")


def test_a_bad_file_is_rejected_once_and_the_service_carries_on(
    tmp_path: Path, target: types.ModuleType, agents: Callable[[], hotpatch.Agent]
) -> None:
    folder = tmp_path / "patches"
    agents()
    kubelet = Kubelet(folder)
    broken = b"from hotpatch import Patch\npatch = Patch(version='1.0.1', baseline='1.0')\n1/0\n"
    kubelet.write({"broken.py": broken})
    assert outcome(folder, "broken.py")["outcome"] == "rejected"
    kubelet.write({"broken.py": broken, "fix.py": patch(f"{target.__name__}:f", "1.0.1", "ok")})
    assert outcome(folder, "fix.py")["outcome"] == "applied"
    assert len(results(folder, "broken.py")) == 1
    assert target.f() == "ok"


def test_other_symlinks_are_still_refused(
    tmp_path: Path, target: types.ModuleType, agents: Callable[[], hotpatch.Agent]
) -> None:
    folder = tmp_path / "patches"
    agents()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil.py").write_bytes(patch(f"{target.__name__}:f", "1.0.1", "evil"))
    # A plain symlink to a file elsewhere: refused, as ever.
    os.symlink(outside / "evil.py", folder / "evil.py")
    assert "symbolic link" in outcome(folder, "evil.py")["reason"]
    # The kubelet's shape, but ..data leads out of the folder: refused too.
    shutil.copy(outside / "evil.py", outside / "sneaky.py")
    os.symlink(str(outside), folder / "..data")
    os.symlink("..data/sneaky.py", folder / "sneaky.py")
    reason = outcome(folder, "sneaky.py")["reason"]
    assert "..data points to" in reason
    assert target.f() == "base"


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a link's owner needs root")
def test_links_of_another_user_are_refused(
    tmp_path: Path, target: types.ModuleType, agents: Callable[[], hotpatch.Agent]
) -> None:
    folder = tmp_path / "patches"
    agents()
    kubelet = Kubelet(folder)
    kubelet.write({"fix.py": patch(f"{target.__name__}:f", "1.0.1", "one")})
    outcome(folder, "fix.py")
    kubelet.keys.add("theirs.py")  # made below by someone else, not by the kubelet
    stranger = folder / "theirs.py"
    os.symlink("..data/theirs.py", stranger)
    os.lchown(stranger, 4321, 4321)
    data = folder / "..data"
    (folder / os.readlink(data) / "theirs.py").write_bytes(
        patch(f"{target.__name__}:f", "1.0.2", "theirs")
    )
    kubelet.write(
        {
            "fix.py": patch(f"{target.__name__}:f", "1.0.1", "one"),
            "theirs.py": patch(f"{target.__name__}:f", "1.0.2", "theirs"),
        }
    )
    assert "owned by uid 4321" in outcome(folder, "theirs.py")["reason"]
    assert target.f() == "one"


def test_hotpatch_run_takes_a_signed_configmap(tmp_path: Path) -> None:
    """The supervisor watches the ConfigMap folder; NAME.sig is a key of the ConfigMap too."""
    keys = tmp_path / "keys"
    keys.mkdir()
    cli = [sys.executable, "-m", "hotpatch"]
    subprocess.run(
        [*cli, "keygen", "--dir", str(keys), "--name", "k"], check=True, capture_output=True
    )
    trusted = keys / "trusted"
    trusted.mkdir()
    shutil.copy(keys / "k.pub", trusted)
    folder = tmp_path / "patches"
    status = tmp_path / "status.json"
    command = [
        *cli, "run", "--bind", "http=127.0.0.1:0", "--watch", str(folder),
        "--baseline", "1.0", "--trusted-keys", str(trusted), "--status-file", str(status),
        "--", sys.executable, str(SERVICES / "counter_service.py"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(SERVICES)}
    log = (tmp_path / "supervisor.log").open("wb")
    supervisor = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        pidfile = folder / ".hotpatch.json"
        wait_for(lambda: status.exists() and pidfile.exists(), "the supervisor and its folder")
        port = int(json.loads(status.read_text())["sockets"]["http"].rsplit(":", 1)[1])
        source = tmp_path / "tag.py"
        source.write_bytes(patch("counter_logic:tag", "1.0.1", "from-configmap"))
        subprocess.run([*cli, "sign", "--key", str(keys / "k.key"), str(source)], check=True)
        Kubelet(folder).write(
            {"tag.py": source.read_bytes(), "tag.py.sig": (tmp_path / "tag.py.sig").read_bytes()}
        )
        record = outcome(folder, "tag.py")
        assert record["outcome"] == "applied", record
        assert record["key_id"]  # the signature from the ConfigMap was checked
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/get")
        assert json.loads(connection.getresponse().read())["tag"] == "from-configmap"
        connection.close()
    finally:
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.wait(30)
        except subprocess.TimeoutExpired:
            supervisor.kill()
            supervisor.wait()
        log.close()
