"""``hotpatch make`` and nested functions: a change only inside a nested function's body (a
closure, a decorator's wrapper) becomes a nested target (``mod:outer.<locals>.inner``) that
reaches the function objects made before the patch; what the registry would refuse stays a
baseline, with the reason, and the registry agrees with each verdict."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from gitrepo import GitRepo, make_since_v1, run_patched, verdicts

from hotpatch.make import MakeResult
from hotpatch.make._check import check_patch

TOOLS = '''\
"""Tools."""

import functools

FACTOR = 3


def scaled(factor):
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args):
            return fn(*args) + factor

        return wrapper

    return deco


def audited(fn):
    @functools.wraps(fn)
    def wrapper(*args):
        return fn(*args)

    return wrapper


def make_adder(n, scale=1):
    def add(x):
        return x + n

    return add


def with_default(n):
    def add(x, k=n):
        return x + k

    return add


def with_constant(n):
    def add(x, k=FACTOR):
        return x + n + k

    return add


def counter():
    count = 0

    def bump(step=1):
        nonlocal count
        count += step
        return count

    return bump


def branches(flag):
    if flag:
        def pick(x):
            return x

    else:
        def pick(x):
            return -x

    return pick


class Cart:
    def __init__(self):
        self.__fee = 1

    def pricer(self, rate):
        def price(x):
            return x * rate + self.__fee

        return price


def make_key(n):
    return lambda x: x + n


def two_keys(n):
    return lambda x: x + n, lambda x: x - n


def make_scaler(n):
    scale = lambda x: x * n
    return scale


def ordered(items):
    key = lambda v: -v
    return sorted(items, key=key)


@scaled(10)
def weight(x):
    return x


@audited
def label(x):
    return f"<{x}>"


ADD2 = make_adder(2)
BUMP = counter()
DEFAULTED = with_default(5)
KEY = make_key(1)
SCALER = make_scaler(3)
'''

MODULE = "shop.tools"


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    repo = GitRepo(tmp_path / "repo")
    repo.commit("the baseline", {"src/shop/__init__.py": "", "src/shop/tools.py": TOOLS})
    repo.git("tag", "v1")
    return repo


def edit(repo: GitRepo, *pairs: tuple[str, str]) -> None:
    text = (repo.path / "src/shop/tools.py").read_text()
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new, 1)
    repo.commit("the fix", {"src/shop/tools.py": text})


def run(repo: GitRepo, tmp_path: Path) -> MakeResult:
    return make_since_v1(repo, tmp_path / "out")


def old_root(repo: GitRepo, tmp_path: Path) -> Path:
    """The old version's import root, exported (the repository's work tree stays as it is)."""
    dest = tmp_path / "export-v1"
    if not dest.exists():
        repo.git("worktree", "add", "-q", "--detach", str(dest), "v1")
    return dest / "src"


def patched(repo: GitRepo, tmp_path: Path, result: MakeResult, before: str, probe: str) -> dict:
    assert result.outcome == "hot", result.record()
    assert result.path is not None
    return run_patched(
        roots=[old_root(repo, tmp_path)],
        module=MODULE,
        patch=result.path,
        baseline="1.0",
        before=before,
        probe=probe,
    )


# -- hot: the functions made before the patch run the new code ---------------------------------


def test_a_fix_inside_a_decorator_factorys_wrapper_reaches_functions_decorated_at_import(
    repo: GitRepo, tmp_path: Path
) -> None:
    edit(
        repo, ("            return fn(*args) + factor\n", "            return fn(*args) * factor\n")
    )
    result = run(repo, tmp_path)
    target = f"{MODULE}:scaled.<locals>.deco.<locals>.wrapper"
    assert verdicts(result) == {target: "inline"}
    text = result.path.read_text() if result.path else ""
    assert f'@patch.replace("{target}")' in text
    assert "functools.wraps" not in text  # the decorator ran at import; it is not the target
    compile(text, "patch", "exec")
    seen = patched(
        repo,
        tmp_path,
        result,
        before="early = module.weight\n@module.scaled(2)\ndef later(x):\n    return x",
        probe="[early(4), later(4), module.scaled(5)(abs)(-4), early.__wrapped__(4)]",
    )
    assert seen["before"] == [14, 6, 9, 4]
    assert seen["after"] == [40, 8, 20, 4]
    assert seen["rolled_back"] == seen["before"]


def test_a_fix_inside_a_plain_decorators_wrapper_and_a_closure_made_at_import(
    repo: GitRepo, tmp_path: Path
) -> None:
    edit(
        repo,
        ("            return fn(*args) + factor\n", "            return fn(*args) - factor\n"),
        (
            "        return fn(*args)\n\n    return wrapper",
            "        return fn(*args).upper()\n\n    return wrapper",
        ),
        ("        return x + n\n", "        return x + n * 10\n"),
    )
    result = run(repo, tmp_path)
    assert verdicts(result) == {
        f"{MODULE}:scaled.<locals>.deco.<locals>.wrapper": "inline",
        f"{MODULE}:audited.<locals>.wrapper": "inline",
        f"{MODULE}:make_adder.<locals>.add": "inline",
    }
    why = {c.name: c.why for c in result.changes}[f"{MODULE}:audited.<locals>.wrapper"]
    assert "every function made from it" in why
    text = result.path.read_text() if result.path else ""
    assert "def scaled_deco_wrapper_(*args):" in text  # two functions named wrapper: renamed
    seen = patched(
        repo,
        tmp_path,
        result,
        before="label = module.label; add2 = module.ADD2; weight = module.weight",
        probe="[label('a'), add2(1), module.make_adder(3)(1), weight(1)]",
    )
    assert seen["before"] == ["<a>", 3, 4, 11]
    assert seen["after"] == ["<A>", 21, 31, -9]
    assert seen["rolled_back"] == seen["before"]


def test_a_closure_that_assigns_its_cells_and_one_in_a_method_with_private_names(
    repo: GitRepo, tmp_path: Path
) -> None:
    edit(
        repo,
        ("        count += step\n", "        count += step * 10\n"),
        (
            "            return x * rate + self.__fee\n",
            "            return x * rate + self.__fee * 100\n",
        ),
        (  # a comprehension's first iterable is read by the function's own code
            "        return x + n + k\n",
            "        return sum([v for v in (x, n, k)]) * 2\n",
        ),
    )
    result = run(repo, tmp_path)
    assert verdicts(result) == {
        f"{MODULE}:counter.<locals>.bump": "inline",
        f"{MODULE}:Cart.pricer.<locals>.price": "inline",
        f"{MODULE}:with_constant.<locals>.add": "inline",
    }
    text = result.path.read_text() if result.path else ""
    assert "    global count\n" in text  # in the patch file the closure's cell is declared global
    assert "    nonlocal count\n" not in text
    seen = patched(
        repo,
        tmp_path,
        result,
        before="bump = module.BUMP; price = module.Cart().pricer(2)\n"
        "plus = module.with_constant(1)",
        probe="[bump(), price(3), plus(1)]",
    )
    assert seen["before"] == [1, 7, 5]
    assert seen["after"] == [11, 106, 10]  # the cell keeps its count: 1, then + 10
    assert seen["rolled_back"] == [12, 7, 5]


def test_a_lambda_that_outlives_its_call_and_one_used_in_place(
    repo: GitRepo, tmp_path: Path
) -> None:
    edit(
        repo,
        ("    return lambda x: x + n\n", "    return lambda x: x * n + 10\n"),
        ("scale = lambda x: x * n\n", "scale = lambda x: x * n * 2\n"),
        ("key = lambda v: -v\n", "key = lambda v: v\n"),
    )
    result = run(repo, tmp_path)
    assert verdicts(result) == {
        f"{MODULE}:make_key.<locals>.<lambda>": "inline",
        f"{MODULE}:make_scaler.<locals>.<lambda>": "inline",  # returned through a name
        f"{MODULE}:ordered": "inline",  # its lambda is only passed to a call: as before
    }
    text = result.path.read_text() if result.path else ""
    assert "def make_key_lambda(x):\n    return x * n + 10\n" in text
    seen = patched(
        repo,
        tmp_path,
        result,
        before="key = module.KEY; scaler = module.SCALER",
        probe="[key(3), module.make_key(2)(3), module.ordered([1, 3, 2]), scaler(1)]",
    )
    assert seen["before"] == [4, 5, [3, 2, 1], 3]
    assert seen["after"] == [13, 16, [1, 2, 3], 6]
    assert seen["rolled_back"] == seen["before"]


# -- not hot: a baseline naming why, and the registry says no to the nested patch as well -------

# (edits, the change named, a word of its reason, the replacement one would write by hand
# for the registry, or None where no such patch says what the commit does)
BASELINE_CASES: dict[str, tuple[list[tuple[str, str]], str, str, str | None]] = {
    "closure changes": (
        [("        return x + n\n", "        return (x + n) * scale\n")],
        "make_adder.<locals>.add",
        "closure",
        "def add(x):\n    return (x + n) * scale\n",
    ),
    "default reads the enclosing scope": (
        [("        return x + k\n", "        return x + k * 2\n")],
        "with_default.<locals>.add",
        "default",
        "def add(x, k=n):\n    return x + k * 2\n",
    ),
    "parameters change": (
        [
            (
                "    def add(x):\n        return x + n\n",
                "    def add(x, y=0):\n        return x + n + y\n",
            )
        ],
        "make_adder.<locals>.add",
        "signature",
        "def add(x, y=0):\n    return x + n + y\n",
    ),
    "becomes a generator": (
        [("        return x + n\n", "        yield x + n\n")],
        "make_adder.<locals>.add",
        "generator",
        "def add(x):\n    yield x + n\n",
    ),
    "a def in each branch": (
        [("            return -x\n", "            return -x * 2\n")],
        "branches.<locals>.pick",
        "more than one",
        "def pick(x):\n    return -x * 2\n",
    ),
    "two lambdas in one scope": (
        [("lambda x: x - n\n", "lambda x: x - 2 * n\n")],
        "two_keys.<locals>.<lambda>",
        "more than one",
        "def key(x):\n    return x - 2 * n\n",
    ),
    # The registry's check passes such a patch, and the nested code fails when it runs
    # (NameError): the closure reaches only the replaced function's own code.
    "code nested in it reads its closure": (
        [
            (
                "        return wrapper\n\n    return deco",
                "        wrapper.factor = factor\n        return wrapper\n\n    return deco",
            )
        ],
        "scaled.<locals>.deco",
        "reads factor",
        None,
    ),
    "a generator expression in it reads its closure": (
        [("        return x + n\n", "        return x + sum(n for _ in range(2))\n")],
        "make_adder.<locals>.add",
        "reads n",
        None,
    ),
    "the enclosing function changes too": (
        [
            ("            return fn(*args) + factor\n", "            return fn(*args) * factor\n"),
            (
                "        return wrapper\n\n    return deco",
                "        wrapper.scaled = True\n        return wrapper\n\n    return deco",
            ),
        ],
        "scaled.<locals>.deco",
        "wrapper in it changes too and may outlive a call",
        None,
    ),
}


@pytest.mark.parametrize("case", sorted(BASELINE_CASES))
def test_what_the_registry_would_refuse_stays_a_baseline_naming_why(
    repo: GitRepo, tmp_path: Path, case: str
) -> None:
    pairs, nested, word, by_hand = BASELINE_CASES[case]
    edit(repo, *pairs)
    result = run(repo, tmp_path)
    assert result.outcome == "baseline", result.record()
    reasons = {c.name: c.why for c in result.reasons}
    target = f"{MODULE}:{nested}"
    assert target in reasons, reasons
    assert word in reasons[target]
    if by_hand is None:
        return
    # The registry, given the nested patch a person would write for the change, refuses it.
    header = "from hotpatch import Patch\npatch = Patch(version='1.0.1', baseline='1.0')\n"
    path = tmp_path / "by_hand.py"
    path.write_text(f"{header}\n@patch.replace({target!r})\n{textwrap.dedent(by_hand)}")
    verdict = check_patch(
        path,
        baseline="1.0",
        sys_path=[str(old_root(repo, tmp_path)), *sys.path],
        expected={},
        timeout=60,
    )
    assert not verdict.hot
    assert verdict.error or verdict.reasons
