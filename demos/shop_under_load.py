"""Shop under load: a real HTTP shop under the supervisor takes a fix, a bad patch and a restart.

The shop (``demos/shop``, release 1.0) quotes and takes orders over HTTP and
keeps its ledger -- orders and revenue -- as preserved state. It runs under
the supervisor, which owns its listening socket and its patch folder, and
takes only patches signed with a trusted key (the demo makes one)::

    hotpatch keygen --dir $TMP/keys --name ops
    hotpatch sign --key $TMP/keys/ops.key shop-1.0.1.py shop-1.0.2.py shop-1.1.zip
    hotpatch run --bind http=127.0.0.1:0 --watch $TMP/patches --baseline 1.0 \\
        --trusted-keys $TMP/trusted --status-file $TMP/status.json \\
        --verify-timeout 60 -- python -m shop

Its bulk discount starts one item too late: 10 widgets cost 99.90, not 89.91.
While a load generator sends requests from several threads throughout (a new
connection each, every failure and refused connection counted, every latency
recorded), this demo

1. drops the fix, hot patch 1.0.1: the answers change live;
2. drops a bad patch, 1.0.2, that raises for some customers: the health gate
   (``hotpatch_plugins.health_gate``, in the shop) sees its errors during
   probation and rolls it back;
3. drops release 1.1, an unplanned baseline bundle (``patch.toml`` and a code
   tree, built at run time from ``demos/shop`` with the files release 1.1
   changes laid over it): the supervisor restarts the shop into it as soon as
   it can, keeping its memory -- the old process drains, the ledger crosses
   over, connections wait in the socket's backlog;
4. checks that the ledger counted every order exactly once across all of it;
5. prints a report -- requests sent, failed, refused, the pause, the versions
   -- and draws the story over time as a PNG: the events, the price each
   request was answered, the latency (with matplotlib, the ``demo`` extra;
   without it the demo says so and goes on).

It exits 0 only if no request failed, none was refused, and every phase did
what it should. Run it with ``make demo`` or ``python demos/shop_under_load.py
[--out DIR]``; it works in a temporary folder it removes, and writes its report
(JSON and PNG) to ``--out`` (default: ``$TMPDIR/hotpatch-shop-under-load``).
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import tomllib
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import _narrate as narrate
from _narrate import (
    TIMEOUT_S,
    WALL0,
    DemoFailed,
    aliases,
    check,
    drop,
    hotpatch_cli,
    ms,
    now,
    read_json,
    say,
    show_timings,
    stop_process,
    wait_outcome,
    wait_until,
    wrap,
)

HERE = Path(__file__).resolve().parent
PATCHES = HERE / "shop_patches"
FIX = PATCHES / "shop-1.0.1.py"
BAD = PATCHES / "shop-1.0.2.py"
BUNDLE = PATCHES / "shop-1.1"  # release 1.1: its patch.toml, and overrides/ -- what it changes
SHOP = HERE / "shop"  # release 1.0's code: the bundle's code tree is this, overrides laid over
BASELINE = "1.0"
PROBATION_S = 5.0  # the health gate's probation window, in the service
LOAD_THREADS = 4
# The supervisor imports each drop in a fresh child first (its default limit: 10 s).
# On a loaded machine -- CI's 2 cores running test suites beside this demo and
# its own load -- that child can take longer, and the drop would be rejected as
# a patch that blocks at import: the demo gives it more (bounded) time.
VERIFY_TIMEOUT_S = 60.0
OUTCOME_TIMEOUT_S = VERIFY_TIMEOUT_S + TIMEOUT_S  # verification, then the shop applies
REQUEST_GAP_S = 0.02  # each load thread's pause between requests: steady, not flat out
STEADY_S = 2.0  # how long the load runs between phases, for the plot and the eye

# What the load asks (each thread in turn), and the totals the shop may rightly answer.
QUOTE = "GET /quote?item=widget&qty=10&customer=g7"  # 10 widgets for a guest: bulk
GOLD = "POST /order?item=gadget&qty=2&customer=m12"  # a gold member: loyalty, no bulk
SILVER = "POST /order?item=widget&qty=12&customer=m7"  # a silver member: bulk and loyalty
REQUESTS = (QUOTE, GOLD, SILVER, GOLD)
BUG, FIXED = "99.90", "89.91"
RIGHT = {QUOTE: {BUG, FIXED}, GOLD: {"46.55"}, SILVER: {"102.50"}}
WITHOUT_LOYALTY = {GOLD: "49.00", SILVER: "107.89"}  # when the loyalty discount failed


def demo_time(iso: str) -> float:
    """A UTC timestamp of the supervisor's (``2026-11-25T10:00:00.123Z``) in demo time."""
    stamp = datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    return stamp - WALL0


