"""Finding the agent or supervisor a ``hotpatch`` command talks to, asking it, exit codes."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from hotpatch import _errors
from hotpatch._process import alive
from hotpatch.agent._names import PIDFILE_NAME
from hotpatch.agent._state_dir import ENV_STATE_DIR

__all__ = [
    "DEFAULT_TIMEOUT",
    "ENV_SOCKET",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "Answer",
    "UsageError",
    "agent_files",
    "ask",
    "exit_code",
    "fail",
    "finish",
    "print_json",
    "socket_path",
]

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2
ENV_SOCKET = "HOTPATCH_SOCKET"
DEFAULT_TIMEOUT = 120.0  # an apply includes the child verification

Answer = dict[str, Any]


class UsageError(Exception):
    """Bad arguments, or no agent to talk to: exit code 2."""


# -- talking to the agent ---------------------------------------------------------------


def agent_files(args: argparse.Namespace) -> Path:
    """Where the agent keeps its pidfile, outcome log and outcomes (not its socket: see below).

    --state-dir DIR; else --folder DIR -- or, when DIR holds no pidfile, the
    state directory in $HOTPATCH_STATE_DIR if its pidfile says it watches DIR
    (an agent that keeps a read-only folder's files elsewhere); else
    $HOTPATCH_STATE_DIR; else the current directory.
    """
    if getattr(args, "state_dir", None):
        return Path(args.state_dir)
    env = os.environ.get(ENV_STATE_DIR)
    if getattr(args, "folder", None):
        folder = Path(args.folder)
        if not (folder / PIDFILE_NAME).exists() and env and _watches(Path(env), folder):
            return Path(env)
        return folder
    return Path(env) if env else Path.cwd()


def _watches(state: Path, folder: Path) -> bool:
    """Does the pidfile in ``state`` name ``folder`` as the folder its agent watches?"""
    try:
        info = json.loads((state / PIDFILE_NAME).read_bytes())
        return os.path.realpath(str(info["folder"])) == os.path.realpath(folder)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def socket_path(args: argparse.Namespace) -> Path:
    """--socket; --state-dir or --folder (``agent_files``); $HOTPATCH_SOCKET; then the rest."""
    if getattr(args, "socket", None):
        return Path(args.socket)
    if getattr(args, "state_dir", None) or getattr(args, "folder", None):
        return _from_pidfile(agent_files(args), getattr(args, "folder", None))
    if os.environ.get(ENV_SOCKET):
        return Path(os.environ[ENV_SOCKET])
    if os.environ.get(ENV_STATE_DIR) or Path(PIDFILE_NAME).is_file():
        return _from_pidfile(agent_files(args), None)
    msg = (
        "no agent to talk to: pass --socket PATH, --folder DIR (the agent's watched folder) "
        f"or --state-dir DIR (its state directory, if it has one), or set {ENV_SOCKET} or "
        f"{ENV_STATE_DIR}"
    )
    raise UsageError(msg)


def _from_pidfile(folder: Path, watched: str | None) -> Path:
    pidfile = folder / PIDFILE_NAME
    try:
        info = json.loads(pidfile.read_bytes())
    except FileNotFoundError:
        if watched is not None and Path(watched) == folder:
            msg = (
                f"{pidfile} does not exist: is an agent watching {folder}? An agent that "
                "keeps its files in a state directory (hotpatch run --state-dir DIR, "
                "install(state_dir=DIR)) is found with --state-dir DIR, or with "
                f"{ENV_STATE_DIR}=DIR"
            )
        else:
            msg = f"{pidfile} does not exist: is an agent running with the state dir {folder}?"
        raise UsageError(msg) from None
    except (OSError, ValueError) as exc:
        msg = f"{pidfile} cannot be read: {exc}"
        raise UsageError(msg) from None
    if not isinstance(info, dict):
        msg = f"{pidfile} is not what an agent writes (a JSON object with pid and socket)"
        raise UsageError(msg)
    socket, pid = info.get("socket"), info.get("pid")
    if not isinstance(socket, str) or not socket:
        msg = f"the agent watching {folder} serves no control socket (see {pidfile})"
        raise UsageError(msg)
    if isinstance(pid, int) and not alive(pid):
        msg = f"the agent that wrote {pidfile} (pid {pid}) is not running"
        raise UsageError(msg)
    return folder / socket  # an absolute socket path stays as it is


def ask(args: argparse.Namespace, payload: dict[str, Any]) -> Answer:
    # keygen/sign do not need the control client
    from hotpatch.agent._control import AgentBusy, request  # noqa: PLC0415

    path = socket_path(args)
    try:
        return request(path, payload, timeout=getattr(args, "timeout", DEFAULT_TIMEOUT))
    except AgentBusy as exc:
        raise UsageError(exc.strerror or str(exc)) from None
    except FileNotFoundError:
        msg = f"no control socket at {path}: is the service running with a hotpatch agent?"
        raise UsageError(msg) from None
    except ConnectionRefusedError:
        msg = f"nothing listens on {path}: the agent that made it is gone"
        raise UsageError(msg) from None
    except PermissionError:
        msg = f"no permission to connect to {path}: run as the service's user (or root)"
        raise UsageError(msg) from None
    except TimeoutError:
        msg = f"the agent at {path} did not answer in time (raise --timeout)"
        raise UsageError(msg) from None
    except OSError as exc:
        msg = f"talking to the agent at {path} failed: {exc}"
        raise UsageError(msg) from None


def exit_code(answer: Answer) -> int:
    """0 ok; 1 refused (a PatchError, or an outcome that is not applied); 2 otherwise."""
    if answer.get("ok") is True:
        return EXIT_OK
    error_type = answer.get("error_type")
    if error_type is None and "outcome" in answer:
        return EXIT_REFUSED
    cls = getattr(_errors, str(error_type), None)
    if isinstance(cls, type) and issubclass(cls, _errors.PatchError):
        return EXIT_REFUSED
    return EXIT_USAGE


def finish(args: argparse.Namespace, answer: Answer, show: Callable[[Answer, TextIO], None]) -> int:
    code = exit_code(answer)
    if getattr(args, "json", False):
        print_json(answer)
        return code
    if code == EXIT_OK or "outcome" in answer:
        show(answer, sys.stdout)
    if code != EXIT_OK:
        kind = "refused" if code == EXIT_REFUSED else "error"
        reason = answer.get("error") or answer.get("reason") or "no reason given"
        print(f"hotpatch: {kind}: {reason}", file=sys.stderr)
    return code


def fail(args: argparse.Namespace, message: str, error_type: str) -> int:
    if getattr(args, "json", False):
        print_json({"ok": False, "error": message, "error_type": error_type})
    print(f"hotpatch: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))
