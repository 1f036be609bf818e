"""From a fix commit to the fix live: ``hotpatch make`` writes the patch, the supervisor applies it.

A small HTTP service, ``tips`` (release 1.0), lives in a git repository this
demo makes in a temporary folder. Its tip calculation truncates: 15% of 3.30
comes out 0.49 instead of 0.50. The release is deployed from the ``v1.0`` tag
(a git worktree, as a deploy step would check it out) and runs under the
supervisor, which takes only signed patches::

    hotpatch run --bind http=127.0.0.1:0 --watch $TMP/patches --baseline 1.0 \\
        --trusted-keys $TMP/trusted --status-file $TMP/status.json -- python -m tips

While a load generator sends requests throughout, this demo

1. commits the fix in the repository (a new helper, a new import, the changed
   function, and the test that shows the bug), the way a developer would;
2. turns the commit into a hot patch, checked against the running release's
   code and signed, with ``hotpatch make --from v1.0 --to HEAD ... --explain``,
   and shows the file it wrote;
3. drops it into the supervisor's folder: the answers change from 0.49 to
   0.50 without one failed request;
4. commits a change that cannot go hot (a new data file the code reads) and
   shows ``hotpatch make`` write a baseline bundle instead, exit status 3,
   naming why;
5. prints a report, and exits 0 only if all of it held.

Run it with ``python demos/make_fix.py``; it needs git and the installed
package, works in a temporary folder it removes, and takes a few seconds.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from _narrate import (
    TIMEOUT_S,
    DemoFailed,
    Load,
    aliases,
    check,
    drop,
    hotpatch_cli,
    now,
    read_json,
    say,
    show_timings,
    stop_process,
    wait_outcome,
    wait_until,
    wrap,
)

BASELINE, VERSION = "1.0", "1.0.1"
QUERY = "/tip?amount=3.30&pct=15"
BUG, FIXED = "0.49", "0.50"
LOAD_THREADS = 2
VERIFY_TIMEOUT_S = 60.0  # the supervisor's verification child, on a loaded machine

SERVICE = '''\
"""The tips service: GET /tip?amount=&pct= answers the tip, one request per connection."""

import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import hotpatch
from tips.money import tip


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        query = parse_qs(urlsplit(self.path).query)
        body = tip(query["amount"][0], int(query["pct"][0])).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


def main():
    sock = hotpatch.listen_socket("http", default=("127.0.0.1", 8000))
    server = ThreadingHTTPServer(sock.getsockname()[:2], Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.daemon_threads = True

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    hotpatch.ready()
    server.serve_forever(poll_interval=0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''

MONEY = '''\
"""Money arithmetic for the tips service."""

from decimal import Decimal

CENT = Decimal("0.01")


def tip(amount, pct):
    """The tip on ``amount`` at ``pct`` percent, in cents."""
    value = Decimal(amount) * pct / 100
    return str(value.quantize(CENT, rounding="ROUND_DOWN"))
'''

MONEY_FIXED = '''\
"""Money arithmetic for the tips service."""

from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")


def to_cents(value):
    """Round to the cent the way a person would: half up."""
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def tip(amount, pct):
    """The tip on ``amount`` at ``pct`` percent, in cents."""
    return str(to_cents(Decimal(amount) * pct / 100))
'''

TEST = """\
from tips.money import tip


def test_a_tip_rounds_half_up():
    assert tip("3.30", 15) == "0.50"
"""


# -- the repository, the way a developer works in it ---------------------------------------


class Repo:
    """A git repository; every command shown as it runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir()
        self.env = {
            **os.environ,
            "GIT_AUTHOR_NAME": "Dev",
            "GIT_AUTHOR_EMAIL": "dev@example.invalid",
            "GIT_COMMITTER_NAME": "Dev",
            "GIT_COMMITTER_EMAIL": "dev@example.invalid",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_NOSYSTEM": "1",
        }
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str, show: bool = False) -> str:
        if show:
            say(f"$ git {' '.join(args)}")
        run = subprocess.run(
            ["git", *args],
            cwd=self.path,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=TIMEOUT_S,
        )
        check(run.returncode == 0, f"git {' '.join(args)} failed: {run.stderr}")
        return run.stdout.strip()

    def commit(self, message: str, files: dict[str, str]) -> str:
        for name, text in files.items():
            path = self.path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message, show=True)
        return self.git("rev-parse", "--short", "HEAD")


