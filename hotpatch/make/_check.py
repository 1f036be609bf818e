"""A written patch, checked against the old code before ``hotpatch make`` calls it hot.

Two short-lived children, both with the old tree's import roots first on
``sys.path``: a dry run of ``Registry.check`` whose report -- hot or not, the
reasons, inline or forward per target -- is the verdict, then the folder's own
verification (``verify_in_child``: the patch imports and its targets resolve).
The dry run also says which function each target resolved to, so a decorator
without ``__wrapped__`` (whose wrapper would be patched instead of the
function) is named rather than patched, and refuses to judge a module the
child already has from elsewhere than the old tree (a package hotpatch itself
imports).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hotpatch._classes_hooks import hooks_of
from hotpatch._errors import PatchError, VerificationFailed
from hotpatch._loader import load_patch
from hotpatch._registry import Registry
from hotpatch._targets import is_nested, resolve
from hotpatch.agent._verify import verify_in_child

__all__ = ["Verdict", "check_patch"]

_BOOTSTRAP = (
    "import json, sys\n"
    "config = json.loads(sys.argv[1])\n"
    "sys.path.insert(0, config['root'])\n"
    "from hotpatch.make._check import _child_main\n"
    "_child_main(config)\n"
)
_ROOT = str(Path(__file__).resolve().parent.parent.parent)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The registry's word on the patch, against the old code."""

    hot: bool
    reasons: tuple[str, ...]  # why not hot (restart), or why it failed (error)
    modes: dict[str, str] = field(default_factory=dict)  # target -> "inline"/"forward (why)"
    error: str = ""  # the patch did not load or was refused: the message
    error_target: str = ""
    wrappers: dict[str, str] = field(default_factory=dict)  # target -> the wrapper patched
    same: dict[str, str] = field(default_factory=dict)  # target -> an earlier one, one function
    hooks: dict[str, list[str]] = field(default_factory=dict)  # class target -> what making
    # its patch class runs of the project's code (__init_subclass__, a metaclass)


def check_patch(
    path: Path,
    *,
    baseline: str,
    sys_path: Sequence[str],
    expected: dict[str, str],
    timeout: float,
    code_roots: Sequence[str] = (),
    modules: Sequence[str] = (),
) -> Verdict:
    """Dry-run ``path`` against the code on ``sys_path``, then verify it as the folder would.

    ``expected`` maps each replacement target to the ``__qualname__`` of the
    function it must resolve to. ``code_roots``: where the code to check against
    is; one of the patch's ``modules`` the checking process already has from
    elsewhere (a package hotpatch itself imports) is an error naming both places,
    as a check of other code than the old code would judge the wrong code.
    """
    config = {
        "root": _ROOT,
        "path": str(path.absolute()),
        "sys_path": list(sys_path),
        "baseline": baseline,
        "expected": expected,
        "code_roots": list(code_roots),
        "modules": list(modules),
    }
    proc = subprocess.Popen(
        [sys.executable, "-I", "-B", "-c", _BOOTSTRAP, json.dumps(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        msg = f"the registry's dry run of {path.name} did not finish within {timeout:g} s"
        return Verdict(False, (), error=msg)
    finally:
        if proc.poll() is None:  # pragma: no cover - only when communicate itself failed
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    try:
        data = json.loads(out)
    except ValueError:
        tail = err.decode("utf-8", "replace").strip()[-2000:]
        msg = f"the registry's dry run of {path.name} ended with status {proc.returncode}: {tail}"
        return Verdict(False, (), error=msg)
    if not data["ok"]:
        return Verdict(False, (), error=data["error"], error_target=data.get("target") or "")
    try:
        verify_in_child(path, sys_path=sys_path, timeout=timeout)
    except PatchError as exc:
        return Verdict(False, (), error=str(exc), error_target=exc.target or "")
    return Verdict(
        hot=bool(data["hot"]) and not data["wrappers"] and not data["same"] and not data["hooks"],
        reasons=tuple(data["reasons"]),
        modes=dict(data["modes"]),
        wrappers=dict(data["wrappers"]),
        same=dict(data["same"]),
        hooks=dict(data["hooks"]),
    )


# -- in the child ----------------------------------------------------------------------


def _child_main(config: dict[str, Any]) -> None:  # pragma: no cover - runs in the child
    sys.dont_write_bytecode = True
    sys.path[:] = config["sys_path"]
    report_fd = os.dup(1)
    os.dup2(2, 1)  # the code's prints go to stderr; stdout carries only the report
    try:
        _imported_elsewhere(config["modules"], config["code_roots"])
        report = _dry_run(Path(config["path"]), config["baseline"], config["expected"])
    except PatchError as exc:
        report = {"ok": False, "error": str(exc), "target": exc.target}
    except Exception as exc:
        report = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    data = json.dumps(report).encode()
    while data:
        data = data[os.write(report_fd, data) :]
    sys.stderr.flush()
    os._exit(0)


def _imported_elsewhere(modules: Sequence[str], roots: Sequence[str]) -> None:
    """Refuse a module whose package this process already imported from outside ``roots``."""
    places = [Path(r).resolve() for r in roots]
    for name in modules:
        top = name.partition(".")[0]
        module = sys.modules.get(top)
        file = getattr(module, "__file__", None)
        if not places or module is None or file is None:
            continue
        if any(Path(file).resolve().is_relative_to(place) for place in places):
            continue
        msg = (
            f"{top} is already imported in the process that checks the patch, from {file} "
            f"(hotpatch itself uses it), not from the old code under "
            f"{', '.join(map(str, places))}: the patch cannot be checked against the old code "
            f"of {top}, so it is not called hot; ship it as a baseline"
        )
        raise VerificationFailed(msg, target=name)


def _dry_run(path: Path, baseline: str, expected: dict[str, str]) -> dict[str, Any]:
    patch = load_patch(path)
    hooks = {r.target: ran for r in patch.replacements if r.is_class and (ran := _hooks(r.new))}
    wrappers: dict[str, str] = {}
    same: dict[str, str] = {}  # a module that binds another's function under its own name
    first: dict[int, str] = {}
    for target, qualname in expected.items():
        if is_nested(target):
            continue  # code, not a name: the registry's check finds it in the enclosing code
        function = resolve(target, patch=patch.version).function
        if function.__qualname__ != qualname:
            wrappers[target] = function.__qualname__
        if first.setdefault(id(function), target) != target:
            same[target] = first[id(function)]
    found: dict[str, Any] = {"wrappers": wrappers, "same": same, "hooks": hooks}
    if wrappers or same or hooks:  # the registry would judge the wrapper, or refuse: say why
        return {"ok": True, "hot": False, "reasons": [], "modes": {}, **found}
    report = Registry(baseline).check(patch)
    return {"ok": True, **report.record(), **found}


def _hooks(cls: type) -> list[str]:
    """The project's code that ran when ``cls`` was made (``hooks_of``). The loader refuses
    a patch file whose patch class would run any before it runs; a class it cannot see
    made (``type(...)``) is named here."""
    return hooks_of(cls)
