"""The patch registry of a supervised process: apply, check, roll back, report the level."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from packaging.version import Version

from hotpatch._errors import JournalError, PatchError, RestartRequired
from hotpatch._hookspecs import hookimpl
from hotpatch._loader import load_patch_source
from hotpatch._patch import Patch
from hotpatch._plugins import PluginHost
from hotpatch._registry import MIGRATION_TIMEOUT_S, Registry
from hotpatch._results import (
    LEVEL_SHOWN,
    ApplyResult,
    LevelDigests,
    RollbackResult,
    as_json_reads,
    level_summary,
    level_text,
)
from hotpatch._shortage import RESOURCES, SparePair, shortage_of
from hotpatch.service._channel import (
    ENV_VITAL_TIMEOUT,
    SHORTAGE,
    VITAL_TIMEOUT_S,
    DescriptorsLost,
    recv_message,
    send_message,
)

__all__ = [
    "ENV_MIGRATION_TIMEOUT",
    "VITAL_WHO",
    "LevelReporter",
    "PatchLevels",
    "WireCheck",
    "migration_timeout",
    "vital_timeout",
]

log = logging.getLogger("hotpatch.service")

# The serving process's migration deadline, from its environment (hotpatch run passes it on).
ENV_MIGRATION_TIMEOUT = "HOTPATCH_MIGRATION_TIMEOUT"
VITAL_WHO = "hotpatch (vital check)"  # who rolls back a patch that broke the channel


class PatchLevels:
    """A supervised process's registry, driven by the supervisor's patch messages.

    Under ``hotpatch run --watch`` the process is given a ``baseline`` and a
    ``journal``; ``load`` then makes the ``registry`` (with the ``plugins``
    the service passed to ``ready()``) and every change of its level is
    reported on ``channel``. Without a baseline there is no registry, and the
    patch messages are answered with why.
    """

    def __init__(
        self,
        channel: socket.socket | None,
        baseline: str | None,
        journal: str | None,
        plugins: PluginHost,
    ) -> None:
        self.channel = channel
        self.baseline = baseline
        self.journal = journal
        self.plugins = plugins
        self.registry: Registry | None = None
        # Every level report carries a number taken under this lock: the
        # supervisor keeps the newest, whichever way it came (reply or report).
        self.level_lock = threading.Lock()
        self.level_seq = 0
        self.digests = LevelDigests(_entry)  # of the level under the top its reports show
        self.wire = WireCheck()  # after each apply: a reply still crosses a channel
        self.vital_timeout = VITAL_TIMEOUT_S  # its wait: $HOTPATCH_VITAL_TIMEOUT, once loaded

    def load(self, start_patch: tuple[Mapping[str, Any], bytes] | None) -> dict[str, Any]:
        """Replay the journal, apply ``start_patch`` (the patch this restart is for), and say
        what the supervisor learns: ``sys.path``, the level, or why the process cannot run."""
        info: dict[str, Any] = {"sys_path": list(sys.path)}
        if self.baseline is None:
            return info
        self.vital_timeout = vital_timeout(os.environ)
        try:
            self.registry = Registry(
                self.baseline,
                journal=self.journal,
                plugins=[*self._plugin_objects(), LevelReporter(self)],
                migration_timeout=migration_timeout(os.environ),
            )
        except Exception as exc:
            log.exception("cannot replay the journal %s", self.journal)
            error = {"error": f"{type(exc).__name__}: {exc}"}
            if (resource := shortage_of(exc)) is not None:
                error["shortage"] = resource
            return {**info, **error}
        info["journal_report"] = self.registry.journal_report
        try:
            self.wire.reserve()  # now, while descriptors are free: the check needs none later
        except OSError as exc:
            log.warning("cannot reserve the socket pair of the vital check yet: %s", exc)
        if start_patch is not None:
            message, data = start_patch
            result = self.apply_patch(message, data, restarting=True)
            info["start_patch"] = result
            if result["outcome"] == SHORTAGE:
                info["shortage"] = result["resource"]
            if result["outcome"] not in ("applied", "unchanged"):
                info["error"] = (
                    f"the new process could not apply patch {result.get('version') or '?'}: "
                    f"{result.get('reason')}"
                )
        return {**info, **self.level_info()}

    def whole_level(self) -> bytes | None:
        """The whole level as JSON (``level``, ``patches``, ``level_seq``), for a memfd: what
        the supervisor takes once when a process loads, and when it asks (``whole-level``).
        Numbered as a report is: newer than any answer sent before it."""
        registry = self.registry
        if registry is None:
            return None
        with self.level_lock:
            self.level_seq += 1
            whole = {
                "level": list(registry.level),
                "patches": [_entry(p) for p in registry.patches],
                "level_seq": self.level_seq,
            }
        return json.dumps(whole).encode()

    def _plugin_objects(self) -> list[object]:
        return [p for _, p in self.plugins.manager.list_name_plugin() if p is not None]

    def resync(self) -> None:
        """At the hand-over: the journal was replayed early; follow what the old process
        changed since (a plugin's rollback). Never fatal: the level is reported either way."""
        if self.registry is None:
            return
        try:
            self.registry.resync()
        except Exception:
            log.exception("cannot follow the journal %s at the hand-over", self.journal)

    def level_info(self) -> dict[str, Any]:
        """The registry's baseline and the top of its level, numbered for the supervisor."""
        registry = self.registry
        if registry is None:
            return {}
        with self.level_lock:
            return self._level_info_locked(registry)

    def _level_info_locked(self, registry: Registry) -> dict[str, Any]:
        """What every answer and report says of the level: the top ``LEVEL_SHOWN`` versions
        and ``level_size`` (as the pre-fork workers' answers), the top's ``patches`` with
        their sha256, and ``below``, the digest of the patches under the top: the supervisor
        keeps the whole level and puts the top on the bottom it knows only if the digests
        agree (else it asks for the whole level). It costs the same at any level (the whole
        level is some 90 bytes a patch: at a few hundred patches it no longer fits a message)."""
        self.level_seq += 1
        patches = registry.patches
        shown = patches[-LEVEL_SHOWN:]
        return {
            "baseline": registry.baseline,
            **level_summary(registry.level),
            "patches": [_entry(p) for p in shown],
            "below": self.digests.digest(patches, len(patches) - len(shown)),
            "level_seq": self.level_seq,
        }

    def report_level(self) -> None:
        """Tell the supervisor the registry's level changed (a plugin, or the service's code)."""
        registry, channel = self.registry, self.channel
        if registry is None or channel is None:
            return
        with self.level_lock:  # sent in the order taken: the newest report arrives last
            info = self._level_info_locked(registry)
            try:
                send_message(channel, {"op": "level", **info})
            except OSError as exc:
                log.warning("cannot report the patch level to the supervisor: %s", exc)

    def apply_patch(
        self, message: Mapping[str, Any], data: bytes, *, restarting: bool = False
    ) -> dict[str, Any]:
        """Load and apply a patch the supervisor verified; the outcome, never an exception.

        A failure for want of a resource (the journal's disk full, no memory)
        that left the level as it was is not a rejection: the outcome is
        ``SHORTAGE``, with the ``resource`` named.
        """
        who = str(message.get("who") or "supervisor")
        result: dict[str, Any] = {"outcome": "rejected", "reason": None, "timings": {}}
        start = time.perf_counter()
        if self.registry is None:
            result["reason"] = (
                "this process keeps no patch registry: start hotpatch run with --watch and "
                "--baseline (or $HOTPATCH_BASELINE)"
            )
            return result
        before = self.registry.level
        try:
            patch = load_patch_source(data, path=str(message.get("path") or "<supervisor>"))
            result["timings"]["load_s"] = time.perf_counter() - start
            result["version"], result["targets"] = patch.version, list(patch.targets)
            sha = patch.source.sha256 if patch.source else None
            same = _applied(self.registry.patches, Version(patch.version))
            if same and same[0].source is not None and same[0].source.sha256 == sha:
                result["outcome"] = "unchanged"
                result["reason"] = f"patch {patch.version} is already applied with this content"
            else:
                self._apply(patch, who, restarting, result)
        except RestartRequired as exc:
            result["outcome"], result["reason"] = "restart", str(exc)
            result["reasons"], result["error_type"] = list(exc.reasons), type(exc).__name__
        except PatchError as exc:
            result["reason"], result["error_type"] = str(exc), type(exc).__name__
            self._short(result, exc, before)
        except BaseException as exc:  # a patch raising SystemExit must not end the service
            if not self._short(result, exc, before):
                log.exception("applying a patch failed unexpectedly")
                result["reason"] = f"{type(exc).__name__} while loading or applying: {exc}"
                result["error_type"] = "VerificationFailed"
        result["timings"]["total_s"] = time.perf_counter() - start
        return {**result, **self.level_info()}

    def _short(self, result: dict[str, Any], exc: BaseException, before: tuple[str, ...]) -> bool:
        """Make ``result`` a ``SHORTAGE`` if ``exc`` says a resource ran out and nothing changed."""
        resource = shortage_of(exc)
        if resource is None or self.registry is None or self.registry.level != before:
            return False
        version = result.get("version") or "?"
        # The supervisor says it loudly, once: here it is told why.
        log.info(
            "patch %s not taken for want of a resource, %s (%s: %s); nothing of it was applied: "
            "not a rejection, the supervisor keeps it and tries again",
            version,
            resource,
            type(exc).__name__,
            exc,
        )
        result["outcome"], result["resource"] = SHORTAGE, resource
        result["error_type"] = "Shortage"
        result["reason"] = (
            f"the serving process could not take patch {version} ({type(exc).__name__}: {exc})"
        )
        return True

    def _apply(self, patch: Patch, who: str, restarting: bool, result: dict[str, Any]) -> None:
        """Apply ``patch``, then make sure a reply still crosses the channel; else roll back.

        A patch may break what the channel needs (``json.dumps``): then the
        supervisor could neither hear of it nor roll it back (SPEC 11).
        """
        registry = self.registry
        assert registry is not None
        # The check's socket pair, made before the patch is in (and can break making
        # one): if no descriptor is left, the patch is not taken now (a shortage).
        self.wire.reserve()
        with registry.lock:  # no other change of the level between the apply and its check
            before = registry.level
            t = time.perf_counter()
            applied = registry.apply(patch, who=who, restarting=restarting)
            result["timings"]["apply_s"] = time.perf_counter() - t
            result["outcome"], result["targets"] = "applied", list(applied.targets)
            message = {"op": "patched", **result, **self.level_info()}
            broken = self.wire.check(message, timeout=self.vital_timeout)
            if broken is None:
                return
            log.error(
                "patch %s broke the channel to the supervisor (%s): rolling it back",
                patch.version,
                broken,
            )
            registry.rollback(to=before[-1] if before else registry.baseline, who=VITAL_WHO)
        result["outcome"], result["error_type"] = "rejected", "VerificationFailed"
        result["reason"] = (
            f"patch {patch.version} was applied and rolled back at once: with it the service "
            f"could no longer answer the supervisor ({broken}). A patch must not break what "
            "hotpatch needs (json, sockets); fix it and publish a newer version"
        )

    def unreceived(self, lost: DescriptorsLost) -> dict[str, Any] | None:
        """The answer to a request whose fds (a patch's memfd) this process could not take.

        A patch is answered ``SHORTAGE``, out of file descriptors: the
        supervisor keeps it and tries again. A check fails naming why.
        """
        message, op = lost.message, lost.message.get("op")
        log.warning("%s", lost)
        resource = RESOURCES[errno.EMFILE]
        if op == "patch":
            return {
                "op": "patched",
                "id": message.get("id"),
                "outcome": SHORTAGE,
                "resource": resource,
                "reason": f"the serving process could not receive the patch: {lost}",
                "error_type": "Shortage",
                "timings": {},
                **self.level_info(),
            }
        if op == "check":
            error = f"{resource}: {lost}"
            return {"op": "checked", "id": message.get("id"), "ok": False, "error": error}
        log.error("cannot answer the supervisor's %r request: %s", op, lost)
        return None

    def rollback(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """Roll back to level ``to``, or the last patch if ``to`` is null; never raises."""
        if self.registry is None:
            return {"ok": False, "error": "this process keeps no patch registry"}
        to = message.get("to")
        try:
            result = self.registry.rollback(
                to=None if to is None else str(to), who=str(message.get("who", "supervisor"))
            )
        except PatchError as exc:  # nothing to roll back, a version not in the level
            error = {"error": str(exc), "error_type": type(exc).__name__}
            return {"ok": False, **error, **self.level_info()}
        except Exception as exc:
            log.exception("rollback to %s failed", to)
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}", **self.level_info()}
        return {"ok": True, "versions": list(result.versions), **self.level_info()}

    def history(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """The registry's applies and rollbacks, oldest first (the last ``entries`` of them)."""
        if self.registry is None:
            return {"ok": False, "error": "this process keeps no patch registry"}
        entries = list(self.registry.history)[-max(int(message.get("entries", 200)), 0) :]
        history = [h.record() for h in entries]
        return {"ok": True, "history": history, **self.level_info()}

    def keep_journal(self) -> dict[str, Any]:
        """Before a restart that keeps the code: the journal written again at the running
        level if its file has gone (``written``), so the new process comes back at it."""
        if self.registry is None:
            return {"ok": True, "written": False}
        try:
            written = self.registry.keep_journal()
        except JournalError as exc:
            log.error("%s; a restart now would come back at the baseline", exc)  # noqa: TRY400 -- the reason is the message
            return {"ok": False, "error": str(exc), "error_type": type(exc).__name__}
        if written:
            log.warning(
                "journal %s had gone (deleted by hand, or with the patch folder); written "
                "again at the running level (%s)",
                self.journal,
                level_text(self.registry.level, self.registry.baseline),
            )
        return {"ok": True, "written": written}

    def check_patch(self, message: Mapping[str, Any], data: bytes) -> dict[str, Any]:
        """``Registry.check`` of patch bytes the supervisor verified: hot or not, and why."""
        if self.registry is None:
            return {"ok": False, "error": "this process keeps no patch registry"}
        try:
            patch = load_patch_source(data, path=str(message.get("path") or "<supervisor>"))
            report = self.registry.check(patch)
        except PatchError as exc:
            return {"ok": False, "error": str(exc), "error_type": type(exc).__name__}
        except BaseException as exc:  # a patch raising SystemExit must not end the service
            log.exception("checking a patch failed unexpectedly")
            error = f"{type(exc).__name__} while loading or checking the patch: {exc}"
            return {"ok": False, "error": error, "error_type": "VerificationFailed"}
        return {"ok": True, **report.record(), **self.level_info()}


def _applied(patches: tuple[Patch, ...], version: Version) -> list[Patch]:
    """The applied patch of ``version``, if any (the level is in version order: a version
    newer than its top, the usual, is found absent at once)."""
    if not patches or version > patches[-1].parsed_version:
        return []
    return [p for p in patches if p.parsed_version == version]


def _entry(patch: Patch) -> tuple[str, str | None]:
    """A patch as the level's reports name it: version and sha256."""
    return patch.version, patch.source.sha256 if patch.source else None


def migration_timeout(environ: Mapping[str, str]) -> float:
    """``$HOTPATCH_MIGRATION_TIMEOUT`` in seconds, or the default (a bad value is logged)."""
    return _seconds(environ, ENV_MIGRATION_TIMEOUT, MIGRATION_TIMEOUT_S, "migrations get")


def vital_timeout(environ: Mapping[str, str]) -> float:
    """``$HOTPATCH_VITAL_TIMEOUT`` in seconds (``hotpatch run --vital-timeout``, checked
    there), or the default (a bad value is logged)."""
    return _seconds(environ, ENV_VITAL_TIMEOUT, VITAL_TIMEOUT_S, "the check after each apply gets")


def _seconds(environ: Mapping[str, str], name: str, default: float, who_gets: str) -> float:
    """The positive number of seconds in ``$name``, or ``default`` (a bad value is logged)."""
    raw = environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0 < value < math.inf:
        log.warning(
            "$%s=%r is not a positive number of seconds; %s the default %g s",
            name,
            raw,
            who_gets,
            default,
        )
        return default
    return value


class WireCheck:
    """After an apply: does a message still cross a channel of the supervisor's kind?

    The socket pair is made before the patch is applied (``reserve``, a
    ``SparePair``) and reused while it works: the check itself needs no new
    descriptor, so a process at its descriptor limit is not taken for one whose
    patch broke the channel.
    """

    def __init__(self) -> None:
        self._spare = SparePair(socket.SOCK_SEQPACKET)

    def reserve(self) -> None:
        """Make the pair if there is none; ``OSError`` if it cannot be made now."""
        self._spare.reserve()

    def close(self) -> None:
        """Close the pair, if any (a process's pair lives as long as it does)."""
        self._spare.spoil()

    def check(self, message: Mapping[str, Any], timeout: float) -> str | None:
        """``None`` when ``message`` arrives as sent through the pair; else what went wrong.

        Bounded by ``timeout`` (``hotpatch run --vital-timeout``; in a thread of its own:
        a patch may make it hang).
        A pair that failed is not used again; one whose check did not finish in time
        is left to its thread, which closes it once the check returns (if ever).
        """
        pair = self._spare.pair
        if pair is None:
            return "no socket pair was reserved for the check"
        found: list[str | None] = []
        abandoned: list[bool] = []  # the caller gave up waiting: the pair is the thread's
        lock = threading.Lock()
        done = threading.Event()

        def run() -> None:
            try:
                result = _round_trip(pair, message)
            except BaseException as exc:  # whatever the patch made it raise
                result = f"{type(exc).__name__}: {exc}"
            with lock:  # the caller gives up under it: it takes the result, or left the pair
                found.append(result)
                done.set()
                late = bool(abandoned)
            if late:
                for end in pair:
                    end.close()

        threading.Thread(target=run, name="hotpatch-vital-check", daemon=True).start()
        done.wait(timeout)
        with lock:
            late = not done.is_set()
            if late:
                self._spare.spoil(close=False)  # the thread may still use it: left to it
                abandoned.append(True)
        if late:
            return (
                f"a message to the supervisor did not cross a channel within the vital "
                f"timeout ({timeout:g} s; hotpatch run --vital-timeout SECONDS gives more when "
                "a slow machine needs longer)"
            )
        if found[0] is not None:
            self._spare.spoil()
        return found[0]


def _round_trip(
    pair: tuple[socket.socket, socket.socket], message: Mapping[str, Any]
) -> str | None:
    ours, theirs = pair
    send_message(ours, message)
    received = recv_message(theirs)
    if received is None or received[0] != as_json_reads(message):
        return "a message to the supervisor does not arrive as it was sent"
    return None


class LevelReporter:
    """A registry plugin of the runtime: every apply and rollback is reported to the supervisor.

    The supervisor learns of the patches it delivered from the replies, but a
    plugin (the health gate) or the service's own code may change the level
    too; without this the supervisor's status and its ``unchanged`` decisions
    would follow a level the process no longer has.
    """

    def __init__(self, levels: PatchLevels) -> None:
        self.levels = levels

    @hookimpl
    def hotpatch_after_apply(self, patch: Patch, registry: Registry, result: ApplyResult) -> None:
        self.levels.report_level()

    @hookimpl
    def hotpatch_after_rollback(self, registry: Registry, result: RollbackResult) -> None:
        self.levels.report_level()
