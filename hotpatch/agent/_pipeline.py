"""The pipeline every patch goes through: read once, signature, verification child, applier.

1. read the file's bytes once (no symlink, owned by the service's user, under
   the size limit); a baseline bundle goes to the applier as it is;
2. check its detached signature on those bytes (``require_signature``);
3. refuse or settle a version applied already (same content: ``unchanged``);
4. write those bytes to a private staging file and load it in a fresh child
   of the pre-started verifier (``Verifier``; without one, ``verify_in_child``)
   with the applier's ``sys.path``: it must import, resolve its targets, and
   neither exit nor hang;
5. give way to a lower version that came into the folder meanwhile
   (``Overtaken``: nothing is applied, the folder takes that one first);
6. hand the verified bytes to the ``Applier`` (``hotpatch.agent._applier``); a
   drop of a lower version than the level's top that came just after that
   top went in from its folder has the refusal say so (``Turn.late``).

Every outcome is made here, whichever way the patch came (a drop, ``hotpatch
apply``), so here it is added to the folder's outcome log (``_outcome_log``).

What applies them is the applier's business: this process's registry, every
pre-fork worker, or the supervisor's serving process.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from hotpatch._errors import PatchError, VerificationFailed
from hotpatch.agent._applier import Applier, already_applied, settled_check
from hotpatch.agent._drops import (
    Interrupted,
    Vanished,
    is_bundle_name,
    peek_targets,
    peek_version,
    read_patch_file,
    read_signature,
)
from hotpatch.agent._names import shown
from hotpatch.agent._outcome import OUTCOME_DIRS, Outcome, log_outcome, now_iso
from hotpatch.agent._outcome_log import FOLDER, OutcomeLog
from hotpatch.agent._resources import Shortage, shortage_of
from hotpatch.agent._settings import Checks
from hotpatch.agent._signing import verify_signature
from hotpatch.agent._staging import Staging
from hotpatch.agent._turn import Overtaken, Turn
from hotpatch.agent._verify import Verifier, module_of, verify_in_child

__all__ = ["DropPipeline"]

log = logging.getLogger("hotpatch")


class DropPipeline:
    """Checks one patch at a time and hands what passed to ``applier``."""

    def __init__(
        self,
        applier: Applier,
        checks: Checks,
        staging: Staging,
        *,
        lock: threading.RLock | None = None,
        outcome_log: OutcomeLog | None = None,
    ) -> None:
        self.applier = applier
        self.checks = checks
        self.staging = staging
        # The verifier started ahead of need (``verifying``); without one, each patch
        # is checked in a verification process of its own: slower, as isolated.
        self.verifier: Verifier | None = None
        # One patch operation at a time; shared with whatever else changes the level.
        self.lock = lock if lock is not None else threading.RLock()
        self.last: dict[str, Any] | None = None  # the record of the last outcome
        self.outcome_log = outcome_log  # the folder's, where ``hotpatch watch`` sees them

    @contextlib.contextmanager
    def verifying(self, *, warm: Iterable[str] = ()) -> Iterator[Verifier | None]:
        """While this lasts, a verifier started now checks the patches; it ends on leaving.

        It warms ``warm`` and the modules the applied patches target; it starts
        once the applier knows its ``sys.path`` (at once for this process's).
        Nothing without ``checks.verify``.
        """
        if not self.checks.verify:
            yield None
            return
        with Verifier(warm=warm) as verifier:
            verifier.learn(
                module_of(target)
                for patch in self.applier.applied()
                for target in patch.targets or ()
            )
            verifier.prepare_from(self.applier.sys_path)
            self.verifier = verifier
            try:
                yield verifier
            finally:
                self.verifier = None

    def process(
        self, path: Path, *, who: str, source: str = FOLDER, turn: Turn | None = None
    ) -> Outcome:
        """Check and apply the patch at ``path``; the outcome, never an exception.

        ``source``: how it came, for the outcome log -- ``FOLDER`` (a drop, which
        the folder files), or e.g. ``"uid:0 via hotpatch apply"``. Raises only
        ``Vanished`` (the file is gone before it could be read), ``Shortage``
        (a resource ran out -- disk, descriptors, memory -- before anything was
        applied: the patch is not at fault, try it again later) and
        ``Interrupted`` (its staging copy went away with its folder while it was
        checked -- deleted, replaced -- and nothing was applied: try it again
        once the folder is back). ``turn``: the drop's place in its folder's
        version order (``hotpatch.agent._turn``); with it, ``Overtaken`` too (a
        lower version came meanwhile; nothing was applied).
        """
        start = time.perf_counter()
        outcome = Outcome(name=path.name, who=who)
        before = self.applier.level()
        try:
            with self.lock:
                data = self._read(path, outcome)
                if data is None:
                    self.applier.deliver_bundle(path, outcome)
                elif self._verified(data, path, outcome):
                    self._give_way(outcome, turn)
                    self.applier.deliver(data, path, outcome)
        except (Vanished, Interrupted, Overtaken):
            raise
        except Exception as exc:
            self._raise_shortage(exc, path, before)
            outcome.outcome, outcome.reason = "rejected", str(exc)
            outcome.error_type = type(exc).__name__
            if not isinstance(exc, PatchError):
                log.exception("processing %s failed unexpectedly", path)
                outcome.error_type = "Error"
                outcome.reason = (
                    f"internal error while processing {path.name}: {type(exc).__name__}: "
                    f"{exc}; the service is unchanged (please report this)"
                )
        self._say_if_late(outcome, turn)
        outcome.timings["total_s"] = time.perf_counter() - start
        outcome.time = now_iso()
        outcome.level = self.applier.level()
        if outcome.outcome == "rejected" and not outcome.notified:
            self.applier.rejected(outcome, path)
        log_outcome(outcome)
        self.last = outcome.record()
        if self.outcome_log is not None:
            filed = OUTCOME_DIRS[outcome.outcome] if source == FOLDER else None
            self.outcome_log.append(
                {"event": "outcome", "source": source, "dir": filed, **self.last}
            )
        return outcome

    def _raise_shortage(self, exc: Exception, path: Path, before: tuple[str, ...]) -> None:
        """``Shortage`` when ``exc`` comes of a resource running out and nothing was applied."""
        resource = shortage_of(exc)
        if resource is None or self.applier.level() != before:
            return
        why = exc.detail if isinstance(exc, Shortage) else f"{type(exc).__name__}: {exc}"
        detail = f"{shown(path.name)} could not be processed ({why}); nothing of it was applied"
        raise Shortage(resource, detail) from exc

    def rolled_back(self, answer: dict[str, Any], *, who: str, source: str) -> None:
        """Add a rollback's answer to the outcome log, if it rolled anything back."""
        if self.outcome_log is None or not answer.get("ok") or not answer.get("versions"):
            return
        level = list(answer.get("level") or ())  # its top, as the answer's
        self.outcome_log.append(
            {
                "event": "rollback",
                "source": source,
                "dir": None,
                "versions": list(answer["versions"]),
                "level": level,
                "level_size": answer.get("level_size", len(level)),
                "time": now_iso(),
                "who": who,
            }
        )

    def check(self, path: Path, *, who: str) -> dict[str, Any]:
        """``hotpatch verify``: the checks, then the applier's dry run; nothing is applied.

        Refusals raise (``PatchError``, ``Vanished``).
        """
        outcome = Outcome(name=path.name, who=who)
        with self.lock:
            data = self._read(path, outcome)
            if data is None:
                return self.applier.check_bundle(path, outcome)
            if not self._verified(data, path, outcome):
                return settled_check(outcome)
            return self.applier.check(data, path, outcome)

    def _read(self, path: Path, outcome: Outcome) -> bytes | None:
        """The file's bytes, read once; ``None`` for a baseline bundle. Refusals raise."""
        name = shown(path.name)
        t = time.perf_counter()
        try:
            st = path.lstat()
        except FileNotFoundError:
            raise Vanished(str(path)) from None
        outcome.ino = (st.st_ino, st.st_dev)
        if stat.S_ISLNK(st.st_mode):
            msg = (
                f"{name} is a symbolic link; hotpatch refuses symlinks in the patch folder "
                "(copy or rename the file itself into it)"
            )
            raise VerificationFailed(msg)
        if stat.S_ISDIR(st.st_mode) or is_bundle_name(name):
            if st.st_uid != os.geteuid():
                msg = (
                    f"{name} is owned by uid {st.st_uid}, not by this service's user "
                    f"(uid {os.geteuid()}); hotpatch refuses files owned by another user"
                )
                raise VerificationFailed(msg)
            return None
        if stat.S_ISREG(st.st_mode) and not name.endswith(".py"):
            msg = (
                f"{name} is not a patch: a hot patch is one Python file (NAME.py) and a "
                "baseline bundle a directory or .zip; signatures are NAME.sig"
            )
            raise VerificationFailed(msg)
        read = read_patch_file(path, max_bytes=self.checks.max_bytes, owners={os.geteuid()})
        outcome.ino, outcome.data = (read.ino, read.dev), read.data
        outcome.sha256 = hashlib.sha256(read.data).hexdigest()
        outcome.version = peek_version(read.data)
        outcome.targets = peek_targets(read.data)  # until the patch itself says
        outcome.timings["read_s"] = time.perf_counter() - t
        return read.data

    @staticmethod
    def _give_way(outcome: Outcome, turn: Turn | None) -> None:
        """``Overtaken`` when a lower version than ``outcome``'s came into the folder meanwhile."""
        if turn is None or outcome.version is None:
            return
        lower = turn.lower_waiting(outcome.version)
        if lower is not None:
            raise Overtaken(
                f"{shown(outcome.name)} ({outcome.version}) gives way to {shown(lower)}, a "
                "lower version that came while it was checked"
            )

    def _say_if_late(self, outcome: Outcome, turn: Turn | None) -> None:
        """A level's "not newer" refusal of a drop that came just after the top went in: why."""
        if (
            turn is None
            or outcome.version is None
            or outcome.outcome != "rejected"
            or outcome.error_type != "VersionConflict"
        ):
            return
        late = turn.late(outcome.version, self.applier.level())
        if late is not None:
            outcome.reason = late

    def _verified(self, data: bytes, path: Path, outcome: Outcome) -> bool:
        """Signature, same version, verification child: ``False`` when the outcome is settled."""
        name, timings, checks = path.name, outcome.timings, self.checks
        if checks.require_signature:
            t = time.perf_counter()
            signature = read_signature(path, owners={os.geteuid()})
            outcome.key_id = verify_signature(data, signature, checks.trusted_keys, name=name)
            timings["signature_s"] = time.perf_counter() - t

        if outcome.version is not None and already_applied(
            self.applier.applied(), outcome.version, outcome
        ):
            return False

        t = time.perf_counter()
        if checks.verify:
            verify = self.verifier.check if self.verifier is not None else verify_in_child
            with self.staging.copy(name, data) as staged:
                verify(
                    staged,
                    sys_path=self.applier.sys_path(),
                    timeout=checks.verify_timeout,
                    max_bytes=checks.max_bytes,
                )
        timings["verify_s"] = time.perf_counter() - t
        return True
