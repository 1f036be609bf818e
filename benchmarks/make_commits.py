"""hotpatch make on real fix commits: does the patch fix what the commit fixed, and break nothing?

For each commit range OLD..NEW of a pure-Python project's git repository,
this benchmark checks out OLD in a temporary worktree (the repository's own
work tree is not touched), makes the patch with ``hotpatch make``, lays the
test files the fix added or changed over the old tree, and runs the
project's tests there twice: on the old code, and on the old code with the
patch applied (``pytest --hotpatch-apply``); then once more on NEW itself, as a
restart would run it. Per commit it reports the verdict (hot / baseline /
nothing / error), the tests of the fix's test files that failed before and pass
after, the tests (of any file: data-driven ones too) that fail on the old code
and pass on NEW with those the patch leaves failing (``patch_misses``: a patch
that is not what a restart gives), the regressions (tests that passed before
and fail with the patch) and the time ``hotpatch make`` took; a table, and JSON
in benchmarks/results/.

    python benchmarks/make_commits.py --repo ~/src/toolz --pick 20
    python benchmarks/make_commits.py --repo ~/src/cachetools --root src \\
        --range v5.3.0..abc1234 --test-command "python -m pytest -q tests"
    python benchmarks/make_commits.py --repo ~/src/humanize --pick 20 \\
        --prepare "echo '__version__ = \\"0\\"' > src/humanize/_version.py"

With ``--prepare COMMAND`` (a shell command) both versions are checked out and
the command runs in each, as a build would lay them out (a version file the
build writes, which git does not hold); ``hotpatch make`` then compares the two
trees (``hotpatch make OLD_TREE NEW_TREE``) instead of reading git, and the
tests run on the prepared trees.

Without ``--repo`` it runs on a small repository it generates (three fixes:
two hot, one that needs a baseline), which is what ``make bench`` and the
smoke test run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from _common import PY, RESULTS, print_table, write_json

from hotpatch.make import MakeError, Request, make
from hotpatch.make._diff import Change
from hotpatch.make._sources import classify

NAME = "make_commits"
_REFUSED = "the generated patch does not go in against the old code"
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
BASELINE, VERSION = "1.0", "1.0.1"
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "Bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "Bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


@dataclass
class Outcome:
    """What one commit range gave."""

    range: str
    subject: str
    verdict: str  # hot / baseline / nothing / error
    why_baseline: str = ""  # diff / restart (the registry's check) / refused (it refused the patch)
    make_s: float = 0.0
    changes: list[str] = field(default_factory=list)  # "name: verdict"
    reasons: list[str] = field(default_factory=list)  # why not hot, or the error
    fix_tests: int = 0  # tests in the files the fix added or changed
    failing_before: list[str] = field(default_factory=list)  # of those, failing on the old code
    fixed: list[str] = field(default_factory=list)  # ... and passing with the patch
    regressions: list[str] = field(default_factory=list)  # passed before, fail with the patch
    # Tests (in any file: data-driven ones too) failing on the old code and passing on the
    # new code, the fix commit's own: what a restart fixes; and those of them the patch
    # does not fix (failing, or not run, with it applied).
    restart_fixed: list[str] = field(default_factory=list)
    patch_misses: list[str] = field(default_factory=list)
    tests_run: int = 0
    refused_in_session: str = ""  # a hot patch the test session's check() or apply() refused
    note: str = ""


# -- git ----------------------------------------------------------------------------------


def git(repo: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **_GIT_ENV},
    )
    if check and done.returncode != 0:
        msg = f"git {' '.join(args)}: {done.stderr.strip()}"
        raise RuntimeError(msg)
    return done.stdout.strip()


def pick(
    repo: Path, count: int, grep: str, roots: tuple[str, ...], *, tests_too: bool = True
) -> list[str]:
    """The last ``count`` non-merge commits matching ``grep`` that change code (and tests)."""
    ranges: list[str] = []
    log = git(repo, "log", "--no-merges", "-i", f"--grep={grep}", "--format=%H", "-n", "3000")
    for commit in log.split():
        files = git(repo, "diff-tree", "--no-commit-id", "--name-only", "-r", commit).split("\n")
        kinds = [classify(f, roots) for f in files if f]
        code = any(k.kind == "module" for k in kinds)
        tests = any(k.kind == "ignored" and k.why.startswith("test code") for k in kinds)
        if (
            code
            and (tests or not tests_too)
            and git(repo, "rev-list", "--parents", "-n", "1", commit).count(" ") == 1
        ):
            ranges.append(f"{commit}^..{commit}")
        if len(ranges) == count:
            break
    return ranges


# -- one commit -----------------------------------------------------------------------------


def run_range(
    repo: Path,
    spec: str,
    *,
    roots: tuple[str, ...],
    test_command: list[str],
    work: Path,
    timeout: float,
    run_tests: bool = True,
    prepare: str = "",
) -> Outcome:
    old_rev, _, new_rev = spec.partition("..")
    old = git(repo, "rev-parse", "--verify", f"{old_rev}^{{commit}}")
    new = git(repo, "rev-parse", "--verify", f"{new_rev}^{{commit}}")
    subject = git(repo, "log", "-1", "--format=%s", new)
    label = f"{old[:8]}..{new[:8]}"
    tree = work / f"old-{old[:10]}-{new[:10]}"
    git(repo, "worktree", "add", "-q", "--detach", str(tree), old)
    # --prepare: both versions checked out and laid out as the build would; make reads them
    new_tree = work / f"new-{new[:10]}" if prepare else None
    try:
        outcome = Outcome(label, subject, "error")
        start = time.perf_counter()
        try:
            result = make(
                _request(repo, old, new, subject, work=work, roots=roots, timeout=timeout)
                if new_tree is None
                else _prepared(
                    repo,
                    old,
                    new,
                    subject,
                    work=work,
                    roots=roots,
                    timeout=timeout,
                    trees=(tree, new_tree),
                    prepare=prepare,
                )
            )
        except (MakeError, OSError, ValueError) as exc:
            outcome.make_s = time.perf_counter() - start
            outcome.reasons = [str(exc)]
            return outcome
        outcome.make_s = result.timings.get("total_s", time.perf_counter() - start)
        outcome.verdict = result.outcome
        outcome.changes = [f"{c.name}: {c.verdict}" for c in result.changes]
        outcome.reasons = [f"{c.name}: {c.why}" for c in result.reasons]
        if result.outcome == "baseline":
            outcome.why_baseline = _why_baseline(result.reasons)
        if result.outcome != "hot" or result.path is None or not run_tests:
            return outcome
        fix_tests = _lay_new_tests(repo, old, new, tree, roots)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(tree / r) for r in roots)}
        before = _pytest(
            test_command,
            tree=tree,
            env=env,
            report=work / "before.xml",
            patches=(),
            timeout=timeout,
        )
        after = _pytest(
            test_command,
            tree=tree,
            env=env,
            report=work / "after.xml",
            patches=(result.path,),
            timeout=timeout,
        )
        if isinstance(after, str) and isinstance(before, dict):
            # hotpatch make's check called it hot; the session's check() or apply() did not
            outcome.verdict = "error"
            outcome.refused_in_session = after
            outcome.reasons = [f"the test session refused the patch: {after}"]
            return outcome
        if not isinstance(after, dict) or not isinstance(before, dict):
            outcome.verdict = "error"
            outcome.reasons = [
                f"the test command wrote no report: {after if isinstance(after, str) else before}"
            ]
            return outcome
        # A test file the old code cannot even import is one failed entry named for the
        # file: each of its tests counts as failing before.
        uncollected = {
            t[2:] for t, state in before.items() if t.startswith("::") and state == "failed"
        }
        in_fix = {t for t in before if _in_files(t, fix_tests) and not t.startswith("::")}
        in_fix |= {
            t for t in after if t.partition("::")[0] in uncollected and _in_files(t, fix_tests)
        }
        outcome.fix_tests = len(in_fix)
        outcome.failing_before = sorted(t for t in in_fix if before.get(t, "failed") == "failed")
        outcome.fixed = sorted(t for t in outcome.failing_before if after.get(t) == "passed")
        outcome.regressions = sorted(
            t for t, state in after.items() if state == "failed" and before.get(t) == "passed"
        )
        outcome.tests_run = len(after)
        restart = _restarted(
            repo, new, test_command, work=work, roots=roots, timeout=timeout, tree=new_tree
        )
        if isinstance(restart, str):
            outcome.note = f"the tests on the new code wrote no report: {restart}"
            return outcome
        outcome.restart_fixed = sorted(
            t
            for t, state in restart.items()
            if state == "passed" and before.get(t, "failed") == "failed"
        )
        outcome.patch_misses = [t for t in outcome.restart_fixed if after.get(t) != "passed"]
        return outcome
    finally:
        _drop(repo, tree, new_tree)


def _drop(repo: Path, *trees: Path | None) -> None:
    """Remove the worktrees checked out (those of ``trees`` that are there)."""
    for tree in trees:
        if tree is not None and tree.exists():
            git(repo, "worktree", "remove", "--force", str(tree), check=False)
            shutil.rmtree(tree, ignore_errors=True)


def _request(
    repo: Path,
    old: str,
    new: str,
    subject: str,
    *,
    work: Path,
    roots: tuple[str, ...],
    timeout: float,
) -> Request:
    """What ``hotpatch make`` is asked for one range: from git."""
    return Request(
        baseline=BASELINE,
        version=VERSION,
        repo=repo,
        from_rev=old,
        to_rev=new,
        roots=roots,
        output=work / f"patch-{new[:10]}.py",
        summary=subject,
        timeout=timeout,
    )


def _prepared(
    repo: Path,
    old: str,
    new: str,
    subject: str,
    *,
    work: Path,
    roots: tuple[str, ...],
    timeout: float,
    trees: tuple[Path, Path],
    prepare: str,
) -> Request:
    """``_request`` from the two versions checked out, ``prepare`` run in each (the old one
    is checked out already): ``hotpatch make OLD_TREE NEW_TREE``."""
    git(repo, "worktree", "add", "-q", "--detach", str(trees[1]), new)
    for tree in trees:
        _prepare(prepare, tree)
    request = _request(repo, old, new, subject, work=work, roots=roots, timeout=timeout)
    return replace(request, from_rev=None, to_rev=None, old_tree=trees[0], new_tree=trees[1])


def _prepare(command: str, tree: Path) -> None:
    """Run ``--prepare``'s shell command in a checked-out version (what its build writes)."""
    done = subprocess.run(
        command, shell=True, cwd=tree, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip()
        msg = f"--prepare exited {done.returncode} in {tree.name}: {said}"
        raise OSError(msg)


def _restarted(
    repo: Path,
    new: str,
    command: list[str],
    *,
    work: Path,
    roots: tuple[str, ...],
    timeout: float,
    tree: Path | None = None,
) -> dict[str, str] | str:
    """The tests on the new code itself, as a restart would run it (in ``tree``, the new
    version already checked out and prepared, if given)."""
    made = tree is None
    if tree is None:
        tree = work / f"new-{new[:10]}"
        git(repo, "worktree", "add", "-q", "--detach", str(tree), new)
    try:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(tree / r) for r in roots)}
        return _pytest(
            command, tree=tree, env=env, report=work / "restart.xml", patches=(), timeout=timeout
        )
    finally:
        if made:
            git(repo, "worktree", "remove", "--force", str(tree), check=False)
            shutil.rmtree(tree, ignore_errors=True)


