"""After a restart that changes the code: what to go back to, and the new process's health."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotpatch._errors import JournalError
from hotpatch._journal import Journal, UndoPoint
from hotpatch._results import level_text
from hotpatch._shortage import shortage_of
from hotpatch.supervisor._bundle import Release
from hotpatch.supervisor._child import Child, ChildExited

__all__ = ["HEALTH_TIMEOUT", "CodePoint", "describe_level", "health_of"]

log = logging.getLogger("hotpatch.supervisor")

HEALTH_TIMEOUT = 30.0  # for a process to answer ``health`` (its HTTP probe has 5 s of it)
RESTORE_RETRY_MIN_S = 0.5  # a journal that cannot be put back for want of room: first retry
RESTORE_RETRY_MAX_S = 30.0


@dataclass(frozen=True, slots=True)
class CodePoint:
    """The code a supervisor runs (release, baseline) and its journal, kept for undo.

    The new process of a baseline restart sets the old baseline's journal
    aside, and a patch applied through a restart is written to the journal:
    going back to the previous code means putting the journal back too. The
    journal's file is kept (``Journal.hold``): putting it back needs no space,
    so a full disk cannot leave a rolled-back patch in it. ``discard()`` once
    no rollback can come back to it.
    """

    release: Release | None
    baseline: str | None
    journal: Path | None
    put_back: UndoPoint | None

    @classmethod
    def keep(cls, release: Release | None, baseline: str | None, journal: Path | None) -> CodePoint:
        """The code and journal as they are now.

        Raises ``JournalError`` when the journal cannot be kept for want of a
        resource (its file system full): a code change must not start then,
        since it could not be rolled back (``shortage_of`` names the resource).
        """
        put_back = None
        if journal is not None:
            try:
                put_back = Journal(journal).hold()
            except JournalError as exc:
                if shortage_of(exc) is not None:
                    raise
                log.warning("%s; a rollback will not restore it", exc)
            else:
                if put_back.unlinked is not None:
                    log.warning(
                        "journal %s cannot be kept under a second name (%s): a rollback "
                        "writes it whole, which needs as much free space as it takes",
                        journal,
                        put_back.unlinked,
                    )
        return cls(release, baseline, journal, put_back)

    async def restore_journal(self) -> str | None:
        """Put the kept journal back (or remove one that did not exist); an error.

        For want of a resource (the kept file gone or never made, so the journal
        is written whole, on a full disk) it waits and tries again until it is
        back: no process may start from, nor go on writing, a journal that is
        not the one the code gone back to had (it would replay the change
        undone). One ERROR names the resource; then less often, up to every
        ``RESTORE_RETRY_MAX_S``.
        """
        if self.put_back is None:
            return None
        attempt = 0
        while True:
            try:
                self.put_back.restore()
            except JournalError as exc:
                resource = shortage_of(exc)
                if resource is None:
                    log.error("cannot restore the journal: %s", exc)  # noqa: TRY400 -- says it all
                    return str(exc)
                attempt += 1
                delay = min(RESTORE_RETRY_MIN_S * 2 ** (attempt - 1), RESTORE_RETRY_MAX_S)
                log.log(
                    logging.ERROR if attempt == 1 else logging.INFO,
                    "the journal waits to be put back (%s): %s. Nothing goes on until it is; "
                    "tried again in %.1f s (attempt %d)",
                    resource,
                    exc,
                    delay,
                    attempt,
                )
                await asyncio.sleep(delay)
                continue
            if attempt:
                log.warning("the journal is put back, after %d attempts", attempt + 1)
            return None

    def discard(self) -> None:
        """No rollback will come back to this point: the kept journal file goes."""
        if self.put_back is not None:
            self.put_back.discard()


def describe_level(info: Mapping[str, Any]) -> str:
    """``baseline 1.0 at level 1.0.1, 1.0.2`` from what a process said about itself."""
    versions = [str(v) for v in info.get("level") or []]
    level = level_text(versions, str(info.get("baseline"))) if versions else "none"
    return f"baseline {info.get('baseline') or '?'} at level {level}"


async def health_of(child: Child, url: str | None, timeout: float) -> tuple[bool, list[str]]:
    """Ask ``child`` for its health (hooks, and the HTTP probe of ``url``): ``(ok, reasons)``."""
    request = Child.request_id()
    body: dict[str, Any] = {"op": "health", "id": request}
    if url:
        body["url"] = url
    try:
        async with child.lock:
            child.send(body)
            message = await child.expect("health", timeout=timeout, request=request)
    except ChildExited as exc:
        return False, [f"no health answer: {exc}"]
    except TimeoutError:
        return False, [f"process {child.pid} gave no health answer within {timeout:g}s"]
    answer = dict(message.body)
    child.update_level(answer)
    reasons = [str(r) for r in answer.get("reasons") or []]
    ok = bool(answer.get("ok")) and not reasons
    if not ok and not reasons:
        reasons = [f"process {child.pid} answered unhealthy"]
    return ok, reasons
