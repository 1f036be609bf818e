"""The ``hotpatch`` command: talk to an agent or supervisor over its control socket; keys.

The same commands work whether the service embeds the agent or runs under
``hotpatch run`` (one process or ``--workers N``): the supervisor serves the
folder's control socket too. While an ``apply`` waits for a supervisor, its
rollout through the workers is shown as it goes (read from its status file).

Exit codes: 0 done; 1 refused (the agent said no -- a ``PatchError`` -- or
``verify`` found the patch cannot go in hot); 2 usage or connection errors.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from hotpatch import _errors

__all__ = ["main"]

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2
ENV_SOCKET = "HOTPATCH_SOCKET"
ENV_KEY = "HOTPATCH_SIGNING_KEY"
PIDFILE = ".hotpatch.json"
DEFAULT_TIMEOUT = 120.0  # an apply includes the child verification

Answer = dict[str, Any]


class UsageError(Exception):
    """Bad arguments, or no agent to talk to: exit code 2."""


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
        help=f"the agent's watched folder: its socket is read from DIR/{PIDFILE} "
        f"(default: the current directory, when it holds {PIDFILE})",
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
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    commands.add_parser(
        "run",
        add_help=False,
        help="supervise a service: sockets kept, memory-preserving restarts (hotpatch run --help)",
    )
    status = commands.add_parser(
        "status", parents=[agent], help="baseline, patch level and last outcome"
    )
    status.set_defaults(run=_status)

    apply = commands.add_parser(
        "apply", parents=[agent], help="verify and apply a patch file (hot)"
    )
    apply.add_argument("file", metavar="FILE", help="the patch file")
    apply.set_defaults(run=_apply)

    rollback = commands.add_parser(
        "rollback", parents=[agent], help="undo the last patch, or go back to a level"
    )
    rollback.add_argument(
        "--to", metavar="V", help="the version to go back to (a level, or the baseline)"
    )
    rollback.set_defaults(run=_rollback)

    history = commands.add_parser(
        "history", parents=[agent], help="applies and rollbacks, oldest first"
    )
    history.add_argument("-n", "--limit", type=int, metavar="N", help="only the last N entries")
    history.set_defaults(run=_history)

    verify = commands.add_parser(
        "verify", parents=[agent], help="dry run: would this patch go in hot, and if not, why"
    )
    verify.add_argument("file", metavar="FILE", help="the patch file")
    verify.set_defaults(run=_verify)

    watch = commands.add_parser(
        "watch",
        parents=[json_opt],
        help="follow a patch folder's outcomes as they happen (a line each; Ctrl-C ends)",
    )
    watch.add_argument(
        "folder", nargs="?", default=".", metavar="DIR", help="the patch folder (default: .)"
    )
    watch.add_argument(
        "--count",
        type=int,
        metavar="N",
        help="end after N outcomes (default: follow until interrupted)",
    )
    watch.set_defaults(run=_watch)

    keygen = commands.add_parser(
        "keygen", parents=[json_opt], help="make an ed25519 key pair for signing patches"
    )
    keygen.add_argument(
        "--dir", default=".", metavar="D", help="where to write the keys (default: .)"
    )
    keygen.add_argument(
        "--name", default="hotpatch", metavar="N", help="writes N.key and N.pub (default: hotpatch)"
    )
    keygen.set_defaults(run=_keygen)

    sign = commands.add_parser(
        "sign", parents=[json_opt], help="write a detached signature FILE.sig"
    )
    sign.add_argument("files", nargs="+", metavar="FILE", help="patch files or bundle directories")
    sign.add_argument(
        "--key",
        metavar="PRIVATE",
        default=os.environ.get(ENV_KEY),
        help=f"the private key from `hotpatch keygen` (default: ${ENV_KEY})",
    )
    sign.set_defaults(run=_sign)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hotpatch`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:  # the supervisor has a command line of its own
        from hotpatch.supervisor import main as supervise  # noqa: PLC0415 - only for `run`

        return supervise(argv)
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except UsageError as exc:
        return _fail(args, str(exc), "UsageError")
    except KeyboardInterrupt:
        return 130


# -- talking to the agent ---------------------------------------------------------------


def _socket(args: argparse.Namespace) -> Path:
    """--socket, else --folder, else $HOTPATCH_SOCKET, else ./.hotpatch.json."""
    if getattr(args, "socket", None):
        return Path(args.socket)
    if getattr(args, "folder", None):
        return _from_pidfile(Path(args.folder))
    if os.environ.get(ENV_SOCKET):
        return Path(os.environ[ENV_SOCKET])
    if Path(PIDFILE).is_file():
        return _from_pidfile(Path.cwd())
    msg = (
        "no agent to talk to: pass --socket PATH or --folder DIR (the agent's watched "
        f"folder), or set {ENV_SOCKET}"
    )
    raise UsageError(msg)


def _from_pidfile(folder: Path) -> Path:
    pidfile = folder / PIDFILE
    try:
        info = json.loads(pidfile.read_bytes())
    except FileNotFoundError:
        msg = f"{pidfile} does not exist: is an agent watching {folder}?"
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
    if isinstance(pid, int) and not _alive(pid):
        msg = f"the agent that wrote {pidfile} (pid {pid}) is not running"
        raise UsageError(msg)
    return folder / socket  # an absolute socket path stays as it is


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ask(args: argparse.Namespace, payload: dict[str, Any]) -> Answer:
    from hotpatch._control import request  # noqa: PLC0415 -- keygen/sign do not need it

    path = _socket(args)
    try:
        return request(path, payload, timeout=getattr(args, "timeout", DEFAULT_TIMEOUT))
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


def _code(answer: Answer) -> int:
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


def _finish(
    args: argparse.Namespace, answer: Answer, show: Callable[[Answer, TextIO], None]
) -> int:
    code = _code(answer)
    if getattr(args, "json", False):
        _print_json(answer)
        return code
    if code == EXIT_OK or "outcome" in answer:
        show(answer, sys.stdout)
    if code != EXIT_OK:
        kind = "refused" if code == EXIT_REFUSED else "error"
        reason = answer.get("error") or answer.get("reason") or "no reason given"
        print(f"hotpatch: {kind}: {reason}", file=sys.stderr)
    return code


def _fail(args: argparse.Namespace, message: str, error_type: str) -> int:
    if getattr(args, "json", False):
        _print_json({"ok": False, "error": message, "error_type": error_type})
    print(f"hotpatch: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


# -- rendering ---------------------------------------------------------------------------


def table(rows: Sequence[Sequence[object]], header: Sequence[str] | None = None) -> str:
    """Rows as aligned columns (the last one unpadded); ``None`` and empty show as ``-``."""
    cells = [[_cell(c) for c in row] for row in ([header] if header else []) + list(rows)]
    if not cells:
        return ""
    widths = [max(len(row[i]) for row in cells if i < len(row)) for i in range(len(cells[0]))]
    lines = []
    for row in cells:
        padded = [c.ljust(widths[i]) for i, c in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None or (isinstance(value, str | list | tuple) and not value):
        return "-"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def _ms(seconds: object) -> str:
    return f"{float(seconds) * 1e3:.1f} ms" if isinstance(seconds, int | float) else "-"


def _when(timestamp: object) -> str:
    if isinstance(timestamp, int | float):
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
    return _cell(timestamp)


def _show_status(answer: Answer, out: TextIO) -> None:
    last = answer.get("last")
    last_text = None
    if isinstance(last, dict):
        last_text = f"{last.get('version') or '?'} {last.get('outcome') or '?'}"
        if last.get("file"):
            last_text += f" ({last['file']})"
        if last.get("time"):
            last_text += f" at {last['time']}"
        if last.get("reason") and last.get("outcome") not in ("applied", "unchanged"):
            last_text += f": {last['reason']}"
    level = answer.get("level") or []
    rows = [
        ("baseline", answer.get("baseline")),
        ("version", answer.get("version")),
        ("level", level if level else f"baseline only ({answer.get('baseline')})"),
        ("pid", answer.get("pid")),
        ("watch", answer.get("watch")),
        ("journal", answer.get("journal")),
        ("socket", answer.get("socket")),
        ("pending", answer.get("pending")),
        ("last", last_text),
    ]
    print(table([r for r in rows if r[0] != "socket" or "socket" in answer]), file=out)


def _show_outcome(answer: Answer, out: TextIO) -> None:
    timings = answer.get("timings") or {}
    rows = [
        ("file", answer.get("file")),
        ("version", answer.get("version")),
        ("outcome", answer.get("outcome")),
        ("reason", answer.get("reason")),
        ("targets", answer.get("targets")),
        ("level", answer.get("level")),
        ("sha256", answer.get("sha256")),
        ("signed by", answer.get("key_id")),
        ("rollout", _rollout_summary(answer.get("rollout"))),
        ("timings", ", ".join(f"{k.removesuffix('_s')} {_ms(v)}" for k, v in timings.items())),
    ]
    print(table([r for r in rows if r[0] not in ("signed by", "rollout") or r[1]]), file=out)


def _rollout_summary(rollout: object) -> str | None:
    if not isinstance(rollout, dict):
        return None
    unhealthy = rollout.get("unhealthy") or []
    return f"{rollout.get('state')}: workers changed {rollout.get('changed') or []}" + (
        f", unhealthy {unhealthy}" if unhealthy else ""
    )


def _show_rollback(answer: Answer, out: TextIO) -> None:
    workers = answer.get("workers") or []
    if workers:  # under `hotpatch run --workers N`: each worker rolled back
        rows = [
            (
                w.get("index"),
                w.get("versions") if w.get("ok") else "failed",
                (w.get("level") or "baseline only") if w.get("ok") else w.get("error"),
            )
            for w in workers
        ]
        print(table(rows, header=("WORKER", "ROLLED BACK", "LEVEL NOW")), file=out)
        return
    level = answer.get("level") or []
    print(
        table(
            [
                ("rolled back", answer.get("versions")),
                ("level now", level if level else "baseline only"),
            ]
        ),
        file=out,
    )


def _show_history(answer: Answer, out: TextIO) -> None:
    entries = answer.get("history") or []
    if not entries:
        print("no patches applied or rolled back yet", file=out)
        return
    header: tuple[str, ...] = ("TIME", "ACTION", "VERSION", "LEVEL", "ELAPSED", "WHO")
    rows: list[tuple[object, ...]] = [
        (
            _when(e.get("time")),
            e.get("action"),
            e.get("version"),
            e.get("level") or "baseline",
            _ms(e.get("elapsed_s")),
            e.get("who"),
        )
        for e in entries
    ]
    if any("worker" in e for e in entries):  # under `hotpatch run --workers N`
        header = ("WORKER", *header)
        rows = [(e.get("worker"), *row) for e, row in zip(entries, rows, strict=True)]
    print(table(rows, header=header), file=out)


def _show_verify(answer: Answer, out: TextIO) -> None:
    rows: list[tuple[str, object]] = [
        ("version", answer.get("version")),
        ("hot", "yes" if answer.get("hot") else "no: needs a restart"),
    ]
    rows += [("reason", reason) for reason in answer.get("reasons") or []]
    if answer.get("note") and answer.get("note") not in (answer.get("reasons") or []):
        rows.append(("note", answer.get("note")))
    print(table(rows), file=out)
    modes = answer.get("modes") or {}
    targets = answer.get("targets") or []
    if targets:
        print(file=out)
        print(table([(t, modes.get(t)) for t in targets], header=("TARGET", "MODE")), file=out)
    workers = answer.get("workers") or []
    if workers:  # under `hotpatch run --workers N`: checked in each worker
        worker_rows = [
            (w.get("index"), "yes" if w.get("hot") else "no", w.get("level")) for w in workers
        ]
        print(file=out)
        print(table(worker_rows, header=("WORKER", "HOT", "LEVEL")), file=out)


# -- commands ------------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    supervised = _supervisor_status(args)
    if supervised is not None:
        return _finish(args, supervised, _show_supervisor)
    answer = _ask(args, {"cmd": "status"})
    return _finish(args, answer, _show_supervisor if answer.get("supervisor") else _show_status)


def _supervisor_status(args: argparse.Namespace) -> Answer | None:
    """The status file of the supervisor owning --folder (or ./), ``None`` for an agent."""
    if getattr(args, "socket", None):
        return None
    folder = Path(args.folder) if getattr(args, "folder", None) else Path.cwd()
    try:
        info = json.loads((folder / PIDFILE).read_bytes())
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


def _show_supervisor(answer: Answer, out: TextIO) -> None:
    patches = answer.get("patches") or {}
    child = answer.get("child") or {}
    pauses = [p for p in answer.get("pauses_s") or [] if isinstance(p, int | float)]
    last = answer.get("last_restart") or {}
    rows = [
        ("supervisor", f"pid {answer.get('pid')}, {answer.get('state')}"),
        ("service", f"pid {child.get('pid')}" if isinstance(child, dict) and child else None),
        ("baseline", patches.get("baseline")),
        ("level", patches.get("level") or f"baseline only ({patches.get('baseline')})"),
        ("pending baseline", patches.get("baseline_pending")),
        ("restarts", answer.get("restarts")),
        (
            "last restart",
            f"{last.get('kind')} {'ok' if last.get('ok') else 'failed'}"
            + (f", paused {last['paused_s'] * 1e3:.1f} ms" if last.get("paused_s") else "")
            if last
            else None,
        ),
        ("pauses", f"{len(pauses)}, max {max(pauses) * 1e3:.1f} ms" if pauses else None),
        ("error", answer.get("error")),
    ]
    rollout = answer.get("rollout") or {}
    if rollout:
        progress = rollout.get("progress") or []
        rows.append(("rollout", f"{rollout.get('what')}: {rollout.get('state')}"))
        rows.append(("progress", progress[-1] if progress else None))
    print(table([r for r in rows if r[1] not in (None, {}, [])]), file=out)
    workers = answer.get("workers") or []
    if workers:
        print(file=out)
        print(
            table(
                [
                    (
                        w.get("index"),
                        w.get("pid"),
                        w.get("state"),
                        w.get("baseline"),
                        w.get("level"),
                    )
                    for w in workers
                ],
                header=("worker", "pid", "state", "baseline", "level"),
            ),
            file=out,
        )


OUTCOME_DIRS = ("applied", "rejected", "pending")


def _watch(args: argparse.Namespace) -> int:
    """Print each ``NAME.result.json`` that appears in the folder's outcome directories."""
    from watchdog.events import FileSystemEvent, FileSystemEventHandler  # noqa: PLC0415
    from watchdog.observers import Observer  # noqa: PLC0415

    folder = Path(args.folder)
    if not folder.is_dir():
        msg = f"{folder} is not a folder: give the patch folder an agent or supervisor watches"
        raise UsageError(msg)
    seen: queue.Queue[Path] = queue.Queue()

    class Results(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            # result files are written under a temporary name and renamed into place
            path = str(getattr(event, "dest_path", "") or event.src_path)
            if event.event_type in ("moved", "closed", "created") and path.endswith(".result.json"):
                seen.put(Path(path))

    observer = Observer()
    for name in OUTCOME_DIRS:
        (folder / name).mkdir(exist_ok=True)
        observer.schedule(Results(), str(folder / name), recursive=False)
    observer.start()
    # On stderr even with --json: it says the follower is listening (stdout stays JSON lines).
    print(f"watching {folder} for outcomes (Ctrl-C to stop)", file=sys.stderr, flush=True)
    shown: set[Path] = set()
    try:
        while args.count is None or len(shown) < args.count:
            path = seen.get()
            if path in shown:
                continue
            try:
                record = json.loads(path.read_bytes())
            except (OSError, ValueError):
                continue  # not complete yet: its rename will be seen
            shown.add(path)
            _show_watched(args, path.parent.name, record)
    finally:
        observer.stop()
        observer.join()
    return EXIT_OK


def _show_watched(args: argparse.Namespace, where: str, record: Answer) -> None:
    if getattr(args, "json", False):
        print(json.dumps({"dir": where, **record}, ensure_ascii=False), flush=True)
        return
    timings = record.get("timings") or {}
    total = timings.get("total_s")
    parts = [
        str(record.get("time") or ""),
        f"{record.get('version') or '?'}",
        str(record.get("outcome") or where),
        f"via {record['via']}" if record.get("via") else "",
        f"{total * 1e3:.1f} ms" if isinstance(total, int | float) else "",
        str(record.get("reason") or "") if record.get("outcome") != "applied" else "",
    ]
    print("  ".join(p for p in parts if p), flush=True)


def _patch_path(file: str) -> str:
    path = Path(file).absolute()
    if not path.exists():
        msg = f"{file}: no such file"
        raise UsageError(msg)
    return str(path)


def _apply(args: argparse.Namespace) -> int:
    payload = {"cmd": "apply", "path": _patch_path(args.file)}
    status_file = None if getattr(args, "json", False) else _rollout_status_file(args)
    if status_file is None:
        answer = _ask(args, payload)
    else:  # a supervisor: show its rollout while the apply runs
        answer = _ask_following(args, payload, status_file, sys.stdout)
    return _finish(args, answer, _show_outcome)


# -- rollout progress, while an apply runs under `hotpatch run --workers N` ---------------

FOLLOW_POLL_S = 0.1
BAR_WIDTH = 20


def _rollout_status_file(args: argparse.Namespace) -> Path | None:
    """The status file of the supervisor this command talks to; ``None`` for an agent."""
    if getattr(args, "socket", None):
        folder = Path(args.socket).absolute().parent
    elif getattr(args, "folder", None):
        folder = Path(args.folder)
    elif os.environ.get(ENV_SOCKET):
        folder = Path(os.environ[ENV_SOCKET]).absolute().parent
    else:
        folder = Path.cwd()
    try:
        info = json.loads((folder / PIDFILE).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not info.get("supervisor"):
        return None
    path = info.get("status_file")
    return Path(path) if isinstance(path, str) and path else None


def render_rollout(rollout: Answer, elapsed_s: float) -> str:
    """One line saying how far a rollout is: what, a bar, batch k/n, workers, elapsed."""
    plan = rollout.get("domains") or []
    total = sum(len(batch) for batch in plan) or 1
    changed = len(rollout.get("changed") or [])
    unhealthy = list(rollout.get("unhealthy") or [])
    filled = round(BAR_WIDTH * min(changed, total) / total)
    parts = [
        f"{rollout.get('what') or 'rollout'}",
        f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}]",
        f"batch {len(rollout.get('batches') or [])}/{len(plan)}",
        f"{changed}/{total} workers changed",
        f"{len(unhealthy)} unhealthy" + (f" {unhealthy}" if unhealthy else ""),
        f"{elapsed_s:.1f}s",
    ]
    if rollout.get("state") not in (None, "running"):
        parts.append(str(rollout["state"]))
    return "  ".join(parts)


