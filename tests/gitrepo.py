"""Small real git repositories for the ``hotpatch make`` tests: write files, commit, tag;
make a patch between the tag ``v1`` and ``HEAD``; run it on the old code."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from hotpatch.make import MakeResult, Request, make

_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
}


class GitRepo:
    """A git repository in a folder; files are written dedented."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str) -> str:
        import os

        done = subprocess.run(
            ["git", "-C", str(self.path), *args],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, **_ENV},
        )
        return done.stdout.strip()

    def write(self, files: dict[str, str | None]) -> None:
        """Write (or, for ``None``, remove) files by relative path."""
        for name, text in files.items():
            path = self.path / name
            if text is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))

    def commit(self, message: str, files: dict[str, str | None] | None = None) -> str:
        if files:
            self.write(files)
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")


_RUNNER = r"""
import json, sys
config = json.loads(sys.argv[1])
sys.path[:0] = config["path"]
import importlib
from hotpatch import Registry, load_patch
module = importlib.import_module(config["module"])
scope = {"module": module}
exec(config["before"], scope)
probe = config["probe"]
out = {"before": eval(probe, scope)}
registry = Registry(config["baseline"])
result = registry.apply(load_patch(config["patch"]))
out["modes"] = dict(result.modes)
out["after"] = eval(probe, scope)
registry.rollback()
out["rolled_back"] = eval(probe, scope)
print(json.dumps(out, default=str))
"""


def run_patched(
    *,
    roots: list[Path],
    module: str,
    patch: Path,
    baseline: str,
    before: str,
    probe: str,
) -> dict[str, Any]:
    """In a child running the old code at ``roots``: run ``before`` (take references), then
    evaluate ``probe`` before the patch, with it applied, and after its rollback."""
    config = {
        "path": [str(r) for r in roots],
        "module": module,
        "patch": str(patch),
        "baseline": baseline,
        "before": textwrap.dedent(before),
        "probe": probe,
    }
    done = subprocess.run(
        [sys.executable, "-c", _RUNNER, json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def checkout(repo: GitRepo, rev: str, tmp_path: Path) -> Path:
    """The import root (``src``) of ``repo`` at ``rev``, checked out in a folder of its own."""
    dest = tmp_path / f"export-{rev}"
    if not dest.exists():
        repo.git("worktree", "add", "-q", "--detach", str(dest), rev)
    return dest / "src"


def imported_fresh(root: Path, module: str, probe: str) -> Any:
    """``probe`` (an expression of ``module``) in a new Python importing ``module`` from
    ``root``: what a restart on that code gives."""
    code = (
        f"import sys, json; sys.path.insert(0, {str(root)!r}); import importlib; "
        f"module = importlib.import_module({module!r}); "
        f"print(json.dumps({probe}, default=str))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return json.loads(done.stdout)


def make_since_v1(repo: GitRepo, out: Path, **options: Any) -> MakeResult:
    """``hotpatch make`` of 1.0.1 on baseline 1.0, from the tag ``v1`` to ``HEAD`` of
    ``repo`` (import root ``src``), written into ``out``; ``options`` are more of ``Request``."""
    fields: dict[str, Any] = {"roots": ("src",), **options}
    return make(
        Request(
            baseline="1.0",
            version="1.0.1",
            repo=repo.path,
            from_rev="v1",
            to_rev="HEAD",
            output=out / "1.0.1.py",
            **fields,
        )
    )


def verdicts(result: MakeResult) -> dict[str, str]:
    """Each change's name and verdict."""
    return {c.name: c.verdict for c in result.changes}
