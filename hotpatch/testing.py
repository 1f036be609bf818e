"""pytest plugin (entry point ``pytest11``): test a patch against the code it patches.

* ``pytest --hotpatch-apply FILE`` (repeatable) -- runs the session against the code
  with the patch(es) applied: they are applied when the session starts, after pytest
  read its configuration and the conftest files of the rootdir and test paths, and
  before any test module is collected (imported); rolled back when pytest ends.
  pytest chooses its rootdir before it loads plugins, so it takes the FILE of a
  separate ``--hotpatch-apply FILE`` for a test path; where that changed the rootdir
  or the configuration file, the session is refused (``--hotpatch-apply=FILE`` is
  one argument and never counts).
* ``hotpatch_registry`` -- a fresh ``Registry`` on the ``hotpatch_baseline`` ini
  option; whatever it applied is rolled back at teardown.
* ``check_patch_file(path)`` -- asserts that a patch file applies hot against the
  code it targets and rolls back leaving every target exactly as it was.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import shlex
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

from hotpatch._codegen import capture
from hotpatch._errors import PatchError
from hotpatch._loader import load_patch
from hotpatch._patch import Patch
from hotpatch._registry import Registry
from hotpatch._results import CheckReport
from hotpatch._targets import resolve, resolve_class

__all__ = ["check_patch_file", "hotpatch_registry"]

_BASELINE_INI = "hotpatch_baseline"
_WHO = "pytest --hotpatch-apply"


@dataclass(frozen=True, slots=True)
class _Applied:
    """The patches ``--hotpatch-apply`` put in for the session, and the registry holding them."""

    registry: Registry
    patches: tuple[Patch, ...]


_SESSION = pytest.StashKey[_Applied]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        _BASELINE_INI,
        "baseline (PEP 440 version of the code under test) of the hotpatch_registry fixture",
    )
    group = parser.getgroup("hotpatch", "hotpatch: test code with patches applied")
    group.addoption(
        "--hotpatch-apply",
        action="append",
        default=[],
        metavar="FILE",
        help=(
            "apply the hot patch FILE before the tests are collected, so they run against "
            "the patched code (repeatable; applied in version order, rolled back at exit)"
        ),
    )


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> None:
    """Refuse a separate ``--hotpatch-apply FILE`` whose FILE moved pytest's rootdir.

    pytest chose its rootdir and configuration file before this plugin was
    loaded, counting FILE as a test path. Where the choice would differ
    without it, the session would run with other test ids and, worse, maybe
    without the project's configuration: refused, naming the fix.
    """
    # What pytest parsed when it chose the rootdir: $PYTEST_ADDOPTS and the command
    # line (the addopts of the configuration file came after it).
    given = [
        *shlex.split(os.environ.get("PYTEST_ADDOPTS", "")),
        *map(str, early_config.invocation_params.args),
    ]
    separate = [given[i + 1] for i, arg in enumerate(given[:-1]) if arg == "--hotpatch-apply"]
    if not separate:
        return
    known = parser.parse_known_args(given)
    if known.rootdir:
        return  # an explicit rootdir: no path counts
    wanted = _setup_without(known, early_config.invocation_params.dir)
    if wanted is None or wanted == (early_config.rootpath, early_config.inipath):
        return
    root, ini = wanted
    file = separate[0]
    chosen = f"{early_config.rootpath}, " + (
        f"configfile {early_config.inipath}" if early_config.inipath else "no configfile"
    )
    msg = (
        f"--hotpatch-apply {file}: pytest counted this file when it chose its rootdir "
        f"({chosen}) instead of {root} ({f'configfile {ini}' if ini else 'no configfile'}), "
        f"which changes test ids and the configuration; write --hotpatch-apply={file} "
        "(one argument), or pass --rootdir"
    )
    raise pytest.UsageError(msg)


def _setup_without(known: Any, invocation_dir: Path) -> tuple[Path, Path | None] | None:
    """The rootdir and configuration file pytest chooses for the test paths in ``known``
    alone; ``None`` if this pytest's way of choosing cannot be called."""
    try:
        from _pytest.config.findpaths import determine_setup  # noqa: PLC0415
    except ImportError:  # pytest moved it: without it the choice cannot be checked
        return None
    given: dict[str, Any] = {
        "inifile": known.inifilename,
        "override_ini": known.override_ini,
        "args": list(known.file_or_dir),
        "rootdir_cmd_arg": None,
        "invocation_dir": invocation_dir,
    }
    with contextlib.suppress(TypeError, ValueError):
        accepted = inspect.signature(determine_setup).parameters
        found: Sequence[Any] = determine_setup(**{k: v for k, v in given.items() if k in accepted})
        return Path(found[0]), Path(found[1]) if found[1] is not None else None
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Apply every ``--hotpatch-apply`` file, all or none, before collection imports a test."""
    config = session.config
    files: list[str] = config.getoption("hotpatch_apply")
    if not files:
        return
    patches = sorted((_load(f) for f in files), key=lambda p: Version(p.version))
    baseline = _ini_baseline(config) or patches[0].baseline or ""
    try:
        registry = Registry(baseline)
    except ValueError as exc:
        msg = f"--hotpatch-apply: {exc}"
        raise pytest.UsageError(msg) from None
    for patch in patches:
        try:
            report = registry.check(patch)
            if not report.hot:
                msg = (
                    f"patch {patch.version} cannot go in hot "
                    f"({'; '.join(report.reasons)}): it needs a restart, so it cannot be "
                    "applied to a test session; test the code it would restart into instead"
                )
                raise pytest.UsageError(_refusal(patch, msg))
            registry.apply(patch, who=_WHO)
        except PatchError as exc:
            _undo(registry)
            raise pytest.UsageError(_refusal(patch, _describe(exc))) from None
        except BaseException:
            _undo(registry)
            raise
    config.stash[_SESSION] = _Applied(registry, tuple(patches))
    config.add_cleanup(lambda: _undo(registry))


def pytest_report_header(config: pytest.Config) -> list[str]:
    applied = config.stash.get(_SESSION, None)
    if applied is None:
        return []
    return [
        f"hotpatch: baseline {applied.registry.baseline}, applied "
        + ", ".join(f"{p.version} ({p.source.path if p.source else '?'})" for p in applied.patches)
    ]


def _load(file: str) -> Patch:
    path = Path(file)
    if path.is_dir() or path.suffix == ".zip":
        msg = (
            f"--hotpatch-apply {file}: this is a baseline bundle, which replaces the code "
            "and needs a restart; run the tests on its code tree instead "
            "(PYTHONPATH=BUNDLE/ROOT pytest, ROOT being [code] root in its patch.toml)"
        )
        raise pytest.UsageError(msg)
    try:
        return load_patch(path)
    except PatchError as exc:
        msg = f"--hotpatch-apply {file}: {_describe(exc)}"
        raise pytest.UsageError(msg) from None


def _refusal(patch: Patch, reason: str) -> str:
    file = patch.source.path if patch.source else patch.version
    return f"--hotpatch-apply {file}: {reason}; no patch was applied"


def _describe(exc: PatchError) -> str:
    """``hotpatch.TargetNotFound: ...``, with a hint when a module did not import: on a
    warning the session's filters made an error, or not found."""
    text = f"hotpatch.{type(exc).__name__}: {exc}"
    module = (exc.target or "").partition(":")[0]
    if isinstance(exc.__cause__, Warning):
        kind = type(exc.__cause__).__name__
        text += (
            " (a warning the session's warning filters (filterwarnings, -W) make an error: "
            f"collecting the tests would fail on it too; let it pass, e.g. -W 'ignore::{kind}')"
        )
    elif module and module not in sys.modules:
        text += (
            f" (the patch is applied before the tests are collected, so {module!r} must be "
            "importable then: install the project, or add its folder to `pythonpath` in the "
            "pytest configuration)"
        )
    return text


