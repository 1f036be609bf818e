"""``hotpatch make`` on real git repositories: every kind of change gets the right verdict."""

from __future__ import annotations

from pathlib import Path

import pytest
from gitrepo import GitRepo, make_since_v1, run_patched, verdicts

from hotpatch.make import MakeError, MakeResult, Request, make

PRICING = '''\
"""Prices."""

import dataclasses
import functools
from decimal import Decimal

RATE = Decimal("0.20")
LIMIT = 10


def apply_discount(price, pct):
    return price * (100 - pct) // 100


def traced(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)

    return wrapper


def bare(func):
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)

    return wrapper


@traced
def shipping(weight):
    return weight * 2


@bare
def handling(weight):
    return weight + 1


def count_up(n):
    return list(range(n))


def outer(x):
    def inner(y):
        return y + 1

    return inner(x)


def limit():
    return LIMIT


class Base:
    pass


class Cart(Base):
    MAX = 5

    def __init__(self):
        self.lines = []

    def total(self):
        return sum(self.lines)

    @property
    def size(self):
        return len(self.lines)

    @classmethod
    def empty(cls):
        return cls()

    @staticmethod
    def unit(value):
        return value


class Slotted:
    __slots__ = ("a",)

    def get(self):
        return self.a


@dataclasses.dataclass
class Line:
    sku: str
    qty: int = 1

    def cost(self):
        return self.qty


async def fetch(n):
    return n


def numbers(n):
    yield from range(n)
'''

BASE_FILES = {
    "src/shop/__init__.py": "",
    "src/shop/pricing.py": PRICING,
    "src/shop/legacy.py": "def old():\n    return 1\n",
    "src/shop/rates.json": '{"vat": 20}\n',
    "tests/test_pricing.py": "def test_it():\n    pass\n",
    "README.md": "# shop\n",
    "pyproject.toml": "[project]\nname = 'shop'\n",
}


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    repo = GitRepo(tmp_path / "repo")
    repo.commit("the baseline", dict(BASE_FILES))
    repo.git("tag", "v1")
    return repo


def edit(repo: GitRepo, *pairs: tuple[str, str], files: dict[str, str | None] | None = None) -> str:
    """Commit ``pricing.py`` with each (old, new) text replaced, and ``files`` written."""
    text = (repo.path / "src/shop/pricing.py").read_text()
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new, 1)
    return repo.commit("the fix", {"src/shop/pricing.py": text, **(files or {})})


def run(repo: GitRepo, tmp_path: Path, **options: object) -> MakeResult:
    return make_since_v1(repo, tmp_path / "out", **options)


# -- hot ------------------------------------------------------------------------------------


def test_a_function_fix_becomes_a_patch_that_works_through_old_references(
    repo: GitRepo, tmp_path: Path
) -> None:
    edit(
        repo,
        ("from decimal import Decimal\n", "from decimal import ROUND_HALF_UP, Decimal\n"),
        (
            "def apply_discount(price, pct):\n    return price * (100 - pct) // 100\n",
            "def _half_up(value):\n"
            '    return value.quantize(Decimal("1"), rounding=ROUND_HALF_UP)\n\n\n'
            "def apply_discount(price, pct):\n"
            "    return int(_half_up(Decimal(price) * (100 - pct) / 100))\n",
        ),
    )
    result = run(repo, tmp_path)
    assert result.outcome == "hot", result.record()
    assert verdicts(result) == {
        "shop.pricing:_half_up": "added",
        "shop.pricing:apply_discount": "inline",
    }
    text = result.path.read_text() if result.path else ""
    assert "from decimal import Decimal, ROUND_HALF_UP" in text
    assert '@patch.replace("shop.pricing:apply_discount")' in text
    assert "git v1" in text
    assert "shop.pricing:apply_discount" in text.split('"""')[1]
    compile(text, "patch", "exec")
    seen = run_patched(
        roots=[repo_at(repo, "v1", tmp_path)],
        module="shop.pricing",
        patch=result.path,  # type: ignore[arg-type]
        baseline="1.0",
        before="from shop.pricing import apply_discount as early",
        probe="early(5, 50)",
    )
    assert (seen["before"], seen["after"], seen["rolled_back"]) == (2, 3, 2)


def repo_at(repo: GitRepo, rev: str, tmp_path: Path) -> Path:
    """The import root of ``rev``, exported (the user's work tree stays untouched)."""
    dest = tmp_path / f"export-{rev}"
    if not dest.exists():
        dest.mkdir()
        repo.git("worktree", "add", "-q", "--detach", str(dest), rev)
    return dest / "src"


