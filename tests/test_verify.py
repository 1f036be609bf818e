"""Child verification: a patch is imported in a throwaway process before the service sees it."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hotpatch import VerificationFailed
from hotpatch.agent._verify import VerifyReport, verify_in_child

pytestmark = pytest.mark.e2e

# Short, so that the hanging cases stay quick; generous enough for a loaded machine.
TIMEOUT = 1.5
HEADER = "from hotpatch import Patch\npatch = Patch(version='1.0.1', baseline='1.0')\n"


def _verify(path: Path, **kwargs: object) -> VerifyReport:
    kwargs.setdefault("sys_path", list(sys.path))
    return verify_in_child(path, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def target(make_module):
    return make_module(
        """
        def price(x):
            return x

        class Cart:
            def total(self):
                return 0
        """
    )


def _gone(pid: int) -> bool:
    """Wait (bounded) until ``pid`` no longer runs: gone, or a zombie nobody reaped yet."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.02)
    return False


def test_a_good_patch_reports_its_version_and_targets(target, write_patch) -> None:
    path = write_patch(
        f"""
        from hotpatch import Patch
        print("noise on stdout does not corrupt the report " * 5000)
        patch = Patch(version="1.0.1", baseline="1.0")

        @patch.replace("{target.__name__}:price")
        def price(x):
            return x * 2

        @patch.replace_class("{target.__name__}:Cart")
        class Cart:
            def total(self):
                return 1
        """
    )
    report = _verify(path)
    assert report.version == "1.0.1"
    assert report.baseline == "1.0"
    assert report.targets == (f"{target.__name__}:price", f"{target.__name__}:Cart")
    assert report.elapsed_s > 0
    assert target.price(2) == 2  # nothing was applied here


def test_raising_at_import_is_refused_with_the_exception(write_patch) -> None:
    path = write_patch(HEADER + "1 / 0\n")
    with pytest.raises(VerificationFailed, match="failed to import: ZeroDivisionError"):
        _verify(path)


def test_sys_exit_at_import_is_refused(write_patch) -> None:
    path = write_patch("import sys\n" + HEADER + "sys.exit(0)\n")
    with pytest.raises(VerificationFailed, match=r"calls sys\.exit\(0\) while importing"):
        _verify(path)


def test_os_exit_at_import_is_refused(write_patch) -> None:
    path = write_patch("import os\n" + HEADER + "print('bye', flush=True)\nos._exit(3)\n")
    with pytest.raises(VerificationFailed, match=r"exits at import \(os\._exit\(3\)") as info:
        _verify(path)
    assert "its last output: bye" in str(info.value)


def test_os_exit_zero_at_import_is_refused_too(write_patch) -> None:
    path = write_patch("import os\n" + HEADER + "os._exit(0)\n")
    with pytest.raises(VerificationFailed, match=r"exits at import \(os\._exit\(0\)"):
        _verify(path)


def test_a_signal_at_import_is_refused(write_patch) -> None:
    path = write_patch("import os, signal\n" + HEADER + "os.kill(os.getpid(), signal.SIGTERM)\n")
    with pytest.raises(VerificationFailed, match=r"killed the verification child .*SIGTERM"):
        _verify(path)


def test_looping_forever_at_import_is_killed_at_the_timeout(write_patch) -> None:
    path = write_patch(HEADER + "while True:\n    pass\n")
    with pytest.raises(VerificationFailed, match=r"did not finish importing within 1\.5 s: killed"):
        _verify(path, timeout=TIMEOUT)


def test_unknown_module_and_qualname_are_refused_naming_the_target(target, write_patch) -> None:
    path = write_patch(HEADER + "@patch.replace('no_such_module_xyz:f')\ndef f():\n    pass\n")
    with pytest.raises(VerificationFailed, match="'no_such_module_xyz' does not exist") as info:
        _verify(path)
    assert info.value.patch == "1.0.1"
    assert info.value.target == "no_such_module_xyz:f"

    path = write_patch(HEADER + f"@patch.replace('{target.__name__}:Cart.nope')\ndef f(s): ...\n")
    with pytest.raises(VerificationFailed, match="has no attribute 'nope'") as info:
        _verify(path)
    assert info.value.target == f"{target.__name__}:Cart.nope"


def test_a_builtin_target_is_refused(write_patch) -> None:
    path = write_patch(HEADER + "@patch.replace('os:getpid')\ndef getpid():\n    return 1\n")
    with pytest.raises(VerificationFailed, match="os:getpid"):
        _verify(path)


def test_migrations_resolve_but_never_run(target, write_patch, tmp_path: Path) -> None:
    marker = tmp_path / "migrated"
    path = write_patch(
        HEADER
        + textwrap.dedent(
            f"""
            @patch.replace("{target.__name__}:price")
            def price(x):
                return x

            @patch.migrate("{target.__name__}")
            def up(module):
                open({str(marker)!r}, "w").close()
            """
        )
    )
    assert _verify(path).version == "1.0.1"
    assert not marker.exists()

    path = write_patch(HEADER + "@patch.migrate('no_such_module_abc')\ndef up(m):\n    pass\n")
    with pytest.raises(VerificationFailed, match="'no_such_module_abc' does not exist"):
        _verify(path)


