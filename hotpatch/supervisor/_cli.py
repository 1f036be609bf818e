"""``python -m hotpatch.supervisor run ...`` (``hotpatch run``): options -> a runner, run.

The composition root: it makes a ``Supervisor`` (or a ``Fleet`` of them),
gives it the watched folder's pipeline with ``--watch``, and runs it, through
the metrics bridge only with ``--metrics``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ipaddress
import logging
import math
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from packaging.version import InvalidVersion, Version

from hotpatch._logging import show_log_lines
from hotpatch.agent._state_dir import ENV_STATE_DIR, refuse_read_only
from hotpatch.service._channel import (
    ENV_BASELINE,
    ENV_VITAL_TIMEOUT,
    VITAL_TIMEOUT_S,
    parse_address,
    parse_bind,
)
from hotpatch.supervisor._activation import passed_sockets
from hotpatch.supervisor._child import ChildSpec
from hotpatch.supervisor._patches import SupervisedPipeline
from hotpatch.supervisor._records import PATCH_TIMEOUT_S, SupervisorConfig
from hotpatch.supervisor._runner import Runner
from hotpatch.supervisor._supervisor import Supervisor
from hotpatch.supervisor._workers import Fleet

__all__ = ["build_parser", "main", "parse_metrics_address"]

log = logging.getLogger("hotpatch.supervisor")


def _bind(text: str) -> tuple[str, tuple[str, int]]:
    try:
        return parse_bind(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _window(text: str) -> tuple[datetime.time, datetime.time]:
    start, sep, end = text.partition("-")
    try:
        if not sep:
            raise ValueError(text)
        return datetime.time.fromisoformat(start.strip()), datetime.time.fromisoformat(end.strip())
    except ValueError:
        msg = f"{text!r} is not a window HH:MM-HH:MM (UTC), e.g. 02:00-04:00"
        raise argparse.ArgumentTypeError(msg) from None


def parse_metrics_address(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9100"`` -> ``("127.0.0.1", 9100)``; loopback only (the endpoint is open)."""
    try:
        host, port = parse_address(text)
    except ValueError:
        msg = f"{text!r} is not HOST:PORT; write e.g. 127.0.0.1:9100 (port 0 picks a free one)"
        raise argparse.ArgumentTypeError(msg) from None
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        msg = (
            f"{host} is not a loopback address: the metrics endpoint has no authentication, "
            "so it is served on 127.0.0.1 or ::1 only; scrape it through a proxy"
        )
        raise argparse.ArgumentTypeError(msg)
    return host, port


