"""The level a journal records, applied again: as a process starts, and to catch up at a hand-over.

The registry lends the steps (``ReplaySteps``); the journal is read through its
``Recording``, never written: a replay that fails is undone in memory only, so
that the journal keeps the level it recorded (the cause can be fixed and the
level replayed).

Every recorded patch is loaded again, in order (compiled once per content and
interpreter: ``_codecache``; its file runs, and its
migrations run when it is applied, with the level below it live). Most of a long
level is patches that replace functions a later patch replaces again; such a
patch only changes its functions' code and depends on nothing below it (no
migration, no name brought into a module, no class, nested or cumulative
target, no strict quiescence: ``stands_alone``). In the run of such patches at
the top of the level, only the top patch of each target is planned and switched
in; the others go on the level unbuilt, and ``Deferred`` builds them -- plans
made against the level below them, which change nothing live -- when a
rollback, ``installed()`` or a patch that needs the whole level asks for them.
What runs, what a rollback to any level brings back and what each version
installed are what an apply of every patch in turn gives.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from hotpatch._codecache import CodeCache
from hotpatch._errors import JournalError, PatchError
from hotpatch._journal_format import JournalEntry
from hotpatch._loader import load_patch_text
from hotpatch._patch import Patch
from hotpatch._plan import NO_KEYS, Applied, Plan
from hotpatch._recording import Recording
from hotpatch._results import HistoryEntry
from hotpatch._switch import Change, Key
from hotpatch._targets import is_nested

__all__ = ["Deferred", "ReplaySteps", "replay", "resync", "stands_alone"]


@dataclass(frozen=True, slots=True)
class ReplaySteps:
    """What a replay does to the registry: each a step of its own level."""

    history: Callable[[Iterable[HistoryEntry]], None]  # the recorded history, as it stands
    apply: Callable[[Patch], None]  # one patch, as a process that has not served yet
    to_baseline: Callable[[], None]  # every patch undone (the journal muted meanwhile)
    # The run at the top of the level: ``top(patch)`` applies a patch on top of a
    # target, ``defer(patch)`` puts one on the level unbuilt. None: every patch is
    # applied (plugins follow each apply).
    top: Callable[[Patch], None] | None = None
    defer: Callable[[Patch], None] | None = None


def replay(recording: Recording, steps: ReplaySteps) -> None:
    """Apply the level the journal records, oldest first; ``JournalError`` if one fails."""
    with _collector_held():
        _replay(recording, steps)


def _replay(recording: Recording, steps: ReplaySteps) -> None:
    state = recording.to_replay()
    if state is None:
        return
    steps.history(HistoryEntry.from_records(state.history))
    codes = CodeCache(recording.journal.path)
    codes.load()
    run: list[tuple[JournalEntry, Patch]] = []  # loaded, standing alone, not applied yet
    current: JournalEntry | None = None  # whose patch is being loaded or applied
    try:
        for entry in state.level:
            current = entry
            # The journal checked the text against its sha256 as it read it.
            patch = load_patch_text(
                entry.text, sha256=entry.sha256, path=entry.path, compiler=codes.compile
            )
            if steps.defer is not None and stands_alone(patch):
                run.append((entry, patch))
                continue
            for below_entry, below in run:  # the run under a patch that needs it live
                current = below_entry
                steps.apply(below)
            run.clear()
            current = entry
            steps.apply(patch)
        tops = _tops([patch for _, patch in run])
        for i, (run_entry, patch) in enumerate(run):
            current = run_entry
            step = steps.top if i in tops else steps.defer
            assert step is not None
            step(patch)
    except PatchError as exc:
        with recording.muted():
            steps.to_baseline()
        assert current is not None
        raise recording.failed(current, exc) from exc
    codes.save()
    recording.replayed(state)


@contextlib.contextmanager
def _collector_held() -> Iterator[None]:
    """The cyclic garbage collector off while a level is loaded, as it was after.

    A replay makes tens of objects for each patch and keeps nearly all of them
    (modules, functions, entries): the collections their number sets off would
    walk them again and again for nothing (a tenth to a fifth of a replay's
    time). Off, the objects are walked once, by the first collection after it.
    The collector is the process's: a thread that turns it off or on meanwhile
    is not followed (it is on again after the replay if it was before).
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def resync(recording: Recording, running: Sequence[Patch], steps: ReplaySteps) -> bool:
    """Bring the level to what the journal records now, if it moved on; ``True`` if so."""
    if not recording.moved_on(running):
        return False
    with recording.muted():  # undo in memory only: the journal stays as recorded
        steps.to_baseline()
        replay(recording, steps)
    return True


