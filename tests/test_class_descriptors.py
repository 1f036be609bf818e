"""``replace_class`` of a class holding descriptors of the project's own making
(``hits = Tracked()``, ``bold = Bit(0)``, ``total = lazy(total)``).

A descriptor object may keep state for the instances of the class (a value per
instance, a cache). A patch class restating one alike keeps the running one (the
functions it holds patched in place); restating one that keeps state otherwise
is refused, as class data restated otherwise is, naming the way in. Before, it
was set whole, and every value it held for the instances was gone, with
``check()`` saying hot.
"""

from __future__ import annotations

from refusals import PatchWriter, load, refused

import hotpatch

ACCOUNT = """
import weakref


class Tracked:
    '''Keeps a value for each instance.'''

    def __init__(self, default=0):
        self.default = default
        self.values = weakref.WeakKeyDictionary()

    def __get__(self, obj, owner=None):
        return self if obj is None else self.values.get(obj, self.default)

    def __set__(self, obj, value):
        self.values[obj] = value


class Bit:
    __slots__ = ("bit", "owner", "name")

    def __init__(self, n):
        self.bit = 1 << n

    def __set_name__(self, owner, name):
        self.owner, self.name = owner, name

    def __get__(self, obj, owner=None):
        return self if obj is None else bool(obj.flags & self.bit)


class lazy:
    '''Computes once per instance with the function it holds.'''

    def __init__(self, func):
        self.func = func

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        value = obj.__dict__[self.func.__name__] = self.func(obj)
        return value


class Account:
    hits = Tracked()
    bold = Bit(0)

    def __init__(self, flags=0):
        self.flags = flags

    @lazy
    def total(self):
        return 10
"""


def _patch(mod: str, hits: str = "        hits = Tracked()\n", total: str = "10") -> str:
    return f"""
    from {mod} import Bit, Tracked, lazy

    @patch.replace_class("{mod}:Account")
    class Account:
{hits}        bold = Bit(0)

        def __init__(self, flags=0):
            self.flags = flags

        @lazy
        def total(self):
            return {total}
    """


def test_a_descriptor_holding_state_restated_is_refused_and_keeps_its_state(
    make_module, write_patch: PatchWriter, registry: hotpatch.Registry
) -> None:
    mod = make_module(ACCOUNT)
    account = mod.Account()
    account.hits = 5
    message = refused(registry, load(write_patch, _patch(mod.__name__)), hotpatch.NameConflict)
    assert f"{mod.__name__}:Account.hits" in message
    assert "descriptor" in message
    assert "leave it out of the patch class" in message
    assert account.hits == 5


def test_left_out_it_stays_and_descriptors_restated_alike_keep_the_running_objects(
    make_module, write_patch: PatchWriter, registry: hotpatch.Registry
) -> None:
    mod = make_module(ACCOUNT)
    account = mod.Account(flags=1)
    account.hits = 5
    running = dict(vars(mod.Account))
    patch = load(write_patch, _patch(mod.__name__, hits="", total="20"))
    assert registry.check(patch).hot
    registry.apply(patch)
    assert account.hits == 5
    assert account.bold is True
    assert vars(mod.Account)["bold"].owner is mod.Account
    for name in ("hits", "bold", "total"):
        assert vars(mod.Account)[name] is running[name], name
    assert mod.Account().total == 20  # the function the running descriptor holds, patched
    registry.rollback()
    assert mod.Account().total == 10
    assert dict(vars(mod.Account)) == running


NODES = """
class WeakAttr:
    def __init__(self, slot):
        self.slot = slot

    def __get__(self, obj, owner=None):
        return self if obj is None else getattr(obj, self.slot)


class Node:
    prv = WeakAttr("_prv")

    def __init__(self, prv=None):
        self._prv = prv
"""


def test_a_descriptor_of_a_class_the_same_patch_replaces_stays_the_running_one(
    make_module, write_patch: PatchWriter, registry: hotpatch.Registry
) -> None:
    """The patch's ``prv = WeakAttr(...)`` is an instance of the patch's own ``WeakAttr``
    (as bidict's ``Node`` holds its ``WeakAttr``s): set whole, the running class held an
    object ``isinstance(..., WeakAttr)`` rejects."""
    mod = make_module(NODES)
    running = vars(mod.Node)["prv"]
    patch = load(
        write_patch,
        f"""
        @patch.replace_class("{mod.__name__}:WeakAttr")
        class WeakAttr:
            def __init__(self, slot):
                self.slot = slot

            def __get__(self, obj, owner=None):
                return self if obj is None else getattr(obj, self.slot)

        @patch.replace_class("{mod.__name__}:Node")
        class Node:
            prv = WeakAttr("_prv")

            def __init__(self, prv=None):
                self._prv = prv
        """,
    )
    assert registry.check(patch).hot
    registry.apply(patch)
    assert vars(mod.Node)["prv"] is running
    assert isinstance(mod.Node.prv, mod.WeakAttr)


HANDLERS = """
import functools


def process(item, mode):
    return (item, mode)


class Handlers:
    quick = functools.partial(process, mode=2)
"""


def test_a_partial_the_patch_class_changes_goes_in(
    make_module, write_patch: PatchWriter, registry: hotpatch.Registry
) -> None:
    """A ``functools.partial`` member is a callable made of a function and its arguments,
    set whole like a function member. Python 3.13 gave ``partial`` a ``__get__``, so it
    read as a descriptor of the project's restated alike (its arguments are not in a
    ``__dict__``): the running one stayed, with mode 2, and ``check()`` said hot."""
    mod = make_module(HANDLERS)
    patch = load(
        write_patch,
        f"""
        import functools
        from {mod.__name__} import process

        @patch.replace_class("{mod.__name__}:Handlers")
        class Handlers:
            quick = functools.partial(process, mode=3)
        """,
    )
    assert registry.check(patch).hot
    registry.apply(patch)
    assert mod.Handlers.quick("x") == ("x", 3)
    registry.rollback()
    assert mod.Handlers.quick("x") == ("x", 2)


def test_a_builtin_method_the_patch_class_changes_goes_in(
    make_module, write_patch: PatchWriter, registry: hotpatch.Registry
) -> None:
    """``clean = str.strip`` is a descriptor that keeps what it is in no ``__dict__``:
    restated as ``str.lstrip`` it looked restated alike (two descriptors of one type,
    holding nothing to compare), so the running one stayed and ``clean()`` kept
    stripping both ends, with ``check()`` saying hot."""
    mod = make_module("class Name(str):\n    clean = str.strip\n")
    patch = load(
        write_patch,
        f"""
        @patch.replace_class("{mod.__name__}:Name")
        class Name(str):
            clean = str.lstrip
        """,
    )
    assert registry.check(patch).hot
    registry.apply(patch)
    assert mod.Name("  x  ").clean() == "x  "
    registry.rollback()
    assert mod.Name("  x  ").clean() == "x"
    assert vars(mod.Name)["clean"] is str.strip