def build_parser() -> argparse.ArgumentParser:
    usage = "hotpatch run [options] -- CMD [ARG ...]"  # argparse's own leaves out the CMD
    parser = argparse.ArgumentParser(
        prog="hotpatch",
        usage=usage,
        description="Run a service under the hotpatch supervisor.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        usage=usage,
        help="start the service and restart it keeping its sockets and memory",
        description=(
            "Start CMD (given after --) with the listening sockets, restart it on SIGHUP "
            "without refusing a connection or losing its preserved state, bring it back "
            "if it dies, drain and stop it on SIGTERM."
        ),
    )
    run.add_argument(
        "--bind",
        metavar="NAME=HOST:PORT",
        type=_bind,
        action="append",
        default=[],
        help="a listening socket the supervisor owns; the service takes it with "
        "hotpatch.listen_socket(NAME) (repeatable; port 0 picks a free one). Under systemd "
        "socket activation, the socket passed as NAME (FileDescriptorName=) is used instead",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run N worker processes sharing the sockets, each with its own preserved state "
        "and journal; patches and restarts roll through them in update domains of at most "
        "20%% of the workers, each batch health-checked (default 1)",
    )
    run.add_argument(
        "--health-url",
        metavar="PATH",
        help="health-check the service also by GET PATH from inside the process: after a "
        "restart that changes the code (a new process failing it is rolled back to the previous "
        "code, state carried across), and with --workers after each batch (the sockets are "
        "shared, so any worker may answer: it checks the service answers)",
    )
    run.add_argument(
        "--settle",
        type=float,
        default=None,
        metavar="S",
        help="seconds new code serves before its health check (default 0; 1 with --workers)",
    )
    run.add_argument(
        "--state-mb",
        type=int,
        default=1024,
        metavar="N",
        help="largest state round the service may hand over, in MB (default 1024)",
    )
    run.add_argument(
        "--drain-timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="time the old process gets to finish in-flight work (default 5)",
    )
    run.add_argument(
        "--ready-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="time a new process gets to load its state and call ready() (default 30)",
    )
    run.add_argument(
        "--status-file",
        type=Path,
        metavar="PATH",
        help="keep the supervisor's status here as JSON (replaced atomically)",
    )
    run.add_argument(
        "--snapshot-interval",
        type=float,
        default=5.0,
        metavar="S",
        help="take a state round this often, so a killed process comes back with "
        "recent state (0: only at restarts; default 5)",
    )
    run.add_argument(
        "--max-restarts",
        type=int,
        default=5,
        metavar="N",
        help="give up after N restarts of a dying service within --restart-period (default 5)",
    )
    run.add_argument(
        "--restart-period",
        type=float,
        default=60.0,
        metavar="S",
        help="the window of --max-restarts, in seconds (default 60)",
    )
    run.add_argument(
        "--backoff-initial",
        type=float,
        default=0.1,
        metavar="S",
        help="delay before bringing back a dead service; doubles per recent restart (default 0.1)",
    )
    run.add_argument(
        "--backoff-max",
        type=float,
        default=30.0,
        metavar="S",
        help="longest delay before bringing back a dead service (default 30)",
    )
    run.add_argument(
        "--restart-mode",
        choices=("preserving", "plain"),
        default="preserving",
        help="what SIGHUP does: a memory-preserving restart (default) or a plain "
        "stop-then-start where the service keeps state its own way",
    )
    run.add_argument(
        "--metrics",
        type=parse_metrics_address,
        metavar="HOST:PORT",
        help="serve Prometheus metrics of every worker (levels, applies, rejections, "
        "rollbacks, restarts, pauses) at http://HOST:PORT/metrics; loopback only, port 0 "
        "picks a free one (logged and in the status file); needs: pip install "
        "'pyhotpatch[metrics]'",
    )
    patches = run.add_argument_group("patches")
    patches.add_argument(
        "--watch",
        type=Path,
        metavar="DIR",
        help="the patch folder: the supervisor watches it, verifies each drop and applies "
        "it in the service process (hot, or through a memory-preserving restart)",
    )
    patches.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="keep everything hotpatch writes about the folder here -- outcome folders and "
        "result files, the outcome log, lock, pidfile, control socket, journal, releases -- "
        "so the patch folder is only read (needed for a read-only one, such as a Kubernetes "
        f"ConfigMap volume; default ${ENV_STATE_DIR} with --watch; hotpatch status, watch, "
        "apply... find it by --state-dir DIR or the same variable)",
    )
    patches.add_argument(
        "--baseline",
        default=os.environ.get(ENV_BASELINE),
        metavar="V",
        help=f"the service's baseline version (default ${ENV_BASELINE}); needed with --watch",
    )
    patches.add_argument(
        "--journal",
        type=Path,
        metavar="PATH",
        help="where the service processes keep the patch level (default DIR/.journal.json, "
        "DIR being --state-dir when given)",
    )
    patches.add_argument(
        "--trusted-keys",
        type=Path,
        metavar="DIR",
        help="public keys (.pub, from `hotpatch keygen`) a patch's NAME.sig must verify with",
    )
    patches.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="apply patches without a signature (signatures are required by default)",
    )
    patches.add_argument(
        "--releases",
        type=Path,
        metavar="DIR",
        help="where baseline bundles are unpacked, one folder per version (default "
        "DIR/.releases, DIR being --state-dir when given)",
    )
    patches.add_argument(
        "--window",
        type=_window,
        metavar="HH:MM-HH:MM",
        help="daily maintenance window (UTC) in which a planned baseline restarts",
    )
    patches.add_argument(
        "--control-socket",
        type=Path,
        metavar="PATH",
        help="the control socket `hotpatch apply|rollback|history|verify|status` talk to "
        "(default DIR/.hotpatch.sock; either way named in DIR/.hotpatch.json; DIR being "
        "--state-dir when given)",
    )
    patches.add_argument(
        "--verify-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="time the verification child gets to import a patch (default 10)",
    )
    patches.add_argument(
        "--vital-timeout",
        type=float,
        metavar="S",
        help="time the check after each apply gets (does a message still cross the channel "
        "to the supervisor?) before the patch is rolled back and rejected: more for a slow "
        f"machine, less for a quicker rollback (default ${ENV_VITAL_TIMEOUT}, else "
        f"{VITAL_TIMEOUT_S:g})",
    )
    return parser


