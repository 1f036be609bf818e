"""``Registry``: the patch level of one baseline -- apply, check, rollback, stacking, history."""

from __future__ import annotations

import inspect
import logging
import threading
import time
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from packaging.version import Version

from hotpatch._codegen import (
    ABSENT,
    FUNC_ATTRS,
    build,
    capture,
    function_kind,
    rebind,
    trampoline,
)
from hotpatch._codegen import reference_function as _reference
from hotpatch._errors import (
    BaselineMismatch,
    JournalError,
    MigrationFailed,
    NameConflict,
    PatchError,
    QuiescenceTimeout,
    RestartRequired,
    SignatureIncompatible,
    VerificationFailed,
    VersionConflict,
)
from hotpatch._journal import Journal, JournalEntry, JournalState
from hotpatch._loader import load_patch_source
from hotpatch._patch import Migration, Patch, parse_version
from hotpatch._plugins import PluginHost
from hotpatch._switch import Change, Key, busy_threads, current, key, switch, wait_quiescent
from hotpatch._targets import Kind, Target, accessor_of, import_module, resolve, resolve_class
from hotpatch._validate import (
    CLASS_BOILERPLATE,
    accepts_same_calls,
    class_reasons,
    global_names,
    signature_problems,
)

__all__ = ["ApplyResult", "CheckReport", "HistoryEntry", "Registry", "RollbackResult"]

log = logging.getLogger("hotpatch")


@dataclass(frozen=True, slots=True)
class CheckReport:
    """What ``check()`` found: whether the patch goes in hot, and if not, why."""

    version: str
    hot: bool
    reasons: tuple[str, ...]
    targets: tuple[str, ...]
    modes: Mapping[str, str]  # target -> "inline", or "forward (why)"
    names: tuple[str, ...]  # globals the patch adds to its target modules

    def record(self) -> dict[str, Any]:
        """The report as JSON-ready data, ``names`` aside (the control protocol, the channel)."""
        return {
            "version": self.version,
            "hot": self.hot,
            "reasons": list(self.reasons),
            "targets": list(self.targets),
            "modes": dict(self.modes),
        }


@dataclass(frozen=True, slots=True)
class ApplyResult:
    version: str
    hot: bool
    targets: tuple[str, ...]
    elapsed_s: float  # the whole apply, validation included
    switch_s: float  # the step during which calls could observe a change
    modes: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class RollbackResult:
    versions: tuple[str, ...]  # rolled back, newest first
    level: tuple[str, ...]  # the level afterwards
    elapsed_s: float
    switch_s: float


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    time: float
    action: str  # "apply", "replay", "rollback"
    version: str
    level: tuple[str, ...]
    elapsed_s: float
    who: str = "api"

    def record(self) -> dict[str, Any]:
        """The entry as JSON-ready data (the journal's history rows, the control protocol)."""
        return dict(asdict(self), level=list(self.level))


@dataclass(slots=True)
class _Plan:
    patch: Patch
    changes: dict[Key, Change] = field(default_factory=dict)
    injected: set[Key] = field(default_factory=set)
    modes: dict[str, str] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    codes: list[types.CodeType] = field(default_factory=list)
    functions: list[types.FunctionType] = field(default_factory=list)
    migrations: list[tuple[Migration, types.ModuleType]] = field(default_factory=list)
    unmigrations: list[tuple[Migration, types.ModuleType]] = field(default_factory=list)
    # (module, names, namespace the names come from, target) for the namespace rule
    needs: list[tuple[types.ModuleType, frozenset[str], dict[str, Any], str]] = field(
        default_factory=list
    )