def _undo(registry: Registry) -> None:
    if registry.level:
        registry.rollback(to=registry.baseline, who=_WHO)


def _ini_baseline(config: pytest.Config) -> str:
    return str(config.getini(_BASELINE_INI) or "").strip()


@pytest.fixture
def hotpatch_registry(request: pytest.FixtureRequest) -> Iterator[Registry]:
    """A fresh registry; everything it applied is rolled back at teardown.

    Its baseline is the ``hotpatch_baseline`` ini option, or under
    ``--hotpatch-apply`` the applied patches' baseline (the registry then starts on
    top of them, at its own empty level).
    """
    baseline = _ini_baseline(request.config)
    applied = request.config.stash.get(_SESSION, None)
    if not baseline and applied is not None:
        baseline = applied.registry.baseline
    if not baseline:
        pytest.fail(
            f"the hotpatch_registry fixture needs the baseline of the code under test: set "
            f"the ini option {_BASELINE_INI} (in pyproject.toml, under "
            f'[tool.pytest.ini_options]: {_BASELINE_INI} = "2.3")',
            pytrace=False,
        )
    try:
        registry = Registry(baseline)
    except ValueError as exc:
        msg = f"ini option {_BASELINE_INI}: {exc}"
        raise pytest.UsageError(msg) from None
    yield registry
    if registry.level:
        registry.rollback(to=registry.baseline, who="pytest teardown")


