"""``replace_class`` on the classes users write: slots, dataclasses, enums, and the rest (SPEC §11).

Each test reproduces what a user would do: a real module on disk, a real patch
file, references taken before the patch, then rollback and a second apply.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from test_supervisor import Supervised, request, supervise, wait_for
from test_supervisor_patches import drop, journal_level, result_of, under_load, watching

import hotpatch

__all__ = ["supervise"]  # the fixture, from test_supervisor

PatchWriter = Callable[..., Path]
HEADER = "from hotpatch import Patch\npatch = Patch(version={version!r}, baseline='1.0')\n"


def load(write_patch: PatchWriter, body: str, version: str = "1.0.1") -> hotpatch.Patch:
    """A real patch file: the standard header, then ``body`` (dedented)."""
    return hotpatch.load_patch(write_patch(HEADER.format(version=version) + textwrap.dedent(body)))


# -- __slots__ ------------------------------------------------------------------------

SLOTTED = """
from dataclasses import dataclass

class Point:
    __slots__ = ("x", "y")

    def __init__(self, x, y):
        self.x = x
        self.y = y

    def total(self):
        return self.x + self.y

@dataclass(slots=True)
class Line:
    a: int
    b: int = 2

    def length(self):
        return self.b - self.a
"""


def test_slots_methods_patch_hot_and_keep_the_slot_descriptors(make_module, write_patch, registry):
    mod = make_module(SLOTTED)
    point, line = mod.Point(1, 2), mod.Line(1, 5)
    total, length = point.total, mod.Line.length  # a bound method, a plain function
    descriptors = {
        name: vars(cls)[name] for cls, name in ((mod.Point, "x"), (mod.Point, "y"), (mod.Line, "a"))
    }
    patch = load(
        write_patch,
        f"""
        from dataclasses import dataclass

        @patch.replace_class("{mod.__name__}:Point")
        class Point:
            __slots__ = ("x", "y")

            def total(self):
                return (self.x + self.y) * 10

        @patch.replace_class("{mod.__name__}:Line")
        @dataclass(slots=True)
        class Line:
            a: int
            b: int = 2

            def length(self):
                return (self.b - self.a) * 10
        """,
    )
    for attempt in range(2):  # apply, roll back, apply again
        report = registry.check(patch)
        assert report.hot, report.reasons
        registry.apply(patch)
        for (cls, name), descriptor in zip(
            ((mod.Point, "x"), (mod.Point, "y"), (mod.Line, "a")), descriptors.values(), strict=True
        ):
            assert vars(cls)[name] is descriptor, (attempt, name)
        assert point.total() == 30
        assert total() == 30
        assert mod.Point(2, 3).total() == 50
        assert line.length() == 40
        assert length(line) == 40
        assert mod.Line(0).length() == 20
        assert line == mod.Line(1, 5)
        point.x = 7
        assert point.total() == 90
        point.x = 1
        registry.rollback()
        assert point.total() == 3
        assert total() == 3
        assert line.length() == 4
        assert mod.Line(0) == mod.Line(0, 2)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("__slots__ = ('x', 'y')", "__slots__ = ('x', 'y', 'z')"),
        ("__slots__ = ('x', 'y')", "__slots__ = ('x',)"),
        ("__slots__ = ('x', 'y')", "__slots__ = ('y', 'x')"),
        ("__slots__ = ('x', 'y')", ""),
    ],
    ids=["added", "removed", "reordered", "dropped"],
)
def test_a_changed_slot_list_is_restart_required_from_check_and_apply(
    make_module, write_patch, registry, old, new
):
    mod = make_module(
        f"""
        class Point:
            {old}

            def __init__(self, x, y):
                self.x = x
                self.y = y

            def total(self):
                return self.x + self.y
        """
    )
    point = mod.Point(1, 2)
    before = dict(vars(mod.Point))
    patch = load(
        write_patch,
        f"""
        @patch.replace_class("{mod.__name__}:Point")
        class Point:
            {new}

            def total(self):
                return 0
        """,
    )
    report = registry.check(patch)
    assert not report.hot
    assert any("__slots__" in r and f"{mod.__name__}:Point" in r for r in report.reasons)
    with pytest.raises(hotpatch.RestartRequired) as info:
        registry.apply(patch)
    assert info.value.reasons == report.reasons
    assert info.value.patch == "1.0.1"
    assert dict(vars(mod.Point)) == before
    assert point.total() == 3
    assert registry.level == ()


LAYOUT = """
class Point:
    __slots__ = ("x", "y")

    def __init__(self, x, y):
        self.x = x
        self.y = y

    def total(self):
        return self.x + self.y

