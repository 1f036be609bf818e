"""The supervisor's watched folder: the agent's drop pipeline, applying in the service process.

The supervisor owns the folder for the service's whole life (the service
processes never watch it), so one owner files every outcome across restarts.
Each drop goes through the agent's pipeline -- read once, signature, the
verification child with the *service's* ``sys.path`` -- and the verified
bytes then go to the serving process over its control channel, where its
``Registry`` loads and applies them. A patch the process answers with
``RestartRequired`` goes in through a memory-preserving restart whose new
process applies it before it serves.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.version import Version

from hotpatch._agent import PIDFILE_NAME, Agent
from hotpatch._errors import VerificationFailed
from hotpatch._folder import (
    Outcome,
    Vanished,
    is_bundle_name,
    read_patch_file,
    read_signature,
    write_result,
)
from hotpatch._registry import Registry
from hotpatch._signing import bundle_digest, verify_signature
from hotpatch.supervisor._bundle import MAX_BUNDLE_BYTES, read_bundle, unpack_bundle

if TYPE_CHECKING:
    from hotpatch.supervisor._supervisor import Supervisor

__all__ = ["SupervisedPipeline"]

log = logging.getLogger("hotpatch.supervisor")

SYS_PATH_WAIT = 60.0  # for the first process to say its sys.path


class SupervisedPipeline(Agent):
    """An ``Agent`` without a registry of its own: the serving process applies."""

    def __init__(self, supervisor: Supervisor) -> None:
        config = supervisor.config
        assert config.watch is not None
        super().__init__(
            config.baseline or "0",
            watch=config.watch,
            journal=None,
            require_signature=config.require_signature,
            trusted_keys=config.trusted_keys,
            control_socket=False,
            verify_timeout=config.verify_timeout,
            entry_points=False,
        )
        self.supervisor = supervisor
        self._who_folder = f"folder:{self.watch} (supervisor)"

    def pending(self) -> list[str]:
        """Drops in the folder waiting to be processed."""
        return self._folder.pending if self._folder is not None else []

    # -- the parts of the agent's pipeline that happen elsewhere

    def _make_registry(self) -> Registry | None:
        return None

    def _level(self) -> tuple[str, ...]:
        return tuple(v for v, _ in self.supervisor.applied_patches)

    def _notify_rejected(self, outcome: Outcome, path: Path, who: str) -> None:
        pass  # the service's plugins hear of what reached its registry

    def _verify_sys_path(self) -> list[str]:
        if not self.supervisor.sys_path_known.wait(SYS_PATH_WAIT):
            msg = (
                f"the service has not started within {SYS_PATH_WAIT:g}s, so its sys.path is "
                "unknown and the patch cannot be verified; drop it again once it serves"
            )
            raise VerificationFailed(msg)
        return list(self.supervisor.service_sys_path or sys.path)

    def _same_version(self, version: str, outcome: Outcome) -> bool:
        wanted = Version(version)
        for applied, sha in self.supervisor.applied_patches:
            if Version(applied) != wanted:
                continue
            if sha == outcome.sha256:
                outcome.outcome = "unchanged"
                outcome.reason = f"patch {applied} is already applied with this content"
                return True
            msg = (
                f"patch {version} is already applied with other content (applied sha256 "
                f"{(sha or '?')[:16]}, this file {(outcome.sha256 or '?')[:16]}); publish the "
                "change under a newer version"
            )
            raise VerificationFailed(msg, patch=version)
        return False

    # -- baseline bundles

    def _read(self, path: Path, outcome: Outcome) -> bytes | None:
        try:
            st = path.lstat()
        except FileNotFoundError:
            raise Vanished(str(path)) from None
        if not (
            stat.S_ISDIR(st.st_mode) or (stat.S_ISREG(st.st_mode) and is_bundle_name(path.name))
        ):
            return super()._read(path, outcome)
        outcome.ino = (st.st_ino, st.st_dev)
        if st.st_uid != os.geteuid():
            msg = (
                f"{path.name} is owned by uid {st.st_uid}, not by this service's user "
                f"(uid {os.geteuid()}); hotpatch refuses files owned by another user"
            )
            raise VerificationFailed(msg)
        self._baseline(path, outcome, is_dir=stat.S_ISDIR(st.st_mode))
        return None

    def _write_pidfile(self, folder: Path) -> None:
        """``.hotpatch.json``: who owns the folder, and where its status is (for the CLI)."""
        status = self.supervisor.config.status_file
        write_result(
            folder / PIDFILE_NAME,
            {
                "pid": os.getpid(),
                "socket": None,
                "baseline": self.supervisor.baseline,
                "folder": str(folder),
                "supervisor": True,
                "status_file": str(status) if status else None,
            },
        )
        self._pidfile_written = True

    def _baseline(self, path: Path, outcome: Outcome, *, is_dir: bool) -> None:
        """Check, unpack and hand a bundle to the supervisor; fills ``outcome``."""
        config = self.supervisor.config
        assert self.watch is not None
        staged: Path | None = None
        try:
            source = path
            if not is_dir:
                # Read once: the signature, the checks and the unpacking see these bytes.
                read = read_patch_file(path, max_bytes=MAX_BUNDLE_BYTES, owners={os.geteuid()})
                outcome.ino, outcome.sha256 = (
                    (read.ino, read.dev),
                    hashlib.sha256(read.data).hexdigest(),
                )
                if self.require_signature:
                    signature = read_signature(path, owners={os.geteuid()})
                    outcome.key_id = verify_signature(
                        read.data, signature, self.trusted_keys, name=path.name
                    )
                assert self._staging is not None
                staged = Path(tempfile.mkdtemp(dir=self._staging))
                source = staged / path.name
                source.write_bytes(read.data)
            else:
                bundle = read_bundle(path)  # no links, nothing escaping: safe to copy
                # Copied once: the signature, the checks and the unpacking see the copy.
                assert self._staging is not None
                staged = Path(tempfile.mkdtemp(dir=self._staging))
                source = staged / path.name
                shutil.copytree(path, source, symlinks=True)
                if self.require_signature:
                    signature = read_signature(path, owners={os.geteuid()})
                    outcome.key_id = verify_signature(
                        bundle_digest(source),
                        signature,
                        self.trusted_keys,
                        name=path.name,
                        kind="bundle",
                    )
            bundle = read_bundle(source)
            outcome.version = bundle.version
            current = self.supervisor.baseline
            if current is not None and Version(bundle.version) <= Version(current):
                if Version(bundle.version) == Version(current):
                    outcome.outcome = "unchanged"
                    outcome.reason = f"baseline {current} is already running"
                    return
                msg = (
                    f"baseline {bundle.version} is not newer than the running baseline "
                    f"{current}; publish the new code under a newer version"
                )
                raise VerificationFailed(msg, patch=bundle.version)
            releases = config.releases or self.watch / ".releases"
            release = unpack_bundle(source, bundle, releases)
        finally:
            if staged is not None:
                shutil.rmtree(staged, ignore_errors=True)
        loop = self.supervisor.loop
        assert loop is not None
        answer: dict[str, Any] = asyncio.run_coroutine_threadsafe(
            self.supervisor.submit_baseline(path.name, release, outcome.who), loop
        ).result()
        self._fill(outcome, answer)

    def _fill(self, outcome: Outcome, answer: dict[str, Any]) -> None:
        outcome.outcome = answer.get("outcome", "rejected")
        outcome.reason = answer.get("reason")
        outcome.error_type = answer.get("error_type")
        outcome.via = answer.get("via")
        outcome.version = answer.get("version") or outcome.version
        outcome.targets = tuple(answer.get("targets") or outcome.targets)
        for name, seconds in (answer.get("timings") or {}).items():
            outcome.timings[f"service_{name}"] = float(seconds)

    def _deliver(self, data: bytes, path: Path, outcome: Outcome) -> None:
        loop = self.supervisor.loop
        assert loop is not None
        submitted = asyncio.run_coroutine_threadsafe(
            self.supervisor.submit_patch(path.name, str(path), data, outcome.who), loop
        )
        answer: dict[str, Any] = submitted.result()
        outcome.notified = True
        self._fill(outcome, answer)

    def status(self) -> dict[str, Any]:
        return {
            "ok": True,
            "baseline": self.supervisor.baseline,
            "level": list(self._level()),
            "watch": str(self.watch),
            "pending": self.pending(),
            "last": self._last,
        }
