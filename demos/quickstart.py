"""Quickstart: a running HTTP service takes a fix from a dropped patch file, live.

The service (``demos/quickstart_app``, baseline 2.3) prices orders over HTTP
and embeds the hotpatch agent at start-up::

    agent = hotpatch.install(baseline="2.3", watch=folder, journal=journal)

Its pricing truncates: 0.99 at 50% off comes out 0.49 instead of 0.50. While a
load generator sends requests throughout, this demo

1. drops the fix (2.3.1) into the watched folder the documented way -- written
   under a temporary name, then renamed -- and waits for its outcome file: the
   answers change from 0.49 to 0.50 without one failed request;
2. drops two bad patches (a signature that would break every caller, a typo
   that fails at import): both are refused with their reason, and the service
   keeps serving the fix;
3. asks the running service for ``hotpatch status`` and ``hotpatch history``
   with the real CLI;
4. prints a report, and exits 0 only if all of it held.

Run it with ``make demo`` or ``python demos/quickstart.py``; it needs only the
installed package, works in a temporary folder it removes, and takes a few
seconds.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import _narrate as narrate
from _narrate import (
    TIMEOUT_S,
    DemoFailed,
    aliases,
    check,
    drop,
    hotpatch_cli,
    ms,
    now,
    say,
    show_timings,
    stop_process,
    wait_outcome,
    wrap,
)

HERE = Path(__file__).resolve().parent
PATCHES = HERE / "patches"
FIX = PATCHES / "quickstart-2.3.1.py"
BAD_PATCHES = (
    PATCHES / "quickstart-2.3.2-bad-signature.py",
    PATCHES / "quickstart-2.3.2-bad-import.py",
)
QUERY = "/price?amount=0.99&pct=50"
BUG, FIXED = "0.49", "0.50"
LOAD_THREADS = 2


# -- the service, run as its own process ------------------------------------------------


class Service:
    """``python -m quickstart_app`` in a child process; its output is relayed as it comes."""

    def __init__(self, folder: Path, journal: Path) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "quickstart_app",
                "--watch",
                str(folder),
                "--journal",
                str(journal),
            ],
            cwd=HERE,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.port: int | None = None
        self._listening = threading.Event()
        self._relay = threading.Thread(target=self._relay_output, name="relay", daemon=True)
        self._relay.start()

    def _relay_output(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.rstrip()
            # The service's own log; reasons are shown in full from the outcome files.
            say(f"  service | {line if len(line) <= 110 else line[:107] + '...'}")
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if found and self.port is None:
                self.port = int(found.group(1))
                self._listening.set()
        self._listening.set()  # the service ended: stop waiting for it

    def wait_listening(self) -> int:
        self._listening.wait(TIMEOUT_S)
        check(self.port is not None, f"the service did not start (exit code {self.process.poll()})")
        assert self.port is not None
        return self.port

    def stop(self) -> int:
        """SIGTERM (the service shuts down cleanly), then its exit code."""
        return stop_process(self.process, self._relay)


# -- the load generator -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    started: float
    ended: float
    price: str | None  # None: the request failed
    error: str | None = None


class Load(narrate.Load[Answer]):
    """Threads sending ``GET /price`` continuously, one new connection per request."""

    def _one(self, turn: int) -> Answer:
        started = now()
        try:
            price, error = self._ask(), None
        except Exception as exc:  # any failure is counted, none stops the load
            price, error = None, f"{type(exc).__name__}: {exc}"
        return Answer(started, now(), price, error)

    def _ask(self) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", QUERY)
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")
        price = json.loads(body)["price"]
        assert isinstance(price, str)
        return price

    @property
    def failed(self) -> list[Answer]:
        return [a for a in list(self.answers) if a.price is None]


# -- dropping patches ---------------------------------------------------------------------


# -- the demo -----------------------------------------------------------------------------


@dataclass
class Story:
    """What happened, for the report."""

    fix_version: str = "?"
    dropped: float = 0.0  # the fix's rename
    seen: float = 0.0  # its outcome file found
    fix_live_s: float = 0.0
    fix_timings: dict[str, float] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)


def run(folder: Path, journal: Path) -> None:
    story = Story()
    say(f"starting the service (baseline 2.3); its agent watches {folder}")
    service = Service(folder, journal)
    load: Load | None = None
    try:
        port = service.wait_listening()
        load = Load(port, LOAD_THREADS)
        load.start()
        say(f"load: {LOAD_THREADS} threads sending GET http://127.0.0.1:{port}{QUERY}")
        before = load.wait_for(40, after=0.0)
        prices = Counter(a.price for a in before)
        check(set(prices) == {BUG}, f"before the fix, the service answered {dict(prices)}")
        say(f"the service answers {BUG}: the bug (0.99 at 50% off should be {FIXED})")
        fix_the_bug(load, folder, story)
        refuse_bad_patches(load, folder, story)
        show_cli(folder, story)
    finally:
        if load is not None:
            load.stop()
        code = service.stop()
    check(code == 0, f"the service exited with code {code}")
    assert load is not None
    report(load, story)


def fix_the_bug(load: Load, folder: Path, story: Story) -> None:
    """Drop the fix; the answers change live, and no request fails."""
    say(f"dropping the fix: {FIX.name}.tmp written in the folder, renamed to {FIX.name}")
    story.dropped = drop([FIX], folder)
    record = wait_outcome(folder, FIX.name)
    story.seen = now()
    check(record["outcome"] == "applied", f"the fix was {record['outcome']}: {record['reason']}")
    story.fix_version, story.fix_timings = record["version"], record["timings"]
    say(
        f"outcome: applied {record['version']} -> applied/{FIX.name}.result.json\n"
        f"    {show_timings(record['timings'])}\n"
        f"    targets {', '.join(record['targets'])}; level now {record['level']}"
    )
    after = load.wait_for(40, after=story.seen)
    check(
        all(a.price == FIXED for a in after),
        f"after the fix, requests were answered {dict(Counter(a.price for a in after))}",
    )
    first_fixed = min(a.ended for a in load.answers if a.price == FIXED)
    story.fix_live_s = first_fixed - story.dropped
    during = [a for a in load.answers if a.ended > story.dropped and a.started < story.seen]
    check(
        all(a.price in (BUG, FIXED) for a in during),
        f"while the fix went in, requests were answered {dict(Counter(a.price for a in during))}",
    )
    say(
        f"the service answers {FIXED} now: first fixed answer {ms(story.fix_live_s)} "
        f"after the rename;\n    {len(during)} requests answered while the patch was "
        "verified and switched, none failed"
    )


def refuse_bad_patches(load: Load, folder: Path, story: Story) -> None:
    """Drop the bad patches: each is refused with its reason; the service keeps serving."""
    for bad in BAD_PATCHES:
        say(f"dropping a bad patch: {bad.name}")
        drop([bad], folder)
        record = wait_outcome(folder, bad.name)
        seen = now()
        check(record["outcome"] == "rejected", f"{bad.name} was {record['outcome']}, not rejected")
        check(bool(record["reason"]), f"{bad.name} was rejected without a reason")
        story.refused.append(f"{record['version']} ({bad.stem.rsplit('-', 1)[-1]})")
        say(
            f"outcome: rejected {record['version']} -> rejected/{bad.name}.result.json\n"
            f"{wrap('reason: ' + record['reason'])}"
        )
        after = load.wait_for(20, after=seen)
        check(
            all(a.price == FIXED for a in after),
            f"after {bad.name}, requests were answered {dict(Counter(a.price for a in after))}",
        )
        say(f"the service still answers {FIXED} ({len(after)} requests since)")


def show_cli(folder: Path, story: Story) -> None:
    """``hotpatch status`` and ``history``: the real CLI, over the service's control socket."""
    say(f"$ hotpatch status --folder {folder}")
    status = hotpatch_cli("status", "--folder", str(folder))
    say(textwrap.indent(status, "    "))
    check(
        re.search(rf"^version\s+{re.escape(story.fix_version)}\s*$", status, re.MULTILINE)
        is not None,
        f"hotpatch status does not show version {story.fix_version}",
    )
    say(f"$ hotpatch history --folder {folder}")
    history = hotpatch_cli("history", "--folder", str(folder))
    say(textwrap.indent(history, "    "))
    check(story.fix_version in history, "hotpatch history does not show the fix")


