"""The pipeline every patch goes through: read once, signature, verification child, load, apply.

1. read the file's bytes once (no symlink, owned by the service's user, under
   the size limit);
2. check its detached signature on those bytes (``require_signature``);
3. write those bytes to a private staging file and load it in a short-lived
   child process (``verify_in_child``): it must import, resolve its targets,
   and neither exit nor hang;
4. load the same bytes in the service (``load_patch_source``) and apply them
   through the ``Registry``.

Each step is a method a subclass may replace: the supervisor's pipeline
(``hotpatch.supervisor._patches``) applies in the serving process instead, and
the pre-fork workers (``hotpatch.agent.fanout._agent``) apply in every worker.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from packaging.version import Version

from hotpatch._errors import PatchError, RestartRequired, VerificationFailed
from hotpatch._loader import load_patch_source
from hotpatch._patch import Patch
from hotpatch._registry import Registry
from hotpatch.agent._drops import (
    Vanished,
    bundle_version,
    is_bundle_name,
    peek_targets,
    peek_version,
    read_patch_file,
    read_signature,
)
from hotpatch.agent._outcome import Outcome, now_iso
from hotpatch.agent._signing import verify_signature
from hotpatch.agent._verify import verify_in_child

__all__ = ["BUNDLE_REASON", "DropPipeline", "PathLike", "TrustedKeys"]

log = logging.getLogger("hotpatch")

PathLike = str | os.PathLike[str]
TrustedKeys = PathLike | Sequence[PathLike]

BUNDLE_REASON = "baseline bundles need the supervisor (hotpatch run)"


class DropPipeline:
    """Verifies and applies one patch at a time; the agent (``_agent``) builds on it."""

    def __init__(
        self,
        baseline: str,
        *,
        require_signature: bool,
        trusted_keys: TrustedKeys | None,
        verify_timeout: float,
        verify: bool,
        max_bytes: int,
    ):
        if require_signature and trusted_keys is None:
            msg = (
                "require_signature=True needs trusted_keys: a directory of .pub files "
                "(made with `hotpatch keygen`), or a list of them"
            )
            raise ValueError(msg)
        if verify_timeout <= 0:
            msg = f"verify_timeout must be positive, not {verify_timeout!r}"
            raise ValueError(msg)
        if max_bytes <= 0:
            msg = f"max_bytes must be positive, not {max_bytes!r}"
            raise ValueError(msg)
        self.baseline = str(baseline)
        self.require_signature = require_signature
        self.trusted_keys: Path | list[Path] | None = (
            None
            if trusted_keys is None
            else Path(trusted_keys)
            if isinstance(trusted_keys, str | os.PathLike)
            else [Path(p) for p in trusted_keys]
        )
        self.verify_timeout = verify_timeout
        self.verify = verify
        self.max_bytes = max_bytes
        self.registry: Registry | None = None
        self._lock = threading.RLock()  # one patch operation at a time
        self._staging: Path | None = None  # where the verification child's copies go
        self._last: dict[str, Any] | None = None
        self._who_folder = "folder"

    # -- what a subclass (the supervisor's pipeline) replaces --------------------------

    def _level(self) -> tuple[str, ...]:
        assert self.registry is not None
        return self.registry.level

    def _verify_sys_path(self) -> list[str]:
        """The ``sys.path`` the verification child gets: the service's."""
        return list(sys.path)

    def _notify_rejected(self, outcome: Outcome, path: Path, who: str) -> None:
        assert self.registry is not None
        self.registry.plugins.notify(
            "hotpatch_rejected",
            version=outcome.version,
            source=str(path),
            reason=outcome.reason or "",
            who=who,
        )

    def _deliver(self, data: bytes, path: Path, outcome: Outcome) -> None:
        """Step 4: load the verified bytes and apply them.

        Sets ``outcome.notified`` once the registry has the patch: from then on
        it reports a rejection to the plugins itself.
        """
        patch = self._load_source(data, path, outcome)
        if patch is None:
            return
        outcome.notified = True
        self._apply(patch, outcome)

    # -- the pipeline -----------------------------------------------------------------

    def _process_drop(self, path: Path) -> Outcome:
        return self._process(path, who=self._who_folder)

    def _process(self, path: Path, *, who: str) -> Outcome:
        """Verify and apply the patch at ``path``; the outcome, never an exception.

        Raises only ``Vanished`` (the file is gone before it could be read).
        """
        start = time.perf_counter()
        outcome = Outcome(name=path.name, who=who)
        try:
            with self._lock:
                data = self._checked(path, outcome)
                if data is not None:
                    self._deliver(data, path, outcome)
        except Vanished:
            raise
        except PatchError as exc:
            outcome.outcome, outcome.reason = "rejected", str(exc)
            outcome.error_type = type(exc).__name__
        except Exception as exc:
            log.exception("processing %s failed unexpectedly", path)
            outcome.outcome, outcome.error_type = "rejected", "Error"
            outcome.reason = (
                f"internal error while processing {path.name}: {type(exc).__name__}: {exc}; "
                "the service is unchanged (please report this)"
            )
        outcome.timings["total_s"] = time.perf_counter() - start
        outcome.time = now_iso()
        outcome.level = self._level()
        if outcome.outcome == "rejected" and not outcome.notified:
            self._notify_rejected(outcome, path, who)
        self._log(outcome)
        self._last = outcome.record()
        return outcome

    def _load(self, path: Path, outcome: Outcome) -> Patch | None:
        """Steps 1-3 and the in-process load; ``None`` when the outcome is already decided."""
        data = self._checked(path, outcome)
        if data is None:
            return None
        return self._load_source(data, path, outcome)

    def _checked(self, path: Path, outcome: Outcome) -> bytes | None:
        """Steps 1-3: the verified bytes; ``None`` when the outcome is already decided."""
        data = self._read(path, outcome)
        if data is None:
            return None
        name, timings = path.name, outcome.timings
        if self.require_signature:
            t = time.perf_counter()
            signature = read_signature(path, owners={os.geteuid()})
            outcome.key_id = verify_signature(data, signature, self.trusted_keys, name=name)
            timings["signature_s"] = time.perf_counter() - t

        if outcome.version is not None and self._same_version(outcome.version, outcome):
            return None

        t = time.perf_counter()
        if self.verify:
            staged = self._stage(name, data)
            try:
                verify_in_child(
                    staged,
                    sys_path=self._verify_sys_path(),
                    timeout=self.verify_timeout,
                    max_bytes=self.max_bytes,
                )
            finally:
                shutil.rmtree(staged.parent, ignore_errors=True)
        timings["verify_s"] = time.perf_counter() - t
        return data

    def _load_source(self, data: bytes, path: Path, outcome: Outcome) -> Patch | None:
        """Load verified bytes in this process; ``None`` when the version is applied already."""
        name = path.name
        t = time.perf_counter()
        try:
            patch = load_patch_source(data, path=str(path))
        except Exception:
            raise
        except BaseException as exc:
            # KeyboardInterrupt and the like, raised by the patch itself: in this
            # thread they would end the agent, not the service. A rejection.
            msg = f"patch file {name} raised {type(exc).__name__} while importing; remove it"
            raise VerificationFailed(msg) from exc
        outcome.timings["load_s"] = time.perf_counter() - t
        outcome.version, outcome.targets = patch.version, patch.targets
        if self._same_version(patch.version, outcome):
            return None
        return patch

    def _read(self, path: Path, outcome: Outcome) -> bytes | None:
        """The file's bytes, read once; ``None`` for a bundle (pending). Refusals raise."""
        name = path.name
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
            outcome.version = bundle_version(path)
            outcome.outcome, outcome.reason = "pending", BUNDLE_REASON
            outcome.error_type = "RestartRequired"
            return None
        if stat.S_ISREG(st.st_mode) and not name.endswith(".py"):
            msg = (
                f"{name} is not a patch: a hot patch is one Python file (NAME.py) and a "
                "baseline bundle a directory or .zip; signatures are NAME.sig"
            )
            raise VerificationFailed(msg)
        read = read_patch_file(path, max_bytes=self.max_bytes, owners={os.geteuid()})
        outcome.ino, outcome.data = (read.ino, read.dev), read.data
        outcome.sha256 = hashlib.sha256(read.data).hexdigest()
        outcome.version = peek_version(read.data)
        outcome.targets = peek_targets(read.data)  # until the patch itself says
        outcome.timings["read_s"] = time.perf_counter() - t
        return read.data

    def _stage(self, name: str, data: bytes) -> Path:
        """A private copy of exactly ``data`` (folder 0700, file 0600) for the child to load."""
        assert self._staging is not None
        folder = Path(tempfile.mkdtemp(dir=self._staging))
        staged = folder / name
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return staged

    def _applied(self) -> list[tuple[str, str | None, tuple[str, ...] | None]]:
        """Each patch applied: its version, its sha256 and (``None``: unknown) its targets."""
        assert self.registry is not None
        return [(p.version, p.sha256, p.targets) for p in self.registry.patches]

    def _same_version(self, version: str, outcome: Outcome) -> bool:
        """Is ``version`` applied already? Same content: unchanged; other content: refused."""
        wanted = Version(version)
        for applied, sha, targets in self._applied():
            if Version(applied) != wanted:
                continue
            if sha == outcome.sha256:
                outcome.outcome = "unchanged"
                outcome.reason = f"patch {applied} is already applied with this content"
                if targets is not None:
                    outcome.targets = targets
                return True
            msg = (
                f"patch {version} is already applied with other content (applied sha256 "
                f"{(sha or '?')[:16]}, this file {(outcome.sha256 or '?')[:16]}); publish the "
                "change under a newer version"
            )
            raise VerificationFailed(msg, patch=version)
        return False

    def _apply(self, patch: Patch, outcome: Outcome) -> None:
        assert self.registry is not None
        t = time.perf_counter()
        try:
            result = self.registry.apply(patch, who=outcome.who)
        except RestartRequired as exc:
            outcome.outcome, outcome.reason = "pending", str(exc)
            outcome.error_type = type(exc).__name__
            return
        finally:
            outcome.timings["apply_s"] = time.perf_counter() - t
        outcome.outcome, outcome.reason = "applied", None
        outcome.targets = result.targets

    def _log(self, outcome: Outcome) -> None:
        level = logging.INFO if outcome.outcome in ("applied", "unchanged") else logging.WARNING
        log.log(
            level,
            "%s %s: %s patch %s, targets %s, in %.1f ms%s",
            outcome.who,
            outcome.name,
            outcome.outcome,
            outcome.version or "?",
            ", ".join(outcome.targets) or "-",
            outcome.timings.get("total_s", 0.0) * 1e3,
            f": {outcome.reason}" if outcome.reason and outcome.outcome != "unchanged" else "",
        )
