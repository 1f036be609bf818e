"""The human side of the ``hotpatch`` command's answers: aligned tables, one renderer each."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TextIO

from hotpatch._results import level_line
from hotpatch.cli._ask import Answer

__all__ = [
    "show_history",
    "show_outcome",
    "show_patch",
    "show_rollback",
    "show_status",
    "show_supervisor",
    "show_verify",
    "table",
]


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


def _level(answer: Answer) -> object:
    """An answer's level: the versions it carries, with ``...`` and how many the level holds
    when it carries only the top (``level_size``)."""
    level = answer.get("level") or []
    size = answer.get("level_size")
    if isinstance(size, int) and isinstance(level, list) and size > len(level):
        return level_line([str(v) for v in level], size)
    return level


def _ms(seconds: object) -> str:
    return f"{float(seconds) * 1e3:.1f} ms" if isinstance(seconds, int | float) else "-"


def _when(timestamp: object) -> str:
    if isinstance(timestamp, int | float):
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
    return _cell(timestamp)


def show_status(answer: Answer, out: TextIO) -> None:
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
        if last.get("rolled_back"):
            last_text += ", rolled back since"
    level = answer.get("level") or []
    rows = [
        ("baseline", answer.get("baseline")),
        ("version", answer.get("version")),
        ("level", level if level else f"baseline only ({answer.get('baseline')})"),
        ("pid", answer.get("pid")),
        ("watch", answer.get("watch")),
        ("state dir", answer.get("state_dir")),
        ("journal", answer.get("journal")),
        ("socket", answer.get("socket")),
        ("pending", answer.get("pending")),
        ("folder", _folder_problem(answer)),
        ("waiting", _waiting(answer)),
        ("last", last_text),
        ("journal report", answer.get("journal_report")),  # pre-fork workers' group journal
        ("journal error", answer.get("journal_error")),
    ]
    optional = ("state dir", "socket", "folder", "waiting", "journal report", "journal error")
    print(table([r for r in rows if r[0] not in optional or r[1]]), file=out)
    _show_workers(answer.get("workers") or [], out)


def _folder_problem(answer: Answer) -> str | None:
    """Why the watched folder takes no drop now (what is wrong, the fix); ``None``: it does."""
    folder = answer.get("folder")
    if isinstance(folder, dict) and folder.get("problem"):
        return f"UNSAFE, no drop is taken: {folder['problem']}"
    return None


def _waiting(answer: Answer) -> str | None:
    """The drop waiting for a resource (disk, descriptors, memory): why, and when next tried."""
    waiting = answer.get("waiting")
    if not isinstance(waiting, dict):
        return None
    return (
        f"{waiting.get('file')}: {waiting.get('reason')} "
        f"(attempt {waiting.get('attempts')}, next in {waiting.get('retry_in_s')} s)"
    )


def show_outcome(answer: Answer, out: TextIO) -> None:
    timings = answer.get("timings") or {}
    rows = [
        ("file", answer.get("file")),
        ("version", answer.get("version")),
        ("outcome", answer.get("outcome")),
        ("reason", answer.get("reason")),
        ("targets", answer.get("targets")),
        ("level", _level(answer)),
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


def show_rollback(answer: Answer, out: TextIO) -> None:
    workers = answer.get("workers") or []
    if workers:  # under `hotpatch run --workers N`: each worker rolled back
        rows = [
            (
                w.get("index"),
                w.get("versions") if w.get("ok") else "failed",
                (_level(w) or "baseline only") if w.get("ok") else w.get("error"),
            )
            for w in workers
        ]
        print(table(rows, header=("WORKER", "ROLLED BACK", "LEVEL NOW")), file=out)
        return
    level = _level(answer)
    print(
        table(
            [
                ("rolled back", answer.get("versions")),
                ("level now", level if level else "baseline only"),
            ]
        ),
        file=out,
    )


def show_history(answer: Answer, out: TextIO) -> None:
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


def show_patch(answer: Answer, out: TextIO) -> None:
    """An applied patch, as ``kpatch info`` shows a module: what it is, then its source."""
    applied = answer.get("applied")
    if applied and answer.get("action") == "replay":
        applied = f"{applied} (replayed from the journal)"
    if applied and answer.get("who"):
        applied = f"{applied} by {answer['who']}"
    rows: list[tuple[str, object]] = [
        ("version", answer.get("version")),
        ("baseline", answer.get("baseline")),
        ("summary", answer.get("summary")),
        ("sha256", answer.get("sha256")),
        ("file", answer.get("path")),
        ("targets", answer.get("targets")),
        ("applied", applied),
    ]
    if "workers" in answer:
        rows.append(("workers", answer.get("workers")))
    print(table(rows), file=out)
    source = str(answer.get("source") or "")
    print(f"\n{source}", end="" if source.endswith("\n") else "\n", file=out)


def show_verify(answer: Answer, out: TextIO) -> None:
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
            (w.get("index"), "yes" if w.get("hot") else "no", _level(w)) for w in workers
        ]
        print(file=out)
        print(table(worker_rows, header=("WORKER", "HOT", "LEVEL")), file=out)


def show_supervisor(answer: Answer, out: TextIO) -> None:
    patches = answer.get("patches") or {}
    child = answer.get("child") or {}
    pauses = [p for p in answer.get("pauses_s") or [] if isinstance(p, int | float)]
    last = answer.get("last_restart") or {}
    rows = [
        ("supervisor", f"pid {answer.get('pid')}, {answer.get('state')}"),
        ("service", f"pid {child.get('pid')}" if isinstance(child, dict) and child else None),
        ("baseline", patches.get("baseline")),
        ("level", _level(patches) or f"baseline only ({patches.get('baseline')})"),
        ("pending baseline", patches.get("baseline_pending")),
        ("restarts", answer.get("restarts")),
        (
            "last restart",
            f"{last.get('kind')} {'ok' if last.get('ok') else 'failed'}"
            + (f", paused {last['paused_s'] * 1e3:.1f} ms" if last.get("paused_s") else "")
            + (f", rolled back to {last['rolled_back']}" if last.get("rolled_back") else "")
            if last
            else None,
        ),
        ("pauses", f"{len(pauses)}, max {max(pauses) * 1e3:.1f} ms" if pauses else None),
        ("metrics", answer.get("metrics")),
        ("folder", _folder_problem(answer)),
        ("waiting", _waiting(answer)),
        ("error", answer.get("error")),
    ]
    rollout = answer.get("rollout") or {}
    if rollout:
        progress = rollout.get("progress") or []
        rows.append(("rollout", f"{rollout.get('what')}: {rollout.get('state')}"))
        rows.append(("progress", progress[-1] if progress else None))
    print(table([r for r in rows if r[1] not in (None, {}, [])]), file=out)
    _show_workers(answer.get("workers") or [], out)


def _show_workers(workers: Sequence[Answer], out: TextIO) -> None:
    """A row per worker (``hotpatch run --workers N``, or pre-fork ``workers=True``)."""
    if not workers:
        return
    rows = [
        (w.get("index"), w.get("pid"), w.get("state"), w.get("baseline"), _level(w))
        for w in workers
    ]
    print(file=out)
    print(table(rows, header=("worker", "pid", "state", "baseline", "level")), file=out)
