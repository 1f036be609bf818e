"""``make``: two versions -> a verified hot patch file, a baseline bundle, or nothing to patch."""

from __future__ import annotations

import contextlib
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hotpatch._patch import parse_version
from hotpatch.agent._signing import sign_file
from hotpatch.make._bundle import bundle_files, patch_toml, write_bundle
from hotpatch.make._check import Verdict, check_patch
from hotpatch.make._diff import Change, Plan, compare
from hotpatch.make._render import Header, generator, render
from hotpatch.make._sources import (
    MakeError,
    Tree,
    classify,
    commit_subject,
    read_git,
    read_tree,
)

__all__ = ["MakeResult", "Request", "make"]

Outcome = Literal["hot", "baseline", "nothing"]

# Python compiles and imports expressions nested some thousands deep (idna's generated tables
# of 2015 add up ~1,000 lists in one), which ast.dump, ast.unparse and copy.deepcopy walk one
# or more frames a level. Python 3.11's parser counts its C frames against the same limit, and
# past ~15,000 a deeper source crashes it where 1,000 gives RecursionError: 10,000 there.
_RECURSION = 10_000 if sys.version_info < (3, 12) else 50_000


@dataclass(frozen=True, slots=True)
class Request:
    """What to compare and what to write. Either ``from_rev``/``to_rev`` or the two trees."""

    baseline: str
    version: str
    repo: Path = Path()
    from_rev: str | None = None
    to_rev: str | None = None
    old_tree: Path | None = None
    new_tree: Path | None = None
    roots: tuple[str, ...] = (".",)
    output: Path | None = None  # default: VERSION.py (a bundle: VERSION.zip)
    summary: str | None = None
    planned: bool = False
    cumulative: bool = False  # the patch replaces the earlier hot patches of its baseline
    sign_key: Path | None = None
    timeout: float = 30.0  # for each verification child


@dataclass(frozen=True, slots=True)
class MakeResult:
    """What ``make`` did, and every change with its verdict."""

    outcome: Outcome
    path: Path | None
    signature: Path | None
    origin: str
    changes: tuple[Change, ...]
    ignored: tuple[Change, ...]
    reasons: tuple[Change, ...]  # what forced the baseline
    timings: dict[str, float] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "path": str(self.path) if self.path else None,
            "signature": str(self.signature) if self.signature else None,
            "from": self.origin,
            "changes": [c.record() for c in self.changes],
            "ignored": [c.record() for c in self.ignored],
            "reasons": [c.record() for c in self.reasons],
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }


def make(request: Request, progress: Callable[[str], None] | None = None) -> MakeResult:
    """Compare the two versions; write a hot patch or a baseline bundle (see ``MakeResult``)."""
    with _room_to_recurse():
        return _make(request, progress)