def _why_baseline(reasons: Sequence[Change]) -> str:
    """What made a baseline: the patch refused against the old code (``refused``), the
    registry's check asking for a restart (``restart``), or the diff itself (``diff``)."""
    if any(c.why.startswith(_REFUSED) for c in reasons):
        return "refused"
    if any(c.verdict == "restart" for c in reasons):
        return "restart"
    return "diff"


def _lay_new_tests(repo: Path, old: str, new: str, tree: Path, roots: tuple[str, ...]) -> set[str]:
    """Copy the test files the fix added or changed over the old tree; their paths."""
    changed: set[str] = set()
    diff = git(repo, "diff", "--name-status", "--no-renames", old, new)
    for line in diff.splitlines():
        status, _, path = line.partition("\t")
        place = classify(path, roots)
        if place.kind != "ignored" or not place.why.startswith("test code"):
            continue
        target = tree / path
        if status == "D":
            target.unlink(missing_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        blob = subprocess.run(
            ["git", "-C", str(repo), "show", f"{new}:{path}"], capture_output=True, check=True
        )
        target.write_bytes(blob.stdout)
        if path.endswith(".py"):
            changed.add(path)
    return changed


def _pytest(
    command: list[str],
    *,
    tree: Path,
    env: dict[str, str],
    report: Path,
    patches: Sequence[Path],
    timeout: float,
) -> dict[str, str] | str:
    """Run the test command in ``tree``; test id -> passed/failed/skipped, from its JUnit XML,
    or (no report) the last lines it wrote: a refused patch's ``--hotpatch-apply`` error."""
    report.unlink(missing_ok=True)
    extra = [f"--junitxml={report}", "-p", "no:cacheprovider", "-q"]
    # One argument each: pytest never counts the patch's folder when it picks the rootdir.
    extra += [f"--hotpatch-apply={patch}" for patch in patches]
    try:
        done = subprocess.run(
            [*command, *extra],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout * 20,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"the test command did not finish within {timeout * 20:g} s"
    if not report.exists():
        said = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        hotpatch = [line for line in said if "--hotpatch-apply" in line]
        return " | ".join(hotpatch[-1:] or said[-3:]) or f"exit status {done.returncode}"
    states: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        # a parameter's default repr (`<FakeDate object at 0x7f0b...>`) differs from run to
        # run: without its address the same test has the same id in each run
        name = _ADDRESS.sub(" at 0x", f"{case.get('classname', '')}::{case.get('name', '')}")
        if case.find("failure") is not None or case.find("error") is not None:
            states[name] = "failed"
        elif case.find("skipped") is not None:
            states[name] = states.get(name, "skipped")
        else:
            states[name] = states.get(name, "passed")
    return states


def _in_files(test: str, files: set[str]) -> bool:
    """Is the JUnit test id (``tests.test_x.TestY::test_z``) from one of ``files``?"""
    dotted = test.partition("::")[0]
    return any(dotted.startswith(f.removesuffix(".py").replace("/", ".")) for f in files)


# -- a repository to run on without one ------------------------------------------------------


def generated_repo(path: Path) -> tuple[Path, list[str]]:
    """A small project with three fix commits (two hot, one needing a baseline)."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")

    def commit(message: str, files: dict[str, str]) -> str:
        for name, text in files.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_text(text)
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", message)
        return git(path, "rev-parse", "HEAD")

    money = textwrap.dedent("""\
        def cents(amount):
            return int(amount * 100)


        class Till:
            def __init__(self):
                self.items = []

            def total(self):
                return sum(self.items)
        """)
    tests = textwrap.dedent("""\
        from calc.money import Till, cents


        def test_cents():
            assert cents(2) == 200


        def test_total():
            till = Till()
            till.items += [1, 2]
            assert till.total() == 3
        """)
    base = commit(
        "Release 1.0",
        {"calc/__init__.py": "", "calc/money.py": money, "tests/test_money.py": tests},
    )
    money2 = money.replace("int(amount * 100)", "round(amount * 100)")
    fix1 = commit(
        "Fix cents rounding down",
        {
            "calc/money.py": money2,
            "tests/test_money.py": tests
            + "\n\ndef test_cents_round():\n    assert cents(0.29) == 29\n",
        },
    )
    money3 = (
        money2.replace(
            "        return sum(self.items)",
            "        return sum(item for item in self.items if _counted(item))",
        )
        + "\n\ndef _counted(item):\n    return item > 0\n"
    )
    tests3 = (
        tests
        + "\n\ndef test_cents_round():\n    assert cents(0.29) == 29\n"
        + "\n\ndef test_refunds_not_counted():\n    till = Till()\n"
        + "    till.items += [5, -5]\n    assert till.total() == 5\n"
    )
    fix2 = commit(
        "Fix totals counting refunds", {"calc/money.py": money3, "tests/test_money.py": tests3}
    )
    fix3 = commit("Fix the currency table", {"calc/currencies.json": '{"EUR": 2}\n'})
    return path, [f"{base}..{fix1}", f"{fix1}..{fix2}", f"{fix2}..{fix3}"]


def _totals(outcomes: list[Outcome]) -> dict[str, int]:
    return {
        "commits": len(outcomes),
        **{
            v: sum(o.verdict == v for o in outcomes)
            for v in ("hot", "baseline", "nothing", "error")
        },
        **{
            f"baseline_{why}": sum(o.why_baseline == why for o in outcomes)
            for why in ("diff", "restart", "refused")
        },
        "refused_in_session": sum(bool(o.refused_in_session) for o in outcomes),
        "tests_failing_before": sum(len(o.failing_before) for o in outcomes),
        "tests_fixed": sum(len(o.fixed) for o in outcomes),
        "regressions": sum(len(o.regressions) for o in outcomes),
        "tests_restart_fixed": sum(len(o.restart_fixed) for o in outcomes),
        "patch_misses": sum(len(o.patch_misses) for o in outcomes),
    }


def _save(path: Path, name: str, outcomes: list[Outcome], *, quick: bool, complete: bool) -> None:
    """The results so far (after each commit: a run cut short keeps what it measured)."""
    results: dict[str, Any] = {
        "project": name,
        "complete": complete,
        "totals": _totals(outcomes),
        "commits": [asdict(o) for o in outcomes],
    }
    if complete:
        write_json(path, NAME, quick, results)
        return
    with contextlib.redirect_stdout(io.StringIO()):  # write_json says where; once is enough
        write_json(path, NAME, quick, results)


# -- main -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"benchmarks/{NAME}.py", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--repo", type=Path, help="a git repository (default: a generated one)")
    parser.add_argument("--range", action="append", default=[], metavar="OLD..NEW")
    parser.add_argument("--pick", type=int, default=0, metavar="N", help="the last N fixes")
    parser.add_argument("--grep", default="fix", help="what --pick looks for in messages")
    parser.add_argument(
        "--every",
        type=int,
        default=0,
        metavar="N",
        help="the last N commits changing code, tests or not: hotpatch make only, no tests",
    )
    parser.add_argument("--root", action="append", metavar="DIR", help="import roots")
    parser.add_argument(
        "--test-command",
        default=f"{sys.executable} -m pytest",
        help="the project's test command (pytest; --junitxml and --hotpatch-apply are added)",
    )
    parser.add_argument(
        "--prepare",
        default="",
        metavar="COMMAND",
        help="a shell command run in each checked-out version before make (what the build "
        "writes); make then compares the two trees, not git",
    )
    parser.add_argument("--name", help="the project's name in the report")
    parser.add_argument("--timeout", type=float, default=60.0, help="per verification child")
    parser.add_argument("--quick", action="store_true", help="the generated repository only")
    parser.add_argument("--json", type=Path, metavar="PATH", help="where the results go")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="hotpatch-make-commits-"))
    try:
        if args.repo is None:
            repo, ranges = generated_repo(work / "generated")
            name = "generated"
        else:
            repo = args.repo.absolute()
            name = args.name or repo.name
            ranges = list(args.range)
        roots = tuple(args.root or (("src",) if git(repo, "ls-tree", "HEAD", "src") else (".",)))
        if args.pick:
            ranges += pick(repo, args.pick, args.grep, roots)
        if args.every:
            ranges += pick(repo, args.every, "", roots, tests_too=False)
        if not ranges:
            parser.error("no commit ranges: give --range OLD..NEW, --pick N or --every N")
        command = shlex.split(args.test_command)
        path = args.json or RESULTS / f"{NAME}-{name}-{PY}.json"
        outcomes: list[Outcome] = []
        for index, spec in enumerate(ranges, 1):
            print(f"[{index}/{len(ranges)}] {spec}", file=sys.stderr, flush=True)
            outcome = run_range(
                repo,
                spec,
                roots=roots,
                test_command=command,
                work=work,
                timeout=args.timeout,
                run_tests=not args.every,
                prepare=args.prepare,
            )
            outcomes.append(outcome)
            _save(path, name, outcomes, quick=args.quick or args.repo is None, complete=False)
            print(
                f"    {outcome.verdict}: fixed {len(outcome.fixed)}/{len(outcome.failing_before)}"
                f", restart-fixed {len(outcome.restart_fixed)} (patch misses "
                f"{len(outcome.patch_misses)}), regressions {len(outcome.regressions)}"
                f", make {outcome.make_s:.2f} s"
                + (f"; {outcome.reasons[0][:150]}" if outcome.reasons else ""),
                file=sys.stderr,
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [
        (
            o.range,
            o.subject[:44],
            o.verdict + (f" ({o.why_baseline})" if o.why_baseline else ""),
            f"{len(o.fixed)}/{len(o.failing_before)}",
            f"{len(o.restart_fixed) - len(o.patch_misses)}/{len(o.restart_fixed)}",
            len(o.regressions),
            round(o.make_s, 2),
        )
        for o in outcomes
    ]
    print_table(
        f"hotpatch make on {name}: {len(outcomes)} commits",
        ("range", "subject", "verdict", "fixed", "restart-fixed", "regressions", "make s"),
        rows,
    )
    totals = _totals(outcomes)
    print(
        f"\n{name}: {totals['commits']} commits, {totals['hot']} hot, {totals['baseline']} "
        f"baseline ({totals['baseline_diff']} from the diff, {totals['baseline_restart']} a "
        f"restart the registry asked for, {totals['baseline_refused']} the registry refused), "
        f"{totals['nothing']} nothing to patch, {totals['error']} errors "
        f"({totals['refused_in_session']} hot patches the test session refused); "
        f"{totals['tests_fixed']} of {totals['tests_failing_before']} failing tests fixed, "
        f"{totals['regressions']} regressions; of the {totals['tests_restart_fixed']} tests "
        f"failing on the old code that pass on the new code, {totals['patch_misses']} fail "
        "with the patch"
    )
    _save(path, name, outcomes, quick=args.quick or args.repo is None, complete=True)
    return 1 if totals["error"] and args.repo is None else 0


if __name__ == "__main__":
    sys.exit(main())