def make(*args):
    return Point(*args).total()
"""

WIDER = """
@patch.replace_class("{name}:Point")
class Point:
    __slots__ = ("x", "y", "z")

    def __init__(self, x, y, z=0):
        self.x = x
        self.y = y
        self.z = z

    def total(self):
        return self.x + self.y + self.z

    def __repr__(self):
        return f"Point({{self.x}}, {{self.y}}, {{self.z}})"
"""


def test_a_changed_slot_list_goes_in_through_a_restart_and_the_class_works(
    make_module, write_patch, tmp_path
):
    mod = make_module(LAYOUT)
    original = mod.Point
    path = write_patch(
        HEADER.format(version="1.0.1") + textwrap.dedent(WIDER).format(name=mod.__name__)
    )
    journal = tmp_path / "journal.json"
    first = hotpatch.Registry("1.0", journal=journal)
    with pytest.raises(hotpatch.RestartRequired):
        first.apply(hotpatch.load_patch(path))
    # The new process of the restart: the same code, then the patch, before serving.
    result = first.apply(hotpatch.load_patch(path), restarting=True)
    assert "rebuilt" in result.modes[f"{mod.__name__}:Point"]
    assert mod.Point is not original
    assert mod.Point.__slots__ == ("x", "y", "z")
    assert mod.Point(1, 2, 3).total() == 6
    assert mod.make(1, 2) == 3  # the module's own functions build the new class
    assert mod.make(1, 2, 4) == 7
    assert repr(mod.Point(1, 2)) == "Point(1, 2, 0)"
    # A hot patch on top reaches the new class.
    on_top = write_patch(
        HEADER.format(version="1.0.2")
        + f"@patch.replace('{mod.__name__}:Point.total')\ndef total(self):\n"
        + "    return (self.x + self.y + self.z) * 100\n"
    )
    first.apply(hotpatch.load_patch(on_top))
    assert mod.make(1, 2, 3) == 600
    first.rollback()
    assert mod.make(1, 2, 3) == 6
    # This process ends (undone in memory only); the next one replays the journal.
    first.detach_journal()
    first.rollback(to="1.0")
    assert mod.Point is original
    assert mod.make(1, 2) == 3
    second = hotpatch.Registry("1.0", journal=journal)
    try:
        assert second.level == ("1.0.1",)
        assert mod.Point is not original
        assert mod.make(1, 2, 4) == 7
    finally:
        second.rollback(to="1.0")
    assert mod.Point is original


def test_a_layout_change_refuses_a_restart_that_finds_instances_of_the_old_class(
    make_module, write_patch, registry
):
    mod = make_module(LAYOUT)
    kept = mod.Point(1, 2)  # made before the patch: at import, or from preserved state
    patch = load(write_patch, textwrap.dedent(WIDER).format(name=mod.__name__))
    with pytest.raises(hotpatch.NotPatchable) as info:
        registry.apply(patch, restarting=True)
    assert info.value.target == f"{mod.__name__}:Point"
    assert "1 instance" in str(info.value)
    assert "hotpatch.ready()" in str(info.value)
    assert "baseline" in str(info.value)
    assert kept.total() == 3
    assert registry.level == ()


def test_a_layout_change_of_a_class_with_subclasses_is_refused_by_check_and_apply(
    make_module, write_patch, registry
):
    mod = make_module(LAYOUT + "\nclass Point3(Point):\n    __slots__ = ('z',)\n")
    patch = load(write_patch, textwrap.dedent(WIDER).format(name=mod.__name__))
    for attempt in (registry.check, registry.apply):
        with pytest.raises(hotpatch.NotPatchable) as info:
            attempt(patch)
        assert info.value.target == f"{mod.__name__}:Point"
        assert "Point3" in str(info.value)
        assert "baseline" in str(info.value)
    with pytest.raises(hotpatch.NotPatchable):
        registry.apply(patch, restarting=True)
    assert registry.level == ()


SLOTS_THROUGH_A_RESTART = """
from hotpatch import Patch
patch = Patch(version="1.0.1", baseline="1.0")

