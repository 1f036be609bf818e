"""The ``hotpatch`` command, run as a real process against a real agent in this process."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from drops import Watching, wait_for

import hotpatch
from hotpatch.agent._control_server import ControlServer

pytestmark = pytest.mark.e2e

ENV_VARS = ("HOTPATCH_SOCKET", "HOTPATCH_SIGNING_KEY")


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, how: str = "module"
) -> subprocess.CompletedProcess[str]:
    """Run the command as a user would; ``how``: module (``-m hotpatch.cli``), package, script."""
    command = {
        "module": [sys.executable, "-m", "hotpatch.cli"],
        "package": [sys.executable, "-m", "hotpatch"],
        "script": [str(Path(sysconfig.get_path("scripts")) / "hotpatch")],
    }[how]
    environment = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    environment.update(env or {})
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=cwd or tempfile.gettempdir(),
        stdin=subprocess.DEVNULL,
        timeout=300,  # a hung command fails the test instead of hanging it
        check=False,
    )


def as_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


@pytest.fixture
def target(make_module):
    return make_module(
        """
        def price(x):
            return x
        """
    )


@pytest.fixture
def patch_file(write_patch, target) -> Callable[..., Path]:
    """``patch_file(version, factor, **options)`` -> a patch file of ``price``."""

    def make(version: str, factor: int = 2, **options: str) -> Path:
        extra = "".join(f", {k}={v}" for k, v in options.items())
        return write_patch(
            f"""
            from hotpatch import Patch
            patch = Patch(version="{version}", baseline="1.0"{extra})

            @patch.replace("{target.__name__}:price")
            def price(x):
                return x * {factor}
            """,
            name=f"{version}.py",
        )

    return make


@pytest.fixture
def watched(tmp_path: Path) -> Path:
    folder = tmp_path / "watched"
    folder.mkdir(mode=0o700)
    return folder


@pytest.fixture
def agent(watched: Path) -> Iterator[hotpatch.Agent]:
    with hotpatch.install("1.0", watch=watched, entry_points=False) as running:
        yield running
    if running.registry is not None and running.registry.level:
        running.registry.rollback(to="1.0")


def sock(agent: hotpatch.Agent) -> list[str]:
    assert agent.socket is not None
    return ["--socket", str(agent.socket)]


# -- status ---------------------------------------------------------------------------------


def test_status_prints_an_aligned_table_and_json(agent) -> None:
    result = run_cli("status", *sock(agent))
    assert result.returncode == 0, result.stderr
    rows = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert rows["baseline"] == "1.0"
    assert rows["version"] == "1.0"
    assert rows["level"] == "baseline only (1.0)"
    assert rows["pid"] == str(os.getpid())
    assert rows["last"] == "-"
    # Values start in one column.
    starts = {len(line) - len(line.split(None, 1)[1]) for line in result.stdout.splitlines()}
    assert len(starts) == 1

    data = as_json(run_cli("status", "--json", *sock(agent)))
    assert data["ok"] is True
    assert (data["baseline"], data["version"], data["level"]) == ("1.0", "1.0", [])
    assert data["pid"] == os.getpid()


def test_options_work_before_the_command_and_through_every_entry_point(agent) -> None:
    for how in ("module", "package", "script"):
        result = run_cli("--json", *sock(agent), "status", how=how)
        assert result.returncode == 0, (how, result.stderr)
        assert as_json(result)["baseline"] == "1.0"


# -- finding the agent ----------------------------------------------------------------------


def test_the_socket_is_found_from_the_environment_the_folder_or_the_cwd(agent, watched) -> None:
    assert agent.socket is not None
    by_env = run_cli("status", "--json", env={"HOTPATCH_SOCKET": str(agent.socket)})
    assert as_json(by_env)["pid"] == os.getpid()
    by_folder = run_cli("status", "--json", "--folder", str(watched))
    assert as_json(by_folder)["pid"] == os.getpid()
    by_cwd = run_cli("status", "--json", cwd=watched)
    assert as_json(by_cwd)["pid"] == os.getpid()
    # --socket beats the environment.
    both = run_cli("status", *sock(agent), env={"HOTPATCH_SOCKET": "/nonexistent.sock"})
    assert both.returncode == 0, both.stderr


def test_no_agent_to_talk_to_is_exit_2(tmp_path: Path) -> None:
    nowhere = run_cli("status", cwd=tmp_path)
    assert nowhere.returncode == 2
    assert "no agent to talk to" in nowhere.stderr

    missing = run_cli("status", "--socket", str(tmp_path / "none.sock"))
    assert missing.returncode == 2
    assert "no control socket at" in missing.stderr

    no_pidfile = run_cli("status", "--folder", str(tmp_path))
    assert no_pidfile.returncode == 2
    assert "is an agent watching" in no_pidfile.stderr

    as_data = run_cli("status", "--json", "--socket", str(tmp_path / "none.sock"))
    assert as_data.returncode == 2
    assert as_json(as_data) == {
        "ok": False,
        "error": f"no control socket at {tmp_path / 'none.sock'}: is the service running "
        "with a hotpatch agent?",
        "error_type": "UsageError",
    }


def test_a_pidfile_of_a_dead_agent_is_reported(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    (tmp_path / ".hotpatch.json").write_text(
        json.dumps({"pid": int(dead.stdout), "socket": str(tmp_path / "x.sock")})
    )
    result = run_cli("status", "--folder", str(tmp_path))
    assert result.returncode == 2
    assert f"(pid {int(dead.stdout)}) is not running" in result.stderr


def test_a_refused_peer_is_exit_2(tmp_path: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="hp-") as folder:
        path = Path(folder) / "c.sock"
        other = {os.getuid() + 4242}
        with ControlServer(path, lambda request, uid: {"ok": True}, allowed_uids=other):
            result = run_cli("status", "--socket", str(path))
    assert result.returncode == 2
    assert "may not control this process" in result.stderr


def test_an_agent_whose_backlog_is_full_is_reported_busy() -> None:
    with tempfile.TemporaryDirectory(prefix="hp-") as folder:
        path = Path(folder) / "stuck.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stuck:
            stuck.bind(str(path))
            stuck.listen(0)  # a process that no longer accepts
            waiting = []
            try:
                while True:
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.setblocking(False)
                    waiting.append(s)
                    try:
                        s.connect(str(path))
                    except BlockingIOError:
                        break
                result = run_cli("status", "--socket", str(path), "--timeout", "1")
            finally:
                for s in waiting:
                    s.close()
    assert result.returncode == 2
    assert "is busy" in result.stderr
    assert "retry" in result.stderr
    assert "BlockingIOError" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [["frobnicate"], ["apply"], ["rollback", "--to"], ["history", "--limit", "x"]],
)
def test_bad_usage_is_exit_2(args: list[str]) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert "usage: hotpatch" in result.stderr


def test_help_is_exit_0() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("status", "apply", "rollback", "history", "verify", "keygen", "sign", "run"):
        assert command in result.stdout.split()


# -- apply ------------------------------------------------------------------------------------


def test_apply_switches_the_running_process(agent, target, patch_file) -> None:
    path = patch_file("1.0.1", 2)
    result = run_cli("apply", str(path), *sock(agent))
    assert result.returncode == 0, result.stderr
    assert target.price(21) == 42  # in this very process, where the agent runs
    rows = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert rows["version"] == "1.0.1"
    assert rows["outcome"] == "applied"
    assert rows["targets"] == f"{target.__name__}:price"
    assert "verify" in rows["timings"]

    again = as_json(run_cli("apply", str(path), "--json", *sock(agent)))
    assert (again["ok"], again["outcome"]) == (True, "unchanged")
    assert agent.registry is not None
    assert agent.registry.level == ("1.0.1",)
    assert agent.registry.history[-1].who == f"uid:{os.getuid()}"


def test_apply_a_relative_path(agent, target, patch_file) -> None:
    path = patch_file("1.0.1", 3)
    result = run_cli("apply", path.name, *sock(agent), cwd=path.parent)
    assert result.returncode == 0, result.stderr
    assert target.price(2) == 6


def test_a_refused_patch_is_exit_1_and_changes_nothing(agent, target, patch_file, write_patch):
    run_cli("apply", str(patch_file("1.0.2", 2)), *sock(agent))
    stale = run_cli("apply", str(patch_file("1.0.1", 5)), *sock(agent))
    assert stale.returncode == 1
    assert "hotpatch: refused:" in stale.stderr
    assert "not newer" in stale.stderr
    assert "rejected" in stale.stdout  # the outcome table is shown too

    exploding = write_patch(
        "from hotpatch import Patch\npatch = Patch(version='1.0.3', baseline='1.0')\n1 / 0\n"
    )
    data = as_json(run_cli("apply", str(exploding), "--json", *sock(agent)))
    assert data["ok"] is False
    assert data["outcome"] == "rejected"
    assert "ZeroDivisionError" in data["reason"]
    assert agent.registry is not None
    assert agent.registry.level == ("1.0.2",)
    assert target.price(2) == 4


def test_apply_of_a_missing_file_is_exit_2(agent, tmp_path: Path) -> None:
    result = run_cli("apply", str(tmp_path / "missing.py"), *sock(agent))
    assert result.returncode == 2
    assert "no such file" in result.stderr


# -- rollback and history ---------------------------------------------------------------------


def test_rollback_and_history(agent, target, patch_file) -> None:
    for version, factor in (("1.0.1", 2), ("1.0.2", 3), ("1.0.3", 4)):
        assert run_cli("apply", str(patch_file(version, factor)), *sock(agent)).returncode == 0
    last = run_cli("rollback", *sock(agent))
    assert last.returncode == 0, last.stderr
    assert dict(line.split(None, 2)[::2] for line in last.stdout.splitlines()) == {
        "rolled": "1.0.3",
        "level": "1.0.1, 1.0.2",
    }
    assert target.price(1) == 3

    data = as_json(run_cli("rollback", "--to", "1.0", "--json", *sock(agent)))
    assert data == {"ok": True, "versions": ["1.0.2", "1.0.1"], "level": [], "level_size": 0}
    assert target.price(1) == 1

    nothing = run_cli("rollback", *sock(agent))
    assert nothing.returncode == 1
    assert "nothing to roll back" in nothing.stderr
    unknown = run_cli("rollback", "--to", "9.9", *sock(agent))
    assert unknown.returncode == 1

    table = run_cli("history", *sock(agent))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["TIME", "ACTION", "VERSION", "LEVEL", "ELAPSED", "WHO"]
    actions = [line.split()[1] for line in lines[1:]]
    assert actions == ["apply", "apply", "apply", "rollback", "rollback"]
    assert all(line.endswith(f"uid:{os.getuid()}") for line in lines[1:])
    header_at = lines[0].index("VERSION")
    assert all(line[header_at:].startswith("1.0.") for line in lines[1:])

    history = as_json(run_cli("history", "--json", *sock(agent)))["history"]
    assert [(h["action"], h["version"]) for h in history][-1] == ("rollback", "1.0.2, 1.0.1")
    limited = as_json(run_cli("history", "--json", "-n", "1", *sock(agent)))["history"]
    assert limited == history[-1:]


def test_a_rollback_at_a_deep_level_shows_its_top_and_counts_it(agent, watched, patch_file) -> None:
    """The answer carries the top 10 versions and ``level_size``; status the whole level."""
    assert agent.registry is not None
    for n in range(1, 13):
        agent.registry.apply(hotpatch.load_patch(patch_file(f"1.0.{n}", n)))
    status = as_json(run_cli("status", "--json", *sock(agent)))
    assert status["level"] == [f"1.0.{n}" for n in range(1, 13)]
    with Watching(watched, 1, plain=True) as watching:
        shown = run_cli("rollback", *sock(agent))
        assert shown.returncode == 0, shown.stderr
        [line] = watching.output().splitlines()
    top = ", ".join(f"1.0.{n}" for n in range(2, 12))
    assert f"  1.0.12  rolled back  level now ..., {top} (11 patches)  from " in line, line
    assert dict(line.split(None, 2)[::2] for line in shown.stdout.splitlines()) == {
        "rolled": "1.0.12",
        "level": f"..., {top} (11 patches)",
    }
    data = as_json(run_cli("rollback", "--json", *sock(agent)))
    assert (data["versions"], data["level"], data["level_size"]) == (
        ["1.0.11"],
        [f"1.0.{n}" for n in range(1, 11)],
        10,
    )


def test_history_of_a_fresh_agent(agent) -> None:
    result = run_cli("history", *sock(agent))
    assert result.returncode == 0
    assert "no patches applied or rolled back yet" in result.stdout


# -- verify -----------------------------------------------------------------------------------


def test_verify_is_a_dry_run(agent, target, patch_file, write_patch) -> None:
    hot = run_cli("verify", str(patch_file("1.0.1", 2)), *sock(agent))
    assert hot.returncode == 0, hot.stderr
    assert "hot      yes" in hot.stdout
    assert f"{target.__name__}:price  inline" in hot.stdout
    assert target.price(2) == 2
    assert agent.registry is not None
    assert agent.registry.level == ()

    cold = run_cli("verify", str(patch_file("1.0.2", 2, restart="True")), *sock(agent))
    assert cold.returncode == 1
    assert "no: needs a restart" in cold.stdout
    assert "asks for a restart" in cold.stdout
    data = as_json(run_cli("verify", "--json", str(patch_file("1.0.3", 2)), *sock(agent)))
    assert data["ok"] is True
    assert data["hot"] is True
    assert data["targets"] == [f"{target.__name__}:price"]

    broken = write_patch(
        "from hotpatch import Patch\npatch = Patch(version='1.0.4', baseline='1.0')\n"
        "@patch.replace('no_such_module_q:f')\ndef f():\n    pass\n"
    )
    refused = run_cli("verify", str(broken), *sock(agent))
    assert refused.returncode == 1
    assert "'no_such_module_q' does not exist" in refused.stderr
    assert agent.registry.level == ()


# -- keys and signatures ----------------------------------------------------------------------


def test_keygen_sign_and_a_signed_apply(tmp_path: Path, target, patch_file) -> None:
    keys = tmp_path / "keys"
    made = run_cli("keygen", "--dir", str(keys), "--name", "ops")
    assert made.returncode == 0, made.stderr
    assert "key id" in made.stdout
    private, public = keys / "ops.key", keys / "ops.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    again = run_cli("keygen", "--dir", str(keys), "--name", "ops", "--json")
    assert again.returncode == 2
    assert "refusing to overwrite" in as_json(again)["error"]

    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "ops.pub").write_bytes(public.read_bytes())
    signed, unsigned = patch_file("1.0.1", 2), patch_file("1.0.2", 3)
    result = run_cli("sign", str(signed), "--key", str(private), "--json")
    assert result.returncode == 0, result.stderr
    (entry,) = as_json(result)["signed"]
    assert entry["signature"] == f"{signed}.sig"
    assert Path(entry["signature"]).is_file()

    watched = tmp_path / "signed-watch"
    watched.mkdir(mode=0o700)
    with hotpatch.install(
        "1.0", watch=watched, require_signature=True, trusted_keys=trusted, entry_points=False
    ) as agent:
        try:
            ok = run_cli("apply", str(signed), *sock(agent))
            assert ok.returncode == 0, ok.stderr
            assert target.price(2) == 4
            refused = run_cli("apply", str(unsigned), *sock(agent))
            assert refused.returncode == 1
            assert "is not signed" in refused.stderr
            assert target.price(2) == 4
        finally:
            assert agent.registry is not None
            agent.registry.rollback(to="1.0")


def test_sign_takes_the_key_from_the_environment(tmp_path: Path, patch_file) -> None:
    keys = tmp_path / "keys"
    assert run_cli("keygen", "--dir", str(keys)).returncode == 0
    path = patch_file("1.0.1")
    result = run_cli("sign", str(path), env={"HOTPATCH_SIGNING_KEY": str(keys / "hotpatch.key")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split() == ["FILE", "SIGNATURE", "KEY", "ID"]
    assert Path(f"{path}.sig").is_file()


def test_sign_errors_are_exit_2(tmp_path: Path, patch_file) -> None:
    path = patch_file("1.0.1")
    no_key = run_cli("sign", str(path))
    assert no_key.returncode == 2
    assert "sign needs --key" in no_key.stderr
    bad_key = run_cli("sign", str(path), "--key", str(tmp_path / "missing.key"))
    assert bad_key.returncode == 2
    assert "cannot be read" in bad_key.stderr
    keys = tmp_path / "keys"
    run_cli("keygen", "--dir", str(keys))
    (keys / "hotpatch.key").chmod(0o644)
    loose = run_cli("sign", str(path), "--key", str(keys / "hotpatch.key"))
    assert loose.returncode == 2
    assert "chmod 600" in loose.stderr
    assert not Path(f"{path}.sig").exists()


def test_run_is_the_supervisor_command_line():
    run = subprocess.run(
        [sys.executable, "-m", "hotpatch", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "--bind" in run.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "hotpatch", "run", "--bind", "http=127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 2
    assert "give the service's command after --" in missing.stderr


# -- show -----------------------------------------------------------------------------------


def test_show_prints_the_source_and_sha256_of_an_applied_patch(agent, patch_file) -> None:
    fix = patch_file("1.0.1", 3, summary='"triple it"')
    assert run_cli("apply", str(fix), *sock(agent)).returncode == 0
    text = fix.read_text()
    fix.unlink()  # files move: the registry keeps the text it applied

    answer = as_json(run_cli("show", "1.0.1", "--json", *sock(agent)))
    assert answer["ok"] is True
    assert answer["source"] == text
    assert answer["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert (answer["version"], answer["baseline"], answer["summary"]) == (
        "1.0.1",
        "1.0",
        "triple it",
    )
    assert answer["path"] == str(fix)
    assert answer["who"] == f"uid:{os.getuid()}"
    assert len(answer["targets"]) == 1
    assert answer["targets"][0].endswith(":price")

    human = run_cli("show", "1.0.1", *sock(agent))
    assert human.returncode == 0, human.stderr
    head, _, source = human.stdout.partition("\n\n")
    rows = dict(line.split(None, 1) for line in head.splitlines())
    assert rows["sha256"] == answer["sha256"]
    assert rows["summary"] == "triple it"
    assert rows["applied"].endswith(f" by uid:{os.getuid()}")
    assert source == text

    # The same version given another way (PEP 440 equal) is the same patch.
    assert as_json(run_cli("show", "1.0.1.0", "--json", *sock(agent)))["version"] == "1.0.1"


def test_show_refuses_a_version_that_is_not_applied_and_a_bad_one(agent, patch_file) -> None:
    assert run_cli("apply", str(patch_file("1.0.1", 3)), *sock(agent)).returncode == 0
    assert run_cli("rollback", *sock(agent)).returncode == 0
    gone = run_cli("show", "1.0.1", *sock(agent))
    assert gone.returncode == 1
    assert "patch 1.0.1 is not applied: the level is empty on baseline 1.0" in gone.stderr
    assert "hotpatch history" in gone.stderr
    bad = run_cli("show", "banana", "--json", *sock(agent))
    assert bad.returncode == 2
    assert as_json(bad)["error_type"] == "BadRequest"
    assert "'banana' is not a version" in as_json(bad)["error"]


# -- watch ----------------------------------------------------------------------------------


def _drop(folder: Path, source: Path, name: str) -> None:
    """The documented way: a temporary name, then a rename into the folder."""
    staged = folder / f".{name}.part"
    staged.write_bytes(source.read_bytes())
    staged.rename(folder / name)


def test_watch_follows_outcomes_as_they_happen(agent, watched, patch_file, target) -> None:
    follower = subprocess.Popen(
        [sys.executable, "-m", "hotpatch", "watch", str(watched), "--count", "2", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stderr is not None
        assert "watching" in follower.stderr.readline()  # its observer is running
        _drop(watched, patch_file("1.0.1", 3), "fix.py")
        broken = watched.parent / "broken.py"
        broken.write_text('from hotpatch import Patch\npatch = Patch(version="1.0.2", baseline=')
        _drop(watched, broken, "broken.py")
        out, err = follower.communicate(timeout=120)
    finally:
        follower.kill()
    assert follower.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(r["version"], r["outcome"], r["dir"]) for r in lines] == [
        ("1.0.1", "applied", "applied"),
        (None, "rejected", "rejected"),  # a file that does not parse has no version
    ]
    assert "syntax error" in lines[1]["reason"]
    assert target.price(2) == 6


def test_watch_shows_applies_and_rollbacks_sent_through_the_socket(
    agent, watched, patch_file, target
) -> None:
    """Not only drops: `hotpatch apply` and `hotpatch rollback` show too, with who asked."""
    uid = f"uid:{os.getuid()}"
    with Watching(watched, 4) as watching:
        _drop(watched, patch_file("1.0.1", 3), "fix.py")
        wait_for((watched / "applied" / "fix.py").exists, "fix.py filed")
        applied = run_cli("apply", str(patch_file("1.0.2", 5)), "--folder", str(watched))
        assert applied.returncode == 0, applied.stderr
        refused = run_cli("apply", str(patch_file("1.0.2", 7)), "--folder", str(watched))
        assert refused.returncode == 1, refused.stdout
        rolled = run_cli("rollback", "--folder", str(watched))
        assert rolled.returncode == 0, rolled.stderr
        records = watching.records()
    assert [(r["event"], r.get("version"), r.get("outcome"), r["dir"]) for r in records] == [
        ("outcome", "1.0.1", "applied", "applied"),
        ("outcome", "1.0.2", "applied", None),
        ("outcome", "1.0.2", "rejected", None),
        ("rollback", None, None, None),
    ]
    assert [r["source"] for r in records] == [
        "folder",
        f"{uid} via hotpatch apply",
        f"{uid} via hotpatch apply",
        f"{uid} via hotpatch rollback",
    ]
    assert "already applied with other content" in records[2]["reason"]
    assert (records[3]["versions"], records[3]["level"]) == (["1.0.2"], ["1.0.1"])
    assert target.price(2) == 6


def test_watch_prints_a_line_per_outcome_naming_its_source(agent, watched, patch_file) -> None:
    with Watching(watched, 2, plain=True) as watching:
        assert (
            run_cli("apply", str(patch_file("1.0.1", 3)), "--folder", str(watched)).returncode == 0
        )
        assert run_cli("rollback", "--folder", str(watched)).returncode == 0
        lines = watching.output().splitlines()
    uid = f"uid:{os.getuid()}"
    assert "  1.0.1  applied  " in lines[0], lines
    assert lines[0].endswith(f"  from {uid} via hotpatch apply"), lines
    assert lines[1].endswith(
        f"  1.0.1  rolled back  level now the baseline  from {uid} via hotpatch rollback"
    ), lines


def test_watch_needs_a_folder(tmp_path: Path) -> None:
    result = run_cli("watch", str(tmp_path / "missing"))
    assert result.returncode == 2
    assert "is not a folder" in result.stderr