def _snapshot(specs: list[tuple[str, bool]], version: str) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for spec, is_class in specs:
        if is_class:
            module, cls = resolve_class(spec, patch=version)
            state[spec] = dict(vars(cls))
        else:
            target = resolve(spec, patch=version)
            module = target.module
            state[spec] = (target.function, capture(target.function))
        state[f"module {module.__name__}"] = dict(vars(module))
    return state


def check_patch_file(path: str | os.PathLike[str], *, baseline: str | None = None) -> CheckReport:
    """Apply the patch at ``path`` to a fresh registry, check it went in hot and
    that rolling it back restores every target and module namespace exactly.

    The registry's baseline is ``baseline``, else the patch's own. Returns the
    ``CheckReport``; raises ``AssertionError`` naming what is wrong, or the
    ``PatchError`` that refused the patch.
    """
    patch = load_patch(path)
    registry = Registry(baseline or patch.baseline or "0")
    report = registry.check(patch)
    if not report.hot:
        msg = f"patch {patch.version} would not go in hot: {'; '.join(report.reasons)}"
        raise AssertionError(msg)
    specs = [(r.target, r.is_class) for r in patch.replacements]
    before = _snapshot(specs, patch.version)
    registry.apply(patch, who="check_patch_file")
    try:
        for spec, is_class in specs:
            if not is_class:
                function, state = before[spec]
                if function.__code__ is state["__code__"]:
                    msg = f"patch {patch.version}: {spec} still runs its old code after apply"
                    raise AssertionError(msg)
    finally:
        registry.rollback(who="check_patch_file")
    after = _snapshot(specs, patch.version)
    for name, was in before.items():
        now = after[name]
        if isinstance(was, tuple):
            (function, state), (_, state_now) = was, now
            changed = [
                a for a in state if state[a] is not state_now[a] and state[a] != state_now[a]
            ]
            if changed or function.__code__ is not state["__code__"]:
                msg = f"patch {patch.version}: rollback left {name} changed ({', '.join(changed)})"
                raise AssertionError(msg)
        elif set(was) != set(now) or any(was[k] is not now[k] for k in was):
            diff = sorted(set(was) ^ set(now)) or sorted(k for k in was if was[k] is not now[k])
            msg = (
                f"patch {patch.version}: rollback left {name} changed: {', '.join(diff)}; "
                "if a migration set it, add a @patch.unmigrate that undoes it"
            )
            raise AssertionError(msg)
    return report
