"""The pre-started verifier: fast checks that keep the patch out of the service and the verifier.

Each patch is imported in a fresh child that the verifier forks; whatever the
patch does at import -- exit, loop, start a daemon, change global state, kill
its parent -- the service and the pre-started verifier stay as they were.
"""

from __future__ import annotations

import dis
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import CodeType, FrameType

import pytest
from pychild import run_python, run_python_json

from hotpatch import VerificationFailed
from hotpatch.agent._verifier_link import VerifierProcess
from hotpatch.agent._verify import Verifier, VerifyReport, library_modules

pytestmark = pytest.mark.e2e

TIMEOUT = 1.5
HEADER = "from hotpatch import Patch\npatch = Patch(version='1.0.1', baseline='1.0')\n"
JOIN = HEADER + "@patch.replace('os.path:join')\ndef join(a, *p):\n    return a\n"


@pytest.fixture
def verifier(make_module) -> Iterator[Verifier]:
    # After make_module, which puts its folder on sys.path: the path the checks use.
    with Verifier() as v:
        v.prepare(sys.path)
        yield v


@pytest.fixture
def target(make_module):
    return make_module(
        """
        STATE = "pristine"

        def price(x):
            return x
        """
    )


def good(target) -> str:
    return replacing(target.__name__, "price")


def replacing(module: str, function: str) -> str:
    """A patch that replaces ``module:function`` (of one argument)."""
    return HEADER + f"@patch.replace('{module}:{function}')\ndef {function}(x):\n    return 1\n"


def check(verifier: Verifier, path: Path, **kwargs: object) -> VerifyReport:
    kwargs.setdefault("sys_path", list(sys.path))
    kwargs.setdefault("timeout", 30.0)
    return verifier.check(path, **kwargs)  # type: ignore[arg-type]


