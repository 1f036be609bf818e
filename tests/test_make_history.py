"""``hotpatch make`` on shapes of change that real projects' fix commits have (found by
``benchmarks/make_commits.py``), each reproduced on a small module of our own: the patch is
hot and does what the new code does, or it is a baseline whose reason says what it is."""

from __future__ import annotations

import sys
from pathlib import Path

import pluggy
import pytest
from gitrepo import GitRepo, make_since_v1, run_patched, verdicts

from hotpatch.make import MakeResult


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return GitRepo(tmp_path / "repo")


def run(repo: GitRepo, tmp_path: Path) -> MakeResult:
    return make_since_v1(repo, tmp_path / "out")


def start(repo: GitRepo, files: dict[str, str]) -> None:
    repo.commit("the baseline", {"src/kit/__init__.py": "", **files})
    repo.git("tag", "v1")


def old_tree(repo: GitRepo, tmp_path: Path) -> Path:
    dest = tmp_path / "old"
    repo.git("worktree", "add", "-q", "--detach", str(dest), "v1")
    return dest / "src"


# -- names the patch file reads --------------------------------------------------------------

SENTINEL = """\
try:
    from kit._marks import make_mark
    MISSING = make_mark("MISSING")
except ImportError:
    MISSING = object()


def lookup(table, key, default=MISSING):
    if key in table:
        return table[key]
    if default is MISSING:
        raise KeyError(key)
    return default
"""


def test_a_default_reading_a_name_bound_under_try_is_imported_from_the_module(
    repo: GitRepo, tmp_path: Path
) -> None:
    """A module binds its sentinel in a try/except at import; a fix to a function whose
    default is that sentinel must read the running module's sentinel (before: the patch
    file did not import it and failed with NameError, so the fix was a baseline)."""
    start(repo, {"src/kit/table.py": SENTINEL})
    fixed = SENTINEL.replace("    if key in table:", "    if key in table and key is not None:")
    repo.commit("Fix None keys", {"src/kit/table.py": fixed})
    result = run(repo, tmp_path)
    assert result.outcome == "hot", result.record()
    assert result.path is not None
    assert "from kit.table import MISSING" in result.path.read_text()
    seen = run_patched(
        roots=[old_tree(repo, tmp_path)],
        module="kit.table",
        patch=result.path,
        baseline="1.0",
        before="lookup = module.lookup",
        probe="[lookup({None: 1}, None, 0), lookup({}, 'a', 5), "
        "lookup.__defaults__[0] is module.MISSING]",
    )
    assert seen["before"] == [1, 5, True]
    assert seen["after"] == [0, 5, True]
    assert seen["rolled_back"] == seen["before"]


def test_new_classes_are_defined_in_the_order_the_new_code_has_them(
    repo: GitRepo, tmp_path: Path
) -> None:
    """Two new classes, the second named first alphabetically and built on the first: the
    patch file defines them in source order (before: by name, NameError at import)."""
    base = "def describe(x):\n    return str(x)\n"
    start(repo, {"src/kit/shapes.py": base})
    new = (
        "class _Shape:\n    def name(self):\n        return 'shape'\n\n\n"
        "class _Circle(_Shape):\n    def name(self):\n        return 'circle'\n\n\n"
        "def describe(x):\n    return _Circle().name() + ':' + str(x)\n"
    )
    repo.commit("Describe with a shape", {"src/kit/shapes.py": new})
    result = run(repo, tmp_path)
    assert result.outcome == "hot", result.record()
    assert result.path is not None
    text = result.path.read_text()
    assert text.index("class _Shape:") < text.index("class _Circle(_Shape):")
    seen = run_patched(
        roots=[old_tree(repo, tmp_path)],
        module="kit.shapes",
        patch=result.path,
        baseline="1.0",
        before="describe = module.describe",
        probe="describe(1)",
    )
    assert (seen["before"], seen["after"], seen["rolled_back"]) == ("1", "circle:1", "1")


# -- classes ----------------------------------------------------------------------------------

POOLS = """\
class Pool:
    def __init__(self):
        self.__items = [1, 2]

    def size(self):
        return len(self.__items)


class WidePool(Pool):
    def size(self):
        return Pool.size(self) * 10
"""


