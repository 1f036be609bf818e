"""Following as it happens: a supervisor's rollout during an apply; a folder's outcomes."""

from __future__ import annotations

import argparse
import collections
import json
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from hotpatch._results import level_line
from hotpatch.agent._names import PIDFILE_NAME
from hotpatch.agent._outcome_log import FOLDER, LogTail
from hotpatch.agent._state_dir import ENV_STATE_DIR, read_only
from hotpatch.cli._ask import ENV_SOCKET, EXIT_OK, Answer, UsageError, agent_files, ask

__all__ = [
    "OUTCOME_DIRS",
    "RolloutFollower",
    "ask_following",
    "render_rollout",
    "rollout_status_file",
    "watch_folder",
]

# -- rollout progress, while an apply runs under `hotpatch run --workers N` ---------------

FOLLOW_POLL_S = 0.1
BAR_WIDTH = 20


def rollout_status_file(args: argparse.Namespace) -> Path | None:
    """The status file of the supervisor this command talks to; ``None`` for an agent."""
    if getattr(args, "socket", None):
        folder = Path(args.socket).absolute().parent
    elif getattr(args, "state_dir", None) or getattr(args, "folder", None):
        folder = agent_files(args)
    elif os.environ.get(ENV_SOCKET):
        folder = Path(os.environ[ENV_SOCKET]).absolute().parent
    else:
        folder = agent_files(args)
    try:
        info = json.loads((folder / PIDFILE_NAME).read_bytes())
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
    each new ``rollout.progress`` entry is printed as a line of its own, with
    the rollout's name if ``named`` (several rollouts follow each other).
    """

    def __init__(
        self, status_file: Path, out: TextIO, *, tty: bool | None = None, named: bool = False
    ) -> None:
        self.status_file = status_file
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.named = named
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
                    stamp, _, message = entry.partition(" ")
                    named = f"{stamp}  rollout {rollout.get('what')}: {message}"
                    self.out.write(f"{named if self.named else entry}\n")
            self.out.flush()

    def finish(self) -> None:
        """The last poll; on a terminal, end the redrawn line."""
        self.poll()
        if self.drawn:
            self.out.write("\n")
            self.out.flush()


def _key(rollout: Answer) -> tuple[str, str]:
    return str(rollout.get("what")), str(rollout.get("started"))


def ask_following(
    args: argparse.Namespace, payload: dict[str, Any], status_file: Path, out: TextIO
) -> Answer:
    """``ask`` in a thread, showing the supervisor's rollout progress until it answers."""
    follower = RolloutFollower(status_file, out)
    answers: queue.Queue[Answer | UsageError] = queue.Queue()

    def ask_in_thread() -> None:
        try:
            answers.put(ask(args, payload))
        except UsageError as exc:
            answers.put(exc)

    thread = threading.Thread(target=ask_in_thread, name="hotpatch-apply", daemon=True)
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


# -- hotpatch watch: a folder's outcomes, a line each ------------------------------------

OUTCOME_DIRS = ("applied", "rejected", "pending")


