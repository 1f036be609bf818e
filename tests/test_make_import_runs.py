"""``hotpatch make`` and a changed function that ran when a module was imported through
something other than its own name: a method called on an object the module made
(``builder = Builder(); TABLE = builder.build_table()``), a function taken into a local
name first (``make = rates.build; TABLE = make()``), a function called through a name a
class body gave it. What it made then keeps the old code's result after a patch, where a
restart runs the new code: unless make can tell the function did not run at import, the
change is a baseline naming the line that may run it.

What is right is what a restart gives: the hot cases compare the patched module with the
module imported fresh from the new code.
"""

from __future__ import annotations

import ast
from pathlib import Path

from gitrepo import GitRepo, checkout, imported_fresh, make_since_v1, run_patched, verdicts

from hotpatch.make._runs import Source, import_runs

RATES = """\
class Builder:
    def build_table(self):
        return {"s": 1}


def build():
    return {"b": 1}


def price(x):
    return x + 1
"""

FIXED = RATES.replace('{"s": 1}', '{"s": 2}').replace('{"b": 1}', '{"b": 2}')


def shop(tmp_path: Path, files: dict[str, str]) -> GitRepo:
    repo = GitRepo(tmp_path / "repo")
    repo.commit("the baseline", {"src/shop/__init__.py": "", "src/shop/rates.py": RATES, **files})
    repo.git("tag", "v1")
    return repo


def test_a_method_run_at_import_on_an_object_the_module_made_is_a_baseline_naming_the_line(
    tmp_path: Path,
) -> None:
    """Made hot, ``TABLE`` kept ``{"s": 1}`` where a restart gives ``{"s": 2}``."""
    module = RATES + "\n\nbuilder = Builder()\nTABLE = builder.build_table()\n"
    repo = shop(tmp_path, {"src/shop/rates.py": module})
    repo.commit("the fix", {"src/shop/rates.py": module.replace('{"s": 1}', '{"s": 2}')})
    result = make_since_v1(repo, tmp_path / "out")
    assert result.outcome == "baseline", result.record()
    why = {c.name: c.why for c in result.reasons}
    assert set(why) == {"shop.rates:Builder.build_table"}, why
    said = why["shop.rates:Builder.build_table"]
    assert "(line 15: `TABLE = builder.build_table()`)" in said, said
    assert "a restart would run the new code there" in said, said


def test_a_function_another_module_runs_at_import_through_a_local_name_is_a_baseline(
    tmp_path: Path,
) -> None:
    """``prices`` takes ``rates.build`` into a name and calls it, makes a ``Builder`` and
    calls its method, and a class body calls a function through the name it gave it."""
    prices = """\
        from shop import rates

        make = rates.build
        TABLE = make()
        builder = rates.Builder()
        SIZES = builder.build_table()
        """
    menu = """\
        from shop.rates import price


        class Menu:
            pick = price
            FIRST = pick(1)
        """
    repo = shop(tmp_path, {"src/shop/prices.py": prices, "src/shop/menu.py": menu})
    repo.commit("the fix", {"src/shop/rates.py": FIXED.replace("x + 1", "x + 2")})
    result = make_since_v1(repo, tmp_path / "out")
    assert result.outcome == "baseline", result.record()
    why = {c.name: c.why for c in result.reasons}
    assert set(why) == {"shop.rates:build", "shop.rates:Builder.build_table", "shop.rates:price"}
    assert "shop.prices" in why["shop.rates:build"], why
    assert "(line 4: `TABLE = make()`)" in why["shop.rates:build"], why
    assert "(line 6: `SIZES = builder.build_table()`)" in why["shop.rates:Builder.build_table"]
    assert "shop.menu" in why["shop.rates:price"], why
    assert "FIRST = pick(1)" in why["shop.rates:price"], why


def test_a_function_an_object_only_holds_at_import_stays_hot_and_matches_a_restart(
    tmp_path: Path,
) -> None:
    """What the module body only keeps (a bound method in a table, a name for a function)
    is the one function object, replaced in place: hot, and the same as a restart."""
    module = (
        RATES
        + """

builder = Builder()
HANDLERS = {"t": builder.build_table, "b": build}
make = build


def table():
    return HANDLERS["t"](), make()
"""
    )
    repo = shop(tmp_path, {"src/shop/rates.py": module})
    repo.commit(
        "the fix",
        {
            "src/shop/rates.py": module.replace('{"s": 1}', '{"s": 2}').replace(
                '{"b": 1}', '{"b": 2}'
            )
        },
    )
    result = make_since_v1(repo, tmp_path / "out")
    assert result.outcome == "hot", result.record()
    assert verdicts(result) == {
        "shop.rates:Builder.build_table": "inline",
        "shop.rates:build": "inline",
    }
    assert result.path is not None
    seen = run_patched(
        roots=[checkout(repo, "v1", tmp_path)],
        module="shop.rates",
        patch=result.path,
        baseline="1.0",
        before="",
        probe="module.table()",
    )
    fresh = imported_fresh(checkout(repo, "HEAD", tmp_path), "shop.rates", "module.table()")
    assert seen["after"] == list(fresh) == [{"s": 2}, {"b": 2}]
    assert seen["before"] == seen["rolled_back"] == [{"s": 1}, {"b": 1}]