@patch.replace_class("counter_logic:Label")
class Label:
    __slots__ = ("text", "suffix")

    def __init__(self, text, suffix="!"):
        self.text = text
        self.suffix = suffix

    def render(self):
        return self.text + self.suffix

@patch.replace("counter_logic:tag")
def tag():
    return Label("restarted", "+slots").render()
"""


@pytest.mark.slow
def test_a_changed_slot_list_under_the_supervisor_serves_after_the_restart(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    folder, supervised = watching(supervise, tmp_path)
    first = supervised.child_pid
    with under_load(supervised) as load:
        drop(folder, "slots-1.0.1.py", SLOTS_THROUGH_A_RESTART)
        result = result_of(folder, "slots-1.0.1.py", supervised)
        assert result["dir"] == "applied", result
        assert result["via"] == "restart"
        assert "__slots__ change" in result["reason"]
        new_pid = result["restart"]["new_pid"]
        assert new_pid != first
        wait_for(lambda: load.served_by(new_pid), "a request to the new process")
        assert request(supervised.address, "/get")["tag"] == "restarted+slots"
        assert journal_level(folder / ".journal.json") == ["1.0.1"]
        # A plain restart replays the journal: the class is built again there too.
        outcome = supervised.restart()
        assert outcome["ok"], outcome
        wait_for(lambda: load.served_by(outcome["new_pid"]), "a request to the third process")
        assert request(supervised.address, "/get")["tag"] == "restarted+slots"
    load.check(request(supervised.address, "/get")["counters"])


# -- enums ----------------------------------------------------------------------------

ENUMS = """
import enum

class Color(enum.Enum):
    RED = 1
    GREEN = 2

    def label(self):
        return self.name.lower()

class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2

    def label(self):
        return self.name.lower()

class Mode(enum.StrEnum):
    READ = "r"
    WRITE = "w"

    def label(self):
        return self.name.lower()

class Perm(enum.Flag):
    R = 1
    W = 2

    def label(self):
        return str(self.name).lower()

DEFAULT = Color.RED
"""

ENUM_PATCH = """
@patch.replace_class("{name}:{cls}")
class {cls}(enum.{base}):
{members}

    def label(self):
        return str(self.name).upper() + "!"