@dataclass(slots=True)
class _Entry:
    """One applied patch: what it set, what was there before, what it replaced."""

    patch: Patch
    before: dict[Key, Change]
    after: dict[Key, Change]
    injected: set[Key]
    unmigrations: list[tuple[Migration, types.ModuleType]]
    replaced: list[_Entry]
    functions: list[types.FunctionType] = field(default_factory=list)  # whose code it built


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
    ):
        self.baseline = str(baseline)
        self._baseline_version = parse_version(self.baseline, "baseline")
        self._lock = threading.RLock()
        self._stack: list[_Entry] = []
        self._originals: dict[int, tuple[types.FunctionType, dict[str, Any]]] = {}
        # id(function) -> (trampoline installed by wrap(), the code it stands for)
        self._wrapped: dict[int, tuple[types.CodeType, types.CodeType]] = {}
        self._history: list[HistoryEntry] = []
        self.plugins = PluginHost(plugins)
        self.journal_report: str | None = None
        self._journal = Journal(journal) if journal is not None else None
        if self._journal is not None:
            self._replay(self._journal)

    # -- queries ---------------------------------------------------------------------

    @property
    def level(self) -> tuple[str, ...]:
        """The applied hot patches' versions, oldest first."""
        return tuple(e.patch.version for e in self._stack)

    @property
    def version(self) -> str:
        """The top of the level, or the baseline."""
        return self._stack[-1].patch.version if self._stack else self.baseline

    @property
    def history(self) -> tuple[HistoryEntry, ...]:
        return tuple(self._history)

    @property
    def patches(self) -> tuple[Patch, ...]:
        """The applied patches, oldest first."""
        return tuple(e.patch for e in self._stack)

    def __repr__(self) -> str:
        return f"<Registry baseline={self.baseline} level={list(self.level)}>"

    # -- check / apply ----------------------------------------------------------------

    def check(self, patch: Patch) -> CheckReport:
        """Dry run: validate, and say whether ``patch`` would go in hot. Changes nothing.

        Raises the same errors as ``apply`` for an invalid patch.
        """
        with self._lock:
            plan = self._prepare(patch)
            reasons = list(plan.reasons)
            if patch.quiescence == "strict" and (busy := busy_threads(plan.codes)):
                reasons.append(f"strict quiescence not reached now: {'; '.join(busy)}")
            report = self._report(plan, reasons)
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
            try:
                plan = self._prepare(patch)
                self._veto(patch, self._report(plan, plan.reasons))
                if plan.reasons and not restarting:
                    msg = (
                        f"patch {patch.version} cannot be applied hot: {'; '.join(plan.reasons)}. "
                        "Nothing changed; apply it through the supervisor (`hotpatch run`), "
                        "which uses a memory-preserving restart"
                    )
                    raise RestartRequired(msg, reasons=plan.reasons, patch=patch.version)
                return self._commit(plan, start, action="apply", who=who)
            except PatchError as exc:
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

    def _report(self, plan: _Plan, reasons: list[str]) -> CheckReport:
        return CheckReport(
            version=plan.patch.version,
            hot=not reasons,
            reasons=tuple(reasons),
            targets=plan.patch.targets,
            modes=dict(plan.modes),
            names=tuple(plan.names),
        )

    def _veto(self, patch: Patch, report: CheckReport) -> None:
        vetoes = self.plugins.vetoes(patch=patch, report=report)
        if vetoes:
            msg = (
                f"patch {patch.version} was vetoed: {'; '.join(vetoes)}. "
                "Nothing changed; fix what the plugin names, or remove the plugin"
            )
            raise VerificationFailed(msg, patch=patch.version)

    # -- planning ---------------------------------------------------------------------

    def _prepare(self, patch: Patch) -> _Plan:
        """Validate ``patch`` and build every value the switch will set. Changes nothing."""
        v = patch.version
        plan = _Plan(patch)
        if patch.kind != "hot":
            plan.reasons.append(
                f"patch {v} is a {patch.kind} patch: a baseline replaces the code and "
                "always needs a restart"
            )
            return plan
        if Version(patch.baseline) != self._baseline_version:
            msg = (
                f"patch {v} is for baseline {patch.baseline}, but this process runs baseline "
                f"{self.baseline}; rebuild the patch against {self.baseline}"
            )
            raise BaselineMismatch(msg, patch=v)
        self._check_version(patch)
        if self._journal is not None and patch.source is None:
            msg = (
                f"patch {v} was not loaded from a file, so the journal cannot record its "
                "content; load it with hotpatch.load_patch(path)"
            )
            raise JournalError(msg, patch=v)
        if not patch.replacements and not patch.migrations:
            msg = f"patch {v} replaces nothing; add @patch.replace(...) functions to it"
            raise VerificationFailed(msg, patch=v)

        replaced = self._stack if patch.cumulative else []
        pristine = self._pristine(replaced)

        def base(obj: Any, attr: str) -> Any:
            change = pristine.get(key(obj, attr))
            return change[2] if change is not None else current(obj, attr)

        for replacement in patch.replacements:
            if replacement.is_class:
                self._plan_class(plan, replacement.target, replacement.new, base)
            else:
                target = resolve(replacement.target, patch=v)
                self._plan_function(plan, target, replacement.new, base)
        self._plan_names(plan, base, replaced)
        for k, change in pristine.items():  # cumulative: what it does not touch goes back
            plan.changes.setdefault(k, change)
        for migration in patch.migrations:
            module = import_module(migration.module, patch=v, target=migration.module)
            plan.migrations.append((migration, module))
        for migration in patch.unmigrations:
            module = import_module(migration.module, patch=v, target=migration.module)
            plan.unmigrations.append((migration, module))
        if patch.restart:
            plan.reasons.append(f"patch {v} asks for a restart (restart=True)")
        return plan

    def _check_version(self, patch: Patch) -> None:
        v = patch.version
        if any(e.patch.parsed_version == patch.parsed_version for e in self._stack):
            msg = (
                f"patch {v} is already applied (level {', '.join(self.level)}); "
                "to change it, publish it again under a newer version"
            )
            raise VersionConflict(msg, patch=v)
        top = self._stack[-1].patch.parsed_version if self._stack else self._baseline_version
        if patch.parsed_version <= top:
            msg = (
                f"patch {v} is not newer than the current level {self.version}; "
                f"give it a version above {self.version}"
            )
            raise VersionConflict(msg, patch=v)

    def _pristine(self, entries: list[_Entry]) -> dict[Key, Change]:
        """The values from before ``entries`` for everything they touched (oldest wins)."""
        values: dict[Key, Change] = {}
        for entry in reversed(entries):
            values.update(entry.before)
            # a cumulative's "before" is the level it replaced: go under that level too
            values.update(self._pristine(entry.replaced))
        return values

    def _original(self, function: types.FunctionType) -> dict[str, Any]:
        known = self._originals.get(id(function))
        return known[1] if known is not None else capture(function)

    def _plan_function(
        self, plan: _Plan, target: Target, new_obj: Any, base: Callable[[Any, str], Any]
    ) -> None:
        v, spec, func = plan.patch.version, target.spec, target.function
        new = accessor_of(new_obj, target.accessor)
        if not isinstance(new, types.FunctionType):
            msg = (
                f"patch {v}: the replacement for {spec} is a {type(new).__name__}, "
                "not a Python function; decorate a def with @patch.replace"
            )
            raise VerificationFailed(msg, patch=v, target=spec)
        original = self._original(func)
        old_code: types.CodeType = original["__code__"]
        old_kind, new_kind = function_kind(old_code), function_kind(new.__code__)
        if old_kind != new_kind:
            msg = (
                f"patch {v}: {spec} is a {old_kind} but its replacement is a {new_kind}; "
                f"callers would break. Keep it a {old_kind}, or ship the change as a baseline"
            )
            raise SignatureIncompatible(msg, patch=v, target=spec)
        # The usual patch keeps the parameters: no need to build and compare signatures.
        old_sig = None
        problems: list[str] = []
        if not accepts_same_calls(original, new):
            old_sig = inspect.signature(_reference(original, func.__name__))
            problems = signature_problems(old_sig, inspect.signature(new))
        if problems and not plan.patch.signature_change:
            msg = (
                f"patch {v}: the replacement for {spec} cannot accept every call the "
                f"original {spec.partition(':')[2]}{old_sig} accepted: {'; '.join(problems)}. "
                "Keep the original's parameters (new ones need defaults), or set "
                "Patch(signature_change=True) if every caller is patched too"
            )
            raise SignatureIncompatible(msg, patch=v, target=spec)
        # A changed signature (signature_change=True): calls follow the replacement's.
        built = build(
            func,
            original,
            new,
            globals_=target.module.__dict__,
            owner=target.owner,
            any_call=bool(problems),
        )
        for attr in FUNC_ATTRS:
            plan.changes[key(func, attr)] = (func, attr, built.state[attr])
        plan.modes[spec] = built.mode + (f" ({built.why})" if built.why else "")
        plan.functions.append(func)
        # Strict quiescence looks for every version a thread could still be running.
        code_key = key(func, "__code__")
        plan.codes.extend((old_code, func.__code__, self._code_of(func), built.state["__code__"]))
        plan.codes.extend(
            change[2] for e in self._stack for change in (e.before.get(code_key),) if change
        )
        plan.needs.append(
            (
                target.module,
                global_names(new.__code__) - set(old_code.co_freevars),
                new.__globals__,
                spec,
            )
        )

    def _plan_class(
        self, plan: _Plan, spec: str, new_cls: type, base: Callable[[Any, str], Any]
    ) -> None:
        v = plan.patch.version
        module, old = resolve_class(spec, patch=v)
        plan.reasons.extend(class_reasons(old, new_cls))
        for attr, value in vars(new_cls).items():
            if attr in CLASS_BOILERPLATE:
                continue
            member = f"{spec}.{attr}"
            existing = base(old, attr)
            pairs = _function_pairs(existing, value)
            if pairs is not None:
                for accessor, func, new in pairs:
                    kind: Kind = "property" if accessor else "method"
                    target = Target(member, module, func, old, kind, accessor)
                    self._plan_function(plan, target, new, base)
                continue
            if existing is value or (existing is not ABSENT and _equal(existing, value)):
                continue
            rebound = _rebind_member(value, module.__dict__, old)
            plan.changes[key(old, attr)] = (old, attr, rebound)
            for func in _member_functions(value):
                names = global_names(func.__code__)
                plan.needs.append((module, names, func.__globals__, member))

    def _plan_names(
        self, plan: _Plan, base: Callable[[Any, str], Any], replaced: list[_Entry]
    ) -> None:
        """The namespace rule: bring what the replacements need, refuse to shadow."""
        patch = plan.patch
        exempt = {id(patch)} | {id(r.new) for r in patch.replacements}
        exempt |= {id(f) for r in patch.replacements for f in _member_functions(r.new)}
        ours = [e for e in self._stack if e not in replaced]
        for module, names, namespace, spec in plan.needs:
            for name in sorted(names):
                if name not in namespace:
                    continue  # the module's own, or a builtin
                value = namespace[name]
                if id(value) in exempt or module.__dict__.get(name) is namespace:
                    continue
                k = key(module, name)
                existing = base(module, name)
                if existing is value:
                    continue
                injected_here = any(k in e.injected and e.after[k][2] is existing for e in ours)
                if existing is not ABSENT and not injected_here and k not in plan.injected:
                    msg = (
                        f"patch {patch.version}: {spec} needs {name!r} from the patch file, but "
                        f"module {module.__name__} already has a different {name!r} "
                        f"({type(existing).__name__}); rename it in the patch file, or use the "
                        "module's own"
                    )
                    raise NameConflict(msg, patch=patch.version, target=spec)
                if k not in plan.injected:
                    plan.names.append(f"{module.__name__}.{name}")
                plan.changes[k] = (module, name, value)
                plan.injected.add(k)

    # -- commit ---------------------------------------------------------------------

    def _commit(self, plan: _Plan, start: float, *, action: str, who: str) -> ApplyResult:
        patch = plan.patch
        live = {k: (obj, attr, current(obj, attr)) for k, (obj, attr, _) in plan.changes.items()}
        before = self._see_through(live)  # a wrapped function's own code, not the wrapper
        entry = _Entry(
            patch,
            before,
            dict(plan.changes),
            set(plan.injected),
            plan.unmigrations,
            list(self._stack) if patch.cumulative else [],
            list(plan.functions),
        )
        stack = [entry] if patch.cumulative else [*self._stack, entry]
        undo: list[Callable[[], object]] = []
        # The order keeps failures away from what cannot be undone: wait for strict
        # quiescence, write the journal, and only then run the migrations (a migration
        # without an unmigrate cannot be taken back), right before the switch.
        deadline = time.monotonic() + patch.quiescence_timeout
        try:
            self.plugins.notify("hotpatch_before_apply", patch=patch, registry=self)
            self._quiesce(plan, deadline)
            elapsed = time.perf_counter() - start
            record = HistoryEntry(
                time.time(), action, patch.version, _versions(stack), elapsed, who
            )
            if self._journal is not None and action != "replay":
                undo.append(self._journal_undo())
                self._write_journal(stack, [*self._history, record])
            for migration, module in plan.migrations:
                try:
                    migration.func(module)
                except Exception as exc:
                    msg = (
                        f"patch {patch.version}: migration {migration.func.__name__} of "
                        f"{migration.module} raised {type(exc).__name__}: {exc}; the apply was "
                        "undone. Fix the migration and publish a newer version"
                    )
                    raise MigrationFailed(
                        msg, patch=patch.version, target=migration.module
                    ) from exc
                undo.extend(
                    _call(m.func, mod)
                    for m, mod in plan.unmigrations
                    if m.module == migration.module
                )
            if plan.migrations:  # a thread may have entered a target meanwhile
                self._quiesce(plan, deadline)
            switch_s = switch(plan.changes.values(), live)
        except BaseException:
            for step in reversed(undo):
                try:
                    step()
                except Exception:
                    log.exception("undoing patch %s: a step of the undo failed", patch.version)
            raise
        self._forget_wrapped(plan.changes)
        for func in plan.functions:
            self._originals.setdefault(id(func), (func, capture_before(func, before)))
        self._stack = stack
        elapsed = time.perf_counter() - start
        self._history.append(
            HistoryEntry(time.time(), action, patch.version, self.level, elapsed, who)
        )
        log.info(
            "%s patch %s: %d targets (%s) in %.2f ms",
            "replayed" if action == "replay" else "applied",
            patch.version,
            len(patch.targets),
            ", ".join(patch.targets),
            elapsed * 1e3,
        )
        result = ApplyResult(
            patch.version, True, patch.targets, elapsed, switch_s, dict(plan.modes)
        )
        self.plugins.notify("hotpatch_after_apply", patch=patch, registry=self, result=result)
        return result

    def _quiesce(self, plan: _Plan, deadline: float) -> None:
        """``quiescence="strict"``: wait until no thread runs a target, up to ``deadline``."""
        patch = plan.patch
        if patch.quiescence != "strict":
            return
        busy = wait_quiescent(plan.codes, max(0.0, deadline - time.monotonic()))
        if busy:
            who = "; ".join(busy)
            reason = f"strict quiescence not reached in {patch.quiescence_timeout}s: {who}"
            msg = (
                f"patch {patch.version}: {reason}. Nothing changed; retry when the service "
                "is quieter, raise quiescence_timeout, or apply it with a restart"
            )
            raise QuiescenceTimeout(msg, reasons=[reason], patch=patch.version)

    def _journal_undo(self) -> Callable[[], None]:
        """What puts the journal back as it is now, if a later step fails."""
        assert self._journal is not None
        return self._journal.undo_point()

    # -- rollback ---------------------------------------------------------------------

    def rollback(self, to: str | None = None, *, who: str = "api") -> RollbackResult:
        """Undo the last apply, or go back to level ``to`` (in the level, or the baseline)."""
        start = time.perf_counter()
        with self._lock:
            stack, popped = self._unwind(to)
            final: dict[Key, Change] = {}
            for entry in popped:  # newest first: the oldest popped entry's values win
                final.update(entry.before)
            undo = {k: (obj, attr, current(obj, attr)) for k, (obj, attr, _) in final.items()}
            elapsed = time.perf_counter() - start
            versions = tuple(e.patch.version for e in popped)
            record = HistoryEntry(
                time.time(), "rollback", ", ".join(versions), _versions(stack), elapsed, who
            )
            journal_undo: Callable[[], None] | None = None
            if self._journal is not None and popped:
                journal_undo = self._journal_undo()
                self._write_journal(stack, [*self._history, record])
            try:
                switch_s = switch(final.values(), undo) if final else 0.0
            except BaseException:  # the switch put the code back; the journal follows
                if journal_undo is not None:
                    journal_undo()
                raise
            self._forget_wrapped(final)
            self._stack = stack
            for entry in popped:
                for migration, module in entry.unmigrations:
                    try:
                        migration.func(module)
                    except Exception:
                        log.exception(
                            "rollback of %s: unmigrate %s of %s raised; the code is rolled back, "
                            "the migrated state may not be",
                            entry.patch.version,
                            migration.func.__name__,
                            migration.module,
                        )
            elapsed = time.perf_counter() - start
            if popped:
                self._history.append(
                    HistoryEntry(
                        time.time(), "rollback", ", ".join(versions), self.level, elapsed, who
                    )
                )
                log.info(
                    "rolled back %s in %.2f ms; level now %s",
                    ", ".join(versions),
                    elapsed * 1e3,
                    ", ".join(self.level) or f"baseline {self.baseline}",
                )
            result = RollbackResult(versions, self.level, elapsed, switch_s)
        if popped:
            self.plugins.notify("hotpatch_after_rollback", registry=self, result=result)
        return result

    def _unwind(self, to: str | None) -> tuple[list[_Entry], list[_Entry]]:
        """(stack afterwards, entries popped newest first); raises before changing anything."""
        stack = list(self._stack)
        if not stack:
            msg = f"nothing to roll back: the process runs baseline {self.baseline} with no patches"
            raise VersionConflict(msg)
        goal = parse_version(str(to), "rollback target") if to is not None else None
        popped: list[_Entry] = []
        while stack:
            if goal is not None and stack[-1].patch.parsed_version == goal:
                break
            entry = stack.pop()
            popped.append(entry)
            stack.extend(entry.replaced)
            if goal is None:
                break
        if goal is not None and goal != self._baseline_version and not stack:
            msg = (
                f"cannot roll back to {to}: it is neither in the level ({', '.join(self.level)}) "
                f"nor the baseline {self.baseline}"
            )
            raise VersionConflict(msg, patch=str(to))
        return stack, popped

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
            return tuple((f, entry.after[key(f, "__code__")][2]) for f in entry.functions)

    def wrap(
        self,
        version: str,
        wrapper: Callable[[types.FunctionType, types.FunctionType], Callable[..., Any]],
    ) -> Callable[[], None]:
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
            entry = self._applied(version)
            done: list[tuple[types.FunctionType, types.CodeType, types.CodeType]] = []
            for func in entry.functions:
                code = entry.after[key(func, "__code__")][2]
                if func.__code__ is not code:
                    continue
                target = wrapper(func, _running(func, code))
                done.append((func, trampoline(code, target), code))
            switch((func, "__code__", wrapped) for func, wrapped, _ in done)
            for func, wrapped, code in done:
                self._wrapped[id(func)] = (wrapped, code)

        def unwrap() -> None:
            with self._lock:
                back: list[Change] = []
                for func, wrapped, code in done:
                    if self._wrapped.get(id(func), (None,))[0] is wrapped:
                        del self._wrapped[id(func)]
                        if func.__code__ is wrapped:
                            back.append((func, "__code__", code))
                switch(back)

        return unwrap

    def _applied(self, version: str) -> _Entry:
        wanted = parse_version(str(version), "version")
        for entry in self._stack:
            if entry.patch.parsed_version == wanted:
                return entry
        msg = (
            f"patch {version} is not applied (level: {', '.join(self.level) or 'none'}); "
            "name a version of the level"
        )
        raise VersionConflict(msg, patch=str(version))

    def _code_of(self, func: types.FunctionType) -> types.CodeType:
        """``func``'s code, or the code its ``wrap()`` trampoline stands for."""
        wrapped = self._wrapped.get(id(func))
        return wrapped[1] if wrapped is not None and wrapped[0] is func.__code__ else func.__code__

    def _see_through(self, values: dict[Key, Change]) -> dict[Key, Change]:
        """``values`` recorded live, with each ``wrap()`` trampoline replaced by its code."""
        if not self._wrapped:
            return values
        seen = dict(values)
        for k, (obj, attr, value) in values.items():
            if attr == "__code__" and isinstance(obj, types.FunctionType):
                seen[k] = (obj, attr, self._code_of(obj) if value is obj.__code__ else value)
        return seen

    def _forget_wrapped(self, changed: Iterable[Key]) -> None:
        """A switch set these: the trampolines it replaced are gone."""
        if self._wrapped:
            for obj_id, attr in changed:
                if attr == "__code__":
                    self._wrapped.pop(obj_id, None)

    # -- journal ----------------------------------------------------------------------

    def _write_journal(self, stack: list[_Entry], history: list[HistoryEntry]) -> None:
        assert self._journal is not None
        level = []
        for entry in stack:
            source = entry.patch.source
            assert source is not None  # checked in _prepare
            level.append(
                JournalEntry(
                    entry.patch.version,
                    source.sha256,
                    source.path,
                    source.text,
                    entry.patch.summary,
                )
            )
        history_rows = [h.record() for h in history]
        self._journal.write(JournalState(self.baseline, level, history_rows))

    def detach_journal(self) -> None:
        """Stop recording to the journal, which stays as written: after the replay,
        another process records the level (the folder's owner among pre-fork workers)."""
        with self._lock:
            self._journal = None

    def resync(self) -> bool:
        """Bring the level to what the journal records now; ``True`` if anything changed.

        A new process replays the journal early, while the old one still serves;
        the old one may change the level meanwhile (a plugin's rollback). Called
        again at the hand-over, this catches up: if the journal's level (versions
        and contents) is not this registry's, the patches are undone in memory and
        the journal's level is applied again. The journal is read, never written.
        """
        journal = self._journal
        if journal is None:
            return False
        with self._lock:
            state = journal.read()
            if state is not None and state.baseline != self.baseline:
                log.warning(
                    "journal %s is now for baseline %s, not %s: not followed",
                    journal.path,
                    state.baseline,
                    self.baseline,
                )
                return False
            recorded = [] if state is None else [(e.version, e.sha256) for e in state.level]
            running = [
                (e.patch.version, e.patch.source.sha256 if e.patch.source else None)
                for e in self._stack
            ]
            if recorded == running:
                return False
            log.warning(
                "journal %s changed since it was replayed (level %s, running %s): catching up",
                journal.path,
                ", ".join(v for v, _ in recorded) or "none",
                ", ".join(v for v, _ in running) or "none",
            )
            self._journal = None  # undo in memory only: the journal stays as recorded
            try:
                if self._stack:
                    self.rollback(to=self.baseline, who="journal")
                self._replay(journal)
            finally:
                self._journal = journal
            return True

    def _replay(self, journal: Journal) -> None:
        state = journal.read()
        if state is None:
            return
        if parse_version(state.baseline, "journal baseline") != self._baseline_version:
            moved = journal.set_aside(f"baseline-{state.baseline}")
            self.journal_report = (
                f"journal {journal.path} was written for baseline {state.baseline}, not "
                f"{self.baseline}: not replayed (kept as {moved.name}); starting at the baseline"
            )
            log.warning("%s", self.journal_report)
            return
        self._history = [
            HistoryEntry(**dict(row, level=tuple(row["level"]))) for row in state.history
        ]
        for entry in state.level:
            try:
                patch = load_patch_source(entry.text.encode(), path=entry.path)
                # A replay runs as the process starts, before it serves: what would
                # need a restart (why the patch went in through one) does not apply.
                plan = self._prepare(patch)
                self._commit(plan, time.perf_counter(), action="replay", who="journal")
            except PatchError as exc:
                if self._stack:
                    # roll back in memory only: the journal keeps the level it recorded,
                    # so the cause can be fixed and the level replayed
                    self._journal = None
                    self.rollback(to=self.baseline, who="journal")
                msg = (
                    f"journal {journal.path}: patch {entry.version} cannot be replayed ({exc}); "
                    f"the process runs baseline {self.baseline} with no patches. Fix the cause or "
                    "move the journal aside"
                )
                raise JournalError(msg, patch=entry.version) from exc
        self.journal_report = f"replayed {len(state.level)} patches from {journal.path}"


