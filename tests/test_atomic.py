"""All-or-nothing apply: a failure at any step leaves nothing of the patch behind.

Each test makes one step of ``apply`` fail (building a trampoline, resolving or
checking a later target, a migration, a plugin veto, the journal write, the
switch itself) and compares everything the patch could have touched with a
snapshot taken before: function attributes, module and class namespaces, the
registry's level and history, and the journal's bytes.
"""

from __future__ import annotations

import errno
import sys
import threading
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import hotpatch
import hotpatch._journal
import hotpatch._plan

MODULE_A = '''
EVENTS = []
FROZEN = True


def f(x, y=1):
    "f, original."
    return ("f", "old", x, y)


def g(x, *, k=2):
    return ("g", "old", x, k)


class Meta(type):
    """Refuses to set one attribute, the way a 'frozen class' metaclass would."""

    def __setattr__(cls, name, value):
        if name == "refused" and FROZEN:
            raise RuntimeError(f"{cls.__name__}.{name} cannot be set")
        super().__setattr__(name, value)


class C(metaclass=Meta):
    refused = 1

    def m(self):
        return ("m", "old")
'''

MODULE_B = """
def h():
    return ("h", "old")


def h2(a, b=0):
    return ("h2", "old")
"""

# Applied before each test, so f already runs a patched version, the journal exists,
# and the failing patch must come back to 1.0.1 -- not to the original.
BASE_PATCH = """
from hotpatch import Patch
patch = Patch(version="1.0.1", baseline="1.0")

@patch.replace("{a}:f")
def f(x, y=1):
    return ("f", "v1", x, y)
"""

# The patch that fails. Its targets, in order: a:f, a:g, b:h, a:C (a new member, a
# patched method, and optionally a value the metaclass refuses), then {later}; it
# brings a global (SCALE) into module a, and migrates both modules.
FAILING_PATCH = """
from hotpatch import Patch
from {a} import Meta
patch = Patch(version="1.0.2", baseline="1.0")
SCALE = 3


@patch.replace("{a}:f")
def f(x, y=1):
    "f, patched."
    return ("f", "new", x * SCALE, y)


@patch.replace("{a}:g")
def g(x, *, k=2):
    return ("g", "new", x, k)


@patch.replace("{b}:h")
def h():
    return ("h", "new")


@patch.replace_class("{a}:C")
class C(metaclass=Meta):
    def extra(self):
        return "extra"

    def m(self):
        return ("m", "new")
{refused}

{later}


@patch.migrate("{a}")
def up_a(module):
    module.EVENTS.append("migrate a")
    module.MIGRATED = True


@patch.unmigrate("{a}")
def down_a(module):
    module.EVENTS.append("unmigrate a")
    del module.MIGRATED


@patch.migrate("{b}")
def up_b(module):
    import {a}
    {a}.EVENTS.append("migrate b")
    {fail_b}
    module.MIGRATED_B = True  # no unmigrate (unless DOWN_B): only a successful apply leaves it
{down_b}
"""

DOWN_B = """
@patch.unmigrate("{b}")
def down_b(module):
    import {a}
    {a}.EVENTS.append("unmigrate b")
    del module.MIGRATED_B
"""

MISSING_TARGET = """
@patch.replace("{a}:missing")
def missing():
    return None
"""

BAD_SIGNATURE = """
@patch.replace("{b}:h2")
def h2(a):  # drops the optional b: old callers of h2(1, 2) would break
    return ("h2", "new")
"""

# A member set whole (class data would be refused before the switch): Meta refuses it.
REFUSED = (
    "    class refused:  # Meta refuses this assignment: the switch fails half-way\n"
    "        VALUE = 2"
)


