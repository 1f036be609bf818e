"""Health gate plugin: a probation window after each hot patch, and automatic rollback.

After a patch is applied, the calls to the functions it patched and the
exceptions that propagate out of them are counted for ``window_s`` seconds.
If the errors exceed the threshold -- more than ``max_error_rate`` of the calls
once there are ``min_calls`` of them, or ``max_errors`` errors at all -- the
patch, and whatever was stacked on it since, is rolled back (``who`` is
``health-gate``), a warning is logged, and ``hotpatch_rejected`` is fired with
source ``health-gate``. At the end of the window the patch is confirmed.

Counting costs only during probation. On Python 3.13+ it uses
``sys.monitoring``: a local ``PY_START`` event on exactly the code objects the
patch installed, and the global ``PY_UNWIND`` event while some patch is on
probation (filtered by code object); every event is turned off and the tool
id freed when the last probation ends. On 3.11 and 3.12 (or when no tool id
is free), the registry's ``wrap()`` routes the functions through a counting
trampoline, and ``unwrap()`` puts the patch's own code back. (On 3.12, giving a
code object local events strips its superinstructions -- ``LOAD_FAST__LOAD_FAST``
and the like, which only code creation makes -- for good: the patch's code
would stay about 5-10% slower after probation. 3.13 compiles them in.) Either
way, after the window the functions run exactly as they would without the gate.

An error is an ``Exception`` leaving the function (a generator's or
coroutine's too, when it is resumed); ``GeneratorExit``, cancellation and
other ``BaseException``\\ s are not errors. A generator counts as called when it
starts. Patches replayed from the journal at start-up were in service before
the restart and are not put on probation again.
"""

from __future__ import annotations

import inspect
import logging
import sys
import threading
import time
import types
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

import hotpatch

__all__ = ["HealthGate"]

log = logging.getLogger("hotpatch")

WHO = "health-gate"


@dataclass(frozen=True, slots=True)
class _Rule:
    max_error_rate: float
    min_calls: int
    max_errors: int | None

    def exceeded(self, calls: int, errors: int) -> bool:
        if self.max_errors is not None and errors >= self.max_errors:
            return True
        return calls >= self.min_calls and errors > self.max_error_rate * calls

    def __str__(self) -> str:
        text = f"more than {self.max_error_rate:.1%} of at least {self.min_calls} calls"
        return text + (f", or {self.max_errors} errors" if self.max_errors is not None else "")


class _Counts:
    """Calls and errors of one probation; trips (and wakes the gate) when the rule is broken."""

    __slots__ = ("_lock", "_rule", "_wake", "calls", "errors", "failing")

    def __init__(self, rule: _Rule, wake: threading.Event) -> None:
        self._lock = threading.Lock()
        self._rule = rule
        self._wake = wake
        self.calls = 0
        self.errors = 0
        self.failing = False

    def call(self) -> None:
        with self._lock:
            self.calls += 1
            calls, errors = self.calls, self.errors
        # the rate only rises with an error, or when the calls reach min_calls
        if calls == self._rule.min_calls and errors:
            self._check(calls, errors)

    def error(self) -> None:
        with self._lock:
            self.errors += 1
            calls, errors = self.calls, self.errors
        self._check(calls, errors)

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.calls, self.errors

    def _check(self, calls: int, errors: int) -> None:
        if not self.failing and self._rule.exceeded(calls, errors):
            self.failing = True
            self._wake.set()


# -- Python 3.13+: sys.monitoring ---------------------------------------------------------

# None before 3.13 (see the module's docstring for 3.12). Typed Any: mypy checks this
# module as 3.11 code.
_MON: Any = getattr(sys, "monitoring", None) if sys.version_info >= (3, 13) else None
# 3 and 4 are the ids sys.monitoring leaves to other tools (0-2 and 5 are reserved
# for debuggers, coverage, profilers and optimizers).
_TOOL_IDS = (3, 4)
_TOOL_NAME = "hotpatch health gate"