def test_a_class_with_new_methods_is_still_the_running_base_of_its_subclasses_patch(
    repo: GitRepo, tmp_path: Path
) -> None:
    """Both a base class and its subclass gain a method: the subclass's patch class is built
    on the running base, not on the base's patch class (before: the patch class's name
    rebound the base's in the patch file, so the subclass's bases differed: a restart)."""
    start(repo, {"src/kit/pools.py": POOLS})
    new = POOLS.replace(
        "        return len(self.__items)\n",
        "        return len(self.__items)\n\n    def empty(self):\n        self.__items.clear()\n",
    ).replace(
        "        return Pool.size(self) * 10\n",
        "        return Pool.size(self) * 10\n\n    def refill(self):\n"
        "        self.empty()\n        return Pool.size(self)\n",
    )
    repo.commit("Empty and refill pools", {"src/kit/pools.py": new})
    result = run(repo, tmp_path)
    assert result.outcome == "hot", result.record()
    assert verdicts(result) == {
        "kit.pools:Pool.empty": "added",
        "kit.pools:WidePool.refill": "added",
    }
    assert result.path is not None
    seen = run_patched(
        roots=[old_tree(repo, tmp_path)],
        module="kit.pools",
        patch=result.path,
        baseline="1.0",
        before="big = module.WidePool()",
        probe="[big.size(), hasattr(big, 'refill') and big.refill(), module.WidePool.__bases__ "
        "== (module.Pool,)]",
    )
    assert seen["before"] == [20, False, True]
    assert seen["after"] == [20, 0, True]
    assert seen["rolled_back"] == [0, False, True]  # what refill() emptied stays emptied


def test_a_new_method_whose_default_reads_a_method_this_patch_adds_is_a_baseline(
    repo: GitRepo, tmp_path: Path
) -> None:
    """``def reset(self, clear=Pool.empty)`` where ``Pool.empty`` is new too: the default is
    computed when the patch file is imported, before the running class has it; the new code
    means the new method, which no patch file can name then: a baseline saying why."""
    start(repo, {"src/kit/pools.py": POOLS})
    new = POOLS.replace(
        "        return len(self.__items)\n",
        "        return len(self.__items)\n\n    def empty(self):\n        self.__items.clear()\n",
    ).replace(
        "        return Pool.size(self) * 10\n",
        "        return Pool.size(self) * 10\n\n    def reset(self, clear=Pool.empty):\n"
        "        clear(self)\n",
    )
    repo.commit("Reset pools", {"src/kit/pools.py": new})
    result = run(repo, tmp_path)
    assert result.outcome == "baseline", result.record()
    reasons = {c.name: c.why for c in result.reasons}
    assert "a default value reads Pool" in reasons["kit.pools:WidePool.reset"], reasons


def test_a_default_reading_another_modules_new_function_is_a_baseline(
    repo: GitRepo, tmp_path: Path
) -> None:
    """``def cached(key=keys.method_key)`` where ``keys.method_key`` is new in this change:
    the default is computed when the patch file is imported, before the migration adds the
    function (before: the patch failed to import with AttributeError)."""
    start(
        repo,
        {
            "src/kit/keys.py": "def plain_key(*args):\n    return args\n",
            "src/kit/memo.py": "from kit import keys\n\n\n"
            "def cached(key=keys.plain_key):\n    return key\n",
        },
    )
    repo.commit(
        "Key methods without self",
        {
            "src/kit/keys.py": "def plain_key(*args):\n    return args\n\n\n"
            "def method_key(_, *args):\n    return args\n",
            "src/kit/memo.py": "from kit import keys\n\n\n"
            "def cached(key=keys.method_key):\n    return key\n",
        },
    )
    result = run(repo, tmp_path)
    assert result.outcome == "baseline", result.record()
    reasons = {c.name: c.why for c in result.reasons}
    assert "a default value reads keys.method_key" in reasons["kit.memo:cached"], reasons


def test_a_new_import_of_what_the_same_change_adds_to_another_module_is_a_baseline(
    repo: GitRepo, tmp_path: Path
) -> None:
    """``from kit.flags import FAST`` is new in one module and ``FAST`` new in the other: the
    patch file would import it before the migration adds it (before: the patch failed to
    import with ImportError, a baseline saying only that)."""
    start(
        repo,
        {
            "src/kit/flags.py": "SLOW = False\n",
            "src/kit/run.py": "def speed():\n    return 'normal'\n",
        },
    )
    repo.commit(
        "Run fast",
        {
            "src/kit/flags.py": "SLOW = False\nFAST = True\n",
            "src/kit/run.py": "from kit.flags import FAST\n\n\n"
            "def speed():\n    return 'fast' if FAST else 'normal'\n",
        },
    )
    result = run(repo, tmp_path)
    assert result.outcome == "baseline", result.record()
    reasons = {c.name: c.why for c in result.reasons}
    assert "kit.run:FAST" in reasons, reasons
    assert "kit.flags" in reasons["kit.run:FAST"]
    assert "before the migration" in reasons["kit.run:FAST"]