def _running(pid: int) -> bool:
    """Is ``pid`` a live process (not gone, not a zombie)?"""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _eventually(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def _untouched(verifier: Verifier, pid: int | None, target, write_patch) -> None:
    """The same verifier process still runs and still checks patches."""
    assert pid is not None
    assert verifier.pid == pid
    assert check(verifier, write_patch(good(target))).version == "1.0.1"
    assert verifier.pid == pid
    assert verifier.starts == 1
    assert target.STATE == "pristine"


def test_checks_reuse_one_verifier_and_never_run_the_patch_in_it(
    verifier, target, write_patch, tmp_path: Path
) -> None:
    seen = tmp_path / "seen"
    path = write_patch(
        HEADER
        + textwrap.dedent(
            f"""
            import os
            with open({str(seen)!r}, "a") as out:
                out.write(f"{{os.getpid()}} {{os.getppid()}}\\n")

            @patch.replace("{target.__name__}:price")
            def price(x):
                return x * 2
            """
        )
    )
    for _ in range(3):
        report = check(verifier, path)
        assert report.targets == (f"{target.__name__}:price",)
    assert verifier.starts == 1
    rows = [tuple(map(int, line.split())) for line in seen.read_text().splitlines()]
    assert len(rows) == 3
    assert len({pid for pid, _ in rows}) == 3  # a fresh child each time
    for pid, parent in rows:
        assert pid not in (os.getpid(), verifier.pid)
        assert parent == verifier.pid
    assert target.price(2) == 2  # nothing applied here


@pytest.mark.parametrize(
    ("body", "refusal"),
    [
        ("import os\nos._exit(3)\n", r"exits at import \(os\._exit\(3\)"),
        ("import sys\nsys.exit(4)\n", r"calls sys\.exit\(4\) while importing"),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", r"SIGKILL"),
        ("raise KeyboardInterrupt\n", r"raised KeyboardInterrupt while importing"),
    ],
)
def test_a_patch_that_ends_its_process_leaves_the_verifier_untouched(
    verifier, target, write_patch, body: str, refusal: str
) -> None:
    check(verifier, write_patch(good(target)))
    pid = verifier.pid
    with pytest.raises(VerificationFailed, match=refusal):
        check(verifier, write_patch(HEADER + body))
    _untouched(verifier, pid, target, write_patch)


def test_a_looping_patch_is_killed_and_the_verifier_goes_on(verifier, target, write_patch) -> None:
    check(verifier, write_patch(good(target)))
    pid = verifier.pid
    with pytest.raises(VerificationFailed, match=r"within 1\.5 s: killed"):
        check(verifier, write_patch(HEADER + "while True:\n    pass\n"), timeout=TIMEOUT)
    _untouched(verifier, pid, target, write_patch)


def test_a_daemon_the_patch_starts_dies_with_its_check(
    verifier, target, write_patch, tmp_path: Path
) -> None:
    check(verifier, write_patch(good(target)))
    pid = verifier.pid
    pid_file = tmp_path / "daemon.pid"
    # The classic double fork: out of the child's process group and session.
    path = write_patch(
        good(target)
        + textwrap.dedent(
            f"""
            import os, time
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    with open({str(pid_file)!r} + ".tmp", "w") as f:
                        f.write(str(os.getpid()))
                    os.replace({str(pid_file)!r} + ".tmp", {str(pid_file)!r})
                    time.sleep(300)
                os._exit(0)
            deadline = time.monotonic() + 20
            while not os.path.exists({str(pid_file)!r}) and time.monotonic() < deadline:
                time.sleep(0.01)
            """
        )
    )
    assert check(verifier, path).version == "1.0.1"
    daemon = int(pid_file.read_text())
    assert _eventually(lambda: not _running(daemon)), f"daemon {daemon} is still running"
    _untouched(verifier, pid, target, write_patch)


def test_global_state_a_patch_changes_stays_in_its_child(
    verifier, target, write_patch, tmp_path: Path
) -> None:
    check(verifier, write_patch(good(target)))
    pid = verifier.pid
    name = target.__name__
    spoil = write_patch(
        good(target)
        + textwrap.dedent(
            f"""
            import json, os, sys
            import {name}
            {name}.STATE = "spoiled"
            os.environ["HOTPATCH_SPOILED"] = "1"
            sys.path.insert(0, "/spoiled")
            sys.modules["json"] = None
            os.chdir("/")
            """
        )
    )
    assert check(verifier, spoil).version == "1.0.1"
    # The next patch, in the same verifier, sees none of it.
    probe = write_patch(
        good(target)
        + textwrap.dedent(
            f"""
            import json, os, sys
            import {name}
            assert {name}.STATE == "pristine", {name}.STATE
            assert "HOTPATCH_SPOILED" not in os.environ
            assert "/spoiled" not in sys.path
            assert os.getcwd() == {os.getcwd()!r}
            """
        )
    )
    assert check(verifier, probe).version == "1.0.1"
    assert "HOTPATCH_SPOILED" not in os.environ
    assert "/spoiled" not in sys.path
    _untouched(verifier, pid, target, write_patch)


def test_a_patch_that_kills_the_verifier_is_refused_and_a_new_one_takes_over(
    verifier, target, write_patch
) -> None:
    check(verifier, write_patch(good(target)))
    first = verifier.pid
    killer = write_patch(HEADER + "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n")
    with pytest.raises(VerificationFailed, match=r"verification process was killed by SIGKILL"):
        check(verifier, killer)
    assert first is not None
    assert _eventually(lambda: not _running(first))
    assert check(verifier, write_patch(good(target))).version == "1.0.1"
    assert verifier.pid not in (None, first)


def test_a_new_sys_path_starts_a_new_verifier(verifier, write_patch, tmp_path: Path) -> None:
    hidden = tmp_path / "only_here"
    hidden.mkdir()
    (hidden / "reachable_only_here.py").write_text("def f():\n    return 1\n")
    path = write_patch(HEADER + "@patch.replace('reachable_only_here:f')\ndef f():\n    return 2\n")
    with pytest.raises(VerificationFailed, match="does not exist"):
        check(verifier, path)
    first = verifier.pid
    assert check(verifier, path, sys_path=[str(hidden), *sys.path]).version == "1.0.1"
    assert verifier.starts == 2
    assert verifier.pid != first
    assert "reachable_only_here" not in sys.modules


def test_code_changed_on_disk_starts_a_new_verifier(make_module, write_patch) -> None:
    module = make_module("def price(x):\n    return x\n")
    _aged(module)
    name = module.__name__
    with Verifier(warm=[name]) as verifier:
        first = write_patch(
            HEADER + f"@patch.replace('{name}:price')\ndef price(x):\n    return 1\n"
        )
        assert check(verifier, first).version == "1.0.1"
        assert verifier.starts == 1
        # A new release of the service's code, with a function the patch targets.
        source = Path(module.__file__)
        source.write_text("def price(x):\n    return x\n\ndef added(x):\n    return x\n")
        os.utime(source, ns=(time.time_ns(), time.time_ns() + 10**9))
        second = write_patch(
            HEADER + f"@patch.replace('{name}:added')\ndef added(x):\n    return 1\n"
        )
        assert check(verifier, second).targets == (f"{name}:added",)
        assert verifier.starts == 2


def test_a_module_that_starts_a_thread_is_not_warmed(make_module, write_patch) -> None:
    threaded = make_module(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(300,), daemon=True).start()\n"
        "def price(x):\n    return x\n"
    )
    name = threaded.__name__
    _aged(threaded)
    with Verifier(warm=["json", name, "decimal"]) as verifier:
        path = write_patch(
            HEADER + f"@patch.replace('{name}:price')\ndef price(x):\n    return 1\n"
        )
        # Checked all the same, the module imported in the child instead.
        assert check(verifier, path).version == "1.0.1"
        assert verifier.starts == 2  # the first verifier ended when it saw the thread
        pid = verifier.pid
        assert check(verifier, path).version == "1.0.1"
        assert verifier.pid == pid