class RolloutFollower:
    """Shows the rollouts a supervisor starts after it was made, from its status file.

    On a terminal one line is redrawn in place (``render_rollout``); elsewhere
    each new ``rollout.progress`` entry is printed as a line of its own.
    """

    def __init__(self, status_file: Path, out: TextIO, *, tty: bool | None = None) -> None:
        self.status_file = status_file
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.started = time.monotonic()
        self.shown: dict[tuple[str, str], int] = {}  # rollout -> progress entries shown
        self.drawn = False
        self._before = {_key(r) for r in self._rollouts()}  # someone else's: not ours

    def _rollouts(self) -> list[Answer]:
        try:
            status = json.loads(self.status_file.read_bytes())
        except (OSError, ValueError):
            return []  # not written yet, or being replaced: the next poll sees it
        rollouts = status.get("rollouts") if isinstance(status, dict) else None
        return [r for r in rollouts or [] if isinstance(r, dict)]

    def poll(self) -> None:
        """Show what changed since the last poll."""
        for rollout in self._rollouts():
            key = _key(rollout)
            if key in self._before:
                continue
            progress = [str(p) for p in rollout.get("progress") or []]
            new = progress[self.shown.get(key, 0) :]
            self.shown[key] = len(progress)
            if self.tty:
                line = render_rollout(rollout, time.monotonic() - self.started)
                self.out.write(f"\r\x1b[K{line}")
                self.drawn = True
            else:
                for entry in new:
                    self.out.write(f"{entry}\n")
            self.out.flush()

    def finish(self) -> None:
        """The last poll; on a terminal, end the redrawn line."""
        self.poll()
        if self.drawn:
            self.out.write("\n")
            self.out.flush()


