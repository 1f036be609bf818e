"""``hotpatch make`` and the modules that re-export another module's names: by
``from .more import *`` (as more-itertools' package does) or by ``from .more import name``.

What is right is what a restart would give: each test compares the names the package
offers with the patch applied against the package imported fresh from the new code.
"""

from __future__ import annotations

from pathlib import Path

from gitrepo import GitRepo, checkout, imported_fresh, make_since_v1, run_patched, verdicts

MORE = """\
__all__ = ["chunked"]


def chunked(items, n):
    return [items[i : i + n] for i in range(0, len(items), n)]


def _spare():
    return 0
"""

SUBFACTORIAL = """

def subfactorial(n):
    return 1 if n == 0 else 0 if n == 1 else (n - 1) * (subfactorial(n - 1) + subfactorial(n - 2))
"""


def package(tmp_path: Path, files: dict[str, str]) -> GitRepo:
    repo = GitRepo(tmp_path / "repo")
    repo.commit("the baseline", {"src/its/__init__.py": "from .more import *  # noqa\n", **files})
    repo.git("tag", "v1")
    return repo


def export(repo: GitRepo, rev: str, tmp_path: Path) -> Path:
    return checkout(repo, rev, tmp_path)


def restarted(root: Path, module: str) -> list[str]:
    """The public names of ``module`` imported fresh from ``root``: what a restart gives."""
    names: list[str] = imported_fresh(root, module, PUBLIC)
    return names


PUBLIC = "sorted(n for n in vars(module) if not n.startswith('_'))"


def test_a_function_added_to_all_reaches_the_package_that_star_imports_its_module(
    tmp_path: Path,
) -> None:
    repo = package(tmp_path, {"src/its/more.py": MORE})
    repo.commit(
        "Offer subfactorial",
        {
            "src/its/more.py": MORE.replace('["chunked"]', '["chunked", "subfactorial", "_spare"]')
            + SUBFACTORIAL
        },
    )
    result = make_since_v1(repo, tmp_path / "out")
    assert result.outcome == "hot", result.record()
    assert verdicts(result) == {
        "its.more:__all__": "migration",
        "its.more:subfactorial": "added",
        "its:_spare": "migration",
        "its:subfactorial": "migration",
    }
    why = {c.name: c.why for c in result.changes}["its:subfactorial"]
    assert "line 1: `from .more import *  # noqa`" in why, why
    assert result.path is not None
    seen = run_patched(
        roots=[export(repo, "v1", tmp_path)],
        module="its",
        patch=result.path,
        baseline="1.0",
        before="import its.more as more",
        probe=f"[{PUBLIC}, getattr(module, 'subfactorial', None) is "
        "getattr(more, 'subfactorial', 0) and module.subfactorial(4), "
        "getattr(module, '_spare', None) is more._spare]",
    )
    assert seen["after"] == [restarted(export(repo, "HEAD", tmp_path), "its"), 9, True]
    assert seen["before"] == seen["rolled_back"] == [["chunked", "more"], False, False]


def test_without_all_a_new_public_name_reaches_the_package_and_a_private_one_does_not(
    tmp_path: Path,
) -> None:
    """And the star import of a star import: ``its`` takes all of ``its.api``, which takes
    all of ``its.more``."""
    plain = MORE.replace('__all__ = ["chunked"]\n\n\n', "")
    repo = package(
        tmp_path,
        {
            "src/its/__init__.py": "from .api import *\n",
            "src/its/api.py": "from .more import *\n",
            "src/its/more.py": plain,
        },
    )
    helper = "\n\ndef _twice(n):\n    return 2 * n\n"
    repo.commit("Offer subfactorial", {"src/its/more.py": plain + SUBFACTORIAL + helper})
    result = make_since_v1(repo, tmp_path / "out")
    assert result.outcome == "hot", result.record()
    assert verdicts(result) == {
        "its.more:_twice": "added",
        "its.more:subfactorial": "added",
        "its.api:subfactorial": "migration",
        "its:subfactorial": "migration",
    }
    assert result.path is not None
    probe = f"[{PUBLIC}, hasattr(module, '_twice'), hasattr(module.api, '_twice')]"
    seen = run_patched(
        roots=[export(repo, "v1", tmp_path)],
        module="its",
        patch=result.path,
        baseline="1.0",
        before="import its.more",
        probe=probe,
    )
    assert seen["after"] == [restarted(export(repo, "HEAD", tmp_path), "its"), False, False]
    assert "subfactorial" in seen["after"][0]
    assert seen["before"] == seen["rolled_back"]
    assert "subfactorial" not in seen["before"][0]


def test_a_function_added_but_not_to_all_stays_off_the_package(tmp_path: Path) -> None:
    repo = package(tmp_path, {"src/its/more.py": MORE})
    repo.commit("Add subfactorial, unlisted", {"src/its/more.py": MORE + SUBFACTORIAL})
    result = make_since_v1(repo, tmp_path / "out")
    assert result.outcome == "hot", result.record()
    assert verdicts(result) == {"its.more:subfactorial": "added"}
    assert result.path is not None
    seen = run_patched(
        roots=[export(repo, "v1", tmp_path)],
        module="its",
        patch=result.path,
        baseline="1.0",
        before="import its.more as more",
        probe=f"[{PUBLIC}, hasattr(more, 'subfactorial')]",
    )
    assert seen["after"] == [restarted(export(repo, "HEAD", tmp_path), "its"), True]