def test_methods_properties_classmethods_staticmethods_and_new_methods(
    repo: GitRepo, tmp_path: Path
) -> None:
    edit(
        repo,
        ("        return sum(self.lines)\n", "        return sum(self.lines) * 2\n"),
        ("        return len(self.lines)\n", "        return self.count() + 100\n"),
        (
            "        return cls()\n",
            "        made = cls()\n        made.lines.append(7)\n        return made\n",
        ),
        ("        return value\n", "        return value * 10\n"),
        (
            "    @property\n    def size",
            "    def count(self):\n        return len(self.lines)\n\n    @property\n    def size",
        ),
    )
    result = run(repo, tmp_path)
    assert result.outcome == "hot", result.record()
    assert verdicts(result) == {
        "shop.pricing:Cart.total": "inline",
        "shop.pricing:Cart.size": "inline",
        "shop.pricing:Cart.empty": "inline",
        "shop.pricing:Cart.unit": "inline",
        "shop.pricing:Cart.count": "added",
    }
    seen = run_patched(
        roots=[repo_at(repo, "v1", tmp_path)],
        module="shop.pricing",
        patch=result.path,  # type: ignore[arg-type]
        baseline="1.0",
        before="cart = module.Cart(); cart.lines[:] = [1, 2]; total = cart.total; "
        "unit = module.Cart.unit",
        probe="[total(), cart.size, len(module.Cart.empty().lines), unit(3)]",
    )
    assert seen["before"] == [3, 2, 0, 3]
    assert seen["after"] == [6, 102, 1, 30]
    assert seen["rolled_back"] == seen["before"]


def test_a_changed_constant_is_carried_by_a_migration_with_its_undo(
    repo: GitRepo, tmp_path: Path
) -> None:
    edit(repo, ("LIMIT = 10\n", "LIMIT = 12\nEXTRA = LIMIT + 1\n"))
    result = run(repo, tmp_path)
    assert result.outcome == "hot", result.record()
    assert verdicts(result) == {
        "shop.pricing:LIMIT": "migration",
        "shop.pricing:EXTRA": "migration",
    }
    seen = run_patched(
        roots=[repo_at(repo, "v1", tmp_path)],
        module="shop.pricing",
        patch=result.path,  # type: ignore[arg-type]
        baseline="1.0",
        before="from shop.pricing import limit",
        probe="[limit(), getattr(module, 'EXTRA', None)]",
    )
    assert (seen["before"], seen["after"], seen["rolled_back"]) == (
        [10, None],
        [12, 13],
        [10, None],
    )


def test_a_function_under_a_wraps_decorator_is_patched_inside_it(
    repo: GitRepo, tmp_path: Path
) -> None:
    edit(repo, ("    return weight * 2\n", "    return weight * 3\n"))
    result = run(repo, tmp_path)
    assert verdicts(result) == {"shop.pricing:shipping": "inline"}
    seen = run_patched(
        roots=[repo_at(repo, "v1", tmp_path)],
        module="shop.pricing",
        patch=result.path,  # type: ignore[arg-type]
        baseline="1.0",
        before="from shop.pricing import shipping as wrapped",
        probe="[wrapped(5), wrapped.__wrapped__(5)]",
    )
    assert (seen["before"], seen["after"]) == ([10, 10], [15, 15])


def test_a_nested_helper_that_never_leaves_its_function_goes_in_with_it(
    repo: GitRepo, tmp_path: Path
) -> None:
    edit(repo, ("        return y + 1\n", "        return y + 2\n"))
    result = run(repo, tmp_path)
    assert verdicts(result) == {"shop.pricing:outer": "inline"}