@dataclass
class World:
    a: types.ModuleType
    b: types.ModuleType
    registry: hotpatch.Registry
    journal: Path
    write_patch: Callable[[str], Path]

    def failing_patch(
        self,
        *,
        later: str = "",
        refused: bool = False,
        fail_b: bool = False,
        down_b: bool = False,
    ) -> hotpatch.Patch:
        names = {"a": self.a.__name__, "b": self.b.__name__}
        text = FAILING_PATCH.format(
            **names,
            later=later.format(**names),
            refused=REFUSED if refused else "",
            fail_b='raise ValueError("b cannot migrate")' if fail_b else "",
            down_b=DOWN_B.format(**names) if down_b else "",
        )
        return hotpatch.load_patch(self.write_patch(text))

    @property
    def functions(self) -> list[types.FunctionType]:
        return [self.a.f, self.a.g, self.b.h, self.b.h2, self.a.C.m]

    def calls(self) -> list[object]:
        return [self.a.f(1), self.a.g(1), self.b.h(), self.b.h2(1, 2), self.a.C().m()]

    def snapshot(self) -> dict[str, Any]:
        """Everything the failing patch could touch, by identity where identity matters."""
        return {
            "functions": [
                (
                    func.__code__,
                    func.__defaults__,
                    func.__kwdefaults__,
                    func.__doc__,
                    func.__annotations__,
                    dict(func.__dict__),
                )
                for func in self.functions
            ],
            "modules": [dict(vars(self.a)), dict(vars(self.b))],
            "classes": [dict(vars(self.a.C))],
            "level": self.registry.level,
            "patches": self.registry.patches,
            "history": self.registry.history,
            "journal": self.journal.read_bytes(),
        }


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Namespaces hold the very same objects; the registry and journal are equal."""
    for name in ("functions",):
        for old, new in zip(before[name], after[name], strict=True):
            assert [id(v) for v in old[:5]] == [id(v) for v in new[:5]], old
            assert old[5].keys() == new[5].keys()
            assert all(old[5][k] is new[5][k] for k in old[5])
    for name in ("modules", "classes"):
        for old, new in zip(before[name], after[name], strict=True):
            assert old.keys() == new.keys(), set(old.keys()) ^ set(new.keys())
            changed = [k for k in old if old[k] is not new[k]]
            assert changed == []
    assert before["level"] == after["level"]
    assert all(x is y for x, y in zip(before["patches"], after["patches"], strict=True))
    assert before["history"] == after["history"]
    assert before["journal"] == after["journal"]


@pytest.fixture
def world(
    make_module: Callable[[str], types.ModuleType],
    write_patch: Callable[[str], Path],
    tmp_path: Path,
) -> Iterator[Callable[..., World]]:
    """``world(plugins=...)``: two modules, a journaled registry with 1.0.1 applied."""
    worlds: list[World] = []

    def make(plugins: tuple[object, ...] = ()) -> World:
        a, b = make_module(MODULE_A), make_module(MODULE_B)
        journal = tmp_path / "journal.json"
        registry = hotpatch.Registry("1.0", journal=journal, plugins=plugins)
        worlds.append(World(a, b, registry, journal, write_patch))
        registry.apply(hotpatch.load_patch(write_patch(BASE_PATCH.format(a=a.__name__))))
        assert journal.exists()
        return worlds[-1]

    yield make
    for w in worlds:
        w.a.FROZEN = False
        if w.registry.level:
            w.registry.rollback(to="1.0")


OLD_CALLS = [("f", "v1", 1, 1), ("g", "old", 1, 2), ("h", "old"), ("h2", "old"), ("m", "old")]
NEW_CALLS = [("f", "new", 3, 1), ("g", "new", 1, 2), ("h", "new"), ("h2", "old"), ("m", "new")]


def assert_untouched(w: World, before: dict[str, Any]) -> None:
    assert_same(before, w.snapshot())
    assert w.calls() == OLD_CALLS
    assert not hasattr(w.a, "MIGRATED")
    assert not hasattr(w.b, "MIGRATED_B")
    assert not hasattr(w.a.C, "extra")
    assert w.a.C.refused == 1


def assert_still_works(w: World, before: dict[str, Any]) -> None:
    """The failure left nothing half-recorded: the same patch, fixed, goes in and out."""
    w.a.EVENTS.clear()
    w.registry.apply(w.failing_patch())
    assert w.calls() == NEW_CALLS
    assert w.registry.level == ("1.0.1", "1.0.2")
    w.registry.rollback()
    assert w.calls() == OLD_CALLS
    assert w.a.EVENTS == ["migrate a", "migrate b", "unmigrate a"]
    del w.b.MIGRATED_B  # no unmigrate for b: rollback leaves it, as documented
    after = w.snapshot()
    assert_same(before, {**after, "history": before["history"], "journal": before["journal"]})


# -- (a) building a trampoline fails ---------------------------------------------------


@pytest.mark.parametrize("nth", [1, 4])  # f's, or the class method's (the 4th target)
def test_trampoline_build_failure_changes_nothing(
    world: Callable[..., World], monkeypatch: pytest.MonkeyPatch, nth: int
) -> None:
    w = world()
    patch = w.failing_patch()
    real_build = hotpatch._plan.build
    calls: list[str] = []

    def failing_build(function: types.FunctionType, *args: Any, **kwargs: Any) -> Any:
        calls.append(function.__qualname__)
        if len(calls) == nth:
            raise RuntimeError(f"cannot build the trampoline of {function.__qualname__}")
        return real_build(function, *args, **kwargs)

    before = w.snapshot()
    monkeypatch.setattr(hotpatch._plan, "build", failing_build)
    with pytest.raises(RuntimeError, match="cannot build the trampoline"):
        w.registry.apply(patch)
    assert calls == ["f", "g", "h", "C.m"][:nth]
    monkeypatch.undo()
    assert_untouched(w, before)
    assert w.a.EVENTS == []  # no migration ran
    assert_still_works(w, before)


# -- (b), (c) a later target is refused -------------------------------------------------


@pytest.mark.parametrize(
    ("later", "error", "message"),
    [
        (MISSING_TARGET, hotpatch.TargetNotFound, "missing"),
        (BAD_SIGNATURE, hotpatch.SignatureIncompatible, "h2"),
    ],
    ids=["target-not-found", "signature-incompatible"],
)
def test_later_target_refused_changes_nothing(
    world: Callable[..., World], later: str, error: type[hotpatch.PatchError], message: str
) -> None:
    w = world()
    patch = w.failing_patch(later=later)
    before = w.snapshot()
    with pytest.raises(error, match=message) as caught:
        w.registry.apply(patch)
    assert caught.value.patch == "1.0.2"
    assert caught.value.target is not None
    assert caught.value.target.endswith(message)
    assert_untouched(w, before)
    assert w.a.EVENTS == []


# -- (d) a migration raises ------------------------------------------------------------


def test_failing_migration_undoes_earlier_migrations(world: Callable[..., World]) -> None:
    w = world()
    patch = w.failing_patch(fail_b=True)
    before = w.snapshot()
    with pytest.raises(hotpatch.MigrationFailed, match="b cannot migrate") as caught:
        w.registry.apply(patch)
    assert caught.value.target == w.b.__name__
    assert isinstance(caught.value.__cause__, ValueError)
    # a migrated, b raised; a's unmigrate undid a's migration
    assert w.a.EVENTS == ["migrate a", "migrate b", "unmigrate a"]
    assert_untouched(w, before)
    assert_still_works(w, before)


# -- (e) a plugin vetoes ---------------------------------------------------------------


class Refuses:
    """Vetoes every patch touching module b, with a reason."""

    def __init__(self, module: str):
        self.module = module
        self.seen: list[str] = []

    @hotpatch.hookimpl
    def hotpatch_validate(self, patch: hotpatch.Patch, report: hotpatch.CheckReport) -> str | None:
        self.seen.append(patch.version)
        if any(t.startswith(f"{self.module}:") for t in report.targets):
            return f"no patches to {self.module} this week"
        return None


class Crashes:
    """A validate hook that raises: counts as a veto, never takes the service down."""

    @hotpatch.hookimpl
    def hotpatch_validate(self, patch: hotpatch.Patch) -> str | None:
        if patch.version == "1.0.2":
            raise LookupError("rules file missing")
        return None


class Watches:
    """Records the hooks that fire, to show no 'before apply' ran for a vetoed patch."""

    def __init__(self) -> None:
        self.events: list[str] = []

    @hotpatch.hookimpl
    def hotpatch_before_apply(self, patch: hotpatch.Patch) -> None:
        self.events.append(f"before {patch.version}")

    @hotpatch.hookimpl
    def hotpatch_rejected(self, version: str | None) -> None:
        self.events.append(f"rejected {version}")


@pytest.mark.parametrize("which", ["reason", "raises"])
def test_plugin_veto_changes_nothing(world: Callable[..., World], which: str) -> None:
    watcher = Watches()
    # The vetoing plugin needs module b's name, which exists only once the world does,
    # so it is told after construction: it vetoes by what the report names.
    refuses = Refuses("")
    plugin: object = refuses if which == "reason" else Crashes()
    w = world(plugins=(plugin, watcher))
    refuses.module = w.b.__name__
    watcher.events.clear()
    patch = w.failing_patch()
    before = w.snapshot()
    expected = "no patches to" if which == "reason" else "LookupError: rules file missing"
    with pytest.raises(hotpatch.VerificationFailed, match=expected):
        w.registry.apply(patch)
    assert watcher.events == ["rejected 1.0.2"]
    assert_untouched(w, before)
    assert w.a.EVENTS == []
    with pytest.raises(hotpatch.VerificationFailed, match=expected):
        w.registry.check(patch)  # check() consults the same plugins
    assert_same(before, w.snapshot())


# -- (f) the journal cannot be written --------------------------------------------------


def test_journal_write_failure_changes_nothing(
    world: Callable[..., World], monkeypatch: pytest.MonkeyPatch
) -> None:
    w = world()
    patch = w.failing_patch()
    before = w.snapshot()

    def refuse(self: hotpatch._journal.Journal, *args: object) -> None:
        raise hotpatch.JournalError(f"journal {self.path} cannot be written: disk full")

    monkeypatch.setattr(hotpatch._journal.Journal, "append", refuse)
    monkeypatch.setattr(hotpatch._journal.Journal, "write", refuse)  # a full disk: every write
    with pytest.raises(hotpatch.JournalError, match="disk full"):
        w.registry.apply(patch)
    monkeypatch.undo()
    assert_untouched(w, before)
    # the journal is written (as it stands) before the migrations: b's, which has no
    # unmigrate, never ran
    assert "migrate b" not in w.a.EVENTS
    assert_still_works(w, before)


def test_journal_os_error_changes_nothing(
    world: Callable[..., World], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real ``Journal.append`` whose sync fails with EIO: a JournalError, no leftovers."""
    w = world()
    patch = w.failing_patch()
    before = w.snapshot()
    real_fsync = hotpatch._journal.os.fsync

    def fsync(fd: int) -> None:
        if threading.current_thread() is threading.main_thread():
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(hotpatch._journal.os, "fsync", fsync)
    monkeypatch.setattr(hotpatch._journal.os, "fdatasync", fsync)
    with pytest.raises(hotpatch.JournalError, match="Input/output error") as caught:
        w.registry.apply(patch)
    monkeypatch.undo()
    assert isinstance(caught.value.__cause__, OSError)
    assert_untouched(w, before)
    assert sorted(p.name for p in w.journal.parent.iterdir() if "journal" in p.name) == [
        "journal.json"  # no temporary file; the record taken back out (the bytes are equal)
    ]
    assert_still_works(w, before)