def capture_before(func: types.FunctionType, before: Mapping[Key, Change]) -> dict[str, Any]:
    """``func``'s state as recorded just before a switch."""
    return {attr: before[key(func, attr)][2] for attr in FUNC_ATTRS}


def _versions(stack: list[_Entry]) -> tuple[str, ...]:
    return tuple(e.patch.version for e in stack)


def _call(func: Callable[[Any], object], arg: Any) -> Callable[[], object]:
    return lambda: func(arg)


def _running(func: types.FunctionType, code: types.CodeType) -> types.FunctionType:
    """A function that runs ``code`` as ``func`` would: same globals, cells and defaults."""
    impl = types.FunctionType(
        code, func.__globals__, func.__name__, func.__defaults__, func.__closure__
    )
    impl.__kwdefaults__ = func.__kwdefaults__
    impl.__qualname__ = func.__qualname__
    impl.__module__ = func.__module__
    impl.__doc__ = func.__doc__
    return impl


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return False


def _member_functions(value: Any) -> list[types.FunctionType]:
    if isinstance(value, types.FunctionType):
        return [value]
    if isinstance(value, classmethod | staticmethod):
        return _member_functions(value.__func__)
    if isinstance(value, property):
        return [
            f for f in (value.fget, value.fset, value.fdel) if isinstance(f, types.FunctionType)
        ]
    if isinstance(value, type):
        return [f for member in vars(value).values() for f in _member_functions(member)]
    return []