def test_a_project_hotpatch_itself_imports_cannot_be_checked_against_its_old_code(
    repo: GitRepo, tmp_path: Path
) -> None:
    """A project named like a package hotpatch imports (pluggy): the checking process has
    the installed one already, so its check would judge the patch against that code, not
    the old tree's. A baseline naming both places, never a verdict on the wrong code."""
    repo.commit("the baseline", {"src/pluggy/__init__.py": "def answer():\n    return 1\n"})
    repo.git("tag", "v1")
    repo.commit("Fix the answer", {"src/pluggy/__init__.py": "def answer():\n    return 2\n"})
    result = run(repo, tmp_path)
    assert result.outcome == "baseline", result.record()
    (why,) = [c.why for c in result.reasons]
    assert "pluggy is already imported in the process that checks the patch" in why, why
    assert str(Path(pluggy.__file__)) in why


PLUGINS = """\
REGISTRY = {}


class Plugin:
    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        REGISTRY[cls.__name__] = cls


class Echo(Plugin):
    def run(self, text):
        return text
"""


def test_a_new_method_of_a_class_whose_base_runs_a_hook_for_each_subclass_is_a_baseline(
    repo: GitRepo, tmp_path: Path
) -> None:
    """``Echo(Plugin)`` gains a method; ``Plugin.__init_subclass__`` registers every class
    made from it. The patch class is such a class: made in the service when the patch is
    loaded, it would replace the running Echo in the registry (before: hot, and the
    registry held the patch class afterwards, silently)."""
    start(repo, {"src/kit/plugins.py": PLUGINS})
    new = PLUGINS.replace(
        "        return text\n",
        "        return self.shout(text)\n\n    def shout(self, text):\n"
        "        return text.upper()\n",
    )
    repo.commit("Echo loudly", {"src/kit/plugins.py": new})
    result = run(repo, tmp_path)
    assert result.outcome == "baseline", result.record()
    reasons = {c.name: c.why for c in result.reasons}
    why = reasons["kit.plugins:Echo"]
    assert "kit.plugins:Plugin.__init_subclass__" in why, why
    assert "the patch class" in why


def test_a_new_method_of_a_class_with_slots_declares_them_in_the_patch_class(
    repo: GitRepo, tmp_path: Path
) -> None:
    """A class with ``__slots__`` gains a method: the patch class declares the same slots,
    which the registry needs to patch it in place (before: the patch class had none, the
    registry asked for a restart, and the fix was a baseline)."""
    point = (
        "class Point:\n    __slots__ = ('x', 'y')\n\n    def __init__(self, x, y):\n"
        "        self.x = x\n        self.y = y\n"
    )
    start(repo, {"src/kit/geo.py": point})
    new = point + "\n    def norm(self):\n        return abs(self.x) + abs(self.y)\n"
    repo.commit("Measure points", {"src/kit/geo.py": new})
    result = run(repo, tmp_path)
    assert result.outcome == "hot", result.record()
    assert verdicts(result) == {"kit.geo:Point.norm": "added"}
    assert result.path is not None
    seen = run_patched(
        roots=[old_tree(repo, tmp_path)],
        module="kit.geo",
        patch=result.path,
        baseline="1.0",
        before="p = module.Point(3, -4)",
        probe="[hasattr(p, 'norm') and p.norm(), module.Point.__slots__, p.x]",
    )
    assert seen["before"] == [False, ["x", "y"], 3]
    assert seen["after"] == [7, ["x", "y"], 3]
    assert seen["rolled_back"] == seen["before"]


# -- code nested deeper than Python's recursion limit ------------------------------------------

# idna's generated tables of 2015 add up ~1,000 lists in one expression, which Python compiles
# and imports; reading it (ast.dump, ast.unparse) recursed past the limit of 1,000 frames.
DEEP = " + ".join(f"[{i}]" for i in range(1400))
TABLES = f"""\
SCRIPTS = {{"latin": frozenset({DEEP})}}


def known(code):
    return code in SCRIPTS["latin"]


class Bag:
    ITEMS = frozenset({DEEP})

    def size(self):
        return len(self.ITEMS)


class Codes:
    def __iter__(self):
        return iter([1, 2])
"""