def stands_alone(patch: Patch) -> bool:
    """Does ``patch`` only replace functions' code, whatever the level below it?

    Its plan is then the same on any level: the functions' new versions, built
    from the originals and the replacements, nothing else. Anything more (a
    migration, a class, a nested or cumulative target, strict quiescence, a
    restart asked for, a name of the patch file a replacement could look up in
    the target module) and the patch is applied in turn.
    """
    if patch.kind != "hot" or patch.cumulative or patch.restart or patch.quiescence != "none":
        return False
    if patch.migrations or patch.unmigrations or not patch.replacements:
        return False
    own = {id(patch)} | {id(r.new) for r in patch.replacements}
    modules = sys.modules
    for replacement in patch.replacements:
        new, target = replacement.new, replacement.target
        if replacement.is_class or type(new) is not types.FunctionType or is_nested(target):
            return False
        module = modules.get(target.partition(":")[0])
        if module is None or not _only_code(new, vars(module), own):
            return False
    return True


def _only_code(new: types.FunctionType, theirs: dict[str, Any], own: set[int]) -> bool:
    """Does ``new`` look up no name of the patch file that the target module (``theirs``)
    does not hold as is? (The plan could bring it in, depending on what the module
    holds at that level.)"""
    namespace = new.__globals__
    for name in _names(new.__code__):
        value = namespace.get(name, _ABSENT)
        if value is not _ABSENT and id(value) not in own and theirs.get(name, _ABSENT) is not value:
            return False
    return True


_ABSENT = object()


def _names(code: types.CodeType) -> set[str] | tuple[str, ...]:
    """Every name ``code`` and the code nested in it could look up (a superset of globals)."""
    names: set[str] | tuple[str, ...] = code.co_names
    for const in code.co_consts:
        if type(const) is types.CodeType:  # CodeType has no subclasses
            names = {*names, *_names(const)}
    return names


def _tops(patches: Sequence[Patch]) -> set[int]:
    """The indexes of the patches that are the last to replace one of their targets."""
    last: dict[str, int] = {}
    for i, patch in enumerate(patches):
        for replacement in patch.replacements:
            last[replacement.target] = i
    return set(last.values())