# -- (g) the switch fails half-way -------------------------------------------------------


def test_switch_failing_half_way_puts_back_what_it_set(world: Callable[..., World]) -> None:
    """f, g, h, C.extra and C.m are set before Meta refuses C.refused; all go back.

    Migrations run just before the switch, so both ran here and both are undone: a
    failing switch is the one step after them, and only an unmigrate can undo one.
    """
    w = world()
    patch = w.failing_patch(refused=True, down_b=True)
    before = w.snapshot()
    with pytest.raises(RuntimeError, match=r"C\.refused cannot be set"):
        w.registry.apply(patch)
    assert_untouched(w, before)
    assert w.a.EVENTS == ["migrate a", "migrate b", "unmigrate b", "unmigrate a"]


def test_rollback_whose_switch_fails_keeps_the_level_and_the_journal(
    world: Callable[..., World],
) -> None:
    """The same half-way failure, met by a rollback: the patch stays applied, on disk too."""
    w = world()
    w.a.FROZEN = False
    w.registry.apply(w.failing_patch(refused=True, down_b=True))
    w.a.FROZEN = True
    w.a.EVENTS.clear()
    before = w.snapshot()
    with pytest.raises(RuntimeError, match=r"C\.refused cannot be set"):
        w.registry.rollback()
    assert_same(before, w.snapshot())
    assert w.calls() == NEW_CALLS
    assert (w.a.C.refused.VALUE, w.a.C().extra()) == (2, "extra")
    assert w.a.EVENTS == []  # no unmigrate ran: the code was not rolled back
    w.a.FROZEN = False
    w.registry.rollback()
    assert w.calls() == OLD_CALLS
    assert w.registry.level == ("1.0.1",)


