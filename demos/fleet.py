"""Demo: a patch rolled across five hosts by Ansible, batch by batch; a bad one stopped and undone.

Run it as root: ``sudo .venv/py312/bin/python demos/fleet.py`` (a few minutes). Five
hosts are made on this machine, each a network namespace with its own address
(198.18.K.11-15), a real OpenSSH server and a small price service under
``hotpatch run`` (``tests/fleet/netns.py``: the same hosts the fleet tests use).
Clients send requests to every host all along. ``ansible-playbook
hotpatch.fleet.rollout`` (the collection in ``ansible_collections/``) then

1. rolls a good patch across them in batches of one host (20% of five), each batch
   health-checked (status, level, ``GET /health``) before the next;
2. rolls a bad patch -- it verifies and applies, then fails the health check --
   which stops after the first batch, where that host is rolled back.

Batches are shown as they go (from the collection's timeline callback). It prints the
timings per batch and for the whole fleet, and the requests served and failed during
each rollout. Exit status 0 only if all of that held and no request failed; 2 when it
cannot run here (not root, no network namespaces).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from _narrate import say

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fleet.load import Load  # noqa: E402 -- the fleet tests' hosts, from tests/
from fleet.netns import CannotMakeHosts, Fleet  # noqa: E402

GOOD = """
from hotpatch import Patch
patch = Patch(version="1.0.1", baseline="1.0", summary="the right price: +20% tax")

@patch.replace("logic:price")
def price(cents):
    return cents * 6 // 5
"""

BAD = """
from hotpatch import Patch
patch = Patch(version="1.0.2", baseline="1.0", summary="a price that breaks the health check")

@patch.replace("logic:price")
def price(cents):
    return cents * 6 // 5 + 1

@patch.replace("logic:healthy")
def healthy():
    return False
"""


class Follow:
    """Prints a rollout's batches and outcomes as the timeline file grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        offset = 0
        while True:
            stopping = self._stop.is_set()
            if self.path.exists():
                with self.path.open() as timeline:
                    timeline.seek(offset)
                    for line in timeline:
                        if line.endswith("\n"):
                            offset += len(line)
                            self._show(json.loads(line))
            if stopping:
                return
            time.sleep(0.05)

    def _show(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        kind, action = event["event"], event.get("action", "")
        if kind == "batch":
            say(f"  batch {event['batch']} starts")
        elif kind == "task" and action == "hotpatch.fleet.patch":
            detail = event.get("outcome") or event.get("msg", "")
            elapsed = event.get("elapsed_s")
            took = "" if elapsed is None else f" in {elapsed:.2f} s"
            say(f"  batch {event['batch']}: {event['host']} {event['status']}: {detail}{took}")
        elif kind == "task" and action == "hotpatch.fleet.status" and event["status"] == "failed":
            say(
                f"  batch {event['batch']}: {event['host']} health check FAILED: {event.get('msg')}"
            )
        elif kind == "task" and action == "hotpatch.fleet.status":
            say(f"  batch {event['batch']}: {event['host']} healthy at {event.get('level')}")
        elif action == "hotpatch.fleet.rollback" and event["status"] == "changed":
            say(f"  batch {event['batch']}: {event['host']} rolled back: {event.get('versions')}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def batch_times(events: list[dict[str, Any]]) -> list[float]:
    starts = [e["t"] for e in events if e["event"] == "batch"]
    end = next(e["t"] for e in events if e["event"] == "end")
    return [b - a for a, b in zip(starts, [*starts[1:], end], strict=True)]


def rollout(fleet: Fleet, patch: Path, name: str) -> tuple[int, list[dict[str, Any]], Load]:
    timeline = patch.with_suffix(".timeline.jsonl")
    say(f"$ ansible-playbook hotpatch.fleet.rollout -i inventory.yml -e hotpatch_patch={name}")
    follow = Follow(timeline)
    started = time.perf_counter()
    with Load(fleet.hosts) as load:
        run = fleet.playbook(patch, timeline=timeline)
    follow.stop()
    took = time.perf_counter() - started
    times = batch_times(follow.events)
    say(f"ansible-playbook exited {run.returncode} after {took:.1f} s; batches took "
        + ", ".join(f"{t:.1f} s" for t in times))  # fmt: skip
    say(f"requests during the rollout: {sum(load.served.values())} served, "
        f"{sum(load.failed.values())} failed")  # fmt: skip
    if run.returncode not in (0, 2):
        print(run.stdout[-4000:], run.stderr[-2000:], file=sys.stderr)
    return run.returncode, follow.events, load


def main() -> int:
    if os.geteuid() != 0:
        print(
            "demos/fleet.py needs root: it makes network namespaces, a bridge and an sshd per "
            "host. Run it as root (sudo .venv/py312/bin/python demos/fleet.py).",
            file=sys.stderr,
        )
        return 2
    checks: list[tuple[str, bool]] = []
    with tempfile.TemporaryDirectory(prefix="hotpatch-fleet-") as tmp:
        root = Path(tmp)
        say("making 5 hosts: network namespaces, sshd, the service under hotpatch run ...")
        try:
            fleet = Fleet(root, 5).__enter__()
        except CannotMakeHosts as exc:
            print(f"demos/fleet.py cannot run here: {exc}", file=sys.stderr)
            return 2
        try:
            for host in fleet.hosts:
                say(f"  {host.name} {host.address}: price {host.get('/price')[1]['price']}")
            good = root / "fix-1.0.1.py"
            good.write_text(textwrap.dedent(GOOD))
            fleet.sign(good)
            say("a good patch (the right price), signed, in batches of one host:")
            code, events, load = rollout(fleet, good, good.name)
            drops = [e for e in events if e.get("action") == "hotpatch.fleet.patch"]
            checks.append(("the good rollout succeeded", code == 0))
            checks.append(
                ("in five batches of one host", [e["batch"] for e in drops] == [1, 2, 3, 4, 5])
            )
            checks.append(("no request failed", not load.errors))
            checks.append(
                (
                    "every host serves 120",
                    all(h.get("/price")[1]["price"] == 120 for h in fleet.hosts),
                )
            )
            per_host = [e["elapsed_s"] for e in drops if e.get("elapsed_s") is not None]
            if per_host:
                say(f"cost per host: drop to outcome {min(per_host):.2f}-{max(per_host):.2f} s; "
                    f"the rest of each batch is SSH, the module and the health check")  # fmt: skip

            bad = root / "sick-1.0.2.py"
            bad.write_text(textwrap.dedent(BAD))
            fleet.sign(bad)
            say("a bad patch (it verifies, applies, then fails the health check):")
            code, events, load = rollout(fleet, bad, bad.name)
            batches = [e["batch"] for e in events if e["event"] == "batch"]
            rolled = [
                e
                for e in events
                if e.get("action") == "hotpatch.fleet.rollback" and e["status"] == "changed"
            ]
            checks.append(("the bad rollout failed", code != 0))
            checks.append(("it stopped after the first batch", batches == [1]))
            checks.append(("host1 was rolled back", [e["host"] for e in rolled] == ["host1"]))
            checks.append(("no request failed", not load.errors))
            checks.append(
                (
                    "every host serves 120 again",
                    all(h.get("/price")[1]["price"] == 120 for h in fleet.hosts),
                )
            )
            checks.append(
                ("every host is healthy", all(h.get("/health")[0] == 200 for h in fleet.hosts))
            )
        finally:
            fleet.close()
    for what, ok in checks:
        say(f"{'ok' if ok else 'FAILED'}: {what}")
    if not all(ok for _, ok in checks):
        return 1
    say("demo OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