def test_nothing_to_patch_when_only_comments_tests_docs_and_packaging_change(
    repo: GitRepo, tmp_path: Path
) -> None:
    edit(
        repo,
        ("def limit():\n", "# A comment only.\ndef limit():\n"),
        files={
            "tests/test_pricing.py": "def test_it():\n    assert True\n",
            "tests/conftest.py": "",
            "src/shop/test_inline.py": "",
            "src/shop/pricing.pyi": "def limit() -> int: ...\n",
            "docs/index.md": "# docs\n",
            "README.md": "# shop, documented\n",
            "pyproject.toml": "[project]\nname = 'shop'\nversion = '2'\n",
            # Under the import root but in no package: no import reaches a directory whose
            # name is not a Python name (bidict's dev-deps/pypy3.10/test.txt).
            "src/dev-deps/pypy3.10/test.txt": "pytest==9\n",
            "src/dev-deps/pins.py": "PINS = 1\n",
            "pytest.ini": "[pytest]\n",
            # reno's release notes, under a flat layout's import root (tenacity's)
            "src/releasenotes/notes/fix-limit-0a1b2c3d.yaml": "fixes:\n  - limit\n",
        },
    )
    result = run(repo, tmp_path)
    assert result.outcome == "nothing", result.record()
    assert result.path is None
    ignored = {c.name: c.why for c in result.ignored}
    assert set(ignored) == {
        "tests/test_pricing.py",
        "tests/conftest.py",
        "src/shop/test_inline.py",
        "src/shop/pricing.pyi",
        "docs/index.md",
        "README.md",
        "pyproject.toml",
        "src/dev-deps/pypy3.10/test.txt",
        "src/dev-deps/pins.py",
        "pytest.ini",
        "src/releasenotes/notes/fix-limit-0a1b2c3d.yaml",
    }
    assert ignored["src/releasenotes/notes/fix-limit-0a1b2c3d.yaml"].startswith("documentation")
    assert ignored["src/shop/pricing.pyi"].startswith("a type stub")
    assert ignored["src/dev-deps/pins.py"].startswith(
        "in no package: `dev-deps` is not a Python name"
    ), ignored
    assert not (tmp_path / "out").exists()


# -- not hot: a baseline bundle -------------------------------------------------------------

BASELINE_CASES = {
    "bases": ([("class Cart(Base):", "class Cart:")], None, "shop.pricing:Cart", "bases"),
    "metaclass": (
        [("class Base:", "class Base(metaclass=type):")],
        None,
        "shop.pricing:Base",
        "metaclass",
    ),
    "slots": ([('("a",)', '("a", "b")')], None, "shop.pricing:Slotted.__slots__", "__slots__"),
    "member kind": (
        [("    def total(self):", "    @property\n    def total(self):")],
        None,
        "shop.pricing:Cart.total",
        "changes kind",
    ),
    "module statement": (
        [("LIMIT = 10\n", "LIMIT = 10\nprint('imported')\n")],
        None,
        "shop.pricing:<module body, line 9>",
        "module body statement added",
    ),
    "side-effect constant": (
        [("LIMIT = 10\n", "LIMIT = int(open('/dev/null').read() or 10)\n")],
        None,
        "shop.pricing:LIMIT",
        "calls code",
    ),
    "new module": ([], {"src/shop/extra.py": "X = 1\n"}, "shop.extra (src/shop/extra.py)", "added"),
    "removed module": (
        [],
        {"src/shop/legacy.py": None},
        "shop.legacy (src/shop/legacy.py)",
        "removed",
    ),
    "data file": (
        [],
        {"src/shop/rates.json": '{"vat": 21}\n'},
        "src/shop/rates.json",
        "non-Python",
    ),
    "generator": (
        [("    return list(range(n))\n", "    yield from range(n)\n")],
        None,
        "shop.pricing:count_up",
        "to a generator",
    ),
    "signature": (
        [("def apply_discount(price, pct):", "def apply_discount(price, pct, currency):")],
        None,
        "shop.pricing:apply_discount",
        "old callers cannot call it",
    ),
    "decorator": (
        [("@traced\ndef shipping", "def shipping")],
        None,
        "shop.pricing:shipping",
        "decorators change",
    ),
    "escaping closure, its enclosing function changed too": (
        [
            (
                "        return func(*args, **kwargs)\n\n    return wrapper\n\n\ndef bare",
                "        return func(*args, **kwargs) or 0\n\n    wrapper.traced = True\n"
                "    return wrapper\n\n\ndef bare",
            )
        ],
        None,
        "shop.pricing:traced.<locals>.wrapper",
        "may outlive a call",
    ),
    "wrapper without __wrapped__": (
        [("    return weight + 1\n", "    return weight + 2\n")],
        None,
        "shop.pricing:handling",
        "hidden by decorator wrappers that do not keep __wrapped__ (functools.wraps): "
        "shop.pricing:handling leads to shop.pricing:bare.<locals>.wrapper",
    ),
    "changed import": (
        [("from decimal import Decimal\n", "from fractions import Fraction as Decimal\n")],
        None,
        "shop.pricing:Decimal",
        "the import changes",
    ),
    "dataclass field": (
        [("    qty: int = 1\n", "    qty: int = 2\n")],
        None,
        "shop.pricing:Line.qty",
        "class layout",
    ),
    "import for side effects": (
        [("import functools\n", "import functools\nimport json\n")],
        None,
        "shop.pricing:json",
        "side effects",
    ),
}