@contextlib.contextmanager
def _room_to_recurse() -> Iterator[None]:
    """The recursion limit raised to ``_RECURSION`` while make reads code, then put back."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, _RECURSION))
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


def _make(request: Request, progress: Callable[[str], None] | None) -> MakeResult:
    say = progress or (lambda _: None)
    for value, what in ((request.version, "--version"), (request.baseline, "--baseline")):
        try:
            parse_version(value, what)
        except ValueError as exc:
            raise MakeError(str(exc)) from None
    timings: dict[str, float] = {}
    start = time.perf_counter()
    old, new, origin, summary = _read(request, say)
    timings["read_s"] = time.perf_counter() - start
    roots = tuple(dict.fromkeys(r.strip("/") or "." for r in request.roots))
    for root in roots:
        if root != "." and not any(p.startswith(root + "/") for p in (*old.files, *new.files)):
            msg = f"import root {root!r} holds no file in either version; check --root"
            raise MakeError(msg)
    step = time.perf_counter()
    plan = compare(old, new, roots)
    timings["compare_s"] = time.perf_counter() - step
    say(f"compared: {len(plan.changes)} changed definitions, {len(plan.ignored)} files ignored")

    def result(outcome: Outcome, path: Path | None, sig: Path | None = None) -> MakeResult:
        timings["total_s"] = time.perf_counter() - start
        return MakeResult(
            outcome,
            path,
            sig,
            origin,
            tuple(plan.changes),
            tuple(plan.ignored),
            tuple(plan.baseline_reasons + [c for c in plan.changes if c.verdict == "restart"]),
            timings,
        )

    active = [c for c in plan.changes if c.verdict not in ("left", "ignored")]
    if not active:
        return result("nothing", None)
    output = (request.output or Path(f"{request.version}.py")).absolute()
    header = Header(
        request.version, request.baseline, summary, origin, output.name, request.cumulative
    )
    if not plan.baseline_reasons:
        step = time.perf_counter()
        verdict = _verify(plan, header, old=old, roots=roots, request=request, say=say)
        timings["verify_s"] = time.perf_counter() - step
        if verdict is not None and verdict.hot:
            text = render(plan, header, verdict.modes)
            output.parent.mkdir(parents=True, exist_ok=True)
            _write(output, text)
            sig = sign_file(output, request.sign_key) if request.sign_key else None
            return result("hot", output, sig)
    bundle = _bundle_path(output)
    kind = "planned-baseline" if request.planned else "unplanned-baseline"
    toml = patch_toml(
        version=request.version,
        kind=kind,
        summary=summary,
        root=roots[0],
        origin=origin,
        generator=generator(),
        reasons=plan.baseline_reasons + [c for c in plan.changes if c.verdict == "restart"],
    )
    say(f"writing the baseline bundle {bundle}")
    write_bundle(bundle, toml, bundle_files(new, roots))
    sig = sign_file(bundle, request.sign_key) if request.sign_key else None
    return result("baseline", bundle, sig)


def _read(request: Request, say: Callable[[str], None]) -> tuple[Tree, Tree, str, str]:
    if request.from_rev is not None and request.to_rev is not None:
        repo = request.repo.absolute()
        say(f"reading {request.from_rev} and {request.to_rev} from git in {repo}")
        old, new = read_git(repo, request.from_rev), read_git(repo, request.to_rev)
        summary = request.summary or commit_subject(repo, request.to_rev)
        return old, new, f"git {old.label}..{new.label} in {repo}", summary
    if request.old_tree is not None and request.new_tree is not None:
        say(f"reading the trees {request.old_tree} and {request.new_tree}")
        old, new = read_tree(request.old_tree.absolute()), read_tree(request.new_tree.absolute())
        summary = request.summary or f"Changes from {request.old_tree} to {request.new_tree}"
        return old, new, f"the trees {old.label} (old) and {new.label} (new)", summary
    msg = "give --from REV and --to REV (a git range), or OLD_TREE NEW_TREE"
    raise MakeError(msg)


def _missing_from(error: str, old: Tree, roots: tuple[str, ...]) -> str:
    """When ``error`` is an import of the project's own package failing on a module the old
    code does not hold (``humanize._version``, which the build writes): what to do."""
    found = re.search(r"No module named '([\w.]+)'", error)
    if found is None:
        return ""
    missing = found.group(1)
    places = [p for p in (classify(f, roots) for f in old.files) if p.kind == "module"]
    top = missing.partition(".")[0]
    ours = [p.root for p in places if p.module == top or p.module.startswith(top + ".")]
    if not ours or "." not in missing or any(p.module == missing for p in places):
        return ""
    root = ours[0] if ours[0] != "." else ""
    path = "/".join(filter(None, [root, *missing.split(".")])) + ".py"
    return (
        f". The old code as read is not the code that runs: {missing}, which the old code "
        f"imports, is not in it ({path}): a file the build writes, such as a version file, "
        "is not in git; check the patch against the code as installed (hotpatch make "
        "OLD_TREE NEW_TREE)"
    )


def _verify(
    plan: Plan,
    header: Header,
    *,
    old: Tree,
    roots: tuple[str, ...],
    request: Request,
    say: Callable[[str], None],
) -> Verdict | None:
    """Check the patch against the old code in children; mark the changes with the verdict."""
    text = render(plan, header)
    expected = {r.target: r.qualname for m in plan.modules for r in m.replacements}
    with tempfile.TemporaryDirectory(prefix="hotpatch-make-") as tmp:
        code = Path(tmp, "old")
        for path, data in bundle_files(old, roots).items():
            file = code / path
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(data)
        patch_file = Path(tmp, header.name)
        _write(patch_file, text)
        sys_path = [str(code / r) if r != "." else str(code) for r in roots]
        sys_path += [p for p in sys.path if p and p not in sys_path]
        say(f"checking the patch against the old code ({len(expected)} targets, child processes)")
        verdict = check_patch(
            patch_file,
            baseline=request.baseline,
            sys_path=sys_path,
            expected=expected,
            timeout=request.timeout,
            code_roots=sys_path[: len(roots)],
            modules=[m.name for m in plan.modules],
        )
    by_name = {c.name: c for c in plan.changes}
    if verdict.same:
        return _once(plan, verdict, by_name) or _verify(
            plan, header, old=old, roots=roots, request=request, say=say
        )
    if verdict.error:
        name = verdict.error_target or "the patch"
        why = f"the generated patch does not go in against the old code: {verdict.error}"
        why += _missing_from(verdict.error, old, roots)
        failed = by_name.get(name)
        if failed is not None:
            failed.verdict, failed.why = "baseline", why
        else:
            plan.changes.append(Change(name, "patch", "baseline", why))
        return verdict
    for target, wrapper in verdict.wrappers.items():
        wrapped = by_name[target]
        wrapped.verdict = "baseline"
        wrapped.why = (
            f"it is wrapped by {wrapper}, a decorator without __wrapped__: the wrapper, not the "
            "function, would be patched"
        )
    for target, hooks in verdict.hooks.items():
        why = (
            f"the patch class of {target} (which adds its new methods) is a class made from its "
            f"bases, so loading the patch runs {', '.join(hooks)} in the service, as for a "
            "new class: what it does for each class made (register it, count it, set class "
            "data) would be done for the patch class there; a change to such a class needs a "
            "baseline"
        )
        plan.changes.append(Change(target, "class", "baseline", why))
    for reason in verdict.reasons:
        plan.changes.append(Change("the patch", "patch", "restart", reason))
    for target, mode in verdict.modes.items():
        replaced = by_name.get(target)
        if replaced is not None and replaced.verdict == "replace":
            kind, _, why = mode.partition(" ")
            replaced.verdict = kind
            if replaced.what == "nested function":  # its own words say where it goes
                continue
            replaced.why = (
                "changed; replaced in place (the new code runs in the function's own frame)"
                if kind == "inline"
                else f"changed; replaced, calls forwarded to the new code {why}".rstrip()
            )
    return verdict


def _once(plan: Plan, verdict: Verdict, by_name: dict[str, Change]) -> Verdict | None:
    """Targets that are one function at run time (a module binds another's function over
    its own copy): replaced once when their new code is the same (None: check again),
    else the verdict stands and the change is a baseline."""
    replacements = {r.target: (m, r) for m in plan.modules for r in m.replacements}
    differ = False
    for target, first in verdict.same.items():
        (module, mine), (_, theirs) = replacements[target], replacements[first]
        change = by_name[target]
        if (mine.source, mine.mangled) == (theirs.source, theirs.mangled):
            module.replacements.remove(mine)
            change.verdict = "left"
            change.why = (
                f"at run time it is {first} (the module binds that name to it, over its own "
                "copy), which this patch replaces with the same new code"
            )
        else:
            differ = True
            change.verdict = "baseline"
            change.why = (
                f"at run time it is {first} (the module binds that name to it, over its own "
                "copy), whose new code differs: one function cannot be replaced by both"
            )
    plan.modules[:] = [m for m in plan.modules if not m.empty]
    return verdict if differ else None


def _bundle_path(output: Path) -> Path:
    return output.with_suffix(".zip") if output.suffix == ".py" else output


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
