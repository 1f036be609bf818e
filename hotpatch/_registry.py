"""``Registry``: the patch level of one baseline -- commit, rollback, level and history.

A patch becomes a ``Plan`` (``_plan``: the checks, and every value to set); the
registry commits plans in one switch each, keeps what every applied patch
replaced so that rollback is exact, and records the level through its
``Recording`` (``_recording``) when it has a journal; ``_replay`` applies a
journal's level again (at start, and to catch up at a hand-over) through the
steps the registry lends it. A patch's migrations run through ``_migration``;
``wrap()`` lends a patch's functions to a plugin for a while (``_wrap``).
"""

from __future__ import annotations

import logging
import threading
import time
import types
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any

from hotpatch._codegen import FUNC_ATTRS
from hotpatch._errors import (
    PatchError,
    RestartRequired,
    VerificationFailed,
    VersionConflict,
)
from hotpatch._journal import Journal
from hotpatch._journal_format import HISTORY_KEPT
from hotpatch._migration import run_migrations, run_unmigrations
from hotpatch._nested import going_back, lineages, resettle, running, settle_changes
from hotpatch._patch import Patch, parse_version
from hotpatch._plan import NO_KEYS, Applied, Level, Plan, caches_of, make_plan, nested_of
from hotpatch._plugins import PluginHost
from hotpatch._recording import Recording
from hotpatch._replay import Deferred, ReplaySteps, replay, resync
from hotpatch._results import (
    ApplyResult,
    CheckReport,
    HistoryEntry,
    LevelChain,
    RollbackResult,
    TupleStack,
    chain_below,
    chain_of,
    level_text,
)
from hotpatch._shortage import shortage_of
from hotpatch._switch import Change, Key, busy_threads, current, key, quiesce, switch
from hotpatch._unwind import kept_of, unwind
from hotpatch._wrap import Wrapper, Wrappers

__all__ = ["MIGRATION_TIMEOUT_S", "Registry"]

log = logging.getLogger("hotpatch")

MIGRATION_TIMEOUT_S = 30.0  # for each migration to return, before its patch is refused