class _Monitor:
    """One ``sys.monitoring`` tool shared by every probation in the process, held only
    while some code object is watched."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[int, tuple[_Counts, ...]] = {}  # id(code) -> its counters
        self._codes: dict[int, types.CodeType] = {}
        self.tool_id: int | None = None

    def watch(self, codes: Iterable[types.CodeType], counts: _Counts) -> bool:
        """Count the calls of ``codes`` and the errors out of them; False if no tool id."""
        mon = _MON
        if mon is None:
            return False
        codes = list(codes)
        with self._lock:
            if self.tool_id is None and not self._acquire():
                return False
            try:
                for code in codes:
                    k = id(code)
                    self._watched[k] = (*self._watched.get(k, ()), counts)
                    if k not in self._codes:
                        self._codes[k] = code
                        mon.set_local_events(self.tool_id, code, mon.events.PY_START)
            except BaseException:  # all or nothing
                self._drop(codes, counts)
                raise
            return True

    def unwatch(self, codes: Iterable[types.CodeType], counts: _Counts) -> None:
        """Stop counting for ``counts``; the last one out turns every event off."""
        with self._lock:
            self._drop(codes, counts)

    def _drop(self, codes: Iterable[types.CodeType], counts: _Counts) -> None:
        if self.tool_id is None:
            return
        for code in codes:
            k = id(code)
            rest = tuple(c for c in self._watched.get(k, ()) if c is not counts)
            if rest:
                self._watched[k] = rest
                continue
            self._watched.pop(k, None)
            if self._codes.pop(k, None) is not None:
                _MON.set_local_events(self.tool_id, code, 0)
        if not self._watched:
            self._release()

    def _acquire(self) -> bool:
        mon = _MON
        for tool in _TOOL_IDS:
            if mon.get_tool(tool) is not None:
                continue
            try:
                mon.use_tool_id(tool, _TOOL_NAME)
            except ValueError:  # taken meanwhile by another thread
                continue
            mon.register_callback(tool, mon.events.PY_START, self._on_start)
            mon.register_callback(tool, mon.events.PY_UNWIND, self._on_unwind)
            mon.set_events(tool, mon.events.PY_UNWIND)  # global-only: filtered by code below
            self.tool_id = tool
            return True
        return False

    def _release(self) -> None:
        if self.tool_id is None:
            return
        mon, tool = _MON, self.tool_id
        for code in self._codes.values():
            mon.set_local_events(tool, code, 0)
        self._codes.clear()
        mon.set_events(tool, 0)
        mon.register_callback(tool, mon.events.PY_START, None)
        mon.register_callback(tool, mon.events.PY_UNWIND, None)
        mon.free_tool_id(tool)
        self.tool_id = None

    # The callbacks run in the monitored threads: a dict lookup, then return.

    def _on_start(self, code: types.CodeType, offset: int) -> None:
        for counts in self._watched.get(id(code), ()):
            counts.call()

    def _on_unwind(self, code: types.CodeType, offset: int, exc: BaseException) -> None:
        watched = self._watched.get(id(code))
        if watched and isinstance(exc, Exception):
            for counts in watched:
                counts.error()


_MONITOR = _Monitor()


# -- Python 3.11-3.12, or no free tool id: a counting wrapper through Registry.wrap -------


def _counting(impl: types.FunctionType, counts: _Counts) -> Callable[..., Any]:
    """What a wrapped function calls during probation: ``impl``, counted, of its kind."""
    if inspect.isasyncgenfunction(impl):

        def async_generator(*args: Any, **kwargs: Any) -> _CountedAsyncGen:
            counts.call()
            return _CountedAsyncGen(impl(*args, **kwargs), counts)

        return async_generator
    if inspect.isgeneratorfunction(impl):

        def generator(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            counts.call()
            try:
                return (yield from impl(*args, **kwargs))
            except Exception:
                counts.error()
                raise

        return generator
    if inspect.iscoroutinefunction(impl):

        async def coroutine(*args: Any, **kwargs: Any) -> Any:
            counts.call()
            try:
                return await impl(*args, **kwargs)
            except Exception:
                counts.error()
                raise

        return coroutine

    def function(*args: Any, **kwargs: Any) -> Any:
        counts.call()
        try:
            return impl(*args, **kwargs)
        except Exception:
            counts.error()
            raise

    return function


class _CountedAsyncGen:
    """An async generator's protocol passed through, counting what escapes it."""

    __slots__ = ("_counts", "_it")

    def __init__(self, it: AsyncGenerator[Any, Any], counts: _Counts) -> None:
        self._it = it
        self._counts = counts

    def __aiter__(self) -> _CountedAsyncGen:
        return self

    def __anext__(self) -> Awaitable[Any]:
        return self._count(self._it.__anext__())

    def asend(self, value: Any) -> Awaitable[Any]:
        return self._count(self._it.asend(value))

    def athrow(self, *args: Any) -> Awaitable[Any]:
        return self._count(self._it.athrow(*args))

    def aclose(self) -> Awaitable[None]:
        return self._it.aclose()

    async def _count(self, step: Awaitable[Any]) -> Any:
        try:
            return await step
        except StopAsyncIteration:
            raise
        except Exception:
            self._counts.error()
            raise


