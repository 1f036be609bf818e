"""``hotpatch make`` on classes whose members or fields are data (enums, named tuples): a new
method is hot when the patch class declares the same members or fields again, so the file
``make`` writes declares them; what it cannot declare faithfully is a baseline saying why."""

from __future__ import annotations

from pathlib import Path

import pytest
from gitrepo import GitRepo, make_since_v1, run_patched, verdicts

from hotpatch.make import MakeResult

MODES = '''\
import enum


class Mode(enum.Enum):
    """How a tool runs."""

    FAST = 1
    """Skips the checks."""
    SAFE = 2
    QUICK = 1  # an alias of FAST

    def slow(self):
        return self is Mode.SAFE
'''

SLOW = "        return self is Mode.SAFE\n"
LABEL = "\n    def label(self):\n        return self.name.lower()\n"

AUTO = """\
from enum import IntFlag, auto


class Perm(IntFlag):
    READ = auto()
    WRITE = auto()
    ALL = READ | WRITE

    def readable(self):
        return bool(self & Perm.READ)
"""

POINTS = """\
from decimal import Decimal
from typing import NamedTuple


class Point(NamedTuple):
    x: int
    y: int = 0
    weight: Decimal = Decimal("1.5")

    def norm(self):
        return abs(self.x) + abs(self.y)
"""


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return GitRepo(tmp_path / "repo")


def run(repo: GitRepo, tmp_path: Path) -> MakeResult:
    return make_since_v1(repo, tmp_path / "out")


def fix(repo: GitRepo, name: str, text: str, old: str, new: str) -> None:
    """Commit ``text`` as ``src/kit/NAME.py`` and tag it ``v1``, then ``old`` replaced by
    ``new`` as the fix."""
    repo.commit("the baseline", {"src/kit/__init__.py": "", f"src/kit/{name}.py": text})
    repo.git("tag", "v1")
    assert old in text, old
    repo.commit("the fix", {f"src/kit/{name}.py": text.replace(old, new, 1)})


def old_tree(repo: GitRepo, tmp_path: Path) -> Path:
    dest = tmp_path / "old"
    repo.git("worktree", "add", "-q", "--detach", str(dest), "v1")
    return dest / "src"


def test_a_new_method_of_an_enum_is_hot_and_its_members_stay_the_same_objects(
    repo: GitRepo, tmp_path: Path
) -> None:
    fix(
        repo,
        "modes",
        MODES,
        SLOW,
        SLOW + LABEL,
    )
    result = run(repo, tmp_path)
    assert result.outcome == "hot", result.record()
    assert verdicts(result) == {"kit.modes:Mode.label": "added"}
    assert result.path is not None
    seen = run_patched(
        roots=[old_tree(repo, tmp_path)],
        module="kit.modes",
        patch=result.path,
        baseline="1.0",
        before="held = module.Mode.SAFE; alias = module.Mode.QUICK",
        probe="[hasattr(held, 'label') and held.label(), held is module.Mode(2), "
        "alias is module.Mode.FAST, [m.name for m in module.Mode], held.slow()]",
    )
    assert seen["before"] == [False, True, True, ["FAST", "SAFE"], True]
    assert seen["after"] == ["safe", True, True, ["FAST", "SAFE"], True]
    assert seen["rolled_back"] == seen["before"]


def test_a_new_method_of_a_flag_with_auto_members_is_hot(repo: GitRepo, tmp_path: Path) -> None:
    fix(
        repo,
        "perms",
        AUTO,
        "        return bool(self & Perm.READ)\n",
        "        return bool(self & Perm.READ)\n\n    def writable(self):\n"
        "        return bool(self & Perm.WRITE)\n",
    )
    result = run(repo, tmp_path)
    assert result.outcome == "hot", result.record()
    assert result.path is not None
    seen = run_patched(
        roots=[old_tree(repo, tmp_path)],
        module="kit.perms",
        patch=result.path,
        baseline="1.0",
        before="both = module.Perm.ALL",
        probe="[hasattr(both, 'writable') and both.writable(), int(both), "
        "both is module.Perm.READ | module.Perm.WRITE]",
    )
    assert seen["before"] == [False, 3, True]
    assert seen["after"] == [True, 3, True]
    assert seen["rolled_back"] == seen["before"]