# -- the supervisor, and the shop under it ---------------------------------------------------


class Supervised:
    """``hotpatch run ... -- python -m shop`` in a child process; its log relayed as it comes."""

    def __init__(self, work: Path, folder: Path, trusted: Path) -> None:
        self.status_file = work / "status.json"
        env = dict(os.environ)
        # The shop's code comes from demos/ through the path; the process runs in
        # the work folder, so a bundle's code root can come first.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        command = [
            sys.executable,
            "-m",
            "hotpatch",
            "run",
            "--bind",
            "http=127.0.0.1:0",
            "--watch",
            str(folder),
            "--baseline",
            BASELINE,
            "--trusted-keys",
            str(trusted),
            "--status-file",
            str(self.status_file),
            "--verify-timeout",
            f"{VERIFY_TIMEOUT_S:g}",
            "--",
            sys.executable,
            "-m",
            "shop",
            "--probation",
            str(PROBATION_S),
        ]
        options = command[4 : command.index("--")]
        lines = [" ".join(options[i : i + 2]) for i in range(0, len(options), 2)]
        service = " ".join(["python", *command[command.index("--") + 2 :]])
        say(" \\\n      ".join(["$ hotpatch run", *lines, f"-- {service}"]))
        self.process = subprocess.Popen(
            command,
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.lines: list[tuple[float, str]] = []
        self._relay = threading.Thread(target=self._relay_output, name="relay", daemon=True)
        self._relay.start()

    def _relay_output(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = re.sub(r"^\d{4}-\d\d-\d\d [\d:,]+ ", "", raw.rstrip())  # say() stamps it
            self.lines.append((now(), line))
            say(f"  log | {line if len(line) <= 120 else line[:117] + '...'}")

    def status(self) -> dict[str, Any]:
        return read_json(self.status_file)

    def port(self) -> int:
        def serving() -> int | None:
            check(self.process.poll() is None, f"hotpatch run exited {self.process.returncode}")
            status = self.status()
            child = status.get("child") or {}
            if not child.get("ready"):
                return None
            return int(status["sockets"]["http"].rpartition(":")[2])

        port: int = wait_until(serving, "the shop serving under the supervisor")
        return port

    def logged(self, pattern: str, after: float = 0.0) -> tuple[float, str] | None:
        """The first log line matching ``pattern`` seen after ``after`` (demo time)."""
        for seen, line in list(self.lines):
            if seen >= after and re.search(pattern, line):
                return seen, line
        return None

    def stop(self) -> int:
        """SIGTERM: the supervisor drains the shop and exits; its exit code."""
        return stop_process(self.process, self._relay)


def ask(port: int, request: str) -> dict[str, Any]:
    """One request on a new connection; the answer's JSON (raises on anything but 200)."""
    method, path = request.split(" ", 1)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")
    answer: dict[str, Any] = json.loads(body)
    return answer


# -- the load generator -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    request: str
    started: float  # demo time
    ended: float
    total: str | None = None  # None: the request failed
    loyalty: str | None = None
    code: str | None = None
    pid: int | None = None
    order: int | None = None
    error: str | None = None
    refused: bool = False

    @property
    def latency(self) -> float:
        return self.ended - self.started


class Load(narrate.Load[Answer]):
    """Threads sending the request mix continuously, one new connection per request."""

    gap_s = REQUEST_GAP_S  # the machine is shared: leave the supervisor CPU

    def _one(self, turn: int) -> Answer:
        request = REQUESTS[turn % len(REQUESTS)]
        started = now()
        try:
            body = ask(self.port, request)
        except ConnectionRefusedError as exc:
            return Answer(request, started, now(), error=str(exc), refused=True)
        except Exception as exc:  # any failure is counted, none stops the load
            return Answer(request, started, now(), error=f"{type(exc).__name__}: {exc}")
        return Answer(
            request,
            started,
            now(),
            total=body.get("total"),
            loyalty=body.get("loyalty"),
            code=body.get("code"),
            pid=body.get("pid"),
            order=body.get("order"),
        )

    def steady(self, seconds: float = STEADY_S) -> list[Answer]:
        """Let the load run for ``seconds``; the answers to requests started meanwhile."""
        start = now()
        time.sleep(seconds)
        return self.between(start, now())

    @property
    def failed(self) -> list[Answer]:
        return [a for a in list(self.answers) if a.total is None and not a.refused]

    @property
    def refused(self) -> list[Answer]:
        return [a for a in list(self.answers) if a.refused]


def wrong(answers: list[Answer]) -> list[Answer]:
    """Answers that are neither right nor the known bug nor a priced-without-loyalty fallback."""
    return [
        a
        for a in answers
        if a.total is not None
        and a.total not in RIGHT[a.request]
        and not (a.loyalty == "unavailable" and a.total == WITHOUT_LOYALTY.get(a.request))
    ]


def tally(answers: list[Answer]) -> str:
    counts = Counter(
        f"{a.request.split('customer=')[1]} {a.total}"
        + (" (no loyalty)" if a.loyalty == "unavailable" else "")
        for a in answers
        if a.total is not None
    )
    return ", ".join(f"{k} x {n}" for k, n in sorted(counts.items()))


# -- dropping patches ---------------------------------------------------------------------


def signed(path: Path) -> list[Path]:
    """A signed drop: its ``.sig`` goes in first, then the file itself."""
    return [path.with_name(path.name + ".sig"), path]


def sign_patches(work: Path) -> tuple[Path, dict[Path, Path]]:
    """A key for the demo, and the patches signed with it, as an operator would.

    The trusted-keys folder (``.pub`` files) and the signed copies of the
    patches -- the bundle zipped first: a signature covers one file's bytes
    -- are made in the work folder; ``demos/`` is left as it is.
    """
    keys, trusted, outbox = work / "keys", work / "trusted", work / "outbox"
    for folder in (keys, trusted, outbox):
        folder.mkdir(mode=0o700)
    say(f"$ hotpatch keygen --dir {keys} --name ops")
    say(textwrap.indent(hotpatch_cli("keygen", "--dir", str(keys), "--name", "ops"), "    "))
    shutil.copy2(keys / "ops.pub", trusted / "ops.pub")
    signed = {FIX: outbox / FIX.name, BAD: outbox / BAD.name, BUNDLE: outbox / f"{BUNDLE.name}.zip"}
    for source in (FIX, BAD):
        shutil.copy2(source, signed[source])
    changed = build_bundle(BUNDLE, SHOP, signed[BUNDLE])
    say(
        f"built {signed[BUNDLE].name}: patch.toml, and {SHOP.name}/ as its code tree with "
        f"release 1.1's changes laid over it ({', '.join(changed)})"
    )
    names = " ".join(p.name for p in signed.values())
    say(f"$ cd {outbox} && hotpatch sign --key {keys / 'ops.key'} {names}")
    result = hotpatch_cli("sign", "--key", str(keys / "ops.key"), *map(str, signed.values()))
    say(textwrap.indent(result, "    "))
    return trusted, signed


def source_files(folder: Path) -> dict[str, Path]:
    """The files under ``folder`` (no ``__pycache__``), by their POSIX path relative to it."""
    return {
        path.relative_to(folder).as_posix(): path
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def build_bundle(release: Path, base: Path, archive: Path) -> list[str]:
    """Zip a baseline bundle at ``archive``: ``release/patch.toml``, and under its code root
    the package ``base`` with the files of ``release/overrides`` laid over it (an override
    replaces the file of the same path, or adds it). The repository keeps only what the
    release changes; a bundle holds the whole code tree. Returns the overridden paths."""
    root = tomllib.loads((release / "patch.toml").read_text())["code"]["root"]
    overrides = source_files(release / "overrides")
    check(bool(overrides), f"{release / 'overrides'} holds no files: the release changes nothing")
    tree = {f"{base.name}/{name}": path for name, path in source_files(base).items()}
    tree |= overrides
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.write(release / "patch.toml", "patch.toml")
        for name, path in sorted(tree.items()):
            bundle.write(path, f"{root}/{name}")
    return sorted(overrides)


# -- the story ------------------------------------------------------------------------------


@dataclass
class Story:
    """What happened, for the report (and the JSON written beside the plot)."""

    events: list[tuple[float, str]] = field(default_factory=list)
    versions: list[str] = field(default_factory=lambda: [BASELINE])
    fix_live_s: float | None = None
    rollback_after_s: float | None = None
    fallbacks: int = 0
    restart: str = "not run"
    pauses_s: list[float] = field(default_factory=list)  # the supervisor's status file
    told_paused_s: list[float] = field(default_factory=list)  # what the shop was told
    fix_timings: dict[str, float] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)

    def mark(self, label: str, at: float | None = None) -> float:
        at = now() if at is None else at
        self.events.append((at, label))
        return at


def run(work: Path, folder: Path, story: Story) -> Load:
    trusted, signed = sign_patches(work)
    say(
        f"starting the shop (release {BASELINE}) under hotpatch run; the supervisor owns "
        f"its socket and watches {folder} (signed patches only)"
    )
    supervised = Supervised(work, folder, trusted)
    load: Load | None = None
    try:
        port = supervised.port()
        story.mark("serving")
        load = Load(port, LOAD_THREADS)
        load.start()
        say(
            f"load: {LOAD_THREADS} threads, a new connection per request, to "
            f"http://127.0.0.1:{port}:\n    " + "\n    ".join(dict.fromkeys(REQUESTS))
        )
        load.wait_for(20, after=0.0)
        before = load.steady()
        check(not wrong(before), f"wrong answers before any patch: {tally(wrong(before))}")
        check(
            {a.total for a in before if a.request == QUOTE} == {BUG},
            f"before the fix, the quote was answered {tally(before)}",
        )
        say(
            f"10 widgets cost {BUG}: the bug (the bulk discount starts at 11; should be {FIXED});"
            f"\n    {len(before)} requests in {STEADY_S:g} s: {tally(before)}"
        )
        fix_the_bug(signed[FIX], load, folder, supervised, story)
        bad_patch_rolled_back(signed[BAD], load, folder, supervised, story)
        restart(signed[BUNDLE], load, folder, supervised, story)
        check_ledger(port, load, story)
    finally:
        if load is not None:
            load.stop()
        story.mark("stopping")
        status = supervised.status()
        code = supervised.stop()
    story.pauses_s = [float(p) for p in status.get("pauses_s", [])]
    story.pids = sorted({a.pid for a in load.answers if a.pid is not None})
    check(code == 0, f"hotpatch run exited with code {code}")
    return load


def switched(supervised: Supervised, version: str, dropped: float) -> float:
    """When the shop logged that ``version`` went in (its log comes in order, with the
    health gate's): the demo time the line was read."""
    pattern = rf"\] hotpatch: applied patch {re.escape(version)}:"
    found: tuple[float, str] = wait_until(
        lambda: supervised.logged(pattern, after=dropped), f"the shop logging {version} applied"
    )
    return found[0]


def fix_the_bug(fix: Path, load: Load, folder: Path, supervised: Supervised, story: Story) -> None:
    say(
        f"dropping the fix: {fix.name}.sig, then {fix.name} (each written as NAME.tmp in the "
        "folder, then renamed)"
    )
    dropped = story.mark("fix dropped", drop(signed(fix), folder))
    record = wait_outcome(folder, fix.name, OUTCOME_TIMEOUT_S)
    seen = now()
    check(record["outcome"] == "applied", f"the fix was {record['outcome']}: {record['reason']}")
    story.mark("1.0.1 applied", switched(supervised, "1.0.1", dropped))
    story.fix_timings = record["timings"]
    story.versions.append(record["version"])
    say(
        f"outcome: applied {record['version']} -> {record['folder']}/{fix.name}.result.json\n"
        f"    {show_timings(record['timings'])}"
    )
    load.wait_for(20, after=seen)
    after = load.steady()
    quotes = {a.total for a in after if a.request == QUOTE}
    check(quotes == {FIXED}, f"after the fix, the quote was answered {tally(after)}")
    check(not wrong(after), f"wrong answers after the fix: {tally(wrong(after))}")
    first = min(a.ended for a in load.answers if a.total == FIXED)
    story.fix_live_s = first - dropped
    during = load.between(dropped - 1.0, seen + 0.5)
    say(
        f"10 widgets cost {FIXED} now: first fixed answer {ms(story.fix_live_s)} after the "
        f"drop;\n    {len(during)} requests around the switch, "
        f"{sum(a.total is None for a in during)} failed; then {tally(after)}"
    )


def bad_patch_rolled_back(
    bad: Path, load: Load, folder: Path, supervised: Supervised, story: Story
) -> None:
    say(
        f"dropping a bad patch: {bad.name} (it passes every check, then raises KeyError for "
        f"silver members); health gate probation {PROBATION_S:g} s"
    )
    dropped = story.mark("bad patch dropped", drop(signed(bad), folder))
    record = wait_outcome(folder, bad.name, OUTCOME_TIMEOUT_S)
    check(record["outcome"] == "applied", f"{bad.name} was {record['outcome']}: {record['reason']}")
    applied = story.mark("1.0.2 applied", switched(supervised, "1.0.2", dropped))
    story.versions.append(record["version"])
    say(f"outcome: applied {record['version']} (hot): now on probation")
    found = wait_until(
        lambda: supervised.logged(r"health gate: rolled back patch 1\.0\.2", after=applied),
        "the health gate rolling 1.0.2 back",
    )
    rolled_back = story.mark("1.0.2 rolled back", found[0])
    story.rollback_after_s = rolled_back - applied
    story.versions.append("1.0.1 (1.0.2 rolled back)")
    load.wait_for(20, after=rolled_back + 0.2)
    after = load.steady()
    # Only 1.0.2 makes the loyalty discount fail: every such answer since the drop is its.
    degraded = [a for a in load.between(dropped) if a.loyalty == "unavailable"]
    story.fallbacks = len(degraded)
    check(bool(degraded), "no answer showed the bad patch's failures")
    check(
        all(a.loyalty == "ok" for a in after) and not wrong(after),
        f"after the rollback, requests were answered {tally(after)}",
    )
    say(
        f"the health gate rolled 1.0.2 back {ms(story.rollback_after_s)} after it went in:\n"
        f"    {len(degraded)} orders were priced without the loyalty discount meanwhile "
        "(the shop never lets a discount block a sale),\n"
        f"    none failed; since the rollback: {tally(after)}"
    )


def restart(bundle: Path, load: Load, folder: Path, supervised: Supervised, story: Story) -> None:
    """Drop release 1.1: the supervisor restarts the shop into it, keeping its memory."""
    before = supervised.status()
    restarts = sum((before.get("restarts") or {}).values())
    old_pid = (before.get("child") or {}).get("pid")
    say(
        f"dropping release 1.1, an unplanned baseline bundle: {bundle.name} (patch.toml and "
        "src/, zipped and signed) and its .sig"
    )
    dropped = story.mark("1.1 bundle dropped", drop(signed(bundle), folder))
    record = wait_outcome(folder, bundle.name, OUTCOME_TIMEOUT_S)
    reason = record.get("reason") or "no reason given"
    check(record["outcome"] == "applied", f"the bundle was {record['outcome']}: {reason}")
    say(
        f"outcome: applied {record['version']} -> {record['folder']}/{bundle.name}.result.json\n"
        f"{wrap('reason: ' + reason)}"
    )

    def restarted() -> dict[str, Any] | None:
        status = supervised.status()
        done = sum((status.get("restarts") or {}).values()) > restarts
        return status if done and status.get("state") == "running" else None

    status: dict[str, Any] = wait_until(restarted, "the memory-preserving restart")
    last = status.get("last_restart") or {}
    check(last.get("ok") is True, f"the restart failed: {last.get('error')}")
    check(last.get("kind") == "preserving", f"the restart was {last.get('kind')}, not preserving")
    check(last.get("state") == "complete", f"the state was handed over {last.get('state')}")
    new_pid = last.get("new_pid")
    check(new_pid != old_pid, "the same process serves after the restart")
    serving = story.mark("1.1 serving", demo_time(last["finished"]))
    story.versions.append(f"{record['version']} (baseline)")
    load.wait_for(20, after=now())
    after = load.steady()
    check(
        {a.pid for a in after} == {new_pid},
        f"answers came from {sorted({a.pid or 0 for a in after})}",
    )
    codes = {a.code for a in after}
    check(codes == {"1.1"}, f"after the restart the code is {sorted(map(str, codes))}")
    check(not wrong(after), f"wrong answers after the restart: {tally(wrong(after))}")
    check(
        {a.total for a in after if a.request == QUOTE} == {FIXED},
        "release 1.1 does not have the fix",
    )
    during = [a for a in load.answers if a.ended >= dropped and a.started <= serving]
    slowest = max(during, key=lambda a: a.latency)
    story.restart = f"unplanned baseline {record['version']}, memory-preserving"
    say(
        f"memory-preserving restart: process {old_pid} -> {new_pid}, paused "
        f"{ms(last.get('paused_s') or 0.0)} (state {last.get('state')});\n"
        f"    {len(during)} requests between the drop and the new process serving "
        f"({ms(serving - dropped)}), none failed, none refused, the slowest "
        f"{ms(slowest.latency)};\n    then {tally(after)} (code 1.1)"
    )


def check_ledger(port: int, load: Load, story: Story) -> None:
    """The shop's preserved ledger counted every order the load placed, once."""
    # Requests still in flight finish first: the ledger is read once the load is quiet.
    load.stop()
    stats = ask(port, "GET /stats")
    orders = [a for a in load.answers if a.order is not None]
    from decimal import Decimal  # noqa: PLC0415 -- only here

    revenue = sum((Decimal(a.total or "0") for a in orders), Decimal("0.00"))
    say(
        f"the ledger (preserved state, across {len({a.pid for a in orders})} processes): "
        f"{stats['orders']} orders, revenue {stats['revenue']};\n"
        f"    the load placed {len(orders)} orders worth {revenue}"
    )
    check(stats["orders"] == len(orders), "the ledger lost or doubled orders")
    check(Decimal(stats["revenue"]) == revenue, "the ledger's revenue is not the orders' sum")
    check(
        sorted(a.order or 0 for a in orders) == list(range(1, len(orders) + 1)),
        "order numbers were repeated or skipped",
    )
    story.told_paused_s = [float(p) for p in stats["paused_s"]]
    story.mark("ledger checked")


# -- the report ---------------------------------------------------------------------------


def report(load: Load, story: Story, out: Path) -> None:
    answers = list(load.answers)
    failed, refused = load.failed, load.refused
    latencies = sorted(a.latency for a in answers)
    p50 = statistics.median(latencies) if latencies else 0.0
    p99 = latencies[int(len(latencies) * 0.99)] if latencies else 0.0
    slowest = latencies[-1] if latencies else 0.0
    pauses = ", ".join(ms(p) for p in story.pauses_s) or "none"
    gate = (
        f"rolled back by the health gate {ms(story.rollback_after_s or 0.0)} after it went "
        f"in; {story.fallbacks} orders priced without loyalty meanwhile"
    )
    duration = max((a.ended for a in answers), default=0.0) - min(
        (a.started for a in answers), default=0.0
    )
    out.mkdir(parents=True, exist_ok=True)
    data = out / "shop_under_load.json"
    data.write_text(
        json.dumps(
            {
                "story": asdict(story),
                "answers": [asdict(a) for a in answers],
            },
        )
    )
    plot = draw(answers, story, out / "shop_under_load.png")
    say(
        "report\n"
        f"    requests  {len(answers)} sent in {duration:.1f} s, "
        f"{len(answers) - len(failed) - len(refused)} answered, {len(failed)} failed, "
        f"{len(refused)} refused\n"
        f"    latency   median {ms(p50)}, p99 {ms(p99)}, max {ms(slowest)}\n"
        f"    pauses    {pauses} (from the supervisor's status file); the shop was told "
        f"{', '.join(ms(p) for p in story.told_paused_s) or 'nothing'}\n"
        f"    fix live  {ms(story.fix_live_s or 0.0)} after the drop (verified in a child "
        f"{ms(story.fix_timings.get('verify_s', 0.0))})\n"
        f"    bad patch {gate}\n"
        f"    versions  {' -> '.join(story.versions)}\n"
        f"    processes {', '.join(map(str, story.pids))}\n"
        f"    restart   {story.restart}\n"
        f"    data      {data}\n"
        f"    plot      {plot}"
    )
    for answer in [*failed, *refused][:5]:
        say(f"failed request: {answer.request} at +{answer.started:.3f}s: {answer.error}")
    check(not failed, f"{len(failed)} requests failed")
    check(not refused, f"{len(refused)} connections were refused")
    check(not wrong(answers), f"wrong answers: {tally(wrong(answers))}")


def draw(answers: list[Answer], story: Story, path: Path) -> str:
    """The story over time: events, the price each request got, latency; the path, or why not."""
    try:
        import matplotlib  # noqa: PLC0415 -- optional: the `demo` extra

        matplotlib.use("Agg")
        from matplotlib import pyplot  # noqa: PLC0415
    except ImportError:
        return "none: matplotlib is not installed (pip install 'pyhotpatch[demo]')"
    figure, (timeline, prices, latency) = pyplot.subplots(
        3,
        1,
        sharex=True,
        figsize=(12, 9),
        dpi=100,
        layout="constrained",
        gridspec_kw={"height_ratios": [1.4, 2, 3]},
    )
    failed = [a for a in answers if a.total is None]
    figure.suptitle(
        f"shop under load: {len(answers)} requests, {len(failed)} failed, "
        f"restart pause {', '.join(ms(p) for p in story.pauses_s) or 'none'}"
    )
    shown = [
        (at, label) for at, label in story.events if label not in ("stopping", "ledger checked")
    ]
    _draw_timeline(timeline, shown, answers)
    served = [a for a in answers if a.total is not None]
    for request, colour in zip(dict.fromkeys(REQUESTS), ("C0", "C1", "C2"), strict=True):
        mine = [a for a in served if a.request == request]
        label = _request_label(request)
        prices.scatter(
            [a.started for a in mine],
            [float(a.total or 0) for a in mine],
            s=6,
            color=colour,
            label=label,
        )
        latency.scatter(
            [a.started for a in mine],
            [a.latency * 1e3 for a in mine],
            s=4,
            color=colour,
            alpha=0.45,
            label=label,
        )
    fallbacks = [a for a in served if a.loyalty == "unavailable"]
    if fallbacks:
        prices.scatter(
            [a.started for a in fallbacks],
            [float(a.total or 0) for a in fallbacks],
            s=30,
            color="red",
            marker="x",
            label="priced without loyalty (1.0.2 live)",
        )
        latency.scatter(
            [a.started for a in fallbacks],
            [a.latency * 1e3 for a in fallbacks],
            s=14,
            color="red",
            marker="x",
            label="priced without loyalty",
        )
    _mark_quote_prices(prices, served)
    prices.set_ylabel("price answered")
    prices.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, markerscale=2)
    # The slowest request of every 100 ms: where a pause would show.
    buckets: dict[int, float] = {}
    for a in answers:
        key = int(a.started * 10)
        buckets[key] = max(buckets.get(key, 0.0), a.latency * 1e3)
    keys = sorted(buckets)
    latency.step(
        [k / 10 for k in keys],
        [buckets[k] for k in keys],
        where="post",
        color="black",
        linewidth=0.8,
        label="slowest per 100 ms",
    )
    latency.set_yscale("log")
    latency.set_xlabel("seconds since the demo started")
    latency.set_ylabel("latency, ms (log scale)")
    latency.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, markerscale=3)
    for axes in (timeline, prices, latency):
        for at, _ in shown:
            axes.axvline(at, color="grey", linestyle="--", linewidth=0.8)
    figure.savefig(path)
    pyplot.close(figure)
    return str(path)