def _key(rollout: Answer) -> tuple[str, str]:
    return str(rollout.get("what")), str(rollout.get("started"))


def _ask_following(
    args: argparse.Namespace, payload: dict[str, Any], status_file: Path, out: TextIO
) -> Answer:
    """``_ask`` in a thread, showing the supervisor's rollout progress until it answers."""
    follower = RolloutFollower(status_file, out)
    answers: queue.Queue[Answer | UsageError] = queue.Queue()

    def ask() -> None:
        try:
            answers.put(_ask(args, payload))
        except UsageError as exc:
            answers.put(exc)

    thread = threading.Thread(target=ask, name="hotpatch-apply", daemon=True)
    thread.start()
    while True:
        try:
            answer = answers.get(timeout=FOLLOW_POLL_S)
            break
        except queue.Empty:
            follower.poll()
    follower.finish()
    if isinstance(answer, UsageError):
        raise answer
    return answer


def _rollback(args: argparse.Namespace) -> int:
    return _finish(args, _ask(args, {"cmd": "rollback", "to": args.to}), _show_rollback)


def _history(args: argparse.Namespace) -> int:
    answer = _ask(args, {"cmd": "history"})
    if args.limit is not None and isinstance(answer.get("history"), list):
        answer["history"] = answer["history"][-args.limit :] if args.limit > 0 else []
    return _finish(args, answer, _show_history)


def _verify(args: argparse.Namespace) -> int:
    answer = _ask(args, {"cmd": "verify", "path": _patch_path(args.file)})
    code = _finish(args, answer, _show_verify)
    if code == EXIT_OK and answer.get("hot") is False:
        if not getattr(args, "json", False):
            print("hotpatch: not hot: applying it would need a restart", file=sys.stderr)
        return EXIT_REFUSED
    return code


def _keygen(args: argparse.Namespace) -> int:
    from hotpatch._signing import generate_keypair, public_key_id  # noqa: PLC0415

    try:
        private, public = generate_keypair(Path(args.dir), args.name)
        kid = public_key_id(public)
    except (OSError, ValueError, _errors.PatchError) as exc:
        raise UsageError(str(exc)) from None
    if getattr(args, "json", False):
        _print_json({"ok": True, "private": str(private), "public": str(public), "key_id": kid})
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
    from hotpatch._signing import sign_file  # noqa: PLC0415

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
        _print_json({"ok": True, "signed": signed})
    else:
        print(
            table(
                [(s["file"], s["signature"], s["key_id"]) for s in signed],
                header=("FILE", "SIGNATURE", "KEY ID"),
            )
        )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
