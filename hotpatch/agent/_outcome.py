"""A drop's outcome: its record, its log line, ``NAME.result.json`` and the move beside it."""

from __future__ import annotations

import contextlib
import datetime
import errno
import itertools
import json
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hotpatch._results import LEVEL_SHOWN, level_summary
from hotpatch.agent._names import shown
from hotpatch.agent._signing import SIGNATURE_SUFFIX

__all__ = [
    "LEVEL_SHOWN",
    "OUTCOME_DIRS",
    "RESULT_SUFFIX",
    "Outcome",
    "OutcomeKind",
    "file_outcome",
    "log_outcome",
    "now_iso",
    "result_bytes",
    "temporary_name",
    "write_durably",
    "write_result",
]

log = logging.getLogger("hotpatch")

OutcomeKind = Literal["applied", "unchanged", "rejected", "pending"]
# Where each outcome files the drop.
OUTCOME_DIRS: dict[str, str] = {
    "applied": "applied",
    "unchanged": "applied",
    "rejected": "rejected",
    "pending": "pending",
}
RESULT_SUFFIX = ".result.json"

# -- outcomes ---------------------------------------------------------------------------


def now_iso() -> str:
    """The current time, ISO 8601 in UTC, to the millisecond."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


@dataclass(slots=True)
class Outcome:
    """What became of one patch: the content of ``NAME.result.json``."""

    name: str
    who: str
    version: str | None = None
    outcome: OutcomeKind = "rejected"
    reason: str | None = None
    sha256: str | None = None
    targets: tuple[str, ...] = ()
    level: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    time: str = field(default_factory=now_iso)
    key_id: str | None = None
    # What was examined, so the folder moves that inode and no other (not in the record).
    ino: tuple[int, int] | None = None
    data: bytes | None = None
    error_type: str | None = None  # the PatchError subclass behind a refusal
    notified: bool = False  # the registry had it: it told the plugins of a refusal itself
    via: str | None = None  # under the supervisor: "hot" or "restart"
    workers: list[dict[str, Any]] | None = None  # install(workers=True): each worker's result
    # Under the supervisor: how it went in (``restart``, ``health``, ``rolled_back``, ``rollout``).
    details: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {
            "file": shown(self.name),
            "version": self.version,
            "outcome": self.outcome,
            "reason": self.reason,
            "sha256": self.sha256,
            "targets": list(self.targets),
            # The top of the level and its size: filing costs the same at any level.
            **level_summary(self.level),
            "timings": {k: round(v, 6) for k, v in self.timings.items()},
            "time": self.time,
            "who": self.who,
            "key_id": self.key_id,
            **({"via": self.via} if self.via is not None else {}),
            **({"workers": self.workers} if self.workers is not None else {}),
            **self.details,
        }


def log_outcome(outcome: Outcome) -> None:
    """Log ``outcome`` in one line: who, which file, what became of it, how long it took."""
    level = logging.INFO if outcome.outcome in ("applied", "unchanged") else logging.WARNING
    log.log(
        level,
        "%s %s: %s patch %s, targets %s, in %.1f ms%s",
        outcome.who,
        shown(outcome.name),
        outcome.outcome,
        outcome.version or "?",
        ", ".join(outcome.targets) or "-",
        outcome.timings.get("total_s", 0.0) * 1e3,
        f": {outcome.reason}" if outcome.reason and outcome.outcome != "unchanged" else "",
    )


def temporary_name(path: Path) -> Path:
    """Where ``write_result(path, ...)`` writes before its rename (a file there is reused)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_result(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` as JSON at ``path`` completely: temporary file, fsync, rename."""
    write_durably(os.fspath(path), os.fspath(temporary_name(path)), result_bytes(record))


def result_bytes(record: dict[str, Any]) -> bytes:
    """``record`` as a result file holds it: the text of ``json.dumps(record, indent=2)``.

    Laid out here, each value not a list or mapping written by ``json.dumps``: an
    indented ``json.dumps`` runs json's Python encoder, which makes its functions
    anew on each call, in reference cycles (some 30 objects of garbage for the
    collector a result, two results a drop).
    """
    out: list[str] = []
    _indented(record, "\n", out)
    out.append("\n")
    return "".join(out).encode()


def _indented(value: Any, margin: str, out: list[str]) -> None:
    """``value`` as ``json.dumps(value, indent=2)`` writes it at ``margin``, onto ``out``."""
    if isinstance(value, dict) and value:
        inner = margin + "  "
        start = "{" + inner
        for k, v in value.items():
            out += (start, json.dumps(k) if isinstance(k, str) else _key(k), ": ")
            _indented(v, inner, out)
            start = "," + inner
        out.append(margin + "}")
    elif isinstance(value, list | tuple) and value:
        inner = margin + "  "
        start = "[" + inner
        for v in value:
            out.append(start)
            _indented(v, inner, out)
            start = "," + inner
        out.append(margin + "]")
    else:
        out.append(json.dumps(value))


def _key(k: Any) -> str:
    """A key that is not a string as json writes it (``1`` -> ``"1"``; refused as json
    refuses it)."""
    return json.dumps({k: 0})[1:-4]


def write_durably(path: str, tmp: str, payload: bytes) -> None:
    """``payload`` at ``path`` completely: written at ``tmp``, fsynced, renamed.

    Only the ``os`` module's calls, written in C: what a patch cannot replace
    (the vital check takes time spent here for the disk's, not the patch's).
    """
    try:
        _write_synced(tmp, payload, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_synced(path: str | Path, payload: bytes, mode: int) -> None:
    """``payload`` written whole at ``path`` (made or emptied) and fsynced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _free_name(directory: Path, name: str, *, is_dir: bool) -> str:
    """``name``, or ``stem.N.suffix`` when it (or its result or signature) is taken."""

    def taken(candidate: str) -> bool:
        return any(
            os.path.lexists(directory / f"{candidate}{extra}")
            for extra in ("", RESULT_SUFFIX, SIGNATURE_SUFFIX)
        )

    if not taken(name):
        return name
    stem, dot, suffix = name.rpartition(".")
    if is_dir or not dot or not stem:
        stem, suffix = name, ""
    for n in itertools.count(1):
        candidate = f"{stem}.{n}.{suffix}" if suffix else f"{stem}.{n}"
        if not taken(candidate):
            return candidate
    raise AssertionError("unreachable")  # pragma: no cover


def _move(source: Path, target: Path) -> None:
    """Move ``source`` to ``target`` without overwriting anything.

    Regular files move by hard link then unlink, not by rename: a link refuses
    a name that is taken (``EEXIST``) where a rename would replace what is
    there. Directories, symlinks, and filesystems without hard links fall back
    to a rename, once the target is checked to be free.
    """
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "exists", str(target)) from exc
        os.rename(source, target)
        return
    os.unlink(source)


def file_outcome(
    path: Path, outcome: Outcome, *, into: Path | None = None, move: bool = True
) -> bool:
    """Write the result file, then move the drop (and its signature) beside it.

    ``into``: the patch folder whose outcome folders receive it (default the
    drop's own folder; a ConfigMap drop is a private copy elsewhere; with a
    state directory, that directory). ``move=False``: the drop stays where it
    is (a folder that is only read); the bytes processed are filed as a copy.
    ``True`` when ``path`` now holds another file than the one processed
    (replaced while it was worked on): the caller announces that newcomer again.
    """
    directory = (into or path.parent) / OUTCOME_DIRS[outcome.outcome]
    if not move:
        try:
            is_dir = stat.S_ISDIR(path.lstat().st_mode)
        except FileNotFoundError:
            is_dir = False
        final = _free_name(directory, path.name, is_dir=is_dir)
        result = directory / (final + RESULT_SUFFIX)
        write_result(result, outcome.record())
        if outcome.data is not None:
            try:
                _write_copy(directory / final, outcome.data)
            except BaseException:  # not filed: no result file without its copy (retried)
                with contextlib.suppress(OSError):
                    result.unlink()
                raise
        return False
    try:
        st = path.lstat()
    except FileNotFoundError:
        st = None
    if st is None:
        same = False
    elif outcome.ino is None:
        same = True  # nothing was read (refused as it stood): file what is there
    else:
        same = (st.st_ino, st.st_dev) == outcome.ino
    is_dir = st is not None and stat.S_ISDIR(st.st_mode)
    final = _free_name(directory, path.name, is_dir=is_dir)
    result = directory / (final + RESULT_SUFFIX)
    write_result(result, outcome.record())
    newcomer = False
    try:
        if same:
            _move(path, directory / final)
        elif outcome.data is not None:
            # The name now holds another file (replaced while we worked): file the
            # bytes we processed, and leave the newcomer to its own event.
            _write_copy(directory / final, outcome.data)
            newcomer = st is not None
    except BaseException:  # not filed: no result file without its drop (filing is retried)
        with contextlib.suppress(OSError):
            result.unlink()
        raise
    sig = path.with_name(path.name + SIGNATURE_SUFFIX)
    if os.path.lexists(sig):
        _move(sig, directory / (final + SIGNATURE_SUFFIX))
    return newcomer


def _write_copy(path: Path, data: bytes) -> None:
    """A new file ``path`` holding ``data`` whole, or none at all.

    Written and fsynced under a temporary name, then linked to ``path`` (which
    fails if the name is taken, as ``O_EXCL`` would): a reader that finds the name,
    even after a crash, finds the whole copy, never an empty or cut file.
    """
    tmp = temporary_name(path)
    try:
        _write_synced(tmp, data, 0o600)
        os.link(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