def _function_pairs(old: Any, new: Any) -> list[tuple[str, types.FunctionType, Any]] | None:
    """(accessor, function to patch, replacement) when ``new`` can patch ``old`` in place."""
    if isinstance(old, types.FunctionType) and isinstance(new, types.FunctionType):
        return [("", inspect.unwrap(old), new)]
    for wrapper in (classmethod, staticmethod):
        if isinstance(old, wrapper) and isinstance(new, wrapper):
            return [("", inspect.unwrap(old.__func__), new.__func__)]
    if isinstance(old, property) and isinstance(new, property):
        accessors = ("fget", "fset", "fdel")
        if [getattr(old, a) is None for a in accessors] != [
            getattr(new, a) is None for a in accessors
        ]:
            return None  # accessors added or removed: the property is swapped whole
        return [
            (a, getattr(old, a), getattr(new, a)) for a in accessors if getattr(old, a) is not None
        ]
    return None


def _rebind_member(value: Any, globals_: dict[str, Any], owner: type) -> Any:
    """A new class member as if defined in the target module and class."""
    if isinstance(value, types.FunctionType):
        return rebind(value, globals_, owner)
    if isinstance(value, classmethod | staticmethod):
        return type(value)(_rebind_member(value.__func__, globals_, owner))
    if isinstance(value, property):
        parts = [
            _rebind_member(f, globals_, owner) if f else None
            for f in (value.fget, value.fset, value.fdel)
        ]
        return property(parts[0], parts[1], parts[2], value.__doc__)
    return value