def hotpatch_make(*args: str) -> subprocess.CompletedProcess[str]:
    """The real ``hotpatch make``, shown as it is typed."""
    say(" \\\n      ".join(["$ hotpatch make", *_pairs(args)]))
    return subprocess.run(
        [sys.executable, "-m", "hotpatch", "make", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _pairs(args: tuple[str, ...]) -> list[str]:
    lines: list[str] = []
    for arg in args:
        if arg.startswith("-") or not lines:
            lines.append(arg)
        else:
            lines[-1] += f" {arg}"
    return lines


# -- the service under the supervisor -------------------------------------------------------


class Supervised:
    """``hotpatch run ... -- python -m tips`` from the deployed release; its log relayed."""

    def __init__(self, release: Path, folder: Path, trusted: Path, status: Path) -> None:
        self.status_file = status
        env = dict(os.environ, PYTHONPATH=str(release), PYTHONUNBUFFERED="1")
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
            str(status),
            "--verify-timeout",
            f"{VERIFY_TIMEOUT_S:g}",
            "--",
            sys.executable,
            "-m",
            "tips",
        ]
        options = command[4 : command.index("--")]
        lines = [" ".join(options[i : i + 2]) for i in range(0, len(options), 2)]
        say(" \\\n      ".join(["$ hotpatch run", *lines, "-- python -m tips"]))
        self.process = subprocess.Popen(
            command,
            cwd=release,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._relay = threading.Thread(target=self._relay_output, name="relay", daemon=True)
        self._relay.start()

    def _relay_output(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = re.sub(r"^\d{4}-\d\d-\d\d [\d:,]+ ", "", raw.rstrip())
            say(f"  log | {line if len(line) <= 110 else line[:107] + '...'}")

    def port(self) -> int:
        def serving() -> int | None:
            check(self.process.poll() is None, f"hotpatch run exited {self.process.returncode}")
            status = read_json(self.status_file)
            if not (status.get("child") or {}).get("ready"):
                return None
            return int(status["sockets"]["http"].rpartition(":")[2])

        port: int = wait_until(serving, "the tips service serving under the supervisor")
        return port

    def stop(self) -> int:
        return stop_process(self.process, self._relay)


@dataclass(frozen=True, slots=True)
class Answer:
    started: float
    ended: float
    body: str | None  # None: the request failed
    error: str = ""


class TipLoad(Load[Answer]):
    def _one(self, turn: int) -> Answer:
        started = now()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("GET", QUERY)
                response = conn.getresponse()
                body = response.read().decode()
                if response.status != 200:
                    return Answer(started, now(), None, f"HTTP {response.status}")
                return Answer(started, now(), body)
            finally:
                conn.close()
        except OSError as exc:
            return Answer(started, now(), None, f"{type(exc).__name__}: {exc}")


def ask(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", QUERY)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


# -- the demo --------------------------------------------------------------------------------


def run(work: Path) -> None:  # noqa: PLR0915 - one story, told in order
    repo = Repo(work / "tips")
    say("a service in git, release 1.0, tagged and deployed:")
    repo.commit(
        "Release 1.0",
        {
            "tips/__init__.py": "",
            "tips/__main__.py": SERVICE,
            "tips/money.py": MONEY,
            "README.md": "# tips\n",
        },
    )
    repo.git("tag", "v1.0", show=True)
    release = work / "release-1.0"
    repo.git("worktree", "add", "-q", "--detach", str(release), "v1.0", show=True)

    keys, trusted, folder, outbox = (work / n for n in ("keys", "trusted", "patches", "outbox"))
    for path in (keys, trusted, folder, outbox):
        path.mkdir()
    hotpatch_cli("keygen", "--dir", str(keys), "--name", "ops")
    shutil.copy2(keys / "ops.pub", trusted / "ops.pub")
    say(f"$ hotpatch keygen --dir {keys} --name ops  (ops.pub copied to {trusted})")

    supervised = Supervised(release, folder, trusted, work / "status.json")
    load: TipLoad | None = None
    try:
        port = supervised.port()
        first = ask(port)
        say(f"GET {QUERY} -> {first}: the bug (15% of 3.30 is 0.495, which rounds to 0.50)")
        check(first == BUG, f"the service answered {first}, expected the bug {BUG}")
        load = TipLoad(port, LOAD_THREADS)
        load.start()

        say("\n1. the developer commits the fix, with the test that shows the bug:")
        fix = repo.commit(
            "Round tips half up", {"tips/money.py": MONEY_FIXED, "tests/test_money.py": TEST}
        )

        say("\n2. hotpatch make turns the commit into a hot patch, checked and signed:")
        patch_file = outbox / f"tips-{VERSION}.py"
        made = hotpatch_make(
            "--from",
            "v1.0",
            "--to",
            "HEAD",
            "--repo",
            str(repo.path),
            "--baseline",
            BASELINE,
            "--version",
            VERSION,
            "-o",
            str(patch_file),
            "--sign",
            str(keys / "ops.key"),
            "--explain",
        )
        say(textwrap.indent(made.stdout.rstrip(), "    "))
        check(made.returncode == 0, f"hotpatch make exited {made.returncode}: {made.stderr}")
        text = patch_file.read_text()
        check("tips.money:tip" in text and "to_cents" in text, "the patch names what changed")
        say(f"the file it wrote, for review ({len(text.splitlines())} lines):")
        say(textwrap.indent(text.rstrip(), "    | ", lambda _: True))

        say("\n3. dropped into the supervisor's folder (signature first, then the patch):")
        before_drop = now()
        drop([patch_file.with_name(patch_file.name + ".sig"), patch_file], folder)
        outcome = wait_outcome(folder, patch_file.name, VERIFY_TIMEOUT_S + TIMEOUT_S)
        say(
            f"outcome: {outcome['outcome']} {outcome['version']} -> {outcome['folder']}/"
            f"{patch_file.name}.result.json"
        )
        if outcome.get("timings"):
            say(wrap(show_timings(outcome["timings"])))
        check(outcome["outcome"] == "applied", f"the patch was not applied: {outcome}")
        fixed = wait_until(lambda: (a := ask(port)) == FIXED and a, "the fixed answer")
        say(f"GET {QUERY} -> {fixed}: fixed, in the same process")
        load.wait_for(LOAD_THREADS * 5, now())

        say("\n4. a change that cannot go hot: the code now reads a data file")
        repo.commit(
            "Tip presets from a file",
            {
                "tips/presets.json": '{"default": 15}\n',
                "tips/money.py": MONEY_FIXED + "\n\nPRESETS_FILE = 'presets.json'\n",
            },
        )
        bundle = outbox / "tips-1.1.zip"
        made = hotpatch_make(
            "--from",
            fix,
            "--to",
            "HEAD",
            "--repo",
            str(repo.path),
            "--baseline",
            BASELINE,
            "--version",
            "1.1",
            "-o",
            str(outbox / "tips-1.1.py"),
        )
        say(textwrap.indent(made.stdout.rstrip(), "    "))
        check(made.returncode == 3, f"hotpatch make exited {made.returncode}, expected 3")
        check(bundle.exists(), "the baseline bundle was written")
        check("tips/presets.json" in made.stdout, "the reason names the data file")
        say(f"exit status {made.returncode}: a baseline bundle ({bundle.name}), the reason named")
        load.stop()
        answers = load.answers
        failed = [a for a in answers if a.body is None]
        counts = Counter(a.body for a in answers if a.body is not None)
        after = load.between(before_drop)
        say("\nreport")
        answered = len(answers) - len(failed)
        say(f"    requests  {len(answers)} sent, {answered} answered, {len(failed)} failed")
        bug, fixed = counts[BUG], counts[FIXED]
        say(f"    answers   {BUG} x {bug} (release {BASELINE}), then {FIXED} x {fixed}")
        say(f"    patch     {VERSION} made from commit {fix} in the repository, signed, applied")
        check(not failed, f"{len(failed)} requests failed: {failed[:3]}")
        check(set(counts) <= {BUG, FIXED}, f"unexpected answers: {counts}")
        check(counts[FIXED] > 0 and after, "the load saw the fix")
    finally:
        if load is not None:
            load.stop()
        code = supervised.stop()
        say(f"service | stopped (hotpatch run exited {code})")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="hotpatch-make-fix-"))
    aliases[str(work)] = "$TMP"
    say(f"working in TMP={work}")
    try:
        run(work)
    except DemoFailed as exc:
        say(f"FAILED: {exc}")
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say("demo OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
