"""``hotpatch make --root .`` and the Python files beside the service's packages: an
``examples/`` or ``benchmarks/`` folder with no ``__init__.py`` that no module of the
service imports holds scripts, which the service never imports. What they run when run
is not what the service ran at import, and a patch must not target them (applying it
would import the script into the service): they are ignored, with the reason. A
namespace package's module that the service imports stays a module of the service."""

from __future__ import annotations

from pathlib import Path

from gitrepo import GitRepo, checkout, imported_fresh, make_since_v1, run_patched, verdicts

RATES = """\
    def build():
        return {"b": 1}
    """
EXAMPLE = """\
    from shop.rates import build

    TABLE = build()


    def show():
        print(TABLE, "v1")
    """


def test_a_script_beside_the_package_is_ignored_and_what_it_runs_is_not_run_at_import(
    tmp_path: Path,
) -> None:
    """``examples/demo.py`` calls ``build`` at its top level, and changes too: before, make
    counted it a module of the service (``build`` ran at import, a baseline; its ``show``
    a target of the patch). The service never imports it: the fix goes hot, the same as a
    restart, and the script is listed as ignored."""
    repo = GitRepo(tmp_path / "repo")
    files = {
        "shop/__init__.py": "",
        "shop/rates.py": RATES,
        "examples/demo.py": EXAMPLE,
        "benchmarks/bench_rates.py": "from shop import rates\n\nrates.build()\n",
    }
    repo.commit("the baseline", files)
    repo.git("tag", "v1")
    fixed = {"shop/rates.py": RATES.replace('{"b": 1}', '{"b": 2}')}
    repo.commit("the fix", {**fixed, "examples/demo.py": EXAMPLE.replace("v1", "v2")})
    result = make_since_v1(repo, tmp_path / "out", roots=(".",))
    assert result.outcome == "hot", result.record()
    assert verdicts(result) == {"shop.rates:build": "inline"}
    ignored = {c.name: c.why for c in result.ignored}
    assert ignored == {
        "examples/demo.py": "a script beside the service: examples/ is not a package (no "
        "__init__.py) and no module of the service imports examples.demo (changed)"
    }
    assert result.path is not None
    seen = run_patched(
        roots=[checkout(repo, "v1", tmp_path).parent],
        module="shop.rates",
        patch=result.path,
        baseline="1.0",
        before="",
        probe="module.build()",
    )
    fresh = imported_fresh(checkout(repo, "HEAD", tmp_path).parent, "shop.rates", "module.build()")
    assert seen["after"] == fresh == {"b": 2}
    assert seen["before"] == seen["rolled_back"] == {"b": 1}


def test_a_namespace_module_the_service_imports_stays_a_module_of_the_service(
    tmp_path: Path,
) -> None:
    """``shared/`` has no ``__init__.py`` (a namespace package), and ``shop.rates`` imports
    ``shared.scale`` and runs it at import: its change is a baseline naming that line."""
    repo = GitRepo(tmp_path / "repo")
    rates = "from shared.scale import double\n\nTABLE = double(2)\n"
    scale = "def double(n):\n    return n * 2\n"
    files = {"shop/__init__.py": "", "shop/rates.py": rates, "shared/scale.py": scale}
    repo.commit("the baseline", files)
    repo.git("tag", "v1")
    repo.commit("the fix", {"shared/scale.py": scale.replace("n * 2", "n * 3")})
    result = make_since_v1(repo, tmp_path / "out", roots=(".",))
    assert result.outcome == "baseline", result.record()
    why = {c.name: c.why for c in result.reasons}
    assert set(why) == {"shared.scale:double"}, why
    assert "shop.rates runs it" in why["shared.scale:double"], why
    assert "(line 3: `TABLE = double(2)`)" in why["shared.scale:double"], why


def test_a_python_file_beside_the_package_whose_name_no_import_can_spell_is_a_script(
    tmp_path: Path,
) -> None:
    """idna's ``tools/build-idnadata.py`` (``--root .``): a ``.py`` file in a folder with no
    ``__init__.py`` whose name is not a Python name, so no import reaches it. Before, make
    called it "a non-Python file under the import root" the code may read, and a fix
    that touched it too was a baseline; it is a script, ignored, and the fix goes hot."""
    repo = GitRepo(tmp_path / "repo")
    tool = "from shop import rates\n\nprint(rates.build())\n"
    files = {"shop/__init__.py": "", "shop/rates.py": RATES, "tools/build-rates.py": tool}
    repo.commit("the baseline", files)
    repo.git("tag", "v1")
    fixed = {"shop/rates.py": RATES.replace('{"b": 1}', '{"b": 2}')}
    repo.commit("the fix", {**fixed, "tools/build-rates.py": tool.replace("print", "repr")})
    result = make_since_v1(repo, tmp_path / "out", roots=(".",))
    assert result.outcome == "hot", result.record()
    assert verdicts(result) == {"shop.rates:build": "inline"}
    ignored = {c.name: c.why for c in result.ignored}
    assert ignored == {
        "tools/build-rates.py": "a script beside the service: tools/ is not a package (no "
        "__init__.py) and build-rates is not a Python name, so no import reaches it (changed)"
    }


def test_a_python_file_in_a_package_whose_name_is_not_a_python_name_is_said_so(
    tmp_path: Path,
) -> None:
    """``shop/build-data.py`` sits in the package, whose code may read it as a file: a
    baseline as before, but not called "a non-Python file"."""
    repo = GitRepo(tmp_path / "repo")
    files = {"shop/__init__.py": "", "shop/rates.py": RATES, "shop/build-data.py": "X = 1\n"}
    repo.commit("the baseline", files)
    repo.git("tag", "v1")
    repo.commit("the fix", {"shop/build-data.py": "X = 2\n"})
    result = make_since_v1(repo, tmp_path / "out", roots=(".",))
    assert result.outcome == "baseline", result.record()
    why = {c.name: c.why for c in result.reasons}
    assert why == {
        "shop/build-data.py": "a Python file that is no module (build-data is not a Python "
        "name) under the import root . is changed; the code may read it, and a running "
        "process cannot be given a new file: it needs a baseline"
    }