def _aged(module) -> None:
    """Date the module's file a minute back: on disk before any verifier started."""
    past = time.time_ns() - 60 * 10**9
    os.utime(module.__file__, ns=(past, past))


def test_the_modules_a_passed_check_imported_are_warmed(make_module, write_patch) -> None:
    helper = make_module("import decimal\nRATE = decimal.Decimal(1)\n")
    target = make_module(f"import {helper.__name__}\ndef price(x):\n    return x\n")
    for module in (helper, target):
        _aged(module)
    with Verifier() as verifier:
        report = check(verifier, write_patch(good(target)))
        assert {target.__name__, helper.__name__} <= set(report.imported)
        assert verifier.warmed[0] == target.__name__
        check(verifier, write_patch(good(target)))  # the warm is answered before this check
        assert {target.__name__, helper.__name__} <= verifier.loaded
        assert verifier.starts == 1


def test_a_file_written_after_the_verifier_started_is_never_imported_into_it(
    make_module, write_patch, tmp_path: Path
) -> None:
    folder = Path(make_module("X = 1\n").__file__).parent
    with Verifier() as verifier:
        verifier.prepare(sys.path)
        check(verifier, write_patch(JOIN))
        # A patch that writes a module and targets it: the module passes the check,
        # but is written after the verifier started, so it is never warmed there.
        written = write_patch(
            HEADER
            + textwrap.dedent(
                f"""
                with open({str(folder / "written_by_patch.py")!r}, "w") as out:
                    out.write("import os\\nVERIFIER = os.getpid()\\ndef f():\\n    return 1\\n")

                @patch.replace("written_by_patch:f")
                def f():
                    return 2
                """
            )
        )
        assert check(verifier, written).targets == ("written_by_patch:f",)
        assert "written_by_patch" in verifier.warmed  # asked for ...
        check(verifier, write_patch(good(make_module("def price(x):\n    return x\n"))))
        assert "written_by_patch" not in verifier.loaded  # ... and refused
        assert verifier.starts == 1


def test_library_modules_are_the_standard_library_and_packages_only() -> None:
    names = library_modules()
    assert "json" in names
    assert "pytest" in names
    assert not [n for n in names if n == "hotpatch" or n.startswith("hotpatch.")]
    assert "__main__" not in names
    assert not [n for n in names if n.startswith("test_")]


SERVICE = """
import sys, time
sys.path[:0] = {paths!r}
from hotpatch.agent._verify import Verifier
v = Verifier()
v.prepare(sys.path)
v.check({path!r}, sys_path=sys.path, timeout=30.0)
print(v.pid, flush=True)
v.check({loop!r}, sys_path=sys.path, timeout=300.0)
"""