def _check_paths(args: argparse.Namespace, command: list[str]) -> None:
    """What would fail later -- the first signed drop, every status write, the first
    start -- refused now, naming the option and the fix."""
    if args.baseline:
        try:
            Version(args.baseline)
        except InvalidVersion:
            msg = f"--baseline {args.baseline!r} is not a PEP 440 version (write it like 2.3)"
            raise ValueError(msg) from None
    if args.trusted_keys is not None and not args.trusted_keys.is_dir():
        msg = (
            f"--trusted-keys {args.trusted_keys}: no such directory; create it and copy the "
            "public keys (.pub, from `hotpatch keygen`) into it"
        )
        raise ValueError(msg)
    for option in ("status_file", "journal", "control_socket"):
        path = getattr(args, option)
        if path is not None and not path.absolute().parent.is_dir():
            msg = (
                f"--{option.replace('_', '-')} {path}: its folder {path.absolute().parent} "
                "does not exist; create it first"
            )
            raise ValueError(msg)
    program = command[0]
    if shutil.which(program) is None:
        where = "is not an executable file" if os.sep in program else "is not found on PATH"
        msg = f"the service's command {program!r} {where}: give the command after --"
        raise ValueError(msg)


def _vital_timeout(args: argparse.Namespace, watch: Path | None) -> float:
    """--vital-timeout, else $HOTPATCH_VITAL_TIMEOUT (with --watch), else the default;
    ``ValueError`` names where a bad value came from and what to give."""
    raw = os.environ.get(ENV_VITAL_TIMEOUT)
    value: float
    if args.vital_timeout is not None:
        value, given = float(args.vital_timeout), f"--vital-timeout {args.vital_timeout:g}"
        if watch is None:
            msg = (
                f"{given} is the wait of the check after each apply of a patch: give "
                "--watch DIR too"
            )
            raise ValueError(msg)
    elif raw and watch is not None:
        given = f"${ENV_VITAL_TIMEOUT}={raw!r}"
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
    else:
        return VITAL_TIMEOUT_S
    if not 0 < value < math.inf:
        msg = (
            f"{given} is not a positive number of seconds: it is how long the check after "
            "each apply (does a message still cross the channel to the supervisor?) may take "
            f"before the patch is rolled back (the default is {VITAL_TIMEOUT_S:g}: give more "
            "when a slow machine needs longer, less for a quicker rollback)"
        )
        raise ValueError(msg)
    return value