def watch_folder(args: argparse.Namespace) -> int:
    """Print each outcome of the folder's agent or supervisor, and each rollback, as it happens.

    Every outcome and rollback is read from the folder's outcome log, however
    it was asked for (a drop, ``hotpatch apply``, ``hotpatch rollback``); the
    result files that appear in the outcome directories are shown too (an
    agent of an earlier release writes no log), each outcome once. For a
    supervisor's folder (not with ``--json``), its rollouts' progress lines.
    An agent with a state directory keeps the log and the outcome folders
    there (``agent_files``: --state-dir, or found through $HOTPATCH_STATE_DIR).
    """
    from watchdog.events import FileSystemEvent, FileSystemEventHandler  # noqa: PLC0415
    from watchdog.observers import Observer  # noqa: PLC0415

    from hotpatch.agent._observer import stop_observer  # noqa: PLC0415 - imports watchdog

    folder = agent_files(args)
    if not folder.is_dir():
        what = (
            "the state directory of an agent or supervisor (--state-dir)"
            if getattr(args, "state_dir", None) or not getattr(args, "folder", None)
            else "the patch folder an agent or supervisor watches"
        )
        msg = f"{folder} is not a folder: give {what}"
        raise UsageError(msg)
    if read_only(folder):
        msg = (
            f"{folder} is read-only, so its agent keeps its outcomes elsewhere: give its "
            f"state directory, --state-dir DIR (or set {ENV_STATE_DIR}=DIR)"
        )
        raise UsageError(msg)
    seen: queue.Queue[Path] = queue.Queue()

    class Results(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            # result files are written under a temporary name and renamed into place
            path = str(getattr(event, "dest_path", "") or event.src_path)
            if event.event_type in ("moved", "closed", "created") and path.endswith(".result.json"):
                seen.put(Path(path))

    tail = LogTail(folder)  # from here on: what the log holds already is not new
    observer = Observer()
    for name in OUTCOME_DIRS:
        (folder / name).mkdir(exist_ok=True)
        observer.schedule(Results(), str(folder / name), recursive=False)
    observer.start()
    status_file = None if getattr(args, "json", False) else rollout_status_file(args)
    rollouts = (
        RolloutFollower(status_file, sys.stdout, tty=False, named=True) if status_file else None
    )
    # On stderr even with --json: it says the follower is listening (stdout stays JSON lines).
    print(f"watching {folder} for outcomes (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        _follow(args, seen, tail, rollouts)
    finally:
        stop_observer(observer)
        tail.close()
    return EXIT_OK


def _follow(
    args: argparse.Namespace,
    results: queue.Queue[Path],
    tail: LogTail,
    rollouts: RolloutFollower | None,
) -> None:
    """Show the log's records and the result files as they come, each outcome once."""
    shown = _Shown(args.count)
    filed: set[Path] = set()

    def show(record: Answer) -> None:
        if rollouts is not None:
            # A rollout's last steps are in the status file before its outcome is
            # filed: read it again, or steps written since the last poll would come
            # after the outcome, or never (with --count).
            rollouts.poll()
        _show_watched(args, record)

    while not shown.enough:
        try:
            path: Path | None = results.get(timeout=FOLLOW_POLL_S)
        except queue.Empty:
            path = None
        if rollouts is not None:
            rollouts.poll()
        for record in tail.read():  # written before the result file: seen first
            if not shown.enough and shown.first(record):
                show(record)
        if path is None or path in filed:
            continue
        try:
            record = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue  # not complete yet: its rename will be seen
        filed.add(path)
        if isinstance(record, dict) and not shown.enough:
            record = {"event": "outcome", "source": FOLDER, "dir": path.parent.name, **record}
            if shown.first(record):
                show(record)


class _Shown:
    """The outcomes shown so far, by identity: the log's line and the result file are one."""

    KEPT = 4096

    def __init__(self, count: int | None) -> None:
        self.wanted = count
        self.count = 0
        self._keys: set[tuple[object, ...]] = set()
        self._order: collections.deque[tuple[object, ...]] = collections.deque()

    @property
    def enough(self) -> bool:
        return self.wanted is not None and self.count >= self.wanted

    def first(self, record: Answer) -> bool:
        """Is ``record`` new? Counts it if so."""
        key = tuple(
            str(record.get(k)) for k in ("event", "file", "time", "sha256", "outcome", "who")
        )
        if key in self._keys:
            return False
        self._keys.add(key)
        self._order.append(key)
        if len(self._order) > self.KEPT:
            self._keys.discard(self._order.popleft())
        self.count += 1
        return True


def _show_watched(args: argparse.Namespace, record: Answer) -> None:
    if getattr(args, "json", False):
        print(json.dumps(record, ensure_ascii=False), flush=True)
        return
    source = f"from {record['source']}" if record.get("source") else ""
    if record.get("event") == "rollback":
        level = [str(v) for v in record.get("level") or []]
        size = record.get("level_size")  # the record carries the top of the level
        shown = level_line(level, size if isinstance(size, int) else len(level))
        parts = [
            str(record.get("time") or ""),
            ", ".join(str(v) for v in record.get("versions") or []),
            "rolled back",
            f"level now {shown}" if level else "level now the baseline",
            source,
        ]
        print("  ".join(p for p in parts if p), flush=True)
        return
    timings = record.get("timings") or {}
    total = timings.get("total_s")
    parts = [
        str(record.get("time") or ""),
        f"{record.get('version') or '?'}",
        str(record.get("outcome") or record.get("dir") or ""),
        f"via {record['via']}" if record.get("via") else "",
        f"{total * 1e3:.1f} ms" if isinstance(total, int | float) else "",
        str(record.get("reason") or "") if record.get("outcome") != "applied" else "",
        source,
    ]
    print("  ".join(p for p in parts if p), flush=True)