def test_the_verifier_and_its_check_die_with_the_service(
    target, write_patch, tmp_path: Path
) -> None:
    pid_file = tmp_path / "checking.pid"
    loop = write_patch(
        HEADER
        + textwrap.dedent(
            f"""
            import os, time
            with open({str(pid_file)!r} + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace({str(pid_file)!r} + ".tmp", {str(pid_file)!r})
            while True:
                time.sleep(1)
            """
        )
    )
    code = SERVICE.format(paths=sys.path, path=str(write_patch(good(target))), loop=str(loop))
    service = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert service.stdout is not None
        verifier_pid = int(service.stdout.readline())
        assert _eventually(pid_file.exists, 60)
        checking = int(pid_file.read_text())
        assert _running(verifier_pid)
        assert _running(checking)
        service.send_signal(signal.SIGKILL)  # no chance to clean up
        service.wait()
        assert _eventually(lambda: not _running(verifier_pid)), "the verifier outlived the service"
        assert _eventually(lambda: not _running(checking)), "the check outlived the service"
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
        if service.stdout is not None:
            service.stdout.close()


FORKING = """
import os, sys
sys.path[:0] = {paths!r}
from hotpatch.agent._verify import Verifier
v = Verifier()
v.check({path!r}, sys_path=sys.path, timeout=30.0)
parent_verifier = v.pid
child = os.fork()
if child == 0:
    # The parent's verifier is not the child's: it starts one of its own.
    v.check({path!r}, sys_path=sys.path, timeout=30.0)
    os._exit(0 if v.pid not in (None, parent_verifier) else 1)
_, status = os.waitpid(child, 0)
v.check({path!r}, sys_path=sys.path, timeout=30.0)
assert v.pid == parent_verifier, (v.pid, parent_verifier)
v.close()
print("ok", os.waitstatus_to_exitcode(status), flush=True)
"""


def test_a_forked_service_process_gets_a_verifier_of_its_own(target, write_patch) -> None:
    code = FORKING.format(paths=sys.path, path=str(write_patch(good(target))))
    assert run_python(code).split() == ["ok", "0"]


def test_close_ends_the_verifier(target, write_patch) -> None:
    verifier = Verifier()
    check(verifier, write_patch(good(target)))
    pid = verifier.pid
    assert pid is not None
    verifier.close()
    assert not _running(pid)
    assert verifier.pid is None
    with pytest.raises(VerificationFailed, match="closed"):
        check(verifier, write_patch(good(target)))


# In a process of its own that drops to uid 65534 (root is exempt from RLIMIT_NPROC): the
# verifier's check, with fork() failing for real (RLIMIT_NPROC 0: EAGAIN), then its second
# pipe (3 descriptors free: EMFILE). Prints the answers as the service reads them, and the
# descriptors open before and after.
NO_CHILD = """
import json, os, resource, socket, sys
sys.path[:0] = {paths!r}
from hotpatch._shortage import Shortage
from hotpatch.agent._verifier import _check, unpack_size
from hotpatch.agent._verify import _interpret

def fds():
    return sorted(int(fd) for fd in os.listdir("/proc/self/fd"))

def is_open(fd):
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True

def check():
    try:
        _check(ours, {{"timeout": 5.0, "path": "patch.py", "max_bytes": 1 << 20}})
    except OSError as exc:
        return f"the verifier failed: {{exc!r}}"
    size = unpack_size(theirs.recv(4, socket.MSG_WAITALL))
    answer = json.loads(theirs.recv(size, socket.MSG_WAITALL))
    try:
        _interpret(answer, "patch.py", 5.0)
    except Shortage as exc:
        return f"Shortage: {{exc}}"
    except Exception as exc:
        return f"{{type(exc).__name__}}: {{exc}}"
    return "passed"

ours, theirs = socket.socketpair()
os.setgid(65534)
os.setuid(65534)
nproc = resource.getrlimit(resource.RLIMIT_NPROC)
nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
before = fds()
resource.setrlimit(resource.RLIMIT_NPROC, (0, nproc[1]))
no_fork = [check() for _ in range(3)]
resource.setrlimit(resource.RLIMIT_NPROC, nproc)
after_fork = fds()
free = [fd for fd in range(nofile[0]) if not is_open(fd)][:3]
resource.setrlimit(resource.RLIMIT_NOFILE, (free[-1] + 1, nofile[1]))
no_pipe = [check() for _ in range(3)]
resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
print(json.dumps({{"no_fork": no_fork, "no_pipe": no_pipe, "before": before,
                  "after_fork": after_fork, "after_pipe": fds()}}))
"""