def test_the_child_gets_the_given_sys_path(tmp_path: Path, write_patch) -> None:
    hidden = tmp_path / "only_here"
    hidden.mkdir()
    (hidden / "reachable_only_via_sys_path.py").write_text("def f():\n    return 1\n")
    path = write_patch(
        HEADER + "@patch.replace('reachable_only_via_sys_path:f')\ndef f():\n    return 2\n"
    )
    assert str(hidden) not in sys.path
    report = _verify(path, sys_path=[str(hidden), *sys.path])
    assert report.targets == ("reachable_only_via_sys_path:f",)
    with pytest.raises(VerificationFailed, match="does not exist"):
        _verify(path, sys_path=list(sys.path))
    assert "reachable_only_via_sys_path" not in sys.modules
    # No bytecode was written into the service's tree.
    assert not (hidden / "__pycache__").exists()


def test_the_child_ignores_the_environment_and_has_no_stdin(
    tmp_path: Path, write_patch, monkeypatch
) -> None:
    out = tmp_path / "seen.txt"
    monkeypatch.setenv("PYTHONPATH", "/nonexistent-from-env")
    path = write_patch(
        HEADER
        + textwrap.dedent(
            f"""
            import os, sys
            with open({str(out)!r}, "w") as f:
                f.write(os.readlink("/proc/self/fd/0") + "\\n")
                f.write(repr(sys.stdin.read()) + "\\n")
                f.write(repr(sys.dont_write_bytecode) + "\\n")
                f.write(repr("/nonexistent-from-env" in sys.path) + "\\n")
                f.write(repr(os.getpgid(0) == os.getpid()) + "\\n")

            @patch.replace("os.path:join")
            def join(a, *p):
                return a
            """
        )
    )
    # Give this process a pipe as stdin: the child must not inherit it.
    read_end, write_end = os.pipe()
    saved = os.dup(0)
    os.dup2(read_end, 0)
    try:
        assert _verify(path).targets == ("os.path:join",)
    finally:
        os.dup2(saved, 0)
        for fd in (saved, read_end, write_end):
            os.close(fd)
    assert out.read_text().splitlines() == ["/dev/null", "''", "True", "False", "True"]


def test_a_grandchild_that_outlives_the_child_is_killed(
    target, write_patch, tmp_path: Path
) -> None:
    pid_file = tmp_path / "grandchild.pid"
    path = write_patch(
        HEADER
        + textwrap.dedent(
            f"""
            import subprocess, sys
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
            with open({str(pid_file)!r}, "w") as f:
                f.write(str(child.pid))

            @patch.replace("{target.__name__}:price")
            def price(x):
                return x
            """
        )
    )
    assert _verify(path).version == "1.0.1"
    grandchild = int(pid_file.read_text())
    assert _gone(grandchild), f"grandchild {grandchild} is still running"


def test_a_hanging_patch_and_its_grandchildren_are_all_killed(write_patch, tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    path = write_patch(
        HEADER
        + textwrap.dedent(
            f"""
            import os, subprocess, sys, time
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
            with open({str(pid_file)!r} + ".tmp", "w") as f:
                f.write(str(child.pid))
            os.replace({str(pid_file)!r} + ".tmp", {str(pid_file)!r})
            time.sleep(300)
            """
        )
    )
    # On a loaded machine the child can be killed before it started the grandchild:
    # that run shows nothing, so it is repeated with more time (bounded).
    timeout = TIMEOUT
    while not pid_file.exists():
        assert timeout <= 16 * TIMEOUT, "the verification child never started its grandchild"
        with pytest.raises(VerificationFailed, match="killed"):
            _verify(path, timeout=timeout)
        timeout *= 2
    assert _gone(int(pid_file.read_text()))


def test_threads_the_patch_starts_do_not_keep_the_child_alive(target, write_patch) -> None:
    path = write_patch(
        HEADER
        + textwrap.dedent(
            f"""
            import threading, time
            threading.Thread(target=time.sleep, args=(300,)).start()  # not a daemon

            @patch.replace("{target.__name__}:price")
            def price(x):
                return x
            """
        )
    )
    # It reports and ends at once; the timeout would make this fail otherwise.
    assert _verify(path, timeout=30).version == "1.0.1"


def test_the_size_limit_is_enforced_in_the_child(write_patch) -> None:
    path = write_patch(HEADER + "#" * 5000 + "\n")
    with pytest.raises(VerificationFailed, match="over the limit of 1000"):
        _verify(path, max_bytes=1000)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "is empty"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"def (:\n", "syntax error"),
        (b"x = 1\n", "declares no Patch"),
    ],
)
def test_files_that_are_not_patches_are_refused(tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / "bad.py"
    path.write_bytes(content)
    with pytest.raises(VerificationFailed, match=why):
        _verify(path)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(VerificationFailed, match="cannot be read"):
        _verify(tmp_path / "missing.py")
