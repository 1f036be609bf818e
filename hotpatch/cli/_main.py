"""The ``hotpatch`` command: talk to an agent or supervisor over its control socket; keys.

The same commands work whether the service embeds the agent or runs under
``hotpatch run`` (one process or ``--workers N``): the supervisor serves the
folder's control socket too. While an ``apply`` waits for a supervisor, its
rollout through the workers is shown as it goes (read from its status file).

Exit codes: 0 done; 1 refused (the agent said no -- a ``PatchError`` -- or
``verify`` found the patch cannot go in hot); 2 usage or connection errors.

This module holds the parser and the commands; finding and asking the agent
is in ``_ask``, the tables in ``_show``, following a rollout or a folder in
``_follow``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from hotpatch import _errors
from hotpatch._version import __version__
from hotpatch.agent._names import PIDFILE_NAME
from hotpatch.agent._state_dir import ENV_STATE_DIR
from hotpatch.cli._ask import (
    DEFAULT_TIMEOUT,
    ENV_SOCKET,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    Answer,
    UsageError,
    agent_files,
    ask,
    fail,
    finish,
    print_json,
)
from hotpatch.cli._completion import SHELLS, AppliedVersion, complete, shell_code
from hotpatch.cli._follow import (
    RolloutFollower,
    ask_following,
    render_rollout,
    rollout_status_file,
    watch_folder,
)
from hotpatch.cli._make import add_make_parser
from hotpatch.cli._show import (
    show_history,
    show_outcome,
    show_patch,
    show_rollback,
    show_status,
    show_supervisor,
    show_verify,
    table,
)

# RolloutFollower and render_rollout live in _follow; tests import them from here.
__all__ = ["RolloutFollower", "main", "render_rollout"]

ENV_KEY = "HOTPATCH_SIGNING_KEY"
# The options every command accepts before or after it; each command says which it uses,
# and one it does not use is refused rather than ignored.
AGENT_OPTIONS = ("socket", "folder", "state_dir", "timeout")

# -- parser -------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    # Options given before or after the command both count: SUPPRESS keeps a
    # subcommand's absent option from overwriting the main parser's value.
    json_opt = argparse.ArgumentParser(add_help=False)
    json_opt.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON"
    )
    agent = argparse.ArgumentParser(add_help=False, parents=[json_opt])
    where = agent.add_argument_group("finding the agent")
    where.add_argument(
        "--socket",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help=f"the agent's control socket (default: ${ENV_SOCKET}, or --folder)",
    )
    where.add_argument(
        "--folder",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help=f"the agent's watched folder: its socket is read from DIR/{PIDFILE_NAME} "
        f"(default: the current directory, when it holds {PIDFILE_NAME})",
    )
    where.add_argument(
        "--state-dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help=f"the agent's state directory, when it keeps its files outside the folder "
        f"(hotpatch run --state-dir DIR): its socket is read from DIR/{PIDFILE_NAME} "
        f"(default: ${ENV_STATE_DIR})",
    )
    where.add_argument(
        "--timeout",
        metavar="S",
        type=float,
        default=argparse.SUPPRESS,
        help=f"seconds to wait for the agent (default {DEFAULT_TIMEOUT:g})",
    )

    parser = argparse.ArgumentParser(
        prog="hotpatch",
        description="Hot-patch a running Python service through its hotpatch agent or supervisor.",
        epilog="exit codes: 0 done, 1 refused by the agent (or not hot, for verify), "
        "2 usage or connection error",
        parents=[agent],
    )
    parser.add_argument("--version", action="version", version=f"hotpatch {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    commands.add_parser(
        "run",
        add_help=False,
        help="supervise a service: sockets kept, memory-preserving restarts (hotpatch run --help)",
    )
    status = commands.add_parser(
        "status",
        parents=[agent],
        help="baseline, patch level and last outcome",
        description="Show the baseline, the patch level, the drops waiting and the last "
        "outcome of an agent; for a supervisor, its service, restarts and workers.",
    )
    status.set_defaults(run=_status, uses=AGENT_OPTIONS)

    apply = commands.add_parser(
        "apply",
        parents=[agent],
        help="verify and apply a patch file (hot)",
        description="Send FILE through the agent's pipeline, as if dropped into its folder: "
        "signature, verification in a child process, then apply (under a supervisor: hot, or "
        "through a memory-preserving restart). Prints the outcome.",
    )
    apply.add_argument("file", metavar="FILE", help="the patch file")
    apply.set_defaults(run=_apply, uses=AGENT_OPTIONS)

    rollback = commands.add_parser(
        "rollback",
        parents=[agent],
        help="undo the last patch, or go back to a level",
        description="Undo the last patch, or go back to level V (a version in the level, or "
        "the baseline), in every worker the agent or supervisor reaches.",
    )
    rollback.add_argument(
        "--to", metavar="V", help="the version to go back to (a level, or the baseline)"
    )
    rollback.set_defaults(run=_rollback, uses=AGENT_OPTIONS)

    history = commands.add_parser(
        "history",
        parents=[agent],
        help="applies and rollbacks, oldest first",
        description="List the applies, replays and rollbacks the agent recorded, oldest first.",
    )
    history.add_argument("-n", "--limit", type=int, metavar="N", help="only the last N entries")
    history.set_defaults(run=_history, uses=AGENT_OPTIONS)

    show = commands.add_parser(
        "show",
        parents=[agent],
        help="the source and sha256 of an applied patch",
        description="Print what the applied patch VERSION is -- its summary, sha256, the "
        "file it was read from, its targets, when and by whom it was applied -- and the "
        "source it runs (from the agent's registry, or the journal of a supervised "
        "service). Exit 1 if VERSION is not applied.",
    )
    show.add_argument(
        "version", metavar="VERSION", action=AppliedVersion, help="the version of an applied patch"
    )
    show.set_defaults(run=_show, uses=AGENT_OPTIONS)

    verify = commands.add_parser(
        "verify",
        parents=[agent],
        help="dry run: would this patch go in hot, and if not, why",
        description="Check FILE as an apply would (signature, verification child, the "
        "registry's dry run) and say whether it goes in hot; nothing changes. Exit 1 if not.",
    )
    verify.add_argument("file", metavar="FILE", help="the patch file")
    verify.set_defaults(run=_verify, uses=AGENT_OPTIONS)

    watch = commands.add_parser(
        "watch",
        parents=[agent],
        help="follow a patch folder's outcomes and rollbacks as they happen (a line each)",
        description="Print a line for each outcome and rollback of the agent or supervisor "
        "of the patch folder DIR (or --folder DIR) as it happens, however it was asked for "
        "(a drop, hotpatch apply, hotpatch rollback), and a supervisor's rollout steps; "
        "Ctrl-C or --count ends.",
    )
    watch.add_argument(
        "dir",
        nargs="?",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="the patch folder, the same as --folder DIR (default: .; with --state-dir or "
        f"${ENV_STATE_DIR}, the outcomes are read from that state directory)",
    )
    watch.add_argument(
        "--count",
        type=int,
        metavar="N",
        help="end after N outcomes and rollbacks (default: follow until interrupted)",
    )
    watch.set_defaults(run=_watch, uses=("folder", "state_dir"))

    keygen = commands.add_parser(
        "keygen",
        parents=[agent],
        help="make an ed25519 key pair for signing patches",
        description="Write NAME.key (the private key, mode 0600) and NAME.pub (the public "
        "key, for the service's trusted keys directory) into DIR.",
    )
    keygen.add_argument(
        "--dir", default=".", metavar="D", help="where to write the keys (default: .)"
    )
    keygen.add_argument(
        "--name", default="hotpatch", metavar="N", help="writes N.key and N.pub (default: hotpatch)"
    )
    keygen.set_defaults(run=_keygen, uses=())

    sign = commands.add_parser(
        "sign",
        parents=[agent],
        help="write a detached signature FILE.sig",
        description="Sign each patch file or bundle directory with the private key from "
        "`hotpatch keygen`, writing FILE.sig beside it.",
    )
    sign.add_argument("files", nargs="+", metavar="FILE", help="patch files or bundle directories")
    sign.add_argument(
        "--key",
        metavar="PRIVATE",
        default=os.environ.get(ENV_KEY),
        help=f"the private key from `hotpatch keygen` (default: ${ENV_KEY})",
    )
    sign.set_defaults(run=_sign, uses=())
    completion = commands.add_parser(
        "completion",
        parents=[agent],
        help="print the shell code that completes hotpatch's commands and options",
        description="Print the code that registers shell completion of the hotpatch "
        "command (by argcomplete: pip install 'pyhotpatch[completion]'). Load it from your "
        'shell\'s start-up file, e.g. eval "$(hotpatch completion bash)" in ~/.bashrc.',
    )
    completion.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    completion.set_defaults(run=_completion, uses=())
    add_make_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hotpatch`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:  # the supervisor has a command line of its own
        from hotpatch.supervisor import main as supervise  # noqa: PLC0415 - only for `run`

        return supervise(argv)
    parser = _parser()
    complete(parser)  # the shell asking for completions: answered, and the process ends
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if getattr(args, "command", None) is None:  # a bare `hotpatch`: what it can do
        parser.print_help()
        return EXIT_USAGE
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        _refuse_unused(args)
        return run(args)
    except UsageError as exc:
        return fail(args, str(exc), "UsageError")
    except KeyboardInterrupt:
        return 130


def _refuse_unused(args: argparse.Namespace) -> None:
    """An option the command has no use for is an error, not silently ignored."""
    # make (registered by hotpatch.cli._make) has a --timeout of its own
    uses = getattr(args, "uses", ("timeout",))
    unused = [f"--{name}" for name in AGENT_OPTIONS if hasattr(args, name) and name not in uses]
    if unused:
        what = (
            "it follows a folder, given as DIR or --folder DIR (or --state-dir DIR)"
            if args.command == "watch"
            else "it does not talk to an agent"
        )
        msg = f"`hotpatch {args.command}` takes no {', '.join(unused)}: {what}"
        raise UsageError(msg)


# -- commands ------------------------------------------------------------------------------


def _watch(args: argparse.Namespace) -> int:
    """``watch DIR`` and ``watch --folder DIR`` (before or after ``watch``) are one thing."""
    given = {str(f) for f in (getattr(args, "dir", None), getattr(args, "folder", None)) if f}
    if len(given) > 1:
        msg = f"watch got two folders ({' and '.join(sorted(given))}): give one"
        raise UsageError(msg)
    args.folder = given.pop() if given else None
    return watch_folder(args)


def _status(args: argparse.Namespace) -> int:
    supervised = _supervisor_status(args)
    if supervised is not None:
        return finish(args, supervised, show_supervisor)
    answer = ask(args, {"cmd": "status"})
    return finish(args, answer, show_supervisor if answer.get("supervisor") else show_status)


def _supervisor_status(args: argparse.Namespace) -> Answer | None:
    """The status file of the supervisor owning --folder (or ./), ``None`` for an agent."""
    if getattr(args, "socket", None):
        return None
    folder = agent_files(args)
    try:
        info = json.loads((folder / PIDFILE_NAME).read_bytes())
    except (OSError, ValueError):
        return None  # not there or unreadable: the agent path reports it
    if not isinstance(info, dict) or not info.get("supervisor"):
        return None
    if info.get("socket"):
        return None  # it serves a control socket: ask it
    from hotpatch.supervisor import read_status  # noqa: PLC0415 - supervisors only

    path = info.get("status_file")
    if not isinstance(path, str) or not path:
        msg = (
            f"the supervisor watching {folder} writes no status file: start "
            "`hotpatch run` with --status-file PATH"
        )
        raise UsageError(msg)
    try:
        status = read_status(Path(path))
    except (OSError, ValueError, TypeError) as exc:
        msg = f"the supervisor's status file {path} cannot be read: {exc}"
        raise UsageError(msg) from None
    if status is None:
        msg = f"the supervisor has not written {path} yet; try again in a moment"
        raise UsageError(msg)
    return {"ok": True, "supervisor": True, **status}


def _patch_path(file: str) -> str:
    path = Path(file).absolute()
    if not path.exists():
        msg = f"{file}: no such file"
        raise UsageError(msg)
    return str(path)


def _apply(args: argparse.Namespace) -> int:
    payload = {"cmd": "apply", "path": _patch_path(args.file)}
    status_file = None if getattr(args, "json", False) else rollout_status_file(args)
    if status_file is None:
        answer = ask(args, payload)
    else:  # a supervisor: show its rollout while the apply runs
        answer = ask_following(args, payload, status_file, sys.stdout)
    return finish(args, answer, show_outcome)


def _rollback(args: argparse.Namespace) -> int:
    return finish(args, ask(args, {"cmd": "rollback", "to": args.to}), show_rollback)


def _history(args: argparse.Namespace) -> int:
    answer = ask(args, {"cmd": "history"})
    if args.limit is not None and isinstance(answer.get("history"), list):
        answer["history"] = answer["history"][-args.limit :] if args.limit > 0 else []
    return finish(args, answer, show_history)


def _completion(args: argparse.Namespace) -> int:
    sys.stdout.write(shell_code(args.shell))
    return EXIT_OK


def _show(args: argparse.Namespace) -> int:
    return finish(args, ask(args, {"cmd": "show", "version": args.version}), show_patch)


def _verify(args: argparse.Namespace) -> int:
    answer = ask(args, {"cmd": "verify", "path": _patch_path(args.file)})
    code = finish(args, answer, show_verify)
    if code == EXIT_OK and answer.get("hot") is False:
        if not getattr(args, "json", False):
            print("hotpatch: not hot: applying it would need a restart", file=sys.stderr)
        return EXIT_REFUSED
    return code


def _keygen(args: argparse.Namespace) -> int:
    from hotpatch.agent._signing import generate_keypair, public_key_id  # noqa: PLC0415

    try:
        private, public = generate_keypair(Path(args.dir), args.name)
        kid = public_key_id(public)
    except (OSError, ValueError, _errors.PatchError) as exc:
        raise UsageError(str(exc)) from None
    if getattr(args, "json", False):
        print_json({"ok": True, "private": str(private), "public": str(public), "key_id": kid})
        return EXIT_OK
    print(
        table(
            [
                ("private key", f"{private}  (mode 0600: keep it secret)"),
                ("public key", f"{public}  (copy it into the service's trusted keys directory)"),
                ("key id", kid),
            ]
        )
    )
    print(f"\nsign a patch with: hotpatch sign FILE --key {private}")
    return EXIT_OK


def _sign(args: argparse.Namespace) -> int:
    from hotpatch.agent._signing import sign_file  # noqa: PLC0415

    if not args.key:
        msg = f"sign needs --key PRIVATE (or ${ENV_KEY}): the private key from `hotpatch keygen`"
        raise UsageError(msg)
    signed = []
    for file in args.files:
        try:
            sig = sign_file(Path(file), Path(args.key))
            document = json.loads(sig.read_text())
        except (OSError, ValueError, _errors.PatchError) as exc:
            raise UsageError(f"{file}: {exc}") from None
        signed.append({"file": file, "signature": str(sig), "key_id": document["key_id"]})
    if getattr(args, "json", False):
        print_json({"ok": True, "signed": signed})
    else:
        print(
            table(
                [(s["file"], s["signature"], s["key_id"]) for s in signed],
                header=("FILE", "SIGNATURE", "KEY ID"),
            )
        )
    return EXIT_OK