def test_a_new_method_of_a_named_tuple_reaches_tuples_made_before(
    repo: GitRepo, tmp_path: Path
) -> None:
    fix(
        repo,
        "points",
        POINTS,
        "        return abs(self.x) + abs(self.y)\n",
        "        return abs(self.x) + abs(self.y)\n\n    def scaled(self, k):\n"
        "        return self._replace(x=self.x * k, y=self.y * k)\n",
    )
    result = run(repo, tmp_path)
    assert result.outcome == "hot", result.record()
    assert verdicts(result) == {"kit.points:Point.scaled": "added"}
    assert result.path is not None
    seen = run_patched(
        roots=[old_tree(repo, tmp_path)],
        module="kit.points",
        patch=result.path,
        baseline="1.0",
        before="p = module.Point(2, -3)",
        probe="[hasattr(p, 'scaled') and list(p.scaled(2)), p._fields, str(p.weight), p.norm()]",
    )
    assert seen["before"] == [False, ["x", "y", "weight"], "1.5", 5]
    assert seen["after"] == [[4, -6, "1.5"], ["x", "y", "weight"], "1.5", 5]
    assert seen["rolled_back"] == seen["before"]


def test_an_enum_member_made_by_a_call_is_not_declared_again_a_baseline_says_why(
    repo: GitRepo, tmp_path: Path
) -> None:
    """Declaring the members again would call ``next_code()`` a second time in the service
    (another value, and whatever else it does): a baseline naming the member."""
    counter = "_codes = itertools.count(10)\n\n\ndef next_code():\n    return next(_codes)\n"
    text = MODES.replace("import enum\n", f"import enum\nimport itertools\n\n{counter}")
    text = text.replace("    SAFE = 2\n", "    SAFE = next_code()\n")
    fix(
        repo,
        "modes",
        text,
        SLOW,
        SLOW + LABEL,
    )
    result = run(repo, tmp_path)
    assert result.outcome == "baseline", result.record()
    reasons = {c.name: c.why for c in result.reasons}
    assert "kit.modes:Mode.label" in reasons, reasons
    assert "Mode.SAFE" in reasons["kit.modes:Mode.label"], reasons
    assert "calls code" in reasons["kit.modes:Mode.label"], reasons


def test_an_enum_of_sentinel_objects_is_a_baseline_saying_no_second_one_equals(
    repo: GitRepo, tmp_path: Path
) -> None:
    """``UNSET = object()`` (click's ``Sentinel``): a patch class declaring it again would
    make another object, another member value to the registry."""
    text = MODES.replace("    SAFE = 2\n", "    SAFE = object()\n")
    fix(repo, "modes", text, SLOW, SLOW + LABEL)
    result = run(repo, tmp_path)
    assert result.outcome == "baseline", result.record()
    why = {c.name: c.why for c in result.reasons}["kit.modes:Mode.label"]
    assert "Mode.SAFE is made by `object()`" in why, why
    assert "no second declaration equals" in why, why


SPANS = """\
class Span:
    def __init__(self, start, stop):
        self.start, self.stop = start, stop

    def __eq__(self, other):
        return (self.start, self.stop) == (other.start, other.stop)

    def __hash__(self):
        return hash((self.start, self.stop))

    def __len__(self):
        return self.stop - self.start
"""


def test_a_changed_hash_is_a_baseline_the_sets_and_dict_keys_made_before_keep_the_old_one(
    repo: GitRepo, tmp_path: Path
) -> None:
    """A set or a dict files each key under the hash it had when it went in: replaced hot,
    ``__hash__`` would give the keys already filed another hash, and ``span in seen`` would
    answer False for a span that is there (more-itertools' numeric_range, 069b300)."""
    fix(
        repo,
        "spans",
        SPANS,
        "        return hash((self.start, self.stop))\n",
        "        return hash((self.start, len(self)))\n",
    )
    result = run(repo, tmp_path)
    assert result.outcome == "baseline", result.record()
    why = {c.name: c.why for c in result.reasons}["kit.spans:Span.__hash__"]
    assert "sets and dict keys" in why, why
    assert "restart" in why, why


def test_a_hash_added_to_a_class_is_a_baseline_its_instances_were_filed_by_identity(
    repo: GitRepo, tmp_path: Path
) -> None:
    """Without ``__eq__`` and ``__hash__`` a class hashes by identity: added hot, the new
    ``__hash__`` would lose every instance already in a set or a dict."""
    plain = SPANS.partition("    def __eq__")[0]
    fix(repo, "spans", plain, plain, SPANS)
    result = run(repo, tmp_path)
    assert result.outcome == "baseline", result.record()
    why = {c.name: c.why for c in result.reasons}["kit.spans:Span.__hash__"]
    assert "__hash__ is added" in why, why
    assert "sets and dict keys" in why, why