def test_what_a_star_import_copies_and_no_migration_can_carry_is_a_baseline_naming_it(
    tmp_path: Path,
) -> None:
    """A new constant in ``__all__`` (the patch file could only read it after the migration
    of its module ran), a changed one (the package keeps its copy), and an ``__all__`` the
    module computes (which names a restart would copy cannot be read from the code)."""
    old = MORE.replace('["chunked"]', '["chunked", "LIMIT"]') + "\nLIMIT = 10\n"
    repo = package(tmp_path, {"src/its/more.py": old})
    listed = MORE.replace('["chunked"]', '["chunked", "LIMIT", "FLOOR"]')
    repo.commit("Offer the limits", {"src/its/more.py": listed + "\nLIMIT = 20\nFLOOR = 1\n"})
    result = make_since_v1(repo, tmp_path / "out")
    assert result.outcome == "baseline", result.record()
    reasons = {c.name: c.why for c in result.reasons}
    assert set(reasons) == {"its:FLOOR", "its:LIMIT"}, reasons
    for why in reasons.values():
        assert "(line 1: `from .more import *  # noqa`)" in why, why
    assert "the migration in its.more sets it" in reasons["its:FLOOR"]
    assert "the copy would keep the old value" in reasons["its:LIMIT"]

    repo.commit(
        "All of it, computed",
        {
            "src/its/more.py": MORE.replace(
                '__all__ = ["chunked"]', '__all__ = [n for n in dir() if n != "_spare"]'
            )
            + SUBFACTORIAL
        },
    )
    repo.git("tag", "-f", "v1", "HEAD")
    repo.commit(
        "Offer subfactorial",
        {
            "src/its/more.py": MORE.replace(
                '__all__ = ["chunked"]', '__all__ = [n for n in dir() if n != "_spare"]'
            )
            + SUBFACTORIAL.replace("subfactorial", "derangements")
        },
    )
    result = make_since_v1(repo, tmp_path / "out2")
    assert result.outcome == "baseline", result.record()
    why = {c.name: c.why for c in result.reasons}["its:derangements"]
    assert "its.more's __all__ is computed" in why, why
    assert "(line 1: `from .more import *  # noqa`)" in why, why


def test_a_changed_function_is_the_same_object_through_every_re_export(tmp_path: Path) -> None:
    """Replaced in place: ``its.chunked`` (star), ``its.first.chunked`` (by name) and a
    reference taken before the patch all run the new code, and none after the rollback."""
    repo = package(
        tmp_path,
        {"src/its/more.py": MORE, "src/its/first.py": "from its.more import chunked\n"},
    )
    repo.commit(
        "Chunk from the end",
        {"src/its/more.py": MORE.replace("return [items", "return [items[::-1]")},
    )
    result = make_since_v1(repo, tmp_path / "out")
    assert result.outcome == "hot", result.record()
    assert verdicts(result) == {"its.more:chunked": "inline"}
    assert result.path is not None
    seen = run_patched(
        roots=[export(repo, "v1", tmp_path)],
        module="its",
        patch=result.path,
        baseline="1.0",
        before="import its.first; early = module.chunked",
        probe="[f([1, 2, 3], 2) for f in (module.chunked, its.first.chunked, early)]",
    )
    assert seen["before"] == seen["rolled_back"] == [[[1, 2], [3]]] * 3
    assert seen["after"] == [[[3, 2], [1]]] * 3


OTHER = '__all__ = ["flatten"]\n\n\ndef flatten(items):\n    return [x for i in items for x in i]\n'


def test_a_package_all_computed_from_its_submodules_is_a_baseline_naming_the_line(
    tmp_path: Path,
) -> None:
    """The package's ``__all__`` adds up its submodules' (written out, and in a loop): a
    function newly listed in ``its.more.__all__`` reaches ``its`` by the migration, but
    ``its.__all__`` keeps what was computed at import, so ``from its import *`` would miss
    it where a restart lists it. Which names a restart computes is not read from the code:
    a baseline naming the line."""
    summed = "from .more import *\nfrom .other import *\n\n__all__ = more.__all__ + other.__all__\n"
    looped = (
        "from . import more, other\nfrom .more import *\nfrom .other import *\n\n"
        "__all__ = []\nfor _m in (more, other):\n    __all__ += _m.__all__\n"
    )
    for package_text, line in ((summed, 4), (looped, 6)):
        repo = package(
            tmp_path / str(line),
            {
                "src/its/__init__.py": package_text,
                "src/its/more.py": MORE,
                "src/its/other.py": OTHER,
            },
        )
        offered = MORE.replace('["chunked"]', '["chunked", "subfactorial"]') + SUBFACTORIAL
        repo.commit("Offer subfactorial", {"src/its/more.py": offered})
        restart = imported_fresh(
            checkout(repo, "HEAD", tmp_path / str(line)), "its", "module.__all__"
        )
        assert restart == ["chunked", "subfactorial", "flatten"]
        result = make_since_v1(repo, tmp_path / str(line) / "out")
        assert result.outcome == "baseline", result.record()
        why = {c.name: c.why for c in result.reasons}
        assert set(why) == {"its:__all__"}, why
        assert f"its's __all__ is computed (line {line}: `" in why["its:__all__"], why
        assert "it imports its.more, which now offers subfactorial" in why["its:__all__"], why
