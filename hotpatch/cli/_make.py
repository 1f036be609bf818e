"""``hotpatch make``: a fix commit (or two trees) -> a reviewed, verified patch file or a bundle.

Exit codes: 0 a hot patch written (or nothing to patch); 3 not hot, a
baseline bundle written instead; 2 usage errors and versions that cannot be
read or compared.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from hotpatch.cli._ask import EXIT_OK, UsageError, print_json
from hotpatch.cli._show import table
from hotpatch.make import MakeError, MakeResult, Request, make

__all__ = ["EXIT_BASELINE", "add_make_parser"]

EXIT_BASELINE = 3
ENV_KEY = "HOTPATCH_SIGNING_KEY"


def add_make_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``hotpatch make`` on the main parser's subcommands."""
    make_cmd = commands.add_parser(
        "make",
        help="make a hot patch from a fix commit or two trees (or a baseline bundle, exit 3)",
        description=(
            "Compare two versions of the service's code definition by definition and write "
            "a hot patch file, checked against the old code in a child process. What cannot "
            "go hot makes a baseline bundle instead (exit status 3), naming the reason."
        ),
        epilog="exit codes: 0 hot patch written or nothing to patch, 3 baseline bundle "
        "written instead, 2 usage error or versions that cannot be read",
    )
    make_cmd.add_argument(
        "trees", nargs="*", metavar="TREE", help="OLD_TREE NEW_TREE (directories)"
    )
    make_cmd.add_argument("--from", dest="from_rev", metavar="REV", help="the old version (git)")
    make_cmd.add_argument(
        "--to", dest="to_rev", metavar="REV", help="the new version, the fix (git)"
    )
    make_cmd.add_argument(
        "--repo", default=".", metavar="DIR", help="the git repository (default: .)"
    )
    make_cmd.add_argument(
        "--root",
        action="append",
        metavar="DIR",
        help="an import root, relative to the repository or tree, e.g. src "
        "(repeatable; default: the top of the repository)",
    )
    make_cmd.add_argument("--baseline", required=True, metavar="V", help="the running baseline")
    make_cmd.add_argument("--version", required=True, metavar="V", help="the patch's version")
    make_cmd.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="the patch file (default: VERSION.py); a bundle is written to FILE with .zip "
        "in place of .py (a name without .py or .zip: a bundle directory)",
    )
    make_cmd.add_argument("--summary", metavar="TEXT", help="default: the commit's subject")
    make_cmd.add_argument(
        "--explain", action="store_true", help="list every changed definition, its verdict and why"
    )
    make_cmd.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON"
    )
    make_cmd.add_argument(
        "--sign",
        metavar="KEY",
        default=os.environ.get(ENV_KEY),
        help=f"sign what is written with this private key (default: ${ENV_KEY}, if set)",
    )
    make_cmd.add_argument(
        "--cumulative",
        action="store_true",
        help="the patch replaces the earlier hot patches of its baseline in one step "
        "(for a patch made from the baseline's commit, carrying every fix since)",
    )
    make_cmd.add_argument(
        "--planned",
        action="store_true",
        help="a bundle, if one is needed, is a planned baseline (default: unplanned)",
    )
    make_cmd.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds each verification child may take (default 30)",
    )
    make_cmd.set_defaults(run=run_make)


def run_make(args: argparse.Namespace) -> int:
    as_json = bool(getattr(args, "json", False))
    request = _request(args)
    progress = None if as_json else _progress
    try:
        result = make(request, progress)
    except MakeError as exc:
        raise UsageError(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{type(exc).__name__}: {exc}") from None
    if as_json:
        print_json({"ok": True, **result.record()})
    else:
        _show(result, explain=args.explain)
    return EXIT_BASELINE if result.outcome == "baseline" else EXIT_OK


def _request(args: argparse.Namespace) -> Request:
    git = args.from_rev is not None or args.to_rev is not None
    if git and args.trees:
        msg = "give either --from/--to (git) or two trees, not both"
        raise UsageError(msg)
    if git and (args.from_rev is None or args.to_rev is None):
        msg = "a git range needs both --from REV and --to REV"
        raise UsageError(msg)
    if not git and len(args.trees) != 2:  # noqa: PLR2004 - OLD and NEW
        msg = "give --from REV --to REV (a git range), or OLD_TREE NEW_TREE"
        raise UsageError(msg)
    return Request(
        baseline=args.baseline,
        version=args.version,
        repo=Path(args.repo),
        from_rev=args.from_rev,
        to_rev=args.to_rev,
        old_tree=Path(args.trees[0]) if not git else None,
        new_tree=Path(args.trees[1]) if not git else None,
        roots=tuple(args.root or (".",)),
        output=Path(args.output) if args.output else None,
        summary=args.summary,
        planned=args.planned,
        cumulative=args.cumulative,
        sign_key=Path(args.sign) if args.sign else None,
        timeout=args.timeout,
    )


def _progress(message: str) -> None:
    print(f"hotpatch make: {message}", file=sys.stderr, flush=True)


def _show(result: MakeResult, *, explain: bool) -> None:
    if explain:
        rows = [(c.name, c.what, c.verdict, c.why) for c in (*result.changes, *result.ignored)]
        if rows:
            print(table(rows, header=("DEFINITION", "KIND", "VERDICT", "WHY")))
            print()
    took = f"{result.timings.get('total_s', 0.0):.2f} s"
    if result.outcome == "nothing":
        ignored = f" ({len(result.ignored)} changed files ignored)" if result.ignored else ""
        print(f"nothing to patch: the service's code is the same in {result.origin}{ignored}")
        return
    if result.outcome == "hot":
        counts: dict[str, int] = {}
        for change in result.changes:
            counts[change.verdict] = counts.get(change.verdict, 0) + 1
        summary = ", ".join(f"{n} {verdict}" for verdict, n in counts.items())
        print(
            f"wrote {result.path}: a hot patch ({summary}), checked against the old code in {took}"
        )
        if result.signature:
            print(f"signed: {result.signature}")
        print(
            f"next: read it, run `pytest --hotpatch-apply={result.path}` with the new tests, "
            "then drop it into the service's patch folder"
        )
        return
    print(f"not hot: wrote the baseline bundle {result.path} instead, because:")
    for change in result.reasons:
        print(f"  - {change.name}: {change.why}")
    if result.signature:
        print(f"signed: {result.signature}")
    print("drop the bundle to restart the service on the new code (see `hotpatch make --explain`)")