"""

KINDS = {
    "Color": ("Enum", {"RED": "1", "GREEN": "2"}),
    "Level": ("IntEnum", {"LOW": "1", "HIGH": "2"}),
    "Mode": ("StrEnum", {"READ": "'r'", "WRITE": "'w'"}),
    "Perm": ("Flag", {"R": "1", "W": "2"}),
}


def enum_patch(write_patch: PatchWriter, name: str, cls: str, members: dict[str, str]) -> Path:
    base = KINDS[cls][0]
    body = "\n".join(f"    {k} = {v}" for k, v in members.items())
    text = "import enum\n" + textwrap.dedent(ENUM_PATCH).format(
        name=name, cls=cls, base=base, members=body
    )
    return write_patch(HEADER.format(version="1.0.1") + text)


@pytest.mark.parametrize("cls", list(KINDS))
def test_enum_methods_patch_hot_through_members_taken_before(
    make_module, write_patch, registry, cls
):
    mod = make_module(ENUMS)
    enum_cls = getattr(mod, cls)
    first = next(iter(enum_cls))
    bound = first.label
    before = {name: (m, m.value) for name, m in enum_cls.__members__.items()}
    patch = hotpatch.load_patch(enum_patch(write_patch, mod.__name__, cls, KINDS[cls][1]))
    for _ in range(2):  # apply, roll back, apply again
        report = registry.check(patch)
        assert report.hot, report.reasons
        assert report.names == ()  # nothing of the enum machinery lands in the module
        registry.apply(patch)
        assert getattr(mod, cls) is enum_cls
        assert first.label() == bound() == f"{first.name}!"
        assert enum_cls(first.value) is first
        assert {n: (m, m.value) for n, m in enum_cls.__members__.items()} == before
        registry.rollback()
        assert bound() == first.name.lower()
        assert {n: (m, m.value) for n, m in enum_cls.__members__.items()} == before
    assert not hasattr(mod, "EJECT")
    assert not hasattr(mod, "Flag")


@pytest.mark.parametrize("cls", list(KINDS))
@pytest.mark.parametrize("change", ["added", "removed", "changed", "none"])
def test_enum_member_changes_are_restart_required_from_check_and_apply(
    make_module, write_patch, registry, cls, change
):
    mod = make_module(ENUMS)
    enum_cls = getattr(mod, cls)
    members = dict(KINDS[cls][1])
    first, second = list(members)
    if change == "added":
        members["EXTRA"] = "'x'" if cls == "Mode" else "4"
    elif change == "removed":
        del members[second]
    elif change == "changed":
        members[second] = "'z'" if cls == "Mode" else "8"
    else:
        members = {}
    patch = hotpatch.load_patch(enum_patch(write_patch, mod.__name__, cls, members))
    report = registry.check(patch)
    assert not report.hot
    (reason,) = report.reasons
    assert f"{mod.__name__}:{cls}" in reason
    assert "enum members change" in reason
    with pytest.raises(hotpatch.RestartRequired) as info:
        registry.apply(patch)
    assert info.value.reasons == report.reasons
    assert info.value.patch == "1.0.1"
    assert registry.level == ()
    assert getattr(mod, cls)[first].label() == first.lower()
    assert list(enum_cls.__members__) == list(KINDS[cls][1])


def test_enum_member_changes_go_in_through_a_restart(make_module, write_patch, tmp_path):
    mod = make_module(ENUMS)
    original = mod.Color
    path = enum_patch(write_patch, mod.__name__, "Color", {"RED": "1", "GREEN": "2", "BLUE": "3"})
    registry = hotpatch.Registry("1.0", journal=tmp_path / "journal.json")
    result = registry.apply(hotpatch.load_patch(path), restarting=True)
    try:
        assert "rebuilt" in result.modes[f"{mod.__name__}:Color"]
        assert mod.Color is not original
        assert [m.name for m in mod.Color] == ["RED", "GREEN", "BLUE"]
        assert mod.Color(3).label() == "BLUE!"
        assert mod.DEFAULT is mod.Color.RED  # the module's constant follows its member
        assert isinstance(mod.Color.RED, mod.Color)
    finally:
        registry.rollback()
    assert mod.Color is original
    assert mod.DEFAULT is original.RED


def test_an_enum_member_held_elsewhere_refuses_the_restart(make_module, write_patch, registry):
    mod = make_module(ENUMS + "\ndef paint(color=Color.GREEN):\n    return color\n")
    path = enum_patch(write_patch, mod.__name__, "Color", {"RED": "1", "GREEN": "2", "BLUE": "3"})
    with pytest.raises(hotpatch.NotPatchable) as info:
        registry.apply(hotpatch.load_patch(path), restarting=True)
    assert info.value.target == f"{mod.__name__}:Color"
    assert "tuple" in str(info.value)  # the default arguments
    assert registry.level == ()
    assert mod.paint() is mod.Color.GREEN


# -- members under decorators -------------------------------------------------------------

DECORATED = """
import functools

calls = []