def test_a_check_that_cannot_fork_or_make_its_pipes_leaves_no_descriptor_and_is_a_shortage() -> (
    None
):
    seen = run_python_json(NO_CHILD.format(paths=sys.path))
    # Each failed check used to leave its pipes open: 4 descriptors for a fork, 2 for a pipe.
    assert (seen["after_fork"], seen["after_pipe"]) == (seen["before"], seen["before"]), seen
    # Not the patch's fault: the drop waits and is tried again (never a rejection).
    for outcome in seen["no_fork"]:
        assert outcome.startswith("Shortage: out of processes (RLIMIT_NPROC"), outcome
        assert "no child could be started to import it" in outcome
    for outcome in seen["no_pipe"]:
        assert outcome.startswith("Shortage: out of file descriptors"), outcome


def _pausing_after_first(
    code: CodeType, attribute: str, paused: threading.Event, go_on: threading.Event
) -> Callable[[Callable[[], object]], object]:
    """``run(call)``: ``call()`` in this thread, paused (``paused`` set, until ``go_on``) at
    the instruction after the first read of ``attribute`` in ``code``.

    Instruction events: ``sys.monitoring`` from 3.12 (there, opcode tracing set from a trace
    function is not always honoured), opcode tracing on 3.11."""
    reads = {i.offset for i in dis.get_instructions(code) if i.argval == attribute}
    state = {"read": False}

    def step(offset: int) -> None:
        if state["read"] and not paused.is_set():
            paused.set()
            go_on.wait(30)
        elif offset in reads:
            state["read"] = True

    if sys.version_info >= (3, 12):
        monitoring = sys.monitoring
        me = threading.get_ident()

        def run(call: Callable[[], object]) -> object:
            tool = next(t for t in range(6) if monitoring.get_tool(t) is None)
            monitoring.use_tool_id(tool, "test_verifier")
            event = monitoring.events.INSTRUCTION

            def on_instruction(_code: CodeType, offset: int) -> None:
                if threading.get_ident() == me:
                    step(offset)

            monitoring.register_callback(tool, event, on_instruction)
            monitoring.set_local_events(tool, code, event)
            try:
                return call()
            finally:
                monitoring.set_local_events(tool, code, 0)
                monitoring.register_callback(tool, event, None)
                monitoring.free_tool_id(tool)

        return run

    def opcodes(frame: FrameType, event: str, _arg: object) -> object:
        if event == "opcode":
            step(frame.f_lasti)
        return opcodes

    def calls(frame: FrameType, event: str, _arg: object) -> object:
        if event == "call" and frame.f_code is code:
            frame.f_trace_opcodes = True
            frame.f_trace_lines = False
            return opcodes
        return None

    def run_traced(call: Callable[[], object]) -> object:
        sys.settrace(calls)
        try:
            return call()
        finally:
            sys.settrace(None)  # on 3.13 a thread ending traced leaves functions instrumented

    return run_traced


def test_pid_asked_while_the_verifier_stops_is_none_not_an_error(target, write_patch) -> None:
    verifier = Verifier()
    check(verifier, write_patch(good(target)))
    paused, go_on = threading.Event(), threading.Event()
    answers: list[object] = []

    def ask() -> None:
        # alive() paused just after it first read the process's Popen.
        run = _pausing_after_first(VerifierProcess.alive.__code__, "_popen", paused, go_on)
        try:
            answers.append(run(lambda: verifier.pid))
        except Exception as exc:
            answers.append(exc)

    asking = threading.Thread(target=ask)
    asking.start()
    try:
        assert paused.wait(30)
        verifier.close()  # as another thread's stop: the process lets go of its Popen
    finally:
        go_on.set()
        asking.join()
    assert answers == [None]