def test_a_module_with_an_expression_nested_deeper_than_the_recursion_limit_is_read(
    repo: GitRepo, tmp_path: Path
) -> None:
    """An expression 1,400 deep that Python imports: a fix to a function beside it is hot
    and does what the new code does (before: RecursionError out of ``hotpatch make``)."""
    limit = sys.getrecursionlimit()
    start(repo, {"src/kit/tables.py": TABLES})
    fixed = TABLES.replace("return code in SCRIPTS", "return code >= 0 and code in SCRIPTS")
    repo.commit("Fix negative codes", {"src/kit/tables.py": fixed})
    result = run(repo, tmp_path)
    assert sys.getrecursionlimit() == limit
    assert result.outcome == "hot", result.record()
    assert set(verdicts(result)) == {"kit.tables:known"}
    assert result.path is not None
    seen = run_patched(
        roots=[old_tree(repo, tmp_path)],
        module="kit.tables",
        patch=result.path,
        baseline="1.0",
        before="known = module.known",
        probe="[known(5), known(-1), known(5000), module.Bag().size()]",
    )
    assert seen["before"] == [True, False, False, 1400]
    assert seen["after"] == seen["before"]
    assert seen["rolled_back"] == seen["before"]


def test_a_changed_class_attribute_nested_deeper_than_the_recursion_limit_is_migrated(
    repo: GitRepo, tmp_path: Path
) -> None:
    """The class body's 1,400-deep value changes: the patch's migration sets it (before:
    RecursionError out of ``hotpatch make``)."""
    start(repo, {"src/kit/tables.py": TABLES})
    fixed = TABLES.replace("    ITEMS = frozenset([0]", "    ITEMS = frozenset([-1]")
    repo.commit("Count -1", {"src/kit/tables.py": fixed})
    result = run(repo, tmp_path)
    assert result.outcome == "hot", result.record()
    assert verdicts(result) == {"kit.tables:Bag.ITEMS": "migration"}
    assert result.path is not None
    seen = run_patched(
        roots=[old_tree(repo, tmp_path)],
        module="kit.tables",
        patch=result.path,
        baseline="1.0",
        before="bag = module.Bag()",
        probe="[-1 in bag.ITEMS, 0 in bag.ITEMS, bag.size()]",
    )
    assert seen["before"] == [False, True, 1400]
    assert seen["after"] == [True, False, 1400]
    assert seen["rolled_back"] == seen["before"]


def test_a_method_an_expression_nested_deeper_than_the_recursion_limit_may_run_is_named(
    repo: GitRepo, tmp_path: Path
) -> None:
    """``frozenset(...)`` iterates what ``EXTRA[0]`` and 1,400 lists add up to, an object
    make does not follow, so a changed ``__iter__`` of the project may have run at import:
    a baseline quoting the start of the expression (before: make quoted each of its 1,400 operands
    whole, unparsing ~1,000,000 nodes, and then recursed past the limit)."""
    tables = TABLES.replace(
        'SCRIPTS = {"latin": frozenset([0]', 'EXTRA = [[0]]\nSCRIPTS = {"latin": frozenset(EXTRA[0]'
    )
    start(repo, {"src/kit/tables.py": tables})
    fixed = tables.replace("iter([1, 2])", "iter([1, 2, 3])")
    repo.commit("Count 3", {"src/kit/tables.py": fixed})
    result = run(repo, tmp_path)
    assert result.outcome == "baseline", result.record()
    why = {c.name: c.why for c in result.reasons}
    assert set(why) == {"kit.tables:Codes.__iter__"}, why
    said = why["kit.tables:Codes.__iter__"]
    assert "through `frozenset(EXTRA[0] + [1] + [2] + [3]" in said, said
    assert "(line 2 of kit.tables)" in said, said
    assert len(said) < 1000, said


# -- old code that does not import as checked out ----------------------------------------------


def test_a_module_the_build_writes_missing_from_the_old_code_is_named_with_the_fix(
    repo: GitRepo, tmp_path: Path
) -> None:
    """humanize's package imports ``humanize._version``, which its build writes (hatch-vcs)
    and git does not hold: the patch cannot be checked against the old code as checked
    out. The baseline says which module is missing from it and what to do instead."""
    init = "from kit._version import __version__\n"
    start(repo, {"src/kit/__init__.py": init, "src/kit/size.py": "def size(n):\n    return n\n"})
    repo.commit("Fix size", {"src/kit/size.py": "def size(n):\n    return abs(n)\n"})
    result = run(repo, tmp_path)
    assert result.outcome == "baseline", result.record()
    why = {c.name: c.why for c in result.reasons}
    assert set(why) == {"kit.size:size"}, why
    said = why["kit.size:size"]
    assert "No module named 'kit._version'" in said, said
    assert (
        "kit._version, which the old code imports, is not in it (src/kit/_version.py): a "
        "file the build writes, such as a version file, is not in git; check the patch "
        "against the code as installed (hotpatch make OLD_TREE NEW_TREE)"
    ) in said, said