def _config(args: argparse.Namespace, command: list[str]) -> SupervisorConfig:
    names = [name for name, _ in args.bind]
    if len(set(names)) != len(names):
        msg = f"--bind names must be unique, got {', '.join(names)}"
        raise ValueError(msg)
    for option in ("state_mb", "max_restarts", "workers"):
        if getattr(args, option) < 1:
            msg = f"--{option.replace('_', '-')} must be at least 1"
            raise ValueError(msg)
    for option in (
        "drain_timeout",
        "ready_timeout",
        "restart_period",
        "backoff_max",
        "verify_timeout",
    ):
        if getattr(args, option) <= 0:
            msg = f"--{option.replace('_', '-')} must be positive"
            raise ValueError(msg)
    watch = args.watch.absolute() if args.watch else None
    state_dir = args.state_dir or (
        Path(os.environ[ENV_STATE_DIR]) if os.environ.get(ENV_STATE_DIR) and watch else None
    )
    state_dir = state_dir.absolute() if state_dir is not None else None
    if state_dir is not None and watch is None:
        msg = (
            f"--state-dir {args.state_dir} keeps what hotpatch writes about its patch folder: "
            "give --watch DIR too"
        )
        raise ValueError(msg)
    if watch is not None and state_dir is None:
        try:
            refuse_read_only(watch)
        except PermissionError as exc:
            raise ValueError(str(exc)) from None
    if watch is not None and not args.baseline:
        msg = f"--watch needs the service's baseline: --baseline V (or ${ENV_BASELINE})"
        raise ValueError(msg)
    if watch is not None and not args.allow_unsigned and args.trusted_keys is None:
        msg = (
            "--watch requires signed patches: give --trusted-keys DIR (public keys from "
            "`hotpatch keygen`), or --allow-unsigned to apply unsigned patches"
        )
        raise ValueError(msg)
    _check_paths(args, command)
    vital_timeout = _vital_timeout(args, watch)
    journal = args.journal or ((state_dir or watch) / ".journal.json" if watch else None)
    return SupervisorConfig(
        spec=ChildSpec(tuple(command)),
        watch=watch,
        baseline=args.baseline or None,
        journal=journal.absolute() if journal else None,
        require_signature=not args.allow_unsigned,
        trusted_keys=args.trusted_keys.absolute() if args.trusted_keys else None,
        verify_timeout=args.verify_timeout,
        vital_timeout=vital_timeout,
        # A serving process's answer to a patch comes after its check: a longer one adds to
        # the wait for it (no answer in time leaves the drop in doubt, not rolled back).
        patch_timeout=PATCH_TIMEOUT_S + max(vital_timeout - VITAL_TIMEOUT_S, 0.0),
        releases=args.releases.absolute() if args.releases else None,
        window=args.window,
        control_socket=args.control_socket.absolute() if args.control_socket else None,
        state_dir=state_dir,
        binds=tuple(args.bind),
        state_limit=args.state_mb * 2**20,
        drain_timeout=args.drain_timeout,
        ready_timeout=args.ready_timeout,
        status_file=args.status_file.resolve() if args.status_file else None,
        snapshot_interval=max(args.snapshot_interval, 0.0),
        max_restarts=args.max_restarts,
        restart_period=args.restart_period,
        backoff_initial=max(args.backoff_initial, 0.0),
        backoff_max=args.backoff_max,
        restart_mode=args.restart_mode,
        health_url=args.health_url or None,
        settle=max(args.settle if args.settle is not None else float(args.workers > 1), 0.0),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``run [options] -- CMD...``: supervise CMD; 0 after SIGTERM, 1 on failure, 2 on misuse."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if "--" in argv:
        split = argv.index("--")
        options, command = argv[:split], argv[split + 1 :]
    else:
        options, command = argv, []
    args = parser.parse_args(options)
    if not command:
        parser.error("give the service's command after --, e.g. run --bind ... -- python -m shop")
    try:
        config = _config(args, command)
        show_log_lines()  # the supervisor's lines on stderr, as HOTPATCH_LOG says
        passed = passed_sockets(config.binds)  # systemd socket activation
    except ValueError as exc:
        parser.error(str(exc))
    pipeline = SupervisedPipeline if config.watch is not None else None
    runner: Runner = (
        Fleet(config, args.workers, pipeline=pipeline)
        if args.workers > 1
        else Supervisor(config, pipeline=pipeline)
    )
    try:
        runner.open_sockets(passed)
    except OSError as exc:
        log.error("%s", exc.strerror or exc)  # noqa: TRY400 -- the message says it all
        return 1
    if args.metrics is None:
        return asyncio.run(runner.run())
    # The metrics bridge (and prometheus_client) only for a run that serves metrics.
    from hotpatch.supervisor._metrics import run_with_metrics  # noqa: PLC0415

    return run_with_metrics(runner, args.metrics)
