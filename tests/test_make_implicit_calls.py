"""``hotpatch make`` and a changed method Python called at import with no call written: an
operator on an instance (``TOTAL = Money(1) + Money(2)`` runs ``Money.__add__``), a
comparison, a subscript, a set or dict holding an instance, a property read, a descriptor,
an f-string, a loop, a ``with``, a metaclass, ``__class_getitem__``, an enum's members.
What it made then keeps the old code's result after a hot patch, where a restart runs the
new code: a baseline naming the line and the method.

Each case is a real old/new project: the fix changes the method's result (``"v1"`` to
``"v2"``), and the module state the import computed with it differs between the old
code and a restart on the new one (checked by importing both).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from gitrepo import GitRepo, checkout, imported_fresh, make_since_v1, run_patched, verdicts

# name: (the module, the method the fix changes, the line (or hook) named, a probe of its state)
CASES: dict[str, tuple[str, str, str, str]] = {
    "add": (
        """\
        class Money:
            def __init__(self, n):
                self.n = n

            def __add__(self, other):
                return ("v1", self.n + other.n)


        TOTAL = Money(1) + Money(2)
        """,
        "Money.__add__",
        "TOTAL = Money(1) + Money(2)",
        "module.TOTAL",
    ),
    "reflected_add": (
        """\
        class Money:
            def __radd__(self, other):
                return ("v1", other)


        TOTAL = 1 + Money()
        """,
        "Money.__radd__",
        "TOTAL = 1 + Money()",
        "module.TOTAL",
    ),
    "comparison": (
        """\
        class Version:
            def __lt__(self, other):
                return "v1"


        OLDER = Version() < Version()
        """,
        "Version.__lt__",
        "OLDER = Version() < Version()",
        "module.OLDER",
    ),
    "in": (
        """\
        class Bag:
            def __contains__(self, item):
                return "v1" != "v2"


        HAS = 1 in Bag()
        """,
        "Bag.__contains__",
        "HAS = 1 in Bag()",
        "module.HAS",
    ),
    "unary": (
        """\
        class Money:
            def __neg__(self):
                return "v1"


        DEBT = -Money()
        """,
        "Money.__neg__",
        "DEBT = -Money()",
        "module.DEBT",
    ),
    "augmented_assignment": (
        """\
        class Counter:
            def __init__(self):
                self.seen = []

            def __iadd__(self, n):
                self.seen.append(("v1", n))
                return self


        COUNT = Counter()
        COUNT += 3
        """,
        "Counter.__iadd__",
        "COUNT += 3",
        "module.COUNT.seen",
    ),
    "getitem": (
        """\
        class Table:
            def __getitem__(self, key):
                return ("v1", key)


        FIRST = Table()[0]
        """,
        "Table.__getitem__",
        "FIRST = Table()[0]",
        "module.FIRST",
    ),
    "setitem": (
        """\
        class Table:
            def __init__(self):
                self.rows = {}

            def __setitem__(self, key, value):
                self.rows[key] = ("v1", value)


        TABLE = Table()
        TABLE["a"] = 1
        """,
        "Table.__setitem__",
        'TABLE["a"] = 1',
        "module.TABLE.rows",
    ),
    "set_member": (
        """\
        class Key:
            def __hash__(self):
                return 1

            def __eq__(self, other):
                return "v1" != "v2"


        SEEN = {Key(), Key()}
        """,
        "Key.__eq__",
        "SEEN = {Key(), Key()}",
        "len(module.SEEN)",
    ),
    "dict_key": (
        """\
        class Key:
            def __hash__(self):
                return 1

            def __eq__(self, other):
                return "v1" != "v2"


        BY_KEY = {Key(): "a", Key(): "b"}
        """,
        "Key.__eq__",
        'BY_KEY = {Key(): "a", Key(): "b"}',
        "len(module.BY_KEY)",
    ),
    "property": (
        """\
        class Config:
            @property
            def port(self):
                return ("v1", 80)


        CONFIG = Config()
        PORT = CONFIG.port
        """,
        "Config.port",
        "PORT = CONFIG.port",
        "module.PORT",
    ),
    "descriptor": (
        """\
        class Field:
            def __get__(self, obj, owner=None):
                return "v1"


        class Model:
            name = Field()


        NAME = Model().name
        """,
        "Field.__get__",
        "NAME = Model().name",
        "module.NAME",
    ),
    "metaclass_of_a_metaclass": (
        """\
        class Base(type):
            pass


        class Registering(Base):
            def __init__(cls, name, bases, ns):
                super().__init__(name, bases, ns)
                cls.tag = "v1"


        class Plugin(metaclass=Registering):
            pass
        """,
        "Registering.__init__",
        "Registering.__init__ (line 6), which runs for each class made with the metaclass "
        "Registering",
        "module.Plugin.tag",
    ),
    "class_getitem": (
        """\
        class Box:
            def __class_getitem__(cls, item):
                return ("v1", item.__name__)


        INT_BOX = Box[int]
        """,
        "Box.__class_getitem__",
        "INT_BOX = Box[int]",
        "module.INT_BOX",
    ),
    "annotation": (
        """\
        class Box:
            def __class_getitem__(cls, item):
                SEEN.append("v1")
                return cls


        SEEN = []


        def handler(box: Box[int]) -> None:
            pass
        """,
        "Box.__class_getitem__",
        "def handler(box: Box[int]) -> None:",
        "module.SEEN",
    ),
    "f_string": (
        """\
        class Money:
            def __format__(self, spec):
                return "v1"


        LABEL = f"price: {Money()}"
        """,
        "Money.__format__",
        'LABEL = f"price: {Money()}"',
        "module.LABEL",
    ),
    "str": (
        """\
        class Money:
            def __str__(self):
                return "v1"


        LABEL = str(Money())
        """,
        "Money.__str__",
        "LABEL = str(Money())",
        "module.LABEL",
    ),
    "loop": (
        """\
        class Rows:
            def __iter__(self):
                return iter(["v1"])


        SEEN = []
        for row in Rows():
            SEEN.append(row)
        """,
        "Rows.__iter__",
        "for row in Rows():",
        "module.SEEN",
    ),
    "loop_variable": (
        """\
        class Money:
            def __add__(self, other):
                return "v1"


        SEEN = [m + m for m in [Money(), Money()]]
        """,
        "Money.__add__",
        "SEEN = [m + m for m in [Money(), Money()]]",
        "module.SEEN",
    ),
    "unpacking": (
        """\
        class Pair:
            def __iter__(self):
                return iter(["v1", 2])


        LEFT, RIGHT = Pair()
        """,
        "Pair.__iter__",
        "LEFT, RIGHT = Pair()",
        "module.LEFT",
    ),
    "with": (
        """\
        class Opened:
            def __enter__(self):
                return "v1"

            def __exit__(self, *exc):
                return False


        with Opened() as SEEN:
            pass
        """,
        "Opened.__enter__",
        "with Opened() as SEEN:",
        "module.SEEN",
    ),
    "enum_member": (
        """\
        import enum


        class Planet(enum.Enum):
            EARTH = 1

            def __init__(self, n):
                self.label = "v1"
        """,
        "Planet.__init__",
        "Planet.__init__ (line 7), which runs for each member of the enum Planet",
        "module.Planet.EARTH.label",
    ),
    "decorator_instance": (
        """\
        class Registry:
            def __init__(self):
                self.seen = []

            def __call__(self, func):
                self.seen.append("v1")
                return func


        REGISTRY = Registry()


        @REGISTRY
        def handler():
            pass
        """,
        "Registry.__call__",
        "(line 14: `def handler():`), through `REGISTRY`",
        "module.REGISTRY.seen",
    ),
    "post_init": (
        """\
        import dataclasses


        @dataclasses.dataclass
        class Config:
            port: int = 80

            def __post_init__(self):
                self.label = "v1"


        DEFAULT = Config()
        """,
        "Config.__post_init__",
        "DEFAULT = Config()",
        "module.DEFAULT.label",
    ),
    "inherited_init": (
        """\
        class Base:
            def __init__(self):
                self.label = "v1"


        class Config(Base):
            pass


        DEFAULT = Config()
        """,
        "Base.__init__",
        "DEFAULT = Config()",
        "module.DEFAULT.label",
    ),
    "argument": (
        """\
        class Money:
            def __add__(self, other):
                return "v1"


        def double(x, y=None):
            return x + x


        TOTAL = double(Money())
        """,
        "Money.__add__",
        "TOTAL = double(Money())",
        "module.TOTAL",
    ),
    "operand_of_no_known_class": (
        """\
        class Money:
            def __add__(self, other):
                return "v1"


        def make():
            return Money()


        TOTAL = make() + make()
        """,
        "Money.__add__",
        "TOTAL = make() + make()",
        "module.TOTAL",
    ),
    "subclass_operator": (
        """\
        class Money:
            def __add__(self, other):
                return "base"


        class Euro(Money):
            def __add__(self, other):
                return "v1"


        TOTAL = Euro() + Euro()
        """,
        "Euro.__add__",
        "TOTAL = Euro() + Euro()",
        "module.TOTAL",
    ),
    "subclass_operator_on_self": (
        """\
        class Money:
            def __add__(self, other):
                return "base"

            def double(self):
                return self + self


        class Euro(Money):
            def __add__(self, other):
                return "v1"


        TOTAL = Euro().double()
        """,
        "Euro.__add__",
        "self + self",
        "module.TOTAL",
    ),
    "subclass_comparison_on_cls": (
        """\
        class Money:
            def __eq__(self, other):
                return "base"

            __hash__ = object.__hash__

            @classmethod
            def same(cls):
                return cls() == 1


        class Euro(Money):
            def __eq__(self, other):
                return "v1"

            __hash__ = object.__hash__


        SAME = Euro.same()
        """,
        "Euro.__eq__",
        "cls() == 1",
        "module.SAME",
    ),
    "metaclass_call": (
        """\
        class Meta(type):
            def __call__(cls, *args):
                return "v1"


        class Thing(metaclass=Meta):
            pass


        THING = Thing()
        """,
        "Meta.__call__",
        "THING = Thing()",
        "module.THING",
    ),
    "metaclass_subscript": (
        """\
        class Meta(type):
            def __getitem__(cls, key):
                return ("v1", key)


        class Thing(metaclass=Meta):
            pass


        FIRST = Thing[0]
        """,
        "Meta.__getitem__",
        "FIRST = Thing[0]",
        "module.FIRST",
    ),
    "metaclass_instancecheck": (
        """\
        class Meta(type):
            def __instancecheck__(cls, obj):
                return "v1" == "v2"


        class Thing(metaclass=Meta):
            pass


        IS = isinstance(1, Thing)
        """,
        "Meta.__instancecheck__",
        "IS = isinstance(1, Thing)",
        "module.IS",
    ),
    "mro_entries": (
        """\
        class Maker:
            def __mro_entries__(self, bases):
                class Made:
                    tag = "v1"

                return (Made,)


        class Thing(Maker()):
            pass


        TAG = Thing.tag
        """,
        "Maker.__mro_entries__",
        "Maker()",
        "module.TAG",
    ),
    "mro_entries_in_a_function": (
        """\
        class Maker:
            def __mro_entries__(self, bases):
                class Made:
                    tag = "v1"

                return (Made,)


        def build():
            class Thing(Maker()):
                pass

            return Thing.tag


        TAG = build()
        """,
        "Maker.__mro_entries__",
        "Maker()",
        "module.TAG",
    ),
    "init_subclass": (
        """\
        class Base:
            seen = []

            def __init_subclass__(cls, **kwargs):
                Base.seen.append("v1")


        class Sub(Base):
            pass
        """,
        "Base.__init_subclass__",
        "each subclass of Base made",
        "module.Base.seen",
    ),
    "set_name": (
        """\
        class Field:
            def __set_name__(self, owner, name):
                self.name = ("v1", name)


        class Model:
            field = Field()
        """,
        "Field.__set_name__",
        "each class made holding a Field",
        "module.Model.field.name",
    ),
    "prepare": (
        """\
        class Meta(type):
            @classmethod
            def __prepare__(mcs, name, bases):
                return {"tag": "v1"}


        class Thing(metaclass=Meta):
            pass
        """,
        "Meta.__prepare__",
        "each class made with the metaclass Meta",
        "module.Thing.tag",
    ),
    "handed_to_outside_code": (
        """\
        import copy


        class Box:
            def __copy__(self):
                return "v1"


        COPY = copy.copy(Box())
        """,
        "Box.__copy__",
        "COPY = copy.copy(Box())",
        "module.COPY",
    ),
    "handed_to_a_method_of_a_builtin_value": (
        """\
        class Parts:
            def __iter__(self):
                return iter(["v1", "x"])


        JOINED = ",".join(Parts())
        """,
        "Parts.__iter__",
        'JOINED = ",".join(Parts())',
        "module.JOINED",
    ),
    "held_by_a_list_handed_on": (
        """\
        class Version:
            def __init__(self, n):
                self.n = n

            def __lt__(self, other):
                return (self.n < other.n) == ("v1" == "v" + "1")


        ORDER = [v.n for v in sorted([Version(1), Version(2)])]
        """,
        "Version.__lt__",
        "sorted([Version(1), Version(2)])",
        "module.ORDER",
    ),
    "held_by_a_name_handed_on": (
        """\
        class Version:
            def __init__(self, n):
                self.n = n

            def __lt__(self, other):
                return (self.n < other.n) == ("v1" == "v" + "1")


        VERSIONS = [Version(1), Version(2)]
        ORDER = [v.n for v in sorted(VERSIONS)]
        """,
        "Version.__lt__",
        "sorted(VERSIONS)",
        "module.ORDER",
    ),
    "held_by_a_slice_handed_on": (
        """\
        class Version:
            def __init__(self, n):
                self.n = n

            def __lt__(self, other):
                return (self.n < other.n) == ("v1" == "v" + "1")


        VERSIONS = [Version(1), Version(2), Version(3)]
        ORDER = [v.n for v in sorted(VERSIONS[:2])]
        """,
        "Version.__lt__",
        "sorted(VERSIONS[:2])",
        "module.ORDER",
    ),
    "held_by_a_list_filled_after_it_is_made": (
        """\
        class Version:
            def __init__(self, n):
                self.n = n

            def __lt__(self, other):
                return (self.n < other.n) == ("v1" == "v" + "1")


        VERSIONS = []
        VERSIONS.append(Version(1))
        VERSIONS.append(Version(2))
        ORDER = [v.n for v in sorted(VERSIONS)]
        """,
        "Version.__lt__",
        "sorted(VERSIONS)",
        "module.ORDER",
    ),
    "percent_format_of_a_tuple": (
        """\
        class Money:
            def __str__(self):
                return "v1"


        LABEL = "%s!" % (Money(),)
        """,
        "Money.__str__",
        'LABEL = "%s!" % (Money(),)',
        "module.LABEL",
    ),
    "slice_bound": (
        """\
        class Pos:
            def __index__(self):
                return int("v1"[1])


        REST = [1, 2, 3, 4][Pos():]
        """,
        "Pos.__index__",
        "REST = [1, 2, 3, 4][Pos():]",
        "module.REST",
    ),
    "getattr_by_constant": (
        """\
        class Lazy:
            def __getattr__(self, name):
                return ("v1", name)


        THING = getattr(Lazy(), "thing")
        """,
        "Lazy.__getattr__",
        'THING = getattr(Lazy(), "thing")',
        "module.THING",
    ),
    "isinstance_of_a_tuple": (
        """\
        class Meta(type):
            def __instancecheck__(cls, obj):
                return "v1" == "v2"


        class Thing(metaclass=Meta):
            pass


        IS = isinstance(1, (str, Thing))
        """,
        "Meta.__instancecheck__",
        "IS = isinstance(1, (str, Thing))",
        "module.IS",
    ),
    "subclasshook": (
        """\
        import abc


        class Sized(abc.ABC):
            @classmethod
            def __subclasshook__(cls, other):
                return "v1" == "v2"


        IS = issubclass(int, Sized)
        """,
        "Sized.__subclasshook__",
        "IS = issubclass(int, Sized)",
        "module.IS",
    ),
    "context_decorator": (
        """\
        import contextlib


        class Tag(contextlib.ContextDecorator):
            seen = []

            def __enter__(self):
                Tag.seen.append("v1")

            def __exit__(self, *exc):
                return False


        @Tag()
        def work():
            return 1


        DONE = work()
        """,
        "Tag.__enter__",
        "Tag()",
        "module.Tag.seen",
    ),
    "dropped_instance": (
        """\
        SEEN = []


        class Probe:
            def __del__(self):
                SEEN.append("v1")


        Probe()
        """,
        "Probe.__del__",
        "Probe()",
        "module.SEEN",
    ),
    "super_init": (
        """\
        class Base:
            def __init__(self):
                self.label = "v1"


        class Config(Base):
            def __init__(self):
                super().__init__()


        DEFAULT = Config()
        """,
        "Base.__init__",
        "DEFAULT = Config()",
        "module.DEFAULT.label",
    ),
    "super_method": (
        """\
        class Base:
            def label(self):
                return "v1"


        class Sub(Base):
            def label(self):
                return super().label() + "!"


        LABEL = Sub().label()
        """,
        "Base.label",
        "LABEL = Sub().label()",
        "module.LABEL",
    ),
    "enum_member_formatted": (
        """\
        import enum


        class Color(enum.Enum):
            RED = 1

            def __str__(self):
                return "v1"


        NAME = f"{Color.RED!s}"
        """,
        "Color.__str__",
        "Color.RED",
        "module.NAME",
    ),
    "enum_member_method": (
        """\
        import enum


        class Color(enum.Enum):
            RED = 1

            def label(self):
                return "v1"


        LABEL = Color.RED.label()
        """,
        "Color.label",
        "LABEL = Color.RED.label()",
        "module.LABEL",
    ),
    "argument_of_a_cached_function": (
        """\
        import functools


        class Key:
            def __hash__(self):
                return 1

            def __eq__(self, other):
                return "v1" == "v2"


        @functools.lru_cache
        def cost(key):
            return 1


        KEY = Key()
        cost(KEY)
        cost(Key())
        HITS = cost.cache_info().hits
        """,
        "Key.__eq__",
        "cost(KEY)",
        "module.HITS",
    ),
    "default_factory": (
        """\
        import dataclasses


        def _items():
            return ["v1"]


        @dataclasses.dataclass
        class Cart:
            items: list = dataclasses.field(default_factory=_items)


        DEFAULT = Cart()
        """,
        "_items",
        "items: list = dataclasses.field(default_factory=_items)",
        "module.DEFAULT.items",
    ),
    "total_ordering": (
        """\
        import functools


        @functools.total_ordering
        class Version:
            def __init__(self, n):
                self.n = n

            def __eq__(self, other):
                return self.n == other.n

            def __lt__(self, other):
                return (self.n < other.n) == ("v1" == "v" + "1")


        NEWER = Version(1) >= Version(2)
        """,
        "Version.__lt__",
        "NEWER = Version(1) >= Version(2)",
        "module.NEWER",
    ),
    "match_value": (
        """\
        class Code:
            def __eq__(self, other):
                return "v1" == "v2"


        match Code():
            case 1:
                KIND = "one"
            case _:
                KIND = "other"
        """,
        "Code.__eq__",
        "Code()",
        "module.KIND",
    ),
    "match_class": (
        """\
        class Point:
            __match_args__ = ("x",)

            @property
            def x(self):
                return int("v1"[1])


        match Point():
            case Point(x=1):
                KIND = "one"
            case _:
                KIND = "other"
        """,
        "Point.x",
        "Point().x",
        "module.KIND",
    ),
}


def shop(tmp_path: Path, module: str) -> GitRepo:
    repo = GitRepo(tmp_path / "repo")
    files = {"src/shop/__init__.py": "", "src/shop/m.py": module}
    repo.commit("the baseline", files)
    repo.git("tag", "v1")
    repo.commit("the fix", {"src/shop/m.py": module.replace('"v1"', '"v2"')})
    return repo


@pytest.mark.parametrize("case", list(CASES))
def test_a_method_python_calls_at_import_without_a_call_is_a_baseline_naming_the_line(
    tmp_path: Path, case: str
) -> None:
    module, method, line, probe = CASES[case]
    repo = shop(tmp_path, module)
    old = imported_fresh(checkout(repo, "v1", tmp_path), "shop.m", probe)
    new = imported_fresh(checkout(repo, "HEAD", tmp_path), "shop.m", probe)
    assert old != new, "the fix must change what the import computed"
    result = make_since_v1(repo, tmp_path / "out")
    assert result.outcome == "baseline", result.record()
    why = {c.name: c.why for c in result.reasons}
    assert set(why) == {f"shop.m:{method}"}, why
    said = why[f"shop.m:{method}"]
    hooks = ("`", "Registering", "Planet", "made", "a Field", "Meta")
    assert (line if line.endswith(hooks) else f"`{line}`") in said, said
    assert "a restart would run the new code there" in said, said
    assert method.rpartition(".")[2] in said, said


# name: (the project's modules, the change named, words the reason says, a probe of shop.m)
REACHED: dict[str, tuple[dict[str, str], str, tuple[str, ...], str]] = {
    "module_getattr_from_import": (
        {
            "src/shop/lazy.py": """\
                def __getattr__(name):
                    return ("v1", name)
                """,
            "src/shop/m.py": "from shop.lazy import thing\n",
        },
        "shop.lazy:__getattr__",
        ("`from shop.lazy import thing`", "reading thing, which shop.lazy does not define"),
        "module.thing",
    ),
    "package_getattr_from_import": (
        {
            "src/shop/__init__.py": """\
                def __getattr__(name):
                    return ("v1", name)
                """,
            "src/shop/m.py": "from shop import thing\n",
        },
        "shop:__getattr__",
        ("`from shop import thing`", "reading thing, which shop does not define"),
        "module.thing",
    ),
    "module_getattr_attribute": (
        {
            "src/shop/lazy.py": """\
                def __getattr__(name):
                    return ("v1", name)
                """,
            "src/shop/m.py": "from shop import lazy\n\nTHING = lazy.thing\n",
        },
        "shop.lazy:__getattr__",
        ("`lazy.thing`",),
        "module.THING",
    ),
    "what_a_getter_beside_its_setter_calls": (
        {
            "src/shop/m.py": """\
                class Box:
                    @property
                    def size(self):
                        return self.calc()

                    @size.setter
                    def size(self, n):
                        pass

                    def calc(self):
                        return "v1"


                SIZE = Box().size
                """,
        },
        "shop.m:Box.calc",
        ("`SIZE = Box().size`", "calls Box.size implicitly"),
        "module.SIZE",
    ),
    "what_a_getter_beside_its_deleter_calls": (
        {
            "src/shop/m.py": """\
                def _compute():
                    return "v1"


                class Box:
                    @property
                    def size(self):
                        return _compute()

                    @size.deleter
                    def size(self):
                        pass


                SIZE = Box().size
                """,
        },
        "shop.m:_compute",
        ("`SIZE = Box().size`", "calls Box.size implicitly"),
        "module.SIZE",
    ),
    "singledispatch_implementation": (
        {
            "src/shop/m.py": """\
                import functools


                @functools.singledispatch
                def show(x):
                    return "base"


                @show.register
                def _(x: int):
                    return "v1"


                SHOWN = show(1)
                """,
        },
        "shop.m:_",
        ("`SHOWN = show(1)`", "through show, which dispatches to _"),
        "module.SHOWN",
    ),
    "a_cached_method_hashes_its_instance": (
        {
            "src/shop/m.py": """\
                import functools


                class Key:
                    def __hash__(self):
                        return 1

                    def __eq__(self, other):
                        return "v1" == "v2"

                    @functools.lru_cache
                    def cost(self):
                        return 1


                A = Key()
                B = Key()
                A.cost()
                B.cost()
                HITS = Key.cost.cache_info().hits
                """,
        },
        "shop.m:Key.__eq__",
        ("`A.cost()`", "a decorator of cost not the project's, handed its arguments"),
        "module.HITS",
    ),
    "a_subclass_override_called_on_self": (
        {
            "src/shop/m.py": """\
                class Base:
                    def label(self):
                        return "base"

                    def describe(self):
                        return self.label()


                class Sub(Base):
                    def label(self):
                        return "v1"


                TEXT = Sub().describe()
                """,
        },
        "shop.m:Sub.label",
        ("`TEXT = Sub().describe()`",),
        "module.TEXT",
    ),
}


@pytest.mark.parametrize("case", list(REACHED))
def test_a_function_run_at_import_through_a_hook_or_an_override_is_a_baseline(
    tmp_path: Path, case: str
) -> None:
    """A module's ``__getattr__`` run by ``from M import name`` or ``M.name`` for a name M
    lacks, what a property's getter calls when a setter or deleter of the same name
    follows it, a subclass's override of a method its base calls on ``self``: the import
    ran them, a restart runs the new code, so a baseline naming where."""
    files, changed, words, probe = REACHED[case]
    files = {"src/shop/__init__.py": "", **{p: textwrap.dedent(t) for p, t in files.items()}}
    repo = GitRepo(tmp_path / "repo")
    repo.commit("the baseline", files)
    repo.git("tag", "v1")
    repo.commit("the fix", {p: t.replace('"v1"', '"v2"') for p, t in files.items()})
    old = imported_fresh(checkout(repo, "v1", tmp_path), "shop.m", probe)
    new = imported_fresh(checkout(repo, "HEAD", tmp_path), "shop.m", probe)
    assert old != new, "the fix must change what the import computed"
    result = make_since_v1(repo, tmp_path / "out")
    assert result.outcome == "baseline", result.record()
    why = {c.name: c.why for c in result.reasons}
    assert set(why) == {changed}, why
    for said in words:
        assert said in why[changed], why[changed]
    assert "a restart would run the new code there" in why[changed], why[changed]


def test_an_operator_on_builtin_values_at_import_leaves_a_changed_operator_hot(
    tmp_path: Path,
) -> None:
    """``RATE = 2 * 3``, ``NAME = "a" + "b"``, ``{1: "a"}``, an f-string of a number,
    arithmetic on a loop's ints, a comparison of the strings a class's ``__slots__`` holds,
    a counter counted up (``count += 1``) and formatted, an instance of a generic class
    with no ``__init__`` of its own, an item set in an attribute only ever set to a dict
    (``self._map[key] = value``), a parameter given a string (``describe("a")``)
    formatted, annotations that are unions of classes and typing aliases (``None | str |
    re.Pattern[str]``, ``Left | Right | int``): none runs a method of the project, so a
    changed ``__init__``, ``__add__``, ``__ne__``, ``__format__``, ``__setitem__``,
    ``__or__`` and ``__ror__`` used only after import go hot, and the patched process
    matches a restart."""
    module = """\
        import re
        from typing import Generic, TypeVar

        T = TypeVar("T")


        class Holder(Generic[T]):
            pass


        class Money:
            def __init__(self, n):
                self.n = n + len("v1")

            def __add__(self, other):
                return Money(self.n + other.n + len("v1"))

            def __ne__(self, other):
                return len("v1") != 2

            def __format__(self, spec):
                return str(len("v1"))

            def __setitem__(self, key, value):
                self.n = len("v1")

            def __or__(self, other):
                return len("v1")

            def __ror__(self, other):
                return len("v1")


        class Left:
            pass


        class Right:
            pass


        def check(pattern: None | str | re.Pattern[str] = None, side: Left | Right | int = 0):
            return pattern, side


        class Slots:
            __slots__ = ("a", "b")


        RATE = 2 * 3
        NAME = "a" + "b"
        DOUBLE = RATE * 2
        NEG = -RATE
        BIG = DOUBLE > 10 and not NEG
        KEYS = {1: "a", NAME: "b"}
        LABEL = f"{RATE}%"
        FIRST = [1, 2][0]
        SQUARES = [n * n for n in range(3)]
        HOLDER = Holder()


        def _table():
            out = []
            for i in range(4):
                out.append(i * 2 + 1)
            return out


        TABLE = _table()
        NAMES = [name != "a" for name in Slots.__slots__]


        def _label():
            count = 1
            while count < 3:
                count += 1
            return f"{count}"


        LABEL2 = _label()


        class Store:
            def __init__(self):
                self._map = {}

            def put(self, key, value):
                self._map[key] = value
                return self


        def describe(text, suffix="!"):
            text = str(text)
            return f"{text}{suffix}"


        STORE = Store().put("k", 1)
        DESCRIBED = describe("a")


        def total():
            return (Money(1) + Money(2)).n
        """
    repo = shop(tmp_path, module)
    repo.commit("the fix", {"src/shop/m.py": module.replace('len("v1")', 'len("v22")')})
    result = make_since_v1(repo, tmp_path / "out")
    assert result.outcome == "hot", result.record()
    assert verdicts(result) == {
        f"shop.m:Money.{name}": "inline"
        for name in (
            *("__init__", "__add__", "__ne__", "__format__", "__setitem__", "__or__"),
            "__ror__",
        )
    }
    assert result.path is not None
    seen = run_patched(
        roots=[checkout(repo, "v1", tmp_path)],
        module="shop.m",
        patch=result.path,
        baseline="1.0",
        before="",
        probe="module.total()",
    )
    fresh = imported_fresh(checkout(repo, "HEAD", tmp_path), "shop.m", "module.total()")
    assert seen["after"] == fresh == 15
    assert seen["before"] == seen["rolled_back"] == 11


def test_what_a_special_method_is_called_with_at_import_is_followed(tmp_path: Path) -> None:
    """``Base[os.PathLike[str]]`` calls ``Base.__class_getitem__(os.PathLike[str])``: its
    parameter holds a typing alias, so unpacking it (``(*params, "x")``) runs no
    ``__iter__`` of the project, and a changed ``Bag.__iter__`` used only after import goes
    hot; the patched process matches a restart."""
    module = """\
        import os


        class Base:
            def __class_getitem__(cls, params):
                if not isinstance(params, tuple):
                    params = (params,)
                return (*params, "x")


        class Bag:
            def __iter__(self):
                return iter([len("v1")])


        ALIAS = Base[os.PathLike[str]]
        NAMES = Base[dict[str, int]]


        def total():
            return sum(Bag())
        """
    repo = shop(tmp_path, module)
    repo.commit("the fix", {"src/shop/m.py": module.replace('len("v1")', 'len("v22")')})
    result = make_since_v1(repo, tmp_path / "out")
    assert result.outcome == "hot", result.record()
    assert verdicts(result) == {"shop.m:Bag.__iter__": "inline"}
    assert result.path is not None
    seen = run_patched(
        roots=[checkout(repo, "v1", tmp_path)],
        module="shop.m",
        patch=result.path,
        baseline="1.0",
        before="",
        probe="module.total()",
    )
    fresh = imported_fresh(checkout(repo, "HEAD", tmp_path), "shop.m", "module.total()")
    assert seen["after"] == fresh == 3
    assert seen["before"] == seen["rolled_back"] == 2


def test_a_class_an_abstract_base_class_registers_keeps_its_methods_to_itself(
    tmp_path: Path,
) -> None:
    """``@abc.Mapping.register`` records the class as a virtual subclass and hands it back
    as it was, adding no method that could call the class's own: making a ``Table`` at
    import runs its ``__init__`` only, so a changed ``__len__`` used after import goes hot
    (jinja's ``LRUCache``, made at import, counted every method as run); the patched
    process matches a restart."""
    module = """\
        from collections import abc


        @abc.Mapping.register
        class Table:
            def __init__(self):
                self.rows = {}

            def __len__(self):
                return len("v1")


        TABLE = Table()


        def size():
            return len(TABLE)
        """
    repo = shop(tmp_path, module)
    repo.commit("the fix", {"src/shop/m.py": module.replace('len("v1")', 'len("v22")')})
    result = make_since_v1(repo, tmp_path / "out")
    assert result.outcome == "hot", result.record()
    assert verdicts(result) == {"shop.m:Table.__len__": "inline"}
    assert result.path is not None
    seen = run_patched(
        roots=[checkout(repo, "v1", tmp_path)],
        module="shop.m",
        patch=result.path,
        baseline="1.0",
        before="",
        probe="module.size()",
    )
    fresh = imported_fresh(checkout(repo, "HEAD", tmp_path), "shop.m", "module.size()")
    assert seen["after"] == fresh == 3
    assert seen["before"] == seen["rolled_back"] == 2


def test_the_name_of_an_objects_class_at_import_is_a_string(tmp_path: Path) -> None:
    """``"%s()" % self.__class__.__name__`` in a ``__repr__`` run at import formats a string
    (a class's name), so no ``__str__`` of the project runs there, and a changed
    ``Error.__str__`` used after import goes hot (dateutil ea7f441b: ``UTC = tzutc()``,
    whose ``__repr__`` formats its class's name, counted every ``__str__`` as run); the
    patched process matches a restart."""
    module = """\
        class Error(Exception):
            def __str__(self):
                return "v1"


        class Zone:
            def __init__(self):
                self.shown = repr(self) + " " + "%s" % type(self).__qualname__

            def __repr__(self):
                return "%s()" % self.__class__.__name__


        UTC = Zone()


        def shown():
            return [UTC.shown, str(Error())]
        """
    repo = shop(tmp_path, module)
    repo.commit("the fix", {"src/shop/m.py": module.replace('"v1"', '"v2"')})
    result = make_since_v1(repo, tmp_path / "out")
    assert result.outcome == "hot", result.record()
    assert verdicts(result) == {"shop.m:Error.__str__": "inline"}
    assert result.path is not None
    seen = run_patched(
        roots=[checkout(repo, "v1", tmp_path)],
        module="shop.m",
        patch=result.path,
        baseline="1.0",
        before="",
        probe="module.shown()",
    )
    fresh = imported_fresh(checkout(repo, "HEAD", tmp_path), "shop.m", "module.shown()")
    assert seen["after"] == fresh == ["Zone() Zone", "v2"]
    assert seen["before"] == seen["rolled_back"] == ["Zone() Zone", "v1"]


_SIX = """\
def add_metaclass(metaclass):
    def wrapper(cls):
        body = dict(vars(cls))
        body.pop("__dict__", None)
        body.pop("__weakref__", None)
        return metaclass(cls.__name__, cls.__bases__, body)

    return wrapper
"""


def test_a_metaclass_given_by_a_class_decorator_runs_when_its_class_is_called(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``@six.add_metaclass(_Single)`` makes the class again with the metaclass, so
    ``UTC = Zone()`` at import runs ``_Single.__call__`` (dateutil's ``tzutc``): a changed
    one was hot, and ``UTC`` kept what the old code gave it. A baseline naming the line.
    (A stand-in for six, outside the project, gives ``add_metaclass``.)"""
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    (vendor / "six.py").write_text(_SIX)
    monkeypatch.setenv("PYTHONPATH", str(vendor))  # for the imports below
    monkeypatch.syspath_prepend(str(vendor))  # for make's check of the patch
    module = """\
        import six


        class _Single(type):
            def __call__(cls):
                made = super().__call__()
                made.tag = "v1"
                return made


        @six.add_metaclass(_Single)
        class Zone:
            def label(self):
                return len("v1")


        UTC = Zone()
        """
    repo = shop(tmp_path, textwrap.dedent(module))
    old = imported_fresh(checkout(repo, "v1", tmp_path), "shop.m", "module.UTC.tag")
    new = imported_fresh(checkout(repo, "HEAD", tmp_path), "shop.m", "module.UTC.tag")
    assert (old, new) == ("v1", "v2")
    result = make_since_v1(repo, tmp_path / "out")
    assert result.outcome == "baseline", result.record()
    why = {c.name: c.why for c in result.reasons}
    assert set(why) == {"shop.m:_Single.__call__"}, why
    assert "`UTC = Zone()`" in why["shop.m:_Single.__call__"]
    # add_metaclass adds no method calling the class's own: Zone.label, not run at
    # import, goes hot
    repo.git("tag", "-f", "v1")
    fixed = textwrap.dedent(module).replace('"v1"', '"v2"')
    repo.commit("label", {"src/shop/m.py": fixed.replace('len("v2")', 'len("v22")')})
    result = make_since_v1(repo, tmp_path / "out2")
    assert result.outcome == "hot", result.record()
    assert verdicts(result) == {"shop.m:Zone.label": "inline"}
