"""The bad-input matrix: whatever lands in the folder, the service keeps serving.

Each case drops something bad into a watched folder while a real "service"
thread calls the target function in a loop. Each must end in ``rejected/``
with a reason a person understands, the service still serving, and the patch
level unchanged. (An unsafe folder is refused when the agent starts.)
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
import tracemalloc
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from drops import DropFolder, wait_for

import hotpatch
from hotpatch.agent._signing import generate_keypair, sign_file

NOBODY = 65534


class Service:
    """A thread that calls ``func`` in a loop, like a service serving requests."""

    def __init__(self, func: Callable[[], object]):
        self.func = func
        self.calls = 0
        self.errors: list[BaseException] = []
        self.last: object = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="service", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                self.last = self.func()
            except BaseException as exc:  # recorded: the test fails on any
                self.errors.append(exc)
            self.calls += 1
            time.sleep(0.0005)

    def assert_serving(self) -> None:
        before = self.calls
        wait_for(lambda: self.calls > before + 20, "the service to serve more calls")
        assert self.thread.is_alive()
        assert self.errors == []

    def stop(self) -> None:
        self._stop.set()
        self.thread.join()


@pytest.fixture
def folder(tmp_path: Path) -> DropFolder:
    return DropFolder(tmp_path)


@pytest.fixture
def target(make_module: Callable[[str], types.ModuleType]) -> types.ModuleType:
    return make_module(
        """\
        def f():
            return 0
        """
    )


@pytest.fixture
def service(target: types.ModuleType) -> Iterator[Service]:
    running = Service(target.f)
    yield running
    running.stop()


@pytest.fixture
def start(folder: DropFolder) -> Iterator[Callable[..., hotpatch.Agent]]:
    agents: list[hotpatch.Agent] = []

    def start_agent(**options: Any) -> hotpatch.Agent:
        options.setdefault("control_socket", False)
        agent = hotpatch.install("1.0", watch=folder.path, **options)
        agents.append(agent)
        return agent

    yield start_agent
    for agent in agents:
        agent.stop()
        if agent.registry is not None and agent.registry.level:
            agent.registry.rollback(to="1.0")


def patch_text(
    target: str, version: str = "1.0.1", body: str = "return 1", head: str = "", params: str = ""
) -> str:
    return (
        "from hotpatch import Patch\n"
        f"{head}\n"
        f"patch = Patch(version={version!r}, baseline='1.0')\n\n"
        f"@patch.replace({target!r})\n"
        f"def f({params}):\n"
        f"    {body}\n"
    )


def rejected(
    folder: DropFolder, agent: hotpatch.Agent, service: Service, name: str, level: tuple[str, ...]
) -> str:
    """The common ending: filed as rejected, serving, level unchanged; returns the reason."""
    result = folder.filed(name, "rejected")
    assert result["outcome"] == "rejected"
    assert not (folder.path / name).exists()
    service.assert_serving()
    assert agent.registry is not None
    assert agent.registry.level == level
    assert result["level"] == list(level)
    reason: str = result["reason"]
    assert name in reason or (result["version"] or "?") in reason, reason
    return reason


# -- file content ---------------------------------------------------------------------------

CONTENT_CASES: dict[str, tuple[Callable[[str], str | bytes], list[str]]] = {
    "empty file": (lambda t: b"", ["is empty"]),
    "only whitespace": (lambda t: "\n   \n", ["is empty"]),
    "not UTF-8": (lambda t: b"\xff\xfe\x00 latin-1 caf\xe9\n", ["is not UTF-8"]),
    "syntax error": (lambda t: patch_text(t).replace("def f(", "def f(("), ["syntax error"]),
    "import error": (
        lambda t: patch_text(t, head="import hotpatch_no_such_module_anywhere"),
        ["failed to import", "hotpatch_no_such_module_anywhere"],
    ),
    "raises at import": (
        lambda t: patch_text(t, head="raise RuntimeError('boom at import')"),
        ["RuntimeError: boom at import"],
    ),
    "no Patch": (lambda t: "def f():\n    return 1\n", ["declares no Patch"]),
    "two Patch objects": (
        lambda t: patch_text(t) + "other = Patch(version='1.0.2', baseline='1.0')\n",
        ["declares 2 Patch objects"],
    ),
    "wrong baseline": (
        lambda t: patch_text(t, version="2.0.1").replace("baseline='1.0'", "baseline='2.0'"),
        ["is for baseline 2.0", "runs baseline 1.0"],
    ),
    "unknown module": (
        lambda t: patch_text("hotpatch_no_such_module:f"),
        ["hotpatch_no_such_module", "does not exist"],
    ),
    "unknown qualname": (
        lambda t: patch_text(t.replace(":f", ":no_such_function")),
        ["has no attribute 'no_such_function'"],
    ),
    "builtin target": (
        lambda t: patch_text("os:getpid"),
        ["os:getpid", "builtin or C-extension function"],
    ),
    "C method target": (
        lambda t: patch_text("collections:OrderedDict.popitem"),
        ["OrderedDict.popitem", "no Python code to replace"],
    ),
    "incompatible signature": (
        lambda t: patch_text(t, params="x", body="return x"),
        ["cannot accept every call"],
    ),
    "KeyboardInterrupt at import": (
        lambda t: patch_text(t, head="raise KeyboardInterrupt"),
        ["KeyboardInterrupt"],
    ),
    "sys.exit at import": (lambda t: patch_text(t, head="import sys\nsys.exit(3)"), ["sys.exit"]),
    "os._exit at import": (
        lambda t: patch_text(t, head="import os\nos._exit(3)"),
        ["exits at import", "os._exit(3)"],
    ),
}


@pytest.mark.parametrize("case", sorted(CONTENT_CASES))
def test_bad_content_is_rejected(
    case: str,
    folder: DropFolder,
    target: types.ModuleType,
    service: Service,
    start: Callable[..., hotpatch.Agent],
) -> None:
    make, fragments = CONTENT_CASES[case]
    agent = start()
    folder.drop("bad.py", make(f"{target.__name__}:f"))
    reason = rejected(folder, agent, service, "bad.py", ())
    for fragment in fragments:
        assert fragment in reason, reason
    assert service.last == 0  # still the original code


def test_bad_content_never_reaches_the_service_without_verification_either(
    folder: DropFolder,
    target: types.ModuleType,
    service: Service,
    start: Callable[..., hotpatch.Agent],
) -> None:
    # Without the child, the in-process loader refuses the same files (sys.exit included).
    agent = start(verify=False)
    t = f"{target.__name__}:f"
    for n, (case, (make, fragments)) in enumerate(sorted(CONTENT_CASES.items())):
        if case == "os._exit at import":
            continue  # only the child can survive this one: that is what verification is for
        name = f"bad{n}.py"
        folder.drop(name, make(t))
        reason = rejected(folder, agent, service, name, ())
        for fragment in fragments:
            if fragment not in ("exits at import",):
                assert fragment in reason, (case, reason)


def test_hang_at_import_is_killed_after_verify_timeout(
    folder: DropFolder,
    target: types.ModuleType,
    service: Service,
    start: Callable[..., hotpatch.Agent],
) -> None:
    agent = start(verify_timeout=2.0)
    marker = folder.outbox / "still-running"
    head = (
        "import os, time\n"
        "while True:\n"
        f"    open({str(marker)!r}, 'w').close()\n"
        "    time.sleep(0.05)\n"
    )
    folder.drop("hang.py", patch_text(f"{target.__name__}:f", head=head))
    reason = rejected(folder, agent, service, "hang.py", ())
    assert "did not finish importing within 2 s: killed" in reason
    # The child is gone: nothing touches the marker any more. (On a loaded machine
    # the child may have been killed before its loop first ran: no marker then.)
    marker.unlink(missing_ok=True)
    time.sleep(0.5)
    assert not marker.exists()


# -- versions -------------------------------------------------------------------------------


@pytest.fixture
def at_105(
    folder: DropFolder, target: types.ModuleType, start: Callable[..., hotpatch.Agent]
) -> hotpatch.Agent:
    """An agent whose level is 1.0.5 (dropped and applied through the folder)."""
    agent = start()
    folder.drop("base.py", patch_text(f"{target.__name__}:f", version="1.0.5", body="return 5"))
    assert folder.filed("base.py", "applied")["outcome"] == "applied"
    return agent


def test_version_not_newer_is_rejected(
    folder: DropFolder, target: types.ModuleType, service: Service, at_105: hotpatch.Agent
) -> None:
    folder.drop("old.py", patch_text(f"{target.__name__}:f", version="1.0.3", body="return 3"))
    reason = rejected(folder, at_105, service, "old.py", ("1.0.5",))
    assert "1.0.3 is not newer than the current level 1.0.5" in reason
    wait_for(lambda: service.last == 5, "the service to run 1.0.5")


def test_same_version_other_content_is_rejected(
    folder: DropFolder, target: types.ModuleType, service: Service, at_105: hotpatch.Agent
) -> None:
    folder.drop("again.py", patch_text(f"{target.__name__}:f", version="1.0.5", body="return 55"))
    reason = rejected(folder, at_105, service, "again.py", ("1.0.5",))
    assert "1.0.5 is already applied with other content" in reason
    wait_for(lambda: service.last == 5, "the service to run 1.0.5")


# -- the file itself ------------------------------------------------------------------------


def test_a_50_mb_file_is_rejected_without_being_read(
    folder: DropFolder,
    target: types.ModuleType,
    service: Service,
    start: Callable[..., hotpatch.Agent],
) -> None:
    agent = start()
    big = folder.write("big.py", patch_text(f"{target.__name__}:f"))
    with big.open("ab") as out:
        out.write(b"#" * (50 * 1024 * 1024))
    tracemalloc.start()
    try:
        folder.put(big)
        reason = rejected(folder, agent, service, "big.py", ())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "over the size limit of 10485760 bytes" in reason
    assert peak < 5 * 1024 * 1024  # the 50 MB never came into memory


def test_the_size_limit_is_configurable(
    folder: DropFolder,
    target: types.ModuleType,
    service: Service,
    start: Callable[..., hotpatch.Agent],
) -> None:
    agent = start(max_bytes=100)
    folder.drop("fix.py", patch_text(f"{target.__name__}:f"))
    reason = rejected(folder, agent, service, "fix.py", ())
    assert "over the size limit of 100 bytes" in reason


def test_a_symlink_is_rejected(
    folder: DropFolder,
    target: types.ModuleType,
    service: Service,
    start: Callable[..., hotpatch.Agent],
) -> None:
    agent = start()
    real = folder.write("real.py", patch_text(f"{target.__name__}:f"))
    link = folder.outbox / "link.py"
    link.symlink_to(real)
    folder.put(link)
    reason = rejected(folder, agent, service, "link.py", ())
    assert "is a symbolic link" in reason
    assert (folder.path / "rejected" / "link.py").is_symlink()  # filed as it was, not followed
    assert real.exists()


def test_a_file_owned_by_another_user_is_rejected(
    folder: DropFolder,
    target: types.ModuleType,
    service: Service,
    start: Callable[..., hotpatch.Agent],
) -> None:
    agent = start()
    path = folder.write("theirs.py", patch_text(f"{target.__name__}:f"))
    os.chown(path, NOBODY, NOBODY)
    folder.put(path)
    reason = rejected(folder, agent, service, "theirs.py", ())
    assert f"owned by uid {NOBODY}" in reason
    assert "another user" in reason


def test_a_folder_writable_by_others_is_refused_at_start(folder: DropFolder) -> None:
    folder.path.chmod(0o777)
    with pytest.raises(PermissionError, match="writable by other users") as info:
        hotpatch.install("1.0", watch=folder.path, control_socket=False)
    message = str(info.value)
    assert str(folder.path) in message
    assert f"chmod go-w {folder.path}" in message


def test_a_group_writable_folder_is_refused_at_start(folder: DropFolder) -> None:
    folder.path.chmod(0o770)
    with pytest.raises(PermissionError, match="chmod go-w"):
        hotpatch.install("1.0", watch=folder.path, control_socket=False)


def test_a_folder_owned_by_another_user_is_refused_at_start(folder: DropFolder) -> None:
    os.chown(folder.path, NOBODY, NOBODY)
    with pytest.raises(PermissionError, match=f"owned by uid {NOBODY}") as info:
        hotpatch.install("1.0", watch=folder.path, control_socket=False)
    assert f"chown {os.geteuid()} {folder.path}" in str(info.value)


# -- signatures -----------------------------------------------------------------------------


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """(trusted keys directory, the trusted private key)."""
    trusted = tmp_path / "trusted"
    private, _ = generate_keypair(trusted, "ops")
    private_dir = tmp_path / "private"
    private_dir.mkdir(mode=0o700)
    moved = private_dir / private.name
    os.rename(private, moved)
    return trusted, moved


def test_an_unsigned_patch_is_rejected_when_signatures_are_required(
    folder: DropFolder,
    target: types.ModuleType,
    service: Service,
    start: Callable[..., hotpatch.Agent],
    keys: tuple[Path, Path],
) -> None:
    agent = start(require_signature=True, trusted_keys=keys[0])
    folder.drop("fix.py", patch_text(f"{target.__name__}:f"))
    reason = rejected(folder, agent, service, "fix.py", ())
    assert "fix.py is not signed" in reason
    assert "hotpatch sign fix.py" in reason


def test_a_tampered_patch_is_rejected(
    folder: DropFolder,
    target: types.ModuleType,
    service: Service,
    start: Callable[..., hotpatch.Agent],
    keys: tuple[Path, Path],
) -> None:
    agent = start(require_signature=True, trusted_keys=keys[0])
    path = folder.write("fix.py", patch_text(f"{target.__name__}:f"))
    sig = sign_file(path, keys[1])
    path.write_text(patch_text(f"{target.__name__}:f", body="return 666"))  # after signing
    folder.put(sig)
    folder.put(path)
    reason = rejected(folder, agent, service, "fix.py", ())
    assert "fix.py has been tampered with" in reason
    assert (folder.path / "rejected" / "fix.py.sig").exists()  # filed with its patch


def test_a_signature_by_an_untrusted_key_is_rejected(
    folder: DropFolder,
    target: types.ModuleType,
    service: Service,
    start: Callable[..., hotpatch.Agent],
    keys: tuple[Path, Path],
) -> None:
    stranger, _ = generate_keypair(keys[0].parent / "stranger", "mallory")
    agent = start(require_signature=True, trusted_keys=keys[0])
    path = folder.write("fix.py", patch_text(f"{target.__name__}:f"))
    folder.put(sign_file(path, stranger))
    folder.put(path)
    reason = rejected(folder, agent, service, "fix.py", ())
    assert "which is not trusted" in reason


def test_a_properly_signed_patch_goes_in(
    folder: DropFolder,
    target: types.ModuleType,
    service: Service,
    start: Callable[..., hotpatch.Agent],
    keys: tuple[Path, Path],
) -> None:
    agent = start(require_signature=True, trusted_keys=keys[0])
    path = folder.write("fix.py", patch_text(f"{target.__name__}:f"))
    sig = sign_file(path, keys[1])
    folder.put(path)  # the patch first, its signature just after: the folder waits for it
    folder.put(sig)
    result = folder.filed("fix.py", "applied")
    assert result["outcome"] == "applied", result["reason"]
    assert result["key_id"]
    wait_for(lambda: service.last == 1, "the service to run the patch")
    assert agent.registry is not None
    assert agent.registry.level == ("1.0.1",)
    assert (folder.path / "applied" / "fix.py.sig").exists()


def test_signatures_need_trusted_keys(folder: DropFolder) -> None:
    with pytest.raises(ValueError, match="require_signature=True needs trusted_keys"):
        hotpatch.install("1.0", watch=folder.path, require_signature=True, control_socket=False)


# -- volume ---------------------------------------------------------------------------------


def test_200_valid_patches_dropped_at_once_are_all_applied_in_order(
    folder: DropFolder,
    target: types.ModuleType,
    service: Service,
    start: Callable[..., hotpatch.Agent],
) -> None:
    versions = [f"1.0.{n}" for n in range(1, 201)]
    staged = [
        folder.write(f"p{n:03d}.py", patch_text(f"{target.__name__}:f", v, f"return {n}"))
        for n, v in enumerate(versions, 1)
    ]
    random.Random(5).shuffle(staged)
    agent = start(verify=False)
    # One `mv`, as an operator would: the files arrive one by one, versions shuffled.
    subprocess.run(["mv", *map(str, staged), str(folder.path)], check=True)
    for path in staged:
        assert folder.filed(path.name, "applied")["outcome"] == "applied"
    assert agent.registry is not None
    assert agent.registry.level == tuple(versions)
    assert os.listdir(folder.path / "rejected") == []
    service.assert_serving()
    wait_for(lambda: service.last == 200, "the service to run the last patch")
