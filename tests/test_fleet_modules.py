"""The hotpatch.fleet modules, one at a time, through the real ``ansible`` command on this host.

A real agent (``hotpatch.install`` in this process) watches a folder; ``ansible
localhost -c local -m hotpatch.fleet.X`` runs each module as a playbook would,
over the host's real ``hotpatch`` CLI. The rollouts over SSH are in test_fleet.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import textwrap
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import hotpatch

pytestmark = pytest.mark.fleet  # run once per `make test`, in `make test-fleet`

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def ansible(tmp_path: Path, module: str, args: dict[str, Any], *options: str) -> dict[str, Any]:
    """Run ``hotpatch.fleet.MODULE`` on localhost; its result as Ansible returns it, and
    ``failed`` (whether ``ansible`` said the task failed)."""
    tree = tmp_path / "tree"
    (tree / "localhost").unlink(missing_ok=True)
    env = {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": str(REPO),
        "ANSIBLE_HOME": str(tmp_path / "ansible"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible" / "tmp"),
        "ANSIBLE_REMOTE_TEMP": str(tmp_path / "ansible" / "remote"),
        "ANSIBLE_NOCOLOR": "1",
    }
    env.pop("PYTHONPATH", None)
    run = subprocess.run(
        [
            str(BIN / "ansible"),
            "localhost",
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            "-m",
            f"hotpatch.fleet.{module}",
            "-a",
            json.dumps(args),
            "-t",
            str(tree),
            *options,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert (tree / "localhost").exists(), run.stdout + run.stderr
    result: dict[str, Any] = json.loads((tree / "localhost").read_text())
    result["failed"] = run.returncode != 0  # the tree leaves it out; ansible exits 2
    return result


@pytest.fixture
def target(make_module: Callable[..., types.ModuleType]) -> types.ModuleType:
    return make_module("def f():\n    return 'base'\n")


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    agent = hotpatch.install("1.0", watch=tmp_path / "patches")
    yield tmp_path / "patches"
    agent.stop()


def common(folder: Path) -> dict[str, Any]:
    return {"folder": str(folder), "executable": str(BIN / "hotpatch")}


def write_patch(where: Path, target: types.ModuleType, version: str, body: str) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"fix-{version}.py"
    path.write_text(
        textwrap.dedent(
            f"""\
            from hotpatch import Patch
            patch = Patch(version={version!r}, baseline="1.0")

            @patch.replace("{target.__name__}:f")
            def f():
                {body}
            """
        )
    )
    return path


def results(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.glob("*/*.result.json"))


def test_status_sets_facts(tmp_path: Path, folder: Path) -> None:
    result = ansible(tmp_path, "status", common(folder))
    facts = result["ansible_facts"]["hotpatch"]
    assert (facts["baseline"], facts["level"], facts["version"]) == ("1.0", [], "1.0")
    assert result["changed"] is False
    assert result["healthy"] is True
    assert not result["failed"]


def test_a_patch_goes_in_once(tmp_path: Path, folder: Path, target: types.ModuleType) -> None:
    patch = write_patch(tmp_path / "src", target, "1.0.1", "return 'fixed'")
    args = {**common(folder), "src": str(patch)}
    first = ansible(tmp_path, "patch", args)
    assert first["changed"] is True, first
    assert first["outcome"] == "applied"
    assert (first["before"]["level"], first["after"]["level"]) == ([], ["1.0.1"])
    assert target.f() == "fixed"
    assert results(folder) == ["applied/fix-1.0.1.py.result.json"]
    again = ansible(tmp_path, "patch", args)
    assert again["changed"] is False, again
    assert again["outcome"] == "unchanged"
    assert results(folder) == ["applied/fix-1.0.1.py.result.json"]  # nothing dropped


def test_a_refused_patch_fails_with_the_reason(
    tmp_path: Path, folder: Path, target: types.ModuleType
) -> None:
    patch = write_patch(tmp_path / "src", target, "1.0.1", "return 'x'")
    patch.write_text(patch.read_text().replace("def f():", "def f(:"))  # a syntax error
    result = ansible(tmp_path, "patch", {**common(folder), "src": str(patch)})
    assert result["failed"], result
    assert "was rejected" in result["msg"]
    assert "fix-1.0.1.py" in result["msg"]
    assert results(folder) == ["rejected/fix-1.0.1.py.result.json"]
    assert target.f() == "base"


def test_check_mode_verifies_only(tmp_path: Path, folder: Path, target: types.ModuleType) -> None:
    patch = write_patch(tmp_path / "src", target, "1.0.1", "return 'fixed'")
    result = ansible(tmp_path, "patch", {**common(folder), "src": str(patch)}, "--check")
    assert result["changed"] is True, result
    assert result["outcome"] == "would-apply"
    assert result["after"]["level"] == ["1.0.1"]  # what it would be
    assert results(folder) == []
    assert target.f() == "base"
    # Content the service would refuse fails in check mode too, and is not dropped.
    broken = write_patch(tmp_path / "broken", target, "1.0.1", "return undefined_name_here()")
    broken.write_text(broken.read_text().replace(f"{target.__name__}:f", f"{target.__name__}:g"))
    refused = ansible(tmp_path, "patch", {**common(folder), "src": str(broken)}, "--check")
    assert refused["failed"], refused
    assert "would refuse it" in refused["msg"]
    assert results(folder) == []


def test_rollback_to_a_level(tmp_path: Path, folder: Path, target: types.ModuleType) -> None:
    patch = write_patch(tmp_path / "src", target, "1.0.1", "return 'fixed'")
    assert ansible(tmp_path, "patch", {**common(folder), "src": str(patch)})["changed"]
    back = ansible(tmp_path, "rollback", {**common(folder), "to": "1.0"})
    assert back["changed"] is True, back
    assert back["versions"] == ["1.0.1"]
    assert target.f() == "base"
    assert ansible(tmp_path, "rollback", {**common(folder), "to": "1.0"})["changed"] is False
    unknown = ansible(tmp_path, "rollback", {**common(folder), "to": "9.9"})
    assert unknown["failed"]
    assert "cannot roll back to 9.9" in unknown["msg"]


def test_every_plugin_documents_itself(tmp_path: Path) -> None:
    """``ansible-doc`` parses each module's, the callback's and the role's documentation."""
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(REPO), "ANSIBLE_HOME": str(tmp_path)}
    for kind, names in (
        ("module", ["hotpatch.fleet.patch", "hotpatch.fleet.status", "hotpatch.fleet.rollback"]),
        ("callback", ["hotpatch.fleet.timeline"]),
        ("role", ["hotpatch.fleet.rollout"]),
    ):
        run = subprocess.run(
            [str(BIN / "ansible-doc"), "--json", "-t", kind, *names],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        assert sorted(json.loads(run.stdout)) == sorted(names), run.stdout[:2000]


def test_the_collection_builds(tmp_path: Path) -> None:
    """``ansible-galaxy collection build`` takes galaxy.yml and packs every plugin."""
    run = subprocess.run(
        [
            str(BIN / "ansible-galaxy"),
            "collection",
            "build",
            str(REPO / "ansible_collections" / "hotpatch" / "fleet"),
            "--output-path",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "ANSIBLE_HOME": str(tmp_path / "ansible")},
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    with tarfile.open(tmp_path / "hotpatch-fleet-0.1.0.tar.gz") as built:
        names = set(built.getnames())
    plugins = ["modules/patch.py", "modules/status.py", "modules/rollback.py", "action/patch.py"]
    plugins += ["callback/timeline.py", "module_utils/hotpatch.py"]
    assert {f"plugins/{plugin}" for plugin in plugins} <= names
    assert {"README.md", "playbooks/rollout.yml", "roles/rollout/tasks/main.yml"} <= names