# -- the gate ---------------------------------------------------------------------------


@dataclass(eq=False)
class _Probation:
    registry: hotpatch.Registry
    version: str
    below: str  # what rolling it back goes to: the level's top before it was applied
    counts: _Counts
    functions: tuple[types.FunctionType, ...]
    codes: tuple[types.CodeType, ...]
    started: float  # time.monotonic()
    deadline: float  # time.monotonic()
    deadline_wall: float  # time.time()
    mechanism: str = ""
    rejecting: bool = False
    stopped: bool = False
    unwraps: list[Callable[[], None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def key(self) -> tuple[int, str]:
        return (id(self.registry), self.version)

    def start(self) -> None:
        if _MONITOR.watch(self.codes, self.counts):
            self.mechanism = "sys.monitoring"
        else:
            self.mechanism = "wrapper"
            self.rewrap()

    def rewrap(self) -> None:
        """Wrap the functions that run this version's own code and are not wrapped yet
        (all of them at the start; after a rollback, those a rolled-back patch covered)."""
        with self.registry.lock, self.lock:
            if self.stopped or self.version not in self.registry.level:
                return
            self.unwraps.append(self.registry.wrap(self.version, self._wrapper))

    def _wrapper(self, function: types.FunctionType, impl: types.FunctionType) -> Any:
        return _counting(impl, self.counts)

    def stop(self) -> None:
        """Stop counting: the functions go back to the version's own code. Idempotent."""
        if self.mechanism == "wrapper":
            with self.registry.lock, self.lock:
                self._stop()
        else:
            with self.lock:
                self._stop()

    def _stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.mechanism == "sys.monitoring":
            _MONITOR.unwatch(self.codes, self.counts)
        for unwrap in self.unwraps:
            unwrap()
        self.unwraps.clear()

    def describe(self) -> str:
        calls, errors = self.counts.snapshot()
        rate = errors / calls if calls else 0.0
        return f"{errors} errors in {calls} calls ({rate:.1%})"


class HealthGate:
    """Puts every hot patch on probation and rolls it back if its functions fail too often.

    Register it on a ``Registry`` (``Registry(..., plugins=[gate])``) or pass
    it to ``hotpatch.install(..., plugins=[gate])``. ``window_s``: the
    probation; ``max_error_rate``: the share of calls that may raise, judged
    once ``min_calls`` calls were made; ``max_errors``: roll back at this many
    errors whatever the number of calls (``None``: no such limit).
    """

    def __init__(
        self,
        window_s: float = 30.0,
        max_error_rate: float = 0.05,
        min_calls: int = 20,
        max_errors: int | None = None,
    ) -> None:
        if not window_s > 0:
            msg = f"HealthGate: window_s must be a positive number of seconds, not {window_s!r}"
            raise ValueError(msg)
        if not 0 <= max_error_rate <= 1:
            msg = (
                f"HealthGate: max_error_rate is a share of calls in [0, 1], not {max_error_rate!r}"
            )
            raise ValueError(msg)
        if min_calls < 1:
            msg = f"HealthGate: min_calls must be at least 1, not {min_calls!r}"
            raise ValueError(msg)
        if max_errors is not None and max_errors < 1:
            msg = f"HealthGate: max_errors must be at least 1 or None, not {max_errors!r}"
            raise ValueError(msg)
        self.window_s = float(window_s)
        self.rule = _Rule(float(max_error_rate), int(min_calls), max_errors)
        self._lock = threading.Lock()  # never held while taking a registry's lock
        self._idle = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._probations: dict[tuple[int, str], _Probation] = {}
        self._below: dict[int, str] = {}  # id(registry) -> its version before this apply
        self._stuck: dict[tuple[int, str], _Probation] = {}  # failing, rollback failed
        self._thread: threading.Thread | None = None  # while there are probations
        self._last_thread: threading.Thread | None = None  # for close() to join
        self._closed = False

    def __repr__(self) -> str:
        watched = len(self._probations)
        return f"<HealthGate window={self.window_s}s, {self.rule}: {watched} on probation>"

    # -- queries ----------------------------------------------------------------------

    def status(self) -> dict[str, dict[str, Any]]:
        """The versions on probation: calls, errors, rate, failing, deadline (Unix time)."""
        with self._lock:
            probations = list(self._probations.values())
        now = time.monotonic()
        report: dict[str, dict[str, Any]] = {}
        for p in probations:
            calls, errors = p.counts.snapshot()
            report[p.version] = {
                "calls": calls,
                "errors": errors,
                "error_rate": errors / calls if calls else 0.0,
                "failing": p.counts.failing,
                "deadline": p.deadline_wall,
                "remaining_s": max(0.0, p.deadline - now),
                # a nested target's closures share one name: each name once
                "functions": list(
                    dict.fromkeys(f"{f.__module__}:{f.__qualname__}" for f in p.functions)
                ),
                "mechanism": p.mechanism,
                "tool_id": _MONITOR.tool_id if p.mechanism == "sys.monitoring" else None,
            }
        return report

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no patch is on probation; False if some still is at ``timeout``."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._probations, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """End every probation (stop counting, decide nothing) and stop the gate's thread."""
        with self._lock:
            self._closed = True
            probations = list(self._probations.values())
            self._probations.clear()
            self._idle.notify_all()
            thread = self._last_thread
        for p in probations:
            p.stop()
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- hooks ------------------------------------------------------------------------

    @hotpatch.hookimpl
    def hotpatch_before_apply(self, patch: hotpatch.Patch, registry: hotpatch.Registry) -> None:
        # Applies of one registry are serialised by its lock: one slot per registry.
        self._below[id(registry)] = registry.version

    @hotpatch.hookimpl
    def hotpatch_after_apply(
        self, patch: hotpatch.Patch, registry: hotpatch.Registry, result: hotpatch.ApplyResult
    ) -> None:
        version = patch.version
        below = self._below.pop(id(registry), None)
        history = registry.history
        if self._closed or (history and history[-1].action == "replay"):
            return
        if below is None:  # registered between before and after apply: read the level
            level = registry.level
            below = level[-2] if len(level) > 1 else registry.baseline
        functions = registry.installed(version)
        # and what functions its nested targets' enclosing code makes later will run
        codes = {id(code): code for code in registry.nested_codes(version)}
        codes.update((id(code), code) for _, code in functions)
        if not codes:
            log.info("health gate: patch %s patches no function; nothing to watch", version)
            return
        now, wall = time.monotonic(), time.time()
        p = _Probation(
            registry,
            version,
            below,
            _Counts(self.rule, self._wake),
            tuple(f for f, _ in functions),
            tuple(codes.values()),
            now,
            now + self.window_s,
            wall + self.window_s,
        )
        p.start()
        with self._lock:
            old = self._probations.get(p.key)
            self._probations[p.key] = p
            self._start_thread()
        if old is not None:
            old.stop()
        self._wake.set()
        log.info(
            "health gate: patch %s on probation for %.1f s, watching %d functions (%s) "
            "through %s; rolled back at %s",
            version,
            self.window_s,
            len(p.functions),
            ", ".join(f"{f.__module__}:{f.__qualname__}" for f in p.functions),
            p.mechanism,
            self.rule,
        )

    @hotpatch.hookimpl
    def hotpatch_after_rollback(
        self, registry: hotpatch.Registry, result: hotpatch.RollbackResult
    ) -> None:
        ended: list[_Probation] = []
        level = registry.level  # a version applied again meanwhile is on a new probation
        with self._lock:
            for version in result.versions:
                self._stuck.pop((id(registry), version), None)
                p = self._probations.get((id(registry), version))
                # the gate's own rollback: _reject finishes it
                if p is not None and not p.rejecting and version not in level:
                    del self._probations[p.key]
                    ended.append(p)
            survivors = [
                p
                for p in self._probations.values()
                if p.registry is registry
                and p.mechanism == "wrapper"
                and p.version not in result.versions
            ]
            if not self._probations:
                self._idle.notify_all()
        for p in ended:
            p.stop()
            log.info(
                "health gate: patch %s was rolled back during its probation (%s); "
                "no longer watched",
                p.version,
                p.describe(),
            )
        for p in survivors:  # functions a rolled-back patch had covered run them again
            p.rewrap()

    @hotpatch.hookimpl
    def hotpatch_health_check(self, registry: hotpatch.Registry) -> bool:
        """``False`` while a patch on probation in ``registry`` breaks the rule."""
        with self._lock:
            watched = [*self._probations.values(), *self._stuck.values()]
        level = registry.level
        return not any(
            p.registry is registry and p.counts.failing and p.version in level for p in watched
        )

    # -- the gate's thread ---------------------------------------------------------------

    def _start_thread(self) -> None:
        """Under ``self._lock``: make sure the thread runs while there are probations."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="hotpatch-health-gate", daemon=True
            )
            self._last_thread = self._thread
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closed or not self._probations:
                    self._thread = None
                    return
                now = time.monotonic()
                probations = list(self._probations.values())
            actions = [
                (self._reject if p.counts.failing else self._confirm, p)
                for p in probations
                if p.counts.failing or p.deadline <= now
            ]
            for act, p in actions:
                try:
                    act(p)
                except Exception:  # the thread must survive to serve the other probations
                    log.exception(
                        "health gate: deciding on patch %s failed; no longer watched", p.version
                    )
                    self._finish(p)
            if actions:
                continue
            timeout = min(p.deadline for p in probations) - now
            if self._wake.wait(timeout):
                self._wake.clear()

    def _reject(self, p: _Probation) -> None:
        """Roll ``p`` back (and what is stacked on it), if it is still applied."""
        registry = p.registry
        with registry.lock:
            with self._lock:
                current = self._probations.get(p.key) is p
                p.rejecting = current
            if not current or p.version not in registry.level:
                self._finish(p)
                return
            counts = p.describe()
            try:
                result = registry.rollback(to=p.below, who=WHO)
            except Exception:
                log.exception(
                    "health gate: patch %s is failing (%s) but rolling it back failed; it stays "
                    "applied: roll it back by hand (hotpatch rollback --to %s)",
                    p.version,
                    counts,
                    p.below,
                )
                with self._lock:
                    self._stuck[p.key] = p
                self._finish(p)
                return
        level = ", ".join(result.level) or f"baseline {registry.baseline}"
        reason = (
            f"health gate: {counts} during probation, over the limit ({self.rule}); "
            f"rolled back {', '.join(result.versions)}, level now {level}"
        )
        log.warning(
            "health gate: rolled back patch %s: %s in %.1f s of probation, over the limit "
            "(%s); rolled back %s; level now %s",
            p.version,
            counts,
            time.monotonic() - p.started,
            self.rule,
            ", ".join(result.versions),
            level,
        )
        registry.plugins.notify(
            "hotpatch_rejected", version=p.version, source=WHO, reason=reason, who=WHO
        )
        self._finish(p)

    def _confirm(self, p: _Probation) -> None:
        with self._lock:
            if self._probations.get(p.key) is not p:
                return
        p.stop()
        if p.version in p.registry.level:
            log.info(
                "health gate: patch %s passed probation: %s in %.1f s; no longer watched",
                p.version,
                p.describe(),
                self.window_s,
            )
        else:  # replaced by a cumulative patch meanwhile
            log.info(
                "health gate: patch %s is no longer applied at the end of its probation (%s)",
                p.version,
                p.describe(),
            )
        self._finish(p)

    def _finish(self, p: _Probation) -> None:
        p.stop()
        with self._lock:
            if self._probations.get(p.key) is p:
                del self._probations[p.key]
            if not self._probations:
                self._idle.notify_all()