class Registry:
    """The hot patches applied on top of one baseline, in version order.

    ``apply`` validates, decides hot or not, then switches every target in one
    step; ``rollback`` undoes; with ``journal=`` the level survives a restart.
    """

    def __init__(
        self,
        baseline: str,
        *,
        journal: str | Any | None = None,
        plugins: Iterable[object] = (),
        migration_timeout: float = MIGRATION_TIMEOUT_S,
    ):
        if not migration_timeout > 0:
            msg = (
                f"migration_timeout must be a positive number of seconds, not {migration_timeout!r}"
            )
            raise ValueError(msg)
        self.migration_timeout = float(migration_timeout)
        self.baseline = str(baseline)
        self._baseline_version = parse_version(self.baseline, "baseline")
        self._lock = threading.RLock()
        # Changed in place, under the lock: an apply costs the same at any level.
        self._stack: list[Applied] = []
        # The stack's versions and patches, for readers on any thread (each read a
        # consistent snapshot); the versions' states are the chains history entries share.
        self._versions: TupleStack[str] = TupleStack()
        self._patch_stack: TupleStack[Patch] = TupleStack()
        self._originals: dict[int, tuple[types.FunctionType, dict[str, Any]]] = {}
        self._wrappers = Wrappers(self._lock)
        self._history: deque[HistoryEntry] = deque(maxlen=HISTORY_KEPT)
        self.plugins = PluginHost(plugins)
        self.journal_report: str | None = None  # what replaying the journal did
        self._recording: Recording | None = None
        self._deferred: Deferred | None = None  # the replayed run not built yet
        if journal is not None:
            self._recording = Recording(Journal(journal), self.baseline)
            self._replay(self._recording)

    # -- queries ---------------------------------------------------------------------

    @property
    def level(self) -> tuple[str, ...]:
        """The applied hot patches' versions, oldest first."""
        return self._versions.snapshot()

    @property
    def version(self) -> str:
        """The top of the level, or the baseline."""
        return self._versions.last(self.baseline)

    @property
    def history(self) -> tuple[HistoryEntry, ...]:
        """The last changes of the level (as many as the journal keeps), oldest first."""
        return tuple(self._history)

    @property
    def patches(self) -> tuple[Patch, ...]:
        """The applied patches, oldest first."""
        return self._patch_stack.snapshot()

    def __repr__(self) -> str:
        return f"<Registry baseline={self.baseline} level={list(self.level)}>"

    # -- check / apply ----------------------------------------------------------------

    def check(self, patch: Patch) -> CheckReport:
        """Dry run: validate, and say whether ``patch`` would go in hot. Changes nothing.

        Raises the same errors as ``apply`` for an invalid patch.
        """
        with self._lock:
            plan = self._plan(patch)
            reasons = list(plan.reasons)
            if patch.quiescence == "strict" and (busy := busy_threads(plan.codes)):
                reasons.append(f"strict quiescence not reached now: {'; '.join(busy)}")
            report = _report(plan, reasons)
            self._veto(patch, report)
            return report

    def apply(self, patch: Patch, *, who: str = "api", restarting: bool = False) -> ApplyResult:
        """Validate and switch ``patch`` in, all targets at once, or change nothing.

        ``restarting=True``: this process has not started serving yet (the new
        process of a memory-preserving restart), so what would need a restart
        does not stop the patch.
        """
        start = time.perf_counter()
        with self._lock:
            size, top = len(self._versions), self.version
            try:
                plan = self._plan(patch, restarting=restarting)
                self._veto(patch, _report(plan, plan.reasons))
                if plan.reasons and not restarting:
                    msg = (
                        f"patch {patch.version} cannot be applied hot: {'; '.join(plan.reasons)}. "
                        "Nothing changed; apply it through the supervisor (`hotpatch run`), "
                        "which uses a memory-preserving restart"
                    )
                    raise RestartRequired(msg, reasons=plan.reasons, patch=patch.version)
                return self._commit(plan, start, action="apply", who=who)
            except PatchError as exc:
                unchanged = len(self._versions) == size and self.version == top
                if (resource := shortage_of(exc)) is not None and unchanged:
                    # The machine's fault, not the patch's: no rejection to log or to tell
                    # the plugins of; the caller (an agent, a supervisor) keeps it and retries.
                    log.warning(
                        "patch %s not applied for want of a resource, %s (%s); nothing of it "
                        "changed, and it can be applied again once the resource is back",
                        patch.version,
                        resource,
                        exc,
                    )
                    raise
                log.warning("rejected patch %s: %s", patch.version, exc)
                source = patch.source.path if patch.source else "<api>"
                self.plugins.notify(
                    "hotpatch_rejected",
                    version=patch.version,
                    source=source,
                    reason=str(exc),
                    who=who,
                )
                raise

    def _plan(self, patch: Patch, *, restarting: bool = False) -> Plan:
        if self._deferred is not None and (patch.cumulative or patch.quiescence == "strict"):
            self._deferred.settle(self._stack)  # such a plan reads the whole level
            self._deferred = None
        return self._plan_on(patch, self._stack, restarting=restarting)

    def _plan_on(self, patch: Patch, below: Sequence[Applied], *, restarting: bool) -> Plan:
        level = Level(
            self.baseline,
            self._baseline_version,
            below,  # not copied: planning runs under the lock, and changes nothing
            self._originals,
            self._wrappers.code_of,
            journaled=self._recording is not None,
            restarting=restarting,
        )
        return make_plan(patch, level)

    def _veto(self, patch: Patch, report: CheckReport) -> None:
        vetoes = self.plugins.vetoes(patch=patch, report=report)
        if vetoes:
            msg = (
                f"patch {patch.version} was vetoed: {'; '.join(vetoes)}. "
                "Nothing changed; fix what the plugin names, or remove the plugin"
            )
            raise VerificationFailed(msg, patch=patch.version)

    # -- commit ---------------------------------------------------------------------

    def _commit(self, plan: Plan, start: float, *, action: str, who: str) -> ApplyResult:
        patch = plan.patch
        live = {k: (obj, attr, current(obj, attr)) for k, (obj, attr, _) in plan.changes.items()}
        before = self._wrappers.see_through(live)  # a wrapped function's own code
        functions = tuple(plan.functions)
        if self._stack and self._stack[-1].functions == functions:
            functions = self._stack[-1].functions  # the patch below's targets: one tuple
        entry = Applied(
            patch,
            before,
            dict(plan.changes),
            frozenset(plan.injected) if plan.injected else NO_KEYS,
            tuple(plan.unmigrations),
            tuple(self._stack) if patch.cumulative else (),
            functions,
            tuple(plan.caches),
            tuple(plan.nested),
        )
        chain = chain_of((patch.version,), None if patch.cumulative else self._versions.top)
        undo: list[Callable[[], object]] = []
        # The order: wait for strict quiescence, run the migrations (each within
        # migration_timeout), write the journal, switch. The journal never holds a patch
        # whose migrations are still running (a process that dies meanwhile does not
        # replay it); and since a migration without an unmigrate cannot be taken back,
        # the journal is first written as it stands, to know it can be, before them.
        deadline = time.monotonic() + patch.quiescence_timeout
        recording = self._recording
        try:
            self.plugins.notify("hotpatch_before_apply", patch=patch, registry=self)
            quiesce(patch, plan.codes, deadline)
            if recording is not None and recording.on and action != "replay" and plan.migrations:
                undo.append(recording.rewrite(_patches(self._stack), self._history))
            run_migrations(plan, self.migration_timeout, undo)
            if plan.migrations:  # a thread may have entered a target meanwhile
                quiesce(patch, plan.codes, deadline)
            elapsed = time.perf_counter() - start
            record = HistoryEntry.at(time.time(), action, patch.version, chain, elapsed, who)
            if recording is not None and recording.on and action != "replay":
                pop = len(self._stack) if patch.cumulative else 0
                below = [] if patch.cumulative else self._stack  # read only if the journal
                undo.append(  # is rewritten whole: the level as it will be, and the history
                    recording.record(
                        pop,
                        [patch],
                        record,
                        lambda: ([*_patches(below), patch], [*self._history, record]),
                    )
                )
            switch_s = switch(plan.changes.values(), live, plan.caches)
        except BaseException:
            for step in reversed(undo):
                try:
                    step()
                except Exception:
                    log.exception("undoing patch %s: a step of the undo failed", patch.version)
            raise
        patched = dict(plan.patched)
        if plan.settles:  # functions made from an old nested code while the switch was prepared
            late = settle_changes(plan.settles, plan.changes)
            entry.changed((o, a, current(o, a), v) for o, a, v in late)
            switch(late)
            for spec in (s.spec for s in plan.settles for o, _, v in late if v is s.target):
                patched[spec] = patched.get(spec, 0) + 1
        self._wrappers.forget(plan.changes)
        for func in plan.functions:
            self._originals.setdefault(id(func), (func, _state_before(func, before)))
        self._push(entry, chain)
        elapsed = time.perf_counter() - start
        done = HistoryEntry.at(time.time(), action, patch.version, chain, elapsed, who)
        self._history.append(done)
        if recording is not None and not (recording.on and action != "replay"):
            recording.unrecorded(done)  # a replay's row goes in with the next change
        log.info(
            "%s patch %s: %d targets (%s) in %.2f ms",
            "replayed" if action == "replay" else "applied",
            patch.version,
            len(patch.targets),
            ", ".join(patch.targets),
            elapsed * 1e3,
        )
        result = ApplyResult(
            patch.version, True, patch.targets, elapsed, switch_s, dict(plan.modes), patched
        )
        self.plugins.notify("hotpatch_after_apply", patch=patch, registry=self, result=result)
        return result

    def _push(self, entry: Applied, chain: LevelChain | None) -> None:
        """``entry`` on top of the level (in place of it: cumulative), in O(1); ``chain``:
        the versions then, made from the versions' state now."""
        patch = entry.patch
        if patch.cumulative:
            self._stack = [entry]
        else:
            self._stack.append(entry)
        self._versions.set(chain)
        self._patch_stack.change(len(self._patch_stack) if patch.cumulative else 0, (patch,))

    # -- rollback ---------------------------------------------------------------------

    def rollback(self, to: str | None = None, *, who: str = "api") -> RollbackResult:
        """Undo the last apply, or go back to level ``to`` (in the level, or the baseline)."""
        start = time.perf_counter()
        with self._lock:
            stack, popped = unwind(self._stack, to, self.baseline, self._baseline_version)
            final = self._final(stack, popped)
            # Nested targets: every function made from their code goes back too, those
            # made after the apply included (what the enclosing code makes once rolled back).
            # Caches and nested targets are rare: one look says whether to go on.
            rare = any(e.nested or e.caches or e.replaced for e in popped)
            staying = [n for e in stack for n in e.nested]  # what the level kept makes
            settles = going_back(nested_of(popped), staying) if rare else []
            if settles:  # values recorded at one of the levels popped: to the level kept
                resettle(final, settles)
                final.update((key(o, a), (o, a, v)) for o, a, v in settle_changes(settles, ()))
            undo = {k: (obj, attr, current(obj, attr)) for k, (obj, attr, _) in final.items()}
            elapsed = time.perf_counter() - start
            versions = tuple(e.patch.version for e in popped)
            kept, pushed = kept_of(self._stack, stack)
            chain = chain_of(pushed, chain_below(self._versions.top, len(self._stack) - kept))
            record = HistoryEntry.at(
                time.time(), "rollback", ", ".join(versions), chain, elapsed, who
            )
            # The code first, then the journal: the patch being rolled back may have broken
            # what writing the journal needs (json), and the code it brought must go anyway.
            caches = caches_of(popped) if rare else []
            switch_s = switch(final.values(), undo, caches) if final or caches else 0.0
            recording = self._recording
            if recording is not None and recording.on and popped:
                try:
                    recording.record(
                        len(self._stack) - kept,
                        [e.patch for e in stack[kept:]],
                        record,
                        lambda: (_patches(stack), [*self._history, record]),
                    )
                except BaseException:  # the journal could not follow: the code goes back too
                    switch(undo.values(), None, caches)
                    raise
            if settles:  # made from the rolled-back code while the switch was prepared
                switch(settle_changes(settles, final))
            self._wrappers.forget(final)
            self._stack = stack
            if self._deferred is not None and not self._deferred.forget(popped):
                self._deferred = None
            self._versions.set(chain)
            self._patch_stack.change(len(self._patch_stack) - kept, [e.patch for e in stack[kept:]])
            for entry in popped:
                run_unmigrations(entry.patch.version, entry.unmigrations)
            elapsed = time.perf_counter() - start
            if popped:
                done = HistoryEntry.at(
                    time.time(), "rollback", ", ".join(versions), chain, elapsed, who
                )
                self._history.append(done)
                if recording is not None and not recording.on:
                    recording.unrecorded(done)  # goes in with the next change
                log.info(
                    "rolled back %s in %.2f ms; level now %s",
                    ", ".join(versions),
                    elapsed * 1e3,
                    level_text(self.level, self.baseline),
                )
            result = RollbackResult(versions, self.level, elapsed, switch_s)
        if popped:
            self.plugins.notify("hotpatch_after_rollback", registry=self, result=result)
        return result

    def _final(self, stack: list[Applied], popped: list[Applied]) -> dict[Key, Change]:
        """What a rollback to ``stack`` puts back: of ``popped`` (newest first), the oldest
        entry's values win."""
        if self._deferred is not None:  # a replayed run not all built
            return self._deferred.final(stack, popped)
        final: dict[Key, Change] = {}
        for entry in popped:
            final.update(entry.before)
        return final

    # -- wrapping (e.g. counting calls during a probation) ---------------------------

    @property
    def lock(self) -> threading.RLock:
        """The registry's re-entrant lock: hold it to read the level and act on it in one
        step (check that a version is still applied, then roll it back). Applies and
        rollbacks wait meanwhile, so hold it briefly."""
        return self._lock

    def installed(self, version: str) -> tuple[tuple[types.FunctionType, types.CodeType], ...]:
        """The functions patch ``version`` patched, each with the code it installed.

        A function whose ``__code__`` is not that code runs a patch stacked on
        top, or a ``wrap()`` trampoline. ``VersionConflict`` if not applied.
        """
        with self._lock:
            entry = self._applied(version)
            if self._deferred is not None:
                self._deferred.build_in(entry, self._stack)
            after = entry.after  # a mapping made on each read: made once
            own = [(f, after[key(f, "__code__")][2]) for f in entry.functions]
            return (*own, *running(entry.nested))  # and what runs a nested target's code

    def nested_codes(self, version: str) -> tuple[types.CodeType, ...]:
        """The code patch ``version``'s nested targets run (a copy of it for each other
        version of the enclosing code), whether or not any function made from it exists
        yet: the enclosing function can make one at any time. ``VersionConflict`` if not
        applied."""
        with self._lock:
            return tuple(c for n in self._applied(version).nested for c in (n.new, *lineages(n)))

    def wrap(self, version: str, wrapper: Wrapper) -> Callable[[], None]:
        """Send new calls of patch ``version``'s functions through ``wrapper`` until undone.

        For each function ``version`` patched that still runs its code (not a
        patch stacked on top, not already wrapped), ``wrapper(function, impl)``
        returns what calls go to; ``impl`` runs the version's code, and what it
        returns must be returned (a generator, coroutine or async generator
        function's wrapper returns such an object). Only ``__code__`` changes,
        to a trampoline with the same parameters, for all functions in one
        switch. Applies and rollbacks see through it: a patch stacked on top
        records the version's own code, so rolling that patch back never brings
        the wrapper back; rolling ``version`` back removes it. The returned
        ``unwrap()`` puts the version's code back wherever the trampoline still
        is (calls then cost what they did before); calling it again does nothing.
        ``VersionConflict`` if ``version`` is not applied.
        """
        with self._lock:
            functions = self.installed(version)
            return self._wrappers.wrap(functions, wrapper, self._applied(version).nested)

    def _applied(self, version: str) -> Applied:
        wanted = parse_version(str(version), "version")
        for entry in self._stack:
            if entry.patch.parsed_version == wanted:
                return entry
        msg = (
            f"patch {version} is not applied (level: {', '.join(self.level) or 'none'}); "
            "name a version of the level"
        )
        raise VersionConflict(msg, patch=str(version))

    # -- journal ---------------------------------------------------------------------

    def detach_journal(self) -> None:
        """Stop recording to the journal, which stays as written: after the replay,
        another process records the level (the folder's owner among pre-fork workers)."""
        with self._lock:
            self._recording = None

    def keep_journal(self) -> bool:
        """Write the journal again at the running level if its file has gone; ``True`` if
        written (``JournalError`` if it cannot be).

        A restart comes back at the level the journal records: a journal deleted
        while the process runs (with the patch folder it lives in, made again) would
        bring it back at the baseline. Asked before a restart that keeps the code.
        """
        recording = self._recording
        if recording is None:
            return False
        with self._lock:
            return recording.keep(_patches(self._stack), self._history)

    def resync(self) -> bool:
        """Bring the level to what the journal records now; ``True`` if anything changed.

        A new process replays the journal early, while the old one still serves;
        the old one may change the level meanwhile (a plugin's rollback). Called
        again at the hand-over, this catches up: if the journal's level (versions
        and contents) is not this registry's, the patches are undone in memory and
        the journal's level is applied again. The journal is read, never written.
        """
        recording = self._recording
        if recording is None:
            return False
        with self._lock:
            if not resync(recording, self.patches, self._replay_steps()):
                return False
            self.journal_report = recording.report
            return True

    def _replay(self, recording: Recording) -> None:
        """Apply the level the journal records (the process has not served yet)."""
        replay(recording, self._replay_steps())
        if self._deferred is not None and not self._deferred.pending:
            self._deferred = None  # every patch of the run was on top of a target
        self.journal_report = recording.report

    def _replay_steps(self) -> ReplaySteps:
        if self.plugins.follows("hotpatch_before_apply", "hotpatch_after_apply"):
            return ReplaySteps(self._set_history, self._replay_patch, self._to_baseline)
        return ReplaySteps(
            self._set_history, self._replay_patch, self._to_baseline, self._replay_top, self._defer
        )

    def _set_history(self, entries: Iterable[HistoryEntry]) -> None:
        self._history = deque(entries, maxlen=HISTORY_KEPT)

    def _replay_patch(self, patch: Patch) -> None:
        # A replay runs as the process starts, before it serves: what would
        # need a restart (why the patch went in through one) does not apply.
        plan = self._plan(patch, restarting=True)
        self._commit(plan, time.perf_counter(), action="replay", who="journal")

    def _to_baseline(self) -> None:
        if self._stack:
            self.rollback(to=self.baseline, who="journal")

    def _replay_top(self, patch: Patch) -> None:
        """Replay a patch of the run at the top of the level that is on top of a target."""
        self._replay_patch(patch)
        self._run().applied(self._stack[-1])

    def _defer(self, patch: Patch) -> None:
        """Replay a patch of that run every target of which is under a later one: unbuilt."""
        self._stack.append(self._run().unbuilt(patch))
        self._versions.push(patch.version)
        self._patch_stack.push(patch)
        done = HistoryEntry.at(
            time.time(), "replay", patch.version, self._versions.top, 0.0, "journal"
        )
        self._history.append(done)
        if self._recording is not None:
            self._recording.unrecorded(done)  # goes in with the next change
        log.debug("replayed patch %s: under later patches, built when needed", patch.version)

    def _run(self) -> Deferred:
        if self._deferred is None:
            self._deferred = Deferred(partial(self._plan_on, restarting=True))
        return self._deferred


def _report(plan: Plan, reasons: list[str]) -> CheckReport:
    return CheckReport(
        version=plan.patch.version,
        hot=not reasons,
        reasons=tuple(reasons),
        targets=plan.patch.targets,
        modes=dict(plan.modes),
        names=tuple(plan.names),
    )


def _state_before(func: types.FunctionType, before: Mapping[Key, Change]) -> dict[str, Any]:
    """``func``'s state as recorded just before a switch."""
    return {attr: before[key(func, attr)][2] for attr in FUNC_ATTRS}


def _patches(stack: list[Applied]) -> list[Patch]:
    return [e.patch for e in stack]