# -- all targets switch together -------------------------------------------------------

PAIR_MODULE = """
def f():
    return "old"


def g():
    return "old"
"""

PAIR_PATCH = """
from hotpatch import Patch
patch = Patch(version="1.0.1", baseline="1.0")


@patch.replace("{m}:f")
def f():
    return "new"


@patch.replace("{m}:g")
def g():
    return "new"
"""

APPLYING, APPLIED, ROLLING, ROLLED = range(4)
OLD, NEW = ("old", "old"), ("new", "new")
ANY = {OLD, NEW, ("old", "new"), ("new", "old")}


def allowed_pairs(p0: int, p1: int) -> set[tuple[str, str]]:
    """The (f, g) results possible for a pair run between phases ``p0`` and ``p1``."""
    spans_apply = any(i % 4 == APPLYING for i in range(p0, p1 + 1))
    spans_rollback = any(i % 4 == ROLLING for i in range(p0, p1 + 1))
    if spans_apply and spans_rollback:
        return ANY
    if spans_apply:
        return {OLD, ("old", "new"), NEW}
    if spans_rollback:
        return {NEW, ("new", "old"), OLD}
    return {NEW} if p0 % 4 == APPLIED else {OLD}


def test_targets_switch_together_for_a_spinning_thread(
    make_module: Callable[[str], types.ModuleType],
    write_patch: Callable[[str], Path],
    registry: hotpatch.Registry,
) -> None:
    """A thread calls f() then g() in a loop while the patch goes in and out.

    The main thread publishes a phase before and after each apply and rollback.
    The worker reads the phase before calling f and after g returns. Allowed:

    * both reads in APPLIED: (new, new) only -- apply returned before f started,
      and no rollback had begun when g returned. Likewise ROLLED: (old, old).
    * the pair spans an apply's switch only: (old, old), (new, new), or
      (old, new) -- the transitional pair: f started before the switch and g
      after. That is allowed because the contract is about calls that *start*
      after apply returns; a call is free to run the version current when it
      started, and f's call started before. (new, old) is impossible: once f
      started on the new code, the switch was done, so g starts on it too.
    * spanning a rollback's switch only: the mirror image, (new, old) allowed.
    """
    mod = make_module(PAIR_MODULE)
    patch = hotpatch.load_patch(write_patch(PAIR_PATCH.format(m=mod.__name__)))
    f, g = mod.f, mod.g  # references taken before any patch, like callers hold
    phase = [ROLLED - 4]  # index 4 * round + step; round -1 is "before the test"
    stop = threading.Event()
    counts = dict.fromkeys(range(4), 0)
    bad: list[tuple[int, int, str, str]] = []
    errors: list[BaseException] = []

    def spin() -> None:
        try:
            while not stop.is_set():
                p0 = phase[0]
                pair = (f(), g())
                p1 = phase[0]
                if p0 == p1:
                    counts[p0 % 4] += 1
                if pair not in allowed_pairs(p0, p1):
                    bad.append((p0, p1, *pair))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def wait_for(step: int, seen: int) -> None:
        while counts[step] < seen + 20 and worker.is_alive():
            stop.wait(0.0005)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL over as often as CPython allows
    worker = threading.Thread(target=spin, name="pair-spinner")
    worker.start()
    try:
        for round_ in range(40):
            base = 4 * round_
            wait_for(ROLLED, counts[ROLLED])
            phase[0] = base + APPLYING
            registry.apply(patch)
            phase[0] = base + APPLIED
            wait_for(APPLIED, counts[APPLIED])
            phase[0] = base + ROLLING
            registry.rollback()
            phase[0] = base + ROLLED
    finally:
        stop.set()
        worker.join()
        sys.setswitchinterval(interval)
    assert errors == []
    assert bad == []
    assert counts[APPLIED] >= 40 * 20
    assert counts[ROLLED] >= 40 * 20
