"""Quickstart: a running program's function is fixed live by a patch file.

A worker thread prices an order every few milliseconds. The pricing function
truncates: 0.99 at 50% off comes out 0.49 instead of 0.50. The demo loads a
patch file, checks it, applies it while the worker keeps running, shows the
fix live, then rolls back and re-applies.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from quickstart_app import pricing  # noqa: E402

import hotpatch  # noqa: E402

PRICE, PCT = Decimal("0.99"), 50


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def main() -> int:
    seen: list[Decimal] = []
    stop = threading.Event()
    # The worker took its reference before any patch: it still sees the fix.
    price_of = pricing.apply_discount

    def worker() -> None:
        while not stop.is_set():
            seen.append(price_of(PRICE, PCT))
            time.sleep(0.002)

    thread = threading.Thread(target=worker, name="pricing-worker", daemon=True)
    thread.start()
    time.sleep(0.05)
    say(f"service running: {PRICE} at {PCT}% off = {seen[-1]}  (should be 0.50: truncation bug)")

    registry = hotpatch.Registry(baseline="2.3")
    patch = hotpatch.load_patch(HERE / "patches" / "quickstart-2.3.1.py")
    report = registry.check(patch)
    say(f"loaded patch {patch.version} ({patch.summary}): hot={report.hot}")
    say(f"  how each target goes in: {dict(report.modes)}")

    result = registry.apply(patch)
    say(
        f"applied {result.version} in {result.elapsed_s * 1e3:.2f} ms "
        f"(switch {result.switch_s * 1e6:.1f} us) while the worker kept running"
    )
    time.sleep(0.05)
    say(f"now: {PRICE} at {PCT}% off = {seen[-1]}")

    registry.rollback()
    time.sleep(0.05)
    say(f"rolled back to baseline {registry.version}: {seen[-1]}")
    registry.apply(patch)
    time.sleep(0.05)
    say(f"re-applied {registry.version}: {seen[-1]}; level = {list(registry.level)}")

    stop.set()
    thread.join()
    changes = sum(1 for a, b in itertools.pairwise(seen) if a != b)
    say(f"worker priced {len(seen)} orders without a pause; the price changed {changes} times")
    ok = seen[-1] == Decimal("0.50") and changes == 3
    say("demo OK" if ok else "demo FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
