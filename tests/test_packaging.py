"""The distribution: its name, version, metadata and files; built, installed and run.

The slow test builds the sdist and the wheel from a copy of the source tree,
installs the wheel into a fresh virtual environment outside the repository and
runs ``hotpatch --version`` and the minimal service (from the sdist) under
``hotpatch run`` there.
"""

import email.parser
import importlib
import importlib.metadata
import importlib.resources
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import time
import tomllib
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest

import hotpatch
from hotpatch._version import DISTRIBUTION
from hotpatch.supervisor import read_status

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
REPOSITORY = PYPROJECT["project"]["urls"]["Repository"]

# Source directory of each top-level package that the distribution installs.
SOURCE_DIRS = {"hotpatch": REPO / "hotpatch", "hotpatch_plugins": REPO / "plugins"}


@pytest.mark.parametrize("package", sorted(SOURCE_DIRS))
def test_package_imports_from_this_repo(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__file__ is not None
    assert Path(module.__file__).resolve().parent == SOURCE_DIRS[package] or (
        # A regular (non-editable) install imports from site-packages instead.
        Path(module.__file__).resolve().parent.name == package
    )


def test_plugins_package_is_the_plugins_directory() -> None:
    import hotpatch_plugins

    assert hotpatch_plugins.__doc__ == (
        "Built-in hotpatch plugins, installed as the ``hotpatch_plugins`` package."
    )


@pytest.mark.parametrize("package", sorted(SOURCE_DIRS))
def test_py_typed_ships(package: str) -> None:
    marker = importlib.resources.files(package).joinpath("py.typed")
    assert marker.is_file(), f"{package}/py.typed is missing: type checkers will ignore it"


def test_every_subpackage_is_listed_in_pyproject() -> None:
    # setuptools installs exactly [tool.setuptools] packages; a subpackage
    # missing there works in an editable install yet vanishes from the wheel.
    found = {
        ".".join((top, *init.parent.relative_to(root).parts))
        for top, root in SOURCE_DIRS.items()
        for init in root.rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert found == listed, (
        f"add {sorted(found - listed)} to / remove {sorted(listed - found)} from "
        "[tool.setuptools] packages in pyproject.toml"
    )


def test_installed_metadata_matches_pyproject() -> None:
    # A stale venv (pyproject.toml changed, not reinstalled) fails here.
    metadata = importlib.metadata.metadata(DISTRIBUTION)
    assert metadata["Name"] == PYPROJECT["project"]["name"] == DISTRIBUTION
    assert metadata["Version"] == hotpatch.__version__
    assert metadata["Requires-Python"] == PYPROJECT["project"]["requires-python"]


def test_the_version_has_one_source() -> None:
    # pyproject.toml does not write it: setuptools reads hotpatch/_version.py.
    assert "version" not in PYPROJECT["project"]
    assert "version" in PYPROJECT["project"]["dynamic"]
    attr = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "hotpatch._version.__version__"
    assert importlib.metadata.version(DISTRIBUTION) == hotpatch.__version__
    command = [sys.executable, "-m", "hotpatch", "--version"]
    shown = subprocess.run(command, capture_output=True, text=True, check=True)
    assert shown.stdout == f"hotpatch {hotpatch.__version__}\n"


def test_install_hints_name_the_distribution() -> None:
    # pip would install another project's package under the name hotpatch.
    wrong = re.compile(r"pip install\s+['\"]?hotpatch\b")
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in _source_files(REPO)
        if path.suffix in {".py", ".md", ".toml", ".txt", ".cfg"} or path.name == "Makefile"
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if wrong.search(line)
    ]
    assert not found, f"install {DISTRIBUTION}, not hotpatch: {found}"


def test_license_is_mit_like_the_metadata() -> None:
    assert PYPROJECT["project"]["license"] == "MIT"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    assert (REPO / "LICENSE").read_text().startswith("MIT License\n")


def test_metadata_is_complete() -> None:
    project = PYPROJECT["project"]
    assert {"Homepage", "Repository", "Issues", "Changelog"} <= set(project["urls"])
    assert project["keywords"]
    assert any(c.startswith("Development Status :: ") for c in project["classifiers"])
    assert "Framework :: Pytest" in project["classifiers"]  # the pytest11 plugin


def test_changelog_has_a_release_under_the_unreleased_heading() -> None:
    headings = re.findall(r"^## (.+)$", (REPO / "CHANGELOG.md").read_text(), flags=re.M)
    assert headings[0] == "Unreleased"
    releases = [h for h in headings[1:] if re.fullmatch(r"\d+\.\d+\.\d+ — \d{4}-\d\d-\d\d", h)]
    assert releases, headings
    assert any(h.startswith(f"{hotpatch.__version__} — ") for h in releases)


# -- the README as the package index shows it -----------------------------------------------


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_readme_links_are_absolute_and_point_at_what_exists() -> None:
    # The package index shows the README away from the repository: relative links break.
    readme = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert links
    relative = [link for link in links if not link.startswith(("https://", "http://"))]
    assert not relative, f"make these absolute ({REPOSITORY}/blob/main/PATH): {relative}"
    anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", readme, flags=re.M)}
    raw = REPOSITORY.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    for link in links:
        if link.startswith(REPOSITORY + "#"):
            assert link.removeprefix(REPOSITORY + "#") in anchors, f"no such heading: {link}"
        elif link.startswith((REPOSITORY + "/blob/main/", REPOSITORY + "/tree/main/")):
            path = link.removeprefix(REPOSITORY + "/").split("/", 2)[2].partition("#")[0]
            assert (REPO / path).exists(), f"{link}: {path} is not in the repository"
        elif link.startswith(raw):
            assert (REPO / link.removeprefix(raw)).is_file(), f"{link}: not in the repository"


def _source_files(root: Path) -> list[Path]:
    skip = {".venv", ".git", "build", "dist", "__pycache__", ".mypy_cache", ".ruff_cache"}
    skip |= {".pytest_cache", ".hypothesis", "results"}
    return [
        path
        for path in sorted(root.rglob("*"))
        if path.is_file()
        and not skip.intersection(path.relative_to(root).parts)
        and not any(part.endswith(".egg-info") for part in path.parts)
    ]


def _entry_point(group: str, name: str) -> importlib.metadata.EntryPoint:
    (entry_point,) = importlib.metadata.entry_points(group=group, name=name)
    assert entry_point.dist is not None
    assert entry_point.dist.name == DISTRIBUTION
    return entry_point


def test_console_script_is_registered_and_installed() -> None:
    entry_point = _entry_point("console_scripts", "hotpatch")
    assert entry_point.value == "hotpatch.cli:main"
    assert (Path(sysconfig.get_path("scripts")) / "hotpatch").is_file()


def test_pytest_plugin_is_registered(pytestconfig: pytest.Config) -> None:
    entry_point = _entry_point("pytest11", "hotpatch")
    assert entry_point.value == "hotpatch.testing"
    # pytest loads pytest11 entry points under the entry point's name.
    assert pytestconfig.pluginmanager.has_plugin("hotpatch")


# -- built, installed in a fresh virtual environment, run --------------------------------------


def _copy_source(to: Path) -> Path:
    """The source tree without venvs, caches or build output (what a clean clone holds)."""
    for path in _source_files(REPO):
        target = to / path.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return to


def _run(command: list[str], **options: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=600, **options
    )
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and the wheel, built by `python -m build` (the wheel from the sdist)."""
    root = tmp_path_factory.mktemp("build")
    source = _copy_source(root / "source")
    _run([sys.executable, "-m", "build", "--outdir", str(root / "dist"), str(source)])
    (sdist,) = (root / "dist").glob("*.tar.gz")
    (wheel,) = (root / "dist").glob("*.whl")
    return {"sdist": sdist, "wheel": wheel, "root": root}


@pytest.mark.slow
def test_the_sdist_carries_docs_demos_tests_and_the_license(built: dict[str, Path]) -> None:
    version = hotpatch.__version__
    assert built["sdist"].name == f"{DISTRIBUTION}-{version}.tar.gz"
    with tarfile.open(built["sdist"]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    expected = {
        "LICENSE",
        "README.md",
        "CHANGELOG.md",
        "Makefile",
        "pyproject.toml",
        "docs/servers.md",
        "docs/restart_pause.png",
        "demos/minimal_service.py",
        "demos/shop_under_load.py",
        "demos/shop_patches/shop-1.1/patch.toml",
        "tests/test_packaging.py",
        "benchmarks/call_overhead.py",
        "hotpatch/_version.py",
        "plugins/metrics.py",
    }
    assert expected <= names, sorted(expected - names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


@pytest.mark.slow
def test_the_wheel_holds_the_packages_the_license_and_full_metadata(
    built: dict[str, Path],
) -> None:
    version = hotpatch.__version__
    assert built["wheel"].name == f"{DISTRIBUTION}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(built["wheel"]) as wheel:
        names = set(wheel.namelist())
        info = f"{DISTRIBUTION}-{version}.dist-info"
        metadata = email.parser.Parser().parsestr(wheel.read(f"{info}/METADATA").decode())
    assert f"{info}/licenses/LICENSE" in names
    assert {"hotpatch/py.typed", "hotpatch_plugins/py.typed", "hotpatch/cli/_main.py"} <= names
    assert not [n for n in names if n.startswith(("demos/", "tests/", "docs/"))]
    assert metadata["Name"] == DISTRIBUTION
    assert metadata["Version"] == version
    assert metadata["License-Expression"] == "MIT"
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL") or [])
    assert urls["Repository"] == REPOSITORY
    assert "hot patch" in metadata["Keywords"]
    assert any(c.startswith("Development Status") for c in metadata.get_all("Classifier") or [])


@pytest.mark.slow
def test_the_wheel_runs_from_a_fresh_venv_outside_the_repository(built: dict[str, Path]) -> None:
    outside = built["root"] / "elsewhere"
    outside.mkdir()
    assert REPO not in outside.parents
    venv = outside / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    python, command = venv / "bin" / "python", venv / "bin" / "hotpatch"
    _run([str(python), "-m", "pip", "install", "--quiet", str(built["wheel"])])
    # nothing from the repository or this test's venv: only the installed wheel
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", str(outside)),
        "LANG": "C.UTF-8",
    }
    shown = _run([str(command), "--version"], cwd=outside, env=env)
    assert shown.stdout == f"hotpatch {hotpatch.__version__}\n"
    where = _run(
        [str(python), "-c", "import hotpatch; print(hotpatch.__file__)"], cwd=outside, env=env
    )
    assert Path(where.stdout.strip()).is_relative_to(venv)

    # the minimal service, as the sdist ships it, under the installed `hotpatch run`
    with tarfile.open(built["sdist"]) as sdist:
        sdist.extractall(outside, filter="data")
    (service,) = outside.glob(f"{DISTRIBUTION}-*/demos/minimal_service.py")
    status_file, log = outside / "status.json", outside / "run.log"
    with log.open("w") as output:
        supervisor = subprocess.Popen(
            [
                str(command),
                "run",
                "--bind",
                "http=127.0.0.1:0",
                "--status-file",
                str(status_file),
                "--",
                str(python),
                str(service),
            ],
            cwd=outside,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        status = _wait_status(status_file, supervisor, lambda s: s["child"]["ready"])
        url = "http://" + status["sockets"]["http"] + "/"
        first = _get(url)
        assert re.fullmatch(r"hello #1 from process \d+\n", first), first
        supervisor.send_signal(signal.SIGHUP)  # a memory-preserving restart
        _wait_status(
            status_file,
            supervisor,
            lambda s: s["restarts"].get("preserving") == 1 and s["child"]["ready"],
        )
        second = _get(url)
        assert second.startswith("hello #2 from process "), second  # the count came across
        assert second.split()[-1] != first.split()[-1]  # from the new process
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(timeout=60)
    assert supervisor.returncode == 0, log.read_text()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as answer:
        body: bytes = answer.read()
    return body.decode()


def _wait_status(
    status_file: Path, process: subprocess.Popen[bytes], done: Any, timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = read_status(status_file)
        if status and status.get("state") == "running" and status.get("child") and done(status):
            return status
        if process.poll() is not None:
            log = status_file.with_name("run.log").read_text()
            pytest.fail(f"hotpatch run exited {process.returncode}:\n{log}")
        time.sleep(0.05)
    pytest.fail(
        f"hotpatch run did not get there in {timeout} s; status: {read_status(status_file)}"
    )