def _request_label(request: str) -> str:
    method, _, rest = request.partition(" ")
    return f"{method} {rest.split('?')[0]} ({rest.rpartition('customer=')[2]})"


def _draw_timeline(axes: Any, shown: list[tuple[float, str]], answers: list[Answer]) -> None:
    """One row per event, oldest on top, so no two labels overlap however close in time."""
    start = min((a.started for a in answers), default=0.0)
    end = max((a.ended for a in answers), default=1.0)
    for row, (at, label) in enumerate(shown):
        y = len(shown) - row
        late = at > start + 0.7 * (end - start)  # write the label leftwards near the right edge
        axes.plot([at], [y], marker="o", color="black", markersize=4)
        axes.annotate(
            label,
            (at, y),
            xytext=(-6 if late else 6, 0),
            textcoords="offset points",
            ha="right" if late else "left",
            va="center",
            fontsize=9,
        )
    axes.set_ylim(0.3, len(shown) + 0.7)
    axes.set_yticks([])
    axes.set_ylabel("events")
    for side in ("left", "right", "top"):
        axes.spines[side].set_visible(False)


def _mark_quote_prices(axes: Any, served: list[Answer]) -> None:
    """Name the two prices of the quote: the bug's, then the fix's."""
    for total, text in ((BUG, "bulk-discount bug"), (FIXED, "fixed by 1.0.1")):
        first = next((a for a in served if a.request == QUOTE and a.total == total), None)
        if first is not None:
            axes.annotate(
                f"{total}: {text}",
                (first.started, float(total)),
                xytext=(0, -14),
                textcoords="offset points",
                fontsize=9,
            )
    axes.margins(y=0.25)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_out = Path(tempfile.gettempdir()) / "hotpatch-shop-under-load"
    parser.add_argument(
        "--out", type=Path, default=default_out, help=f"report folder (default {default_out})"
    )
    args = parser.parse_args(argv)
    python = sys.version.split()[0]
    say(f"hotpatch shop under load ({time.strftime('%Y-%m-%d %H:%M:%S')}, Python {python})")
    story = Story()
    try:
        with tempfile.TemporaryDirectory(prefix="hotpatch-shop-") as tmp:
            say(f"working in TMP={tmp} (removed at the end)")
            aliases[tmp] = "$TMP"
            folder = Path(tmp) / "patches"
            folder.mkdir(mode=0o700)  # the watcher refuses a folder others can write
            load = run(Path(tmp), folder, story)
            report(load, story, args.out.absolute())
    except DemoFailed as exc:
        say(f"demo FAILED: {exc}")
        return 1
    say(
        "demo OK: the bug fixed live, the bad patch rolled back by the health gate, release "
        "1.1 in through a memory-preserving restart; no request failed, none refused"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
