"""hotpatch's log lines in a service: on stderr by default, the application's when it
configured logging, ``$HOTPATCH_LOG`` for level and format -- each in a real process.

A service is a process that called ``hotpatch.install()`` (``AGENT``), runs under
``hotpatch run``, or is ``hotpatch run``; a plain ``import hotpatch`` (a tool, a
test) leaves logging alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hotpatch._logging import ENV_LOG, LogSettings, parse_settings

AGENT = 'agent = hotpatch.install("1.0")'


def python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter; ``env`` replaces HOTPATCH_LOG and friends."""
    environ = {k: v for k, v in os.environ.items() if k != ENV_LOG}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("value", "settings"),
    [
        ("", LogSettings()),
        ("info", LogSettings(level=20)),
        ("DEBUG,json", LogSettings(level=10, json=True)),
        ("json", LogSettings(json=True)),
        ("warning plain", LogSettings(level=30)),
        ("off", LogSettings(level=51)),
    ],
)
def test_settings(value: str, settings: LogSettings) -> None:
    assert parse_settings(value) == settings


@pytest.mark.parametrize("value", ["verbose", "info,debug", "json,plain", "info;json"])
def test_settings_refused_name_the_variable_and_the_choices(value: str) -> None:
    with pytest.raises(ValueError, match=r"HOTPATCH_LOG=.*write a level \(debug, info"):
        parse_settings(value)


def test_by_default_the_lines_go_to_stderr_when_the_application_configured_nothing() -> None:
    done = python(
        """
        import logging, os, hotpatch
        agent = hotpatch.install("1.0")
        logging.getLogger("hotpatch.agent").info("applied patch 1.0.1")
        logging.getLogger("hotpatch").debug("not at the default level")
        logging.getLogger("elsewhere").info("the application's own INFO: dropped as always")
        print(os.getpid())
        """
    )
    assert done.returncode == 0, done.stderr
    pid = done.stdout.strip()
    lines = done.stderr.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].endswith(
        f" hotpatch[{pid}] INFO hotpatch agent started: baseline 1.0, level -, folder -, socket -"
    )
    assert lines[1].endswith(f" hotpatch[{pid}] INFO applied patch 1.0.1")


def test_a_plain_import_leaves_logging_alone() -> None:
    done = python(
        """
        import logging, hotpatch
        logging.getLogger("hotpatch").info("a tool's registry applied a patch")
        print(logging.getLogger("hotpatch").level, logging.getLogger("hotpatch").handlers)
        """
    )
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("0 []\n", "")


def test_an_apply_in_a_service_is_seen_without_any_logging_set_up(tmp_path: Path) -> None:
    (tmp_path / "target_mod.py").write_text("def f():\n    return 1\n")
    (tmp_path / "fix.py").write_text(
        "from hotpatch import Patch\n"
        'patch = Patch(version="1.0.1", baseline="1.0")\n'
        '@patch.replace("target_mod:f")\n'
        "def f():\n    return 2\n"
    )
    done = python(
        f"""
        import sys; sys.path.insert(0, {str(tmp_path)!r})
        import hotpatch
        agent = hotpatch.install("1.0")
        agent.registry.apply(hotpatch.load_patch({str(tmp_path / "fix.py")!r}))
        """
    )
    assert done.returncode == 0, done.stderr
    assert "INFO applied patch 1.0.1" in done.stderr


@pytest.mark.parametrize("order", ["before", "after"])
def test_an_application_that_configured_logging_gets_them_its_way_once(order: str) -> None:
    configure = 'logging.basicConfig(format="APP %(name)s %(message)s", stream=sys.stdout)'
    first, second = (configure, AGENT) if order == "before" else (AGENT, configure)
    done = python(
        f"""
        import logging, sys, hotpatch
        {first}
        {second}
        logging.getLogger("hotpatch.supervisor").info("restart: paused 4.1 ms")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "APP hotpatch.supervisor restart: paused 4.1 ms"
    assert "restart: paused" not in done.stderr  # not a second time, through hotpatch's handler


def test_a_level_the_application_set_on_the_hotpatch_logger_is_kept() -> None:
    done = python(
        """
        import logging
        logging.getLogger("hotpatch").setLevel(logging.WARNING)
        import hotpatch
        agent = hotpatch.install("1.0")
        logging.getLogger("hotpatch").info("quiet, as the application asked")
        logging.getLogger("hotpatch").warning("loud")
        """
    )
    assert done.returncode == 0, done.stderr
    assert "quiet" not in done.stderr
    assert "WARNING loud" in done.stderr


def test_json_lines_and_a_level_from_the_environment() -> None:
    done = python(
        """
        import logging, os, hotpatch
        hotpatch.listen_socket("http", default="127.0.0.1:0")  # a service's runtime
        log = logging.getLogger("hotpatch.service")
        log.debug("detail")
        try:
            1 / 0
        except ZeroDivisionError:
            log.exception("a plugin failed")
        print(os.getpid())
        """,
        HOTPATCH_LOG="debug,json",
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(r["level"], r["logger"], r["message"]) for r in lines] == [
        ("DEBUG", "hotpatch.service", "detail"),
        ("ERROR", "hotpatch.service", "a plugin failed"),
    ]
    assert {r["pid"] for r in lines} == {int(done.stdout)}
    assert lines[0]["time"].endswith("+00:00")
    assert "ZeroDivisionError" in lines[1]["exc"]


@pytest.mark.parametrize(("value", "shown"), [("warning", ["WARNING"]), ("off", [])])
def test_a_quieter_level(value: str, shown: list[str]) -> None:
    done = python(
        """
        import logging, hotpatch
        agent = hotpatch.install("1.0")
        logging.getLogger("hotpatch").info("info")
        logging.getLogger("hotpatch").warning("warning")
        """,
        HOTPATCH_LOG=value,
    )
    assert done.returncode == 0, done.stderr
    assert [line.split()[3] for line in done.stderr.splitlines()] == shown


def test_a_bad_value_stops_the_service_with_the_fix() -> None:
    done = python(f"import hotpatch\n{AGENT}", HOTPATCH_LOG="verbose")
    assert done.returncode != 0
    assert "HOTPATCH_LOG='verbose': 'verbose' is not understood" in done.stderr
    command = [sys.executable, "-m", "hotpatch", "run", "--", "true"]
    env = {**os.environ, ENV_LOG: "verbose"}
    run = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert run.returncode == 2
    assert "HOTPATCH_LOG='verbose'" in run.stderr


def test_hotpatch_run_logs_json_lines(tmp_path: Path) -> None:
    from hotpatch.supervisor import read_status

    service = Path(__file__).resolve().parents[1] / "demos" / "minimal_service.py"
    status_file, log_path = tmp_path / "status.json", tmp_path / "run.log"
    env = {k: v for k, v in os.environ.items() if k != ENV_LOG}
    with log_path.open("w") as log:
        command = [sys.executable, "-m", "hotpatch", "run", "--bind", "http=127.0.0.1:0"]
        command += ["--status-file", str(status_file), "--", sys.executable, str(service)]
        proc = subprocess.Popen(
            command, env={**env, ENV_LOG: "json"}, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while not ((s := read_status(status_file)) and s.get("child") and s["child"]["ready"]):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log_path.read_text()
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert {r["logger"] for r in records} == {"hotpatch.supervisor"}, records
    assert any(r["message"].startswith("supervising ") for r in records)
    assert records[-1]["message"] == "stopped"