class Deferred:
    """The run of patches at the top of a replayed level, some of them unbuilt.

    ``entries``: the run's entries on the level, oldest first. An unbuilt entry
    holds its patch alone; a built one (applied at the replay, or built since)
    its plan's values (``after``) -- but its ``before`` is only what was live
    when it was applied: a rollback takes the run's values from ``under()``,
    and ``settle()`` sets every ``before`` as an apply in turn would have.
    ``base`` holds each target's values from under the run.
    """

    def __init__(self, plan: Callable[[Patch, Sequence[Applied]], Plan]):
        self._plan = plan  # a plan of a patch on the given level, changing nothing
        self.entries: list[Applied] = []
        self._unbuilt: set[int] = set()
        self.base: dict[Key, Change] = {}

    @property
    def pending(self) -> bool:
        """Is an entry of the run still unbuilt?"""
        return bool(self._unbuilt)

    def applied(self, entry: Applied) -> None:
        """``entry`` was applied on top of the run."""
        self.entries.append(entry)
        for k, change in entry.before.items():
            self.base.setdefault(k, change)

    def unbuilt(self, patch: Patch) -> Applied:
        """An entry for ``patch`` on top of the run, to be built when needed."""
        entry = Applied(patch, {}, {}, NO_KEYS, (), ())
        self.entries.append(entry)
        self._unbuilt.add(id(entry))
        return entry

    def build(self, entry: Applied, below: Sequence[Applied]) -> None:
        """Plan ``entry``'s patch on the level ``below`` it, if not done yet."""
        if id(entry) not in self._unbuilt:
            return
        try:
            plan = self._plan(entry.patch, below)
        except PatchError as exc:
            raise self._cannot(entry, str(exc)) from exc
        strays = [k for k in plan.changes if k not in self.base]
        if plan.injected or plan.nested or plan.settles or plan.migrations or strays:
            raise self._cannot(entry, "its plan now changes more than its functions' code")
        entry.after = dict(plan.changes)
        entry.functions = tuple(plan.functions)
        entry.caches = tuple(plan.caches)
        self._unbuilt.discard(id(entry))

    def _cannot(self, entry: Applied, why: str) -> JournalError:
        msg = (
            f"patch {entry.patch.version}, replayed from the journal under a later patch, "
            f"cannot be built again ({why}); nothing changed. Roll back to the baseline, "
            "or to a version above it"
        )
        return JournalError(msg, patch=entry.patch.version)

    def under(self, stack: Sequence[Applied], popped: Sequence[Applied]) -> dict[Key, Change]:
        """What a rollback to ``stack`` (popping ``popped``) puts back of the run's targets.

        Each value the run's popped entries changed, at the level rolled back to:
        that of the top entry of ``stack`` that changed it (built if it was not),
        else its value under the run. Changes nothing live.
        """
        mine = {id(e) for e in self.entries}
        wanted = {k for e in popped if id(e) in mine for k in e.after}
        values: dict[Key, Change] = {}
        for i in range(len(stack) - 1, -1, -1):
            entry = stack[i]
            if len(values) == len(wanted) or id(entry) not in mine:
                break  # all found, or under the run
            self.build(entry, stack[:i])
            after = entry.after  # a mapping made on each read: made once
            for k in after.keys() & wanted:
                values.setdefault(k, after[k])
        for k in wanted - values.keys():
            values[k] = self.base[k]
        return values

    def final(self, stack: Sequence[Applied], popped: Sequence[Applied]) -> dict[Key, Change]:
        """What a rollback to ``stack`` popping ``popped`` (newest first) puts back.

        The oldest popped entry's values win, as for any rollback; the run's
        entries count by ``under()`` instead of their ``before``.
        """
        mine = {id(e) for e in self.entries} if self._takes(popped) else set()
        final: dict[Key, Change] = {}
        run: dict[Key, Change] | None = None
        for entry in popped:
            if id(entry) not in mine:
                final.update(entry.before)
            elif run is None:
                run = self.under(stack, popped)
                final.update(run)
        return final

    def forget(self, popped: Iterable[Applied]) -> bool:
        """``popped`` are off the level (a rollback went through); ``False`` if none is left."""
        if not self._takes(popped):  # all above the run: nothing to walk
            return bool(self.entries)
        gone = {id(e) for e in popped}
        self.entries = [e for e in self.entries if id(e) not in gone]
        self._unbuilt -= gone
        return bool(self.entries)

    def _takes(self, popped: Iterable[Applied]) -> bool:
        """Does a rollback popping ``popped`` take entries of the run? The entries are in
        stack order, so if it takes any, it takes the top one: a look at ``popped`` alone."""
        return bool(self.entries) and any(e is self.entries[-1] for e in popped)

    def build_in(self, entry: Applied, stack: Sequence[Applied]) -> None:
        """Build ``entry`` (one of ``stack``) on the level under it, if not done yet."""
        if id(entry) in self._unbuilt:
            self.build(entry, stack[: next(i for i, e in enumerate(stack) if e is entry)])

    def settle(self, stack: Sequence[Applied]) -> None:
        """Build every entry and set its ``before`` as an apply in turn would have."""
        for i, entry in enumerate(stack):
            if id(entry) in self._unbuilt:
                self.build(entry, stack[:i])
        values = dict(self.base)
        for entry in self.entries:
            after = entry.after
            entry.before = {k: values[k] for k in after}
            values.update(after)
        self.entries, self._unbuilt = [], set()