def logged(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        calls.append(func.__name__)
        return func(*args, **kwargs)
    return wrapper

def other(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)
    return wrapper

class Cart:
    @logged
    def total(self):
        return 1
"""


def test_a_method_under_the_same_decorator_patches_the_function_it_wraps(
    make_module, write_patch, registry
):
    mod = make_module(DECORATED)
    cart = mod.Cart()
    wrapper = vars(mod.Cart)["total"]
    patch = load(
        write_patch,
        f"""
        from {mod.__name__} import logged

        @patch.replace_class("{mod.__name__}:Cart")
        class Cart:
            @logged
            def total(self):
                return 2
        """,
    )
    report = registry.check(patch)
    assert report.hot, report.reasons
    registry.apply(patch)
    assert vars(mod.Cart)["total"] is wrapper  # the wrapper stays, once
    assert cart.total() == 2
    assert mod.calls == ["total"]  # logged once: not wrapped twice
    registry.rollback()
    assert cart.total() == 1


def test_a_method_under_another_decorator_is_not_hot(make_module, write_patch, registry):
    mod = make_module(DECORATED)
    cart = mod.Cart()
    patch = load(
        write_patch,
        f"""
        from {mod.__name__} import other

        @patch.replace_class("{mod.__name__}:Cart")
        class Cart:
            @other
            def total(self):
                return 2
        """,
    )
    (reason,) = registry.check(patch).reasons
    assert f"{mod.__name__}:Cart" in reason
    assert "the decorators of total change from ['logged.<locals>.wrapper']" in reason
    assert "['other.<locals>.wrapper']" in reason
    with pytest.raises(hotpatch.RestartRequired):
        registry.apply(patch)
    assert cart.total() == 1


def test_an_abc_keeps_its_abstract_methods_and_registrations(make_module, write_patch, registry):
    mod = make_module(
        """
        import abc

        class Shape(abc.ABC):
            @abc.abstractmethod
            def area(self): ...

            def describe(self):
                return "old"

        class Circle:
            pass

        Shape.register(Circle)
        """
    )
    patch = load(
        write_patch,
        f"""
        import abc

        @patch.replace_class("{mod.__name__}:Shape")
        class Shape(abc.ABC):
            def describe(self):
                return "new"
        """,
    )
    assert registry.check(patch).hot
    registry.apply(patch)
    assert isinstance(mod.Circle(), mod.Shape)  # the ABC's registry is the running class's
    assert mod.Shape.__abstractmethods__ == frozenset({"area"})
    with pytest.raises(TypeError, match="abstract"):
        mod.Shape()
    assert mod.Shape.describe(None) == "new"
    registry.rollback()
    assert isinstance(mod.Circle(), mod.Shape)
    assert mod.Shape.describe(None) == "old"


# -- class data -------------------------------------------------------------------------

STATEFUL = """
class Counter:
    count = 0
    seen = {}
    LIMIT = 5

    def hit(self, key):
        Counter.count += 1
        Counter.seen[key] = Counter.count
        return Counter.count
"""


@pytest.mark.parametrize(
    "case",
    [("count", "0", "3"), ("seen", "{}", "{'a': 1, 'b': 2, 'c': 3}"), ("LIMIT", "7", "5")],
    ids=["counter", "registry", "constant"],
)
def test_class_data_the_running_class_holds_is_never_overwritten(
    make_module, write_patch, registry, case
):
    """A patch class saying ``count = 0`` would reset what the service counted: refused."""
    attr, patch_value, running = case
    mod = make_module(STATEFUL)
    for key in "abc":
        mod.Counter().hit(key)
    values = {"count": "3", "seen": "{'a': 1, 'b': 2, 'c': 3}", "LIMIT": "5", attr: patch_value}
    body = "".join(f"    {name} = {value}\n" for name, value in values.items())
    patch = load(
        write_patch,
        f'@patch.replace_class("{mod.__name__}:Counter")\nclass Counter:\n{body}'
        "    def hit(self, key):\n        return -1\n",
    )
    seen = mod.Counter.seen
    for attempt in (registry.check, registry.apply):
        with pytest.raises(hotpatch.NameConflict) as info:
            attempt(patch)
        message = str(info.value)
        assert info.value.target == f"{mod.__name__}:Counter.{attr}"
        assert f"holds {running} and the patch class says {patch_value};" in message
        assert "leave it out of the patch class" in message
        assert "@patch.migrate" in message
    assert registry.level == ()
    assert (mod.Counter.count, mod.Counter.seen, mod.Counter.LIMIT) == (3, seen, 5)
    assert mod.Counter.seen is seen
    assert mod.Counter().hit("d") == 4  # the old code, unpatched


def test_a_sentinel_restated_is_refused_saying_it_is_another_object_of_the_same_repr(
    make_module, write_patch, registry
):
    """A sentinel made anew by the patch class (``__not_given = Marker()``, as
    sortedcontainers' ``SortedDict``) shows as the running one does: the refusal says
    why two values that read the same differ, and how to take the running one."""
    source = """
    class Marker:
        def __repr__(self):
            return "<not-given>"

    class Table:
        _missing = Marker()

        def pop(self, key, default=_missing):
            return default
    """
    mod = make_module(source)
    patch = load(
        write_patch,
        f"""
        from {mod.__name__} import Marker

        @patch.replace_class("{mod.__name__}:Table")
        class Table:
            _missing = Marker()

            def pop(self, key, default=None):
                return default
        """,
    )
    with pytest.raises(hotpatch.NameConflict) as info:
        registry.check(patch)
    message = str(info.value)
    assert "another Marker object with the same repr, <not-given>" in message, message
    assert f"_missing = {mod.__name__}.Table._missing" in message


def test_class_data_equal_to_the_running_value_keeps_the_running_object(
    make_module, write_patch, registry
):
    mod = make_module(STATEFUL)
    seen = mod.Counter.seen  # empty: the patch class's {} equals it
    patch = load(
        write_patch,
        f"""
        @patch.replace_class("{mod.__name__}:Counter")
        class Counter:
            count = 0
            seen = {{}}
            LIMIT = 5
            ADDED = "new"

            def hit(self, key):
                Counter.count += 10
                Counter.seen[key] = Counter.count
                return Counter.count
        """,
    )
    assert registry.check(patch).hot
    registry.apply(patch)
    assert mod.Counter().hit("a") == 10
    assert mod.Counter.seen is seen  # the running dict, not the patch's
    assert seen == {"a": 10}
    assert mod.Counter.ADDED == "new"  # data the running class lacked is added
    registry.rollback()
    assert not hasattr(mod.Counter, "ADDED")
    assert mod.Counter().hit("b") == 11
    assert mod.Counter.seen is seen


def test_a_class_constant_changes_through_a_migration(make_module, write_patch, registry):
    mod = make_module(STATEFUL)
    patch = load(
        write_patch,
        f"""
        @patch.migrate("{mod.__name__}")
        def raise_limit(module):
            module.Counter.LIMIT = 7

        @patch.unmigrate("{mod.__name__}")
        def lower_limit(module):
            module.Counter.LIMIT = 5
        """,
    )
    registry.apply(patch)
    assert mod.Counter.LIMIT == 7
    registry.rollback()
    assert mod.Counter.LIMIT == 5


def test_a_process_not_serving_yet_applies_class_data_as_journalled(
    make_module, write_patch, tmp_path
):
    """A journal holding a class-data change (applied by a release before the rule, or in
    a restart's new process) replays as it went in: the rule is for live state."""
    mod = make_module(STATEFUL)
    journal = tmp_path / "journal.json"
    patch = load(
        write_patch,
        f"""
        @patch.replace_class("{mod.__name__}:Counter")
        class Counter:
            LIMIT = 7
        """,
    )
    first = hotpatch.Registry("1.0", journal=journal)
    first.apply(patch, restarting=True)
    assert mod.Counter.LIMIT == 7
    first.detach_journal()  # undone in memory only: the journal keeps the level
    first.rollback()
    assert mod.Counter.LIMIT == 5
    again = hotpatch.Registry("1.0", journal=journal)
    try:
        assert again.level == ("1.0.1",)
        assert mod.Counter.LIMIT == 7
    finally:
        again.rollback()
    assert mod.Counter.LIMIT == 5