@pytest.mark.parametrize("case", sorted(BASELINE_CASES))
def test_what_cannot_go_hot_makes_a_baseline_bundle_naming_why(
    repo: GitRepo, tmp_path: Path, case: str
) -> None:
    pairs, files, name, why = BASELINE_CASES[case]
    edit(repo, *pairs, files=files)
    result = run(repo, tmp_path)
    assert result.outcome == "baseline", result.record()
    assert result.path == tmp_path / "out" / "1.0.1.zip"
    reasons = {c.name: c.why for c in result.reasons}
    assert name in reasons, reasons
    assert why in reasons[name]
    assert not (tmp_path / "out" / "1.0.1.py").exists()


def test_the_registry_has_the_last_word_a_restart_it_asks_for_is_a_bundle(
    repo: GitRepo, tmp_path: Path
) -> None:
    # A new abstract method: the diff allows a new method, the registry does not (which
    # methods are abstract is decided when a class is made; its subclasses would not follow).
    edit(
        repo,
        (
            "async def fetch(n):",
            "class Store(abc.ABC):\n    @abc.abstractmethod\n    def get(self):\n"
            "        raise NotImplementedError\n\n\nasync def fetch(n):",
        ),
        ("import dataclasses\n", "import abc\nimport dataclasses\n"),
    )
    repo.git("tag", "-f", "v1")
    edit(
        repo,
        (
            "        raise NotImplementedError\n",
            "        raise NotImplementedError\n\n    @abc.abstractmethod\n    def put(self):\n"
            "        raise NotImplementedError\n",
        ),
    )
    result = run(repo, tmp_path)
    assert result.outcome == "baseline", result.record()
    assert [c.verdict for c in result.reasons] == ["restart"]
    assert "abstract methods change" in result.reasons[0].why


def test_a_removed_function_is_left_in_place(repo: GitRepo, tmp_path: Path) -> None:
    edit(
        repo,
        ("def limit():\n    return LIMIT\n", ""),
        ("    return weight * 2\n", "    return weight * 4\n"),
    )
    result = run(repo, tmp_path)
    assert result.outcome == "hot"
    assert verdicts(result) == {"shop.pricing:limit": "left", "shop.pricing:shipping": "inline"}