def report(load: Load, story: Story) -> None:
    answers = list(load.answers)
    failed = load.failed
    prices = Counter(a.price for a in answers if a.price is not None)
    timings = story.fix_timings
    say(
        "report\n"
        f"    requests  {len(answers)} sent, {len(answers) - len(failed)} answered, "
        f"{len(failed)} failed\n"
        f"    answers   {BUG} x {prices[BUG]} (baseline 2.3), then {FIXED} x {prices[FIXED]} "
        f"({story.fix_version})\n"
        f"    versions  2.3 -> {story.fix_version}; refused: {', '.join(story.refused)}\n"
        f"    fix live  {ms(story.fix_live_s)} after the drop (verification in a child "
        f"{ms(timings.get('verify_s', 0.0))}, switch {ms(timings.get('apply_s', 0.0))})"
    )
    for answer in failed[:5]:
        say(f"failed request: {answer.error}")
    check(not failed, f"{len(failed)} requests failed")
    check(set(prices) <= {BUG, FIXED}, f"unexpected answers: {dict(prices)}")
    # Over the whole run: the bug until the drop, the fix for every request that
    # started once the fix was reported applied, and no flip back.
    early = Counter(a.price for a in answers if a.ended < story.dropped)
    late = Counter(a.price for a in answers if a.started > story.seen)
    check(set(early) == {BUG}, f"before the drop, requests were answered {dict(early)}")
    check(set(late) == {FIXED}, f"after the fix, requests were answered {dict(late)}")


def main() -> int:
    python = sys.version.split()[0]
    say(f"hotpatch quickstart ({time.strftime('%Y-%m-%d %H:%M:%S')}, Python {python})")
    try:
        with tempfile.TemporaryDirectory(prefix="hotpatch-quickstart-") as tmp:
            say(f"working in TMP={tmp} (removed at the end)")
            aliases[tmp] = "$TMP"
            folder = Path(tmp) / "patches"
            folder.mkdir(mode=0o700)  # the agent refuses a folder others can write
            run(folder, Path(tmp) / "hotpatch.journal")
    except DemoFailed as exc:
        say(f"demo FAILED: {exc}")
        return 1
    say("demo OK: the bug was fixed live, both bad patches were refused, no request failed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