def test_what_make_cannot_follow_counts_as_run_at_import(tmp_path: Path) -> None:
    """A function taken from a table and called (``HANDLERS["b"]()``): make does not follow
    the table, and the module body hands ``build`` on, so ``build`` may have run. A method
    called on what a function returned (``make().build_table()``): any method of that
    name may have run. Each a baseline naming the call."""
    module = (
        RATES
        + """

HANDLERS = {"b": build}
FIRST = HANDLERS["b"]()


def make():
    return Builder()


SIZES = make().build_table()
"""
    )
    repo = shop(tmp_path, {"src/shop/rates.py": module})
    fixed = module.replace('{"s": 1}', '{"s": 2}').replace('{"b": 1}', '{"b": 2}')
    repo.commit("the fix", {"src/shop/rates.py": fixed.replace("x + 1", "x + 2")})
    result = make_since_v1(repo, tmp_path / "out")
    assert result.outcome == "baseline", result.record()
    assert verdicts(result) == {
        "shop.rates:Builder.build_table": "baseline",
        "shop.rates:build": "baseline",
        "shop.rates:price": "replace",
    }
    why = {c.name: c.why for c in result.reasons}
    assert '(line 15: `FIRST = HANDLERS["b"]()`)' in why["shop.rates:build"], why
    assert "a call of something make cannot name" in why["shop.rates:build"], why
    assert "hands this function on" in why["shop.rates:build"], why
    sizes = why["shop.rates:Builder.build_table"]
    assert "(line 22: `SIZES = make().build_table()`)" in sizes, sizes
    assert "a method named build_table of an object make does not follow" in sizes, sizes


def test_names_that_name_each_other_round_end_as_unknown() -> None:
    """Two modules each taking a name from the other (``from .b import x`` and ``from .a
    import x``) sent the name-following round until Python's recursion limit: now past a
    depth the name is unknown, and calling it counts as a call make cannot follow."""
    texts = {"p": "", "p.a": "from .b import x\nY = x()\n", "p.b": "from .a import x\n"}
    sources = [
        Source(name, ast.parse(text), text.splitlines(), name == "p")
        for name, text in texts.items()
    ]
    found = import_runs(sources)
    assert found.blind == (
        "p.a",
        "when the module is imported (line 2: `Y = x()`), through `x()` (line 2 of p.a)",
    )


def test_names_bound_by_unpacking_a_tuple_of_values_hold_those_values(tmp_path: Path) -> None:
    """dateutil's rrule: ``M29, M31 = list(range(1, 30)), list(range(1, 32))``, then
    ``MASK = tuple(M31 + M29 + M31[:7])`` and ``del M29, M31``. Before, the names of an
    unpacking (and deleted ones) held anything, and a slice of a list was no list, so
    ``M31 + M29`` counted as every ``__add__`` of the project, ``... + M31[:7]`` every
    ``__radd__`` and ``tuple(...)`` every ``__iter__`` (and what they call and hand on),
    which made 4 of dateutil's fixes baselines; and a chain of 30 ``+`` went deeper than
    make follows names. Each name holds its own value, a slice of a builtin value is one,
    a chain is one step: the lists' ``+`` runs no code of the project, and a fix to its
    ``__add__`` is hot, the same as a restart."""
    money = """\
class Money:
    def __init__(self, cents):
        self.cents = cents

    def __add__(self, other):
        return Money(self.cents + other.cents)

    def __radd__(self, other):
        return self + other

    def __iter__(self):
        return iter([self.cents])


M29, M31 = list(range(1, 30)), list(range(1, 32))
[LOW, HIGH] = [M29[0], M31[-1]]
MASK = tuple(M31 + M29 + M31[:7])
LONG = tuple(
    M29 + M29 + M29 + M29 + M29 + M29 + M29 + M29 + M29 + M29
    + M29 + M29 + M29 + M29 + M29 + M29 + M29 + M29 + M29 + M29
    + M29 + M29 + M29 + M29 + M29 + M29 + M29 + M29 + M29 + M29
)
del M29, M31


def total():
    return (Money(1) + Money(2)).cents, len(MASK), len(LONG), LOW, HIGH
"""
    repo = shop(tmp_path, {"src/shop/money.py": money})
    repo.commit(
        "the fix", {"src/shop/money.py": money.replace("self.cents + ", "1 + self.cents + ")}
    )
    result = make_since_v1(repo, tmp_path / "out")
    assert result.outcome == "hot", result.record()
    assert verdicts(result) == {"shop.money:Money.__add__": "inline"}
    assert result.path is not None
    seen = run_patched(
        roots=[checkout(repo, "v1", tmp_path)],
        module="shop.money",
        patch=result.path,
        baseline="1.0",
        before="",
        probe="module.total()",
    )
    fresh = imported_fresh(checkout(repo, "HEAD", tmp_path), "shop.money", "module.total()")
    assert seen["after"] == list(fresh) == [4, 67, 870, 1, 31]
    assert seen["before"] == seen["rolled_back"] == [3, 67, 870, 1, 31]


def test_a_project_object_unpacked_into_a_name_is_still_followed(tmp_path: Path) -> None:
    """``A, B = Money(1), Money(2)`` then ``C = A + B`` at import runs ``Money.__add__``:
    its fix stays a baseline naming the line."""
    money = """\
class Money:
    def __init__(self, cents):
        self.cents = cents

    def __add__(self, other):
        return Money(self.cents + other.cents)


A, B = Money(1), Money(2)
C = A + B
"""
    repo = shop(tmp_path, {"src/shop/money.py": money})
    repo.commit(
        "the fix", {"src/shop/money.py": money.replace("self.cents + ", "1 + self.cents + ")}
    )
    result = make_since_v1(repo, tmp_path / "out")
    assert result.outcome == "baseline", result.record()
    why = {c.name: c.why for c in result.reasons}
    assert set(why) == {"shop.money:Money.__add__"}, why
    assert "(line 10: `C = A + B`)" in why["shop.money:Money.__add__"], why