def test_two_trees_instead_of_a_git_range(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    for tree, factor in ((old, 2), (new, 3)):
        (tree / "pkg").mkdir(parents=True)
        (tree / "pkg" / "__init__.py").write_text("")
        (tree / "pkg" / "calc.py").write_text(f"def triple(x):\n    return x * {factor}\n")
    result = make(
        Request(
            baseline="3.0",
            version="3.0.1",
            old_tree=old,
            new_tree=new,
            output=tmp_path / "3.0.1.py",
        )
    )
    assert result.outcome == "hot"
    assert verdicts(result) == {"pkg.calc:triple": "inline"}
    assert f"the trees {old} (old) and {new} (new)" in result.origin


def test_unreadable_input_is_refused_with_what_to_do(repo: GitRepo, tmp_path: Path) -> None:
    with pytest.raises(MakeError, match="'nope' is not a commit"):
        make(
            Request(baseline="1.0", version="1.0.1", repo=repo.path, from_rev="nope", to_rev="HEAD")
        )
    repo.commit("broken", {"src/shop/pricing.py": "def broken(:\n"})
    with pytest.raises(MakeError, match=r"new version of src/shop/pricing\.py does not parse"):
        run(repo, tmp_path)
    with pytest.raises(MakeError, match="import root 'lib' holds no file"):
        make(
            Request(
                baseline="1.0",
                version="1.0.1",
                repo=repo.path,
                from_rev="v1",
                to_rev="HEAD",
                roots=("lib",),
            )
        )
    with pytest.raises(MakeError, match="not a PEP 440 version"):
        make(Request(baseline="1.0", version="one", repo=repo.path, from_rev="v1", to_rev="HEAD"))


def test_async_functions_generators_dataclass_methods_and_class_values(
    repo: GitRepo, tmp_path: Path
) -> None:
    edit(
        repo,
        ("    return n\n", "    return n * 2\n"),
        ("    yield from range(n)\n", "    yield from range(1, n + 1)\n"),
        ("        return self.qty\n", "        return self.qty * 10\n"),
        ("    MAX = 5\n", "    MAX = 6\n    MIN = MAX - 6\n"),
    )
    result = run(repo, tmp_path)
    assert result.outcome == "hot", result.record()
    assert verdicts(result) == {
        "shop.pricing:fetch": "inline",
        "shop.pricing:numbers": "inline",
        "shop.pricing:Line.cost": "inline",
        "shop.pricing:Cart.MAX": "migration",
        "shop.pricing:Cart.MIN": "migration",
    }
    seen = run_patched(
        roots=[repo_at(repo, "v1", tmp_path)],
        module="shop.pricing",
        patch=result.path,  # type: ignore[arg-type]
        baseline="1.0",
        before="import asyncio; line = module.Line('x', 2); numbers = module.numbers",
        probe="[asyncio.run(module.fetch(2)), list(numbers(2)), line.cost(), "
        "module.Cart.MAX, getattr(module.Cart, 'MIN', None)]",
    )
    assert seen["before"] == [2, [0, 1], 2, 5, None]
    assert seen["after"] == [4, [1, 2], 20, 6, 0]
    assert seen["rolled_back"] == seen["before"]


def test_a_new_re_export_is_set_on_the_module_by_the_migration(
    repo: GitRepo, tmp_path: Path
) -> None:
    repo.commit(
        "Offer the discount from the package",
        {"src/shop/__init__.py": "from shop.pricing import apply_discount\n"},
    )
    result = run(repo, tmp_path)
    assert result.outcome == "hot", result.record()
    assert verdicts(result) == {"shop:apply_discount": "migration"}
    seen = run_patched(
        roots=[repo_at(repo, "v1", tmp_path)],
        module="shop",
        patch=result.path,  # type: ignore[arg-type]
        baseline="1.0",
        before="import shop.pricing",
        probe="getattr(module, 'apply_discount', None) is shop.pricing.apply_discount",
    )
    assert (seen["before"], seen["after"], seen["rolled_back"]) == (False, True, False)


def test_private_names_are_mangled_as_in_their_class_and_strings_keep_their_text(
    repo: GitRepo, tmp_path: Path
) -> None:
    repo.commit(
        "A private counter",
        {
            "src/shop/counter.py": """\
                class _Counter:
                    def __init__(self):
                        self.__n = 0

                    def bump(self):
                        self.__n += 1
                        return self.__n
                """,
        },
    )
    repo.git("tag", "-f", "v1")
    text = (repo.path / "src/shop/counter.py").read_text()
    repo.commit(
        "Count by two, and say so",
        {
            "src/shop/counter.py": text.replace(
                "        self.__n += 1\n",
                '        self.__n += 2\n        note = """counted\n  by two"""\n'
                "        assert note.endswith('\\n  by two')\n",
            )
        },
    )
    result = run(repo, tmp_path)
    assert result.outcome == "hot", result.record()
    assert "class Counter:" in (result.path.read_text() if result.path else "")
    seen = run_patched(
        roots=[repo_at(repo, "v1", tmp_path)],
        module="shop.counter",
        patch=result.path,  # type: ignore[arg-type]
        baseline="1.0",
        before="counter = module._Counter(); bump = counter.bump",
        probe="bump()",
    )
    assert (seen["before"], seen["after"], seen["rolled_back"]) == (1, 3, 4)


def test_a_method_whose_defaults_read_its_class_body_gets_the_running_classs_values(
    repo: GitRepo, tmp_path: Path
) -> None:
    """``def pop(self, key, default=__not_given)`` and ``def take(self, n=LIMIT)``: Python
    computes a default in the class body, where those names are the class's (a private one
    mangled). The patch binds them to the running class's in the class holding the
    replacements: hot, and the sentinel is the one the running class compares against
    (sortedcontainers 2b03703: the patch failed to import with a NameError, a baseline)."""
    module = """\
        class _Missing:
            pass


        class Store:
            LIMIT = 2
            __missing = _Missing()

            def __init__(self):
                self.items = {"a": 1}

            def pop(self, key, default=__missing):
                if key in self.items:
                    return self.items.pop(key)
                if default is self.__missing:
                    return "v1 missing"
                return default

            def take(self, n=LIMIT):
                return ("v1", n)
        """
    repo.commit("A store", {"src/shop/store.py": module})
    repo.git("tag", "-f", "v1")
    repo.commit("Say v2", {"src/shop/store.py": module.replace('"v1', '"v2')})
    result = run(repo, tmp_path)
    assert result.outcome == "hot", result.record()
    assert {c.name: c.verdict for c in result.changes} == {
        "shop.store:Store.pop": "inline",
        "shop.store:Store.take": "inline",
    }
    seen = run_patched(
        roots=[repo_at(repo, "v1", tmp_path)],
        module="shop.store",
        patch=result.path,  # type: ignore[arg-type]
        baseline="1.0",
        before="store = module.Store()",
        probe="[store.pop('x'), store.pop('x', 0), list(store.take()), store.take(3)[0]]",
    )
    assert seen["before"] == ["v1 missing", 0, ["v1", 2], "v1"]
    assert seen["after"] == ["v2 missing", 0, ["v2", 2], "v2"]
    assert seen["rolled_back"] == seen["before"]


def test_import_of_a_submodule_becoming_import_of_its_package_binds_the_same_module(
    repo: GitRepo, tmp_path: Path
) -> None:
    """``import os.path`` becoming ``import os`` binds ``os`` to the same package, and the
    running process keeps ``os.path`` loaded: the fix beside it goes hot (humanize 9627694
    was a baseline for it). The other way, ``import email`` becoming ``import email.utils``,
    the new code may use a submodule the running process never loaded: a baseline."""
    module = """\
        import os.path


        def where(name):
            return ("v1", os.path.basename(name))
        """
    repo.commit("Where", {"src/shop/where.py": module})
    repo.git("tag", "-f", "v1")
    new = module.replace("import os.path", "import os").replace('"v1"', '"v2"')
    repo.commit("Import os", {"src/shop/where.py": new})
    result = run(repo, tmp_path)
    assert result.outcome == "hot", result.record()
    seen = run_patched(
        roots=[repo_at(repo, "v1", tmp_path)],
        module="shop.where",
        patch=result.path,  # type: ignore[arg-type]
        baseline="1.0",
        before="where = module.where",
        probe="where('/a/b.txt')",
    )
    assert seen["before"] == seen["rolled_back"] == ["v1", "b.txt"]
    assert seen["after"] == ["v2", "b.txt"]
    repo.git("tag", "-f", "v1")
    mail = 'import email\n\n\ndef parse(text):\n    return ("v1", text)\n'
    repo.commit("Mail", {"src/shop/mail.py": mail})
    repo.git("tag", "-f", "v1")
    new = mail.replace("import email", "import email.utils").replace('"v1"', '"v2"')
    repo.commit("Use email.utils", {"src/shop/mail.py": new})
    result = run(repo, tmp_path / "other")
    assert result.outcome == "baseline", result.record()
    assert {c.name for c in result.reasons} == {"shop.mail:email"}


def test_a_default_reading_a_class_value_the_change_sets_is_a_baseline(
    repo: GitRepo, tmp_path: Path
) -> None:
    """``def take(self, n=LIMIT)`` with ``LIMIT`` changed too: the patch would compute the
    default from the running class's old value, where a restart gives the new one."""
    module = """\
        class Store:
            LIMIT = 2

            def take(self, n=LIMIT):
                return ("v1", n)
        """
    repo.commit("A store", {"src/shop/store.py": module})
    repo.git("tag", "-f", "v1")
    new = module.replace('"v1', '"v2').replace("LIMIT = 2", "LIMIT = 3")
    repo.commit("Take three", {"src/shop/store.py": new})
    result = run(repo, tmp_path)
    assert result.outcome == "baseline", result.record()
    why = {c.name: c.why for c in result.reasons}
    assert "a default value reads Store.LIMIT" in why["shop.store:Store.take"], why


def test_a_new_public_function_reaches_its_module_and_the_package_that_re_exports_it(
    repo: GitRepo, tmp_path: Path
) -> None:
    text = (repo.path / "src/shop/pricing.py").read_text()
    repo.commit(
        "Offer a surcharge",
        {
            "src/shop/pricing.py": text + "\n\ndef surcharge(price):\n    return price + LIMIT\n",
            "src/shop/__init__.py": "from shop.pricing import surcharge\n",
        },
    )
    result = run(repo, tmp_path)
    assert result.outcome == "hot", result.record()
    assert verdicts(result) == {"shop.pricing:surcharge": "added", "shop:surcharge": "migration"}
    seen = run_patched(
        roots=[repo_at(repo, "v1", tmp_path)],
        module="shop",
        patch=result.path,  # type: ignore[arg-type]
        baseline="1.0",
        before="import shop.pricing as pricing",
        probe="[hasattr(pricing, 'surcharge') and pricing.surcharge(1), "
        "getattr(module, 'surcharge', None) is getattr(pricing, 'surcharge', 0)]",
    )
    assert (seen["before"], seen["after"], seen["rolled_back"]) == (
        [False, False],
        [11, True],
        [False, False],
    )


def test_a_module_that_binds_another_modules_function_over_its_own_copy(
    tmp_path: Path,
) -> None:
    """``b`` keeps a copy of ``a.fee`` and imports the real one over it: one function at
    run time, replaced once when both copies change alike, a baseline when they differ."""
    repo = GitRepo(tmp_path / "repo")
    fee = "def fee(x):\n    return x + 1\n"
    copy = fee + "\n\ntry:\n    from shop.a import fee\nexcept ImportError:\n    pass\n"
    files = {"src/shop/__init__.py": "", "src/shop/a.py": fee, "src/shop/b.py": copy}
    repo.commit("the baseline", files)
    repo.git("tag", "v1")
    fixed = {
        "src/shop/a.py": fee.replace("+ 1", "+ 2"),
        "src/shop/b.py": copy.replace("+ 1", "+ 2"),
    }
    repo.commit("the fix", fixed)
    result = run(repo, tmp_path)
    assert result.outcome == "hot", result.record()
    assert verdicts(result) == {"shop.a:fee": "inline", "shop.b:fee": "left"}
    assert result.path is not None
    seen = run_patched(
        roots=[repo_at(repo, "v1", tmp_path)],
        module="shop.b",
        patch=result.path,
        baseline="1.0",
        before="from shop.b import fee as early",
        probe="early(1)",
    )
    assert (seen["before"], seen["after"], seen["rolled_back"]) == (2, 3, 2)

    repo.commit("the copy fixed otherwise", {"src/shop/b.py": copy.replace("+ 1", "+ 3")})
    result = run(repo, tmp_path)
    assert result.outcome == "baseline", result.record()
    reasons = {c.name: c.why for c in result.reasons}
    assert "whose new code differs" in reasons["shop.b:fee"]


ZONES = """\
def __make_lookup():
    cache = {}

    def lookup(name):
        return cache.setdefault(name, name.upper())

    return lookup


lookup = __make_lookup()
del __make_lookup
"""


def test_a_factory_the_module_deletes_at_import_is_a_baseline_saying_so(
    repo: GitRepo, tmp_path: Path
) -> None:
    """python-dateutil's ``gettz = __get_gettz(); del __get_gettz``: the running module has
    no factory to patch, and ``lookup`` was made by the old one."""
    repo.commit("zones", {"src/shop/zones.py": ZONES})
    repo.git("tag", "-f", "v1")
    repo.commit("the fix", {"src/shop/zones.py": ZONES.replace("name.upper()", "name.lower()")})
    result = run(repo, tmp_path)
    assert result.outcome == "baseline", result.record()
    why = {c.name: c.why for c in result.reasons}["shop.zones:__make_lookup"]
    assert "the module deletes it when imported (line 11: `del __make_lookup`)" in why, why
    assert "what it made before that keeps the old code" in why, why


GARMENTS = """\
def _kind(cls):
    return cls.__name__.lower()


class Garment:
    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._init_class()

    @classmethod
    def _init_class(cls):
        cls.kind = _kind(cls)
        cls.size = 1


class Shirt(Garment):
    pass


def _table():
    return {"s": 1}


TABLE = _table()


def price(x):
    return x + _table()["s"]
"""


def test_code_that_ran_at_import_is_a_baseline_what_it_made_keeps_the_old_result(
    repo: GitRepo, tmp_path: Path
) -> None:
    """bidict 77ade42 changes ``BidictBase._init_class``, which its ``__init_subclass__`` runs
    for each class made: made hot, the classes made at import kept what the old code set
    (a subclass backed by ``UserDict`` kept ``_fwdm_is_dict`` True and a plain ``KeysView``,
    where a restart gives False and ``BidictKeysView``). The same for a value a module-level
    statement computes with a changed function (``TABLE = _table()``)."""
    repo.commit("garments", {"src/shop/garments.py": GARMENTS})
    repo.git("tag", "-f", "v1")
    fixed = (
        GARMENTS.replace("lower()", "upper()")
        .replace("cls.size = 1", "cls.size = 2")
        .replace('{"s": 1}', '{"s": 2}')
        .replace("return x + ", "return x - ")
    )
    repo.commit("the fix", {"src/shop/garments.py": fixed})
    result = run(repo, tmp_path)
    assert result.outcome == "baseline", result.record()
    assert verdicts(result) == {
        "shop.garments:_kind": "baseline",
        "shop.garments:Garment._init_class": "baseline",
        "shop.garments:_table": "baseline",
        "shop.garments:price": "replace",
    }
    why = {c.name: c.why for c in result.reasons}
    hook = "Garment.__init_subclass__ (line 6), which runs for each subclass of Garment made"
    assert hook in why["shop.garments:_kind"], why
    assert hook in why["shop.garments:Garment._init_class"], why
    assert "(line 24: `TABLE = _table()`)" in why["shop.garments:_table"], why
    assert "a restart would run the new code there" in why["shop.garments:_table"], why


def test_what_another_module_computed_at_import_from_a_change_is_a_baseline(
    tmp_path: Path,
) -> None:
    """``prices`` computes ``DOUBLE`` from ``rates.RATE`` and ``TABLE`` by calling
    ``rates.build()`` when it is imported: a migration of RATE and a replaced build()
    leave both as the old code made them (a restart makes them anew). A mere reference
    to build() (a handler table) is the one function object, replaced in place: hot."""
    repo = GitRepo(tmp_path / "repo")
    rates = "RATE = 2\n\n\ndef build():\n    return {'x': 1}\n"
    prices = """\
        import shop.rates
        from shop import rates as r
        from shop.rates import build

        DOUBLE = shop.rates.RATE * 2
        TABLE = r.build()
        HANDLERS = {"b": build}
        """
    files = {"src/shop/__init__.py": "", "src/shop/rates.py": rates, "src/shop/prices.py": prices}
    repo.commit("the baseline", files)
    repo.git("tag", "v1")
    repo.commit("the fix", {"src/shop/rates.py": rates.replace("2", "3").replace("1}", "2}")})
    result = run(repo, tmp_path)
    assert result.outcome == "baseline", result.record()
    why = {c.name: c.why for c in result.reasons}
    assert set(why) == {"shop.rates:RATE", "shop.rates:build"}, why
    assert why["shop.rates:RATE"].startswith(
        "shop.prices reads it when the module is imported (line 5: "
        "`DOUBLE = shop.rates.RATE * 2`): what it computed from it keeps the old value"
    ), why
    assert why["shop.rates:build"].startswith(
        "shop.prices runs it when the module is imported (line 6: `TABLE = r.build()`)"
    ), why

    table = "from shop.rates import build\n\nHANDLERS = {'b': build}\n"
    repo.commit("a table only", {"src/shop/prices.py": table})
    repo.git("tag", "-f", "v1")
    repo.commit("build anew", {"src/shop/rates.py": rates.replace("1}", "5}")})
    result = run(repo, tmp_path)
    assert result.outcome == "hot", result.record()


def test_a_block_under_typing_imported_as_another_name_never_runs(tmp_path: Path) -> None:
    """``import typing as t`` then ``if t.TYPE_CHECKING:`` (jinja's, click's, tenacity's
    way of writing it): the block never runs, so an import added to it is no module body
    statement run at import, and the fix beside it goes hot."""
    module = """\
        import typing as t

        if t.TYPE_CHECKING:
            from decimal import Decimal


        def price(x: "Decimal") -> int:
            return x + 1
        """
    fixed = module.replace(
        "from decimal import Decimal\n",
        "from decimal import Decimal\n            from fractions import Fraction\n",
    ).replace("x + 1", "x + 2")
    repo = GitRepo(tmp_path / "repo")
    repo.commit("the baseline", {"src/shop/__init__.py": "", "src/shop/m.py": module})
    repo.git("tag", "v1")
    repo.commit("the fix", {"src/shop/m.py": fixed})
    result = make_since_v1(repo, tmp_path / "out")
    assert result.outcome == "hot", result.record()
    assert set(verdicts(result)) == {"shop.m:price"}, result.record()
