"""Client load on fleet hosts: a thread each, a new connection per request, every answer counted."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from fleet.netns import Host


class Load:
    """``GET /price`` on every host until ``stop()``; ``served``/``failed`` per host."""

    def __init__(self, hosts: list[Host], pause: float = 0.02) -> None:
        self.pause = pause
        self.served: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.errors: list[str] = []
        self.prices: dict[str, Counter[int]] = {h.name: Counter() for h in hosts}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(h,), name=f"load-{h.name}", daemon=True)
            for h in hosts
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, host: Host) -> None:
        while not self._stopping.is_set():
            outcome: Any
            try:
                status, body = host.get("/price", timeout=30)
                outcome = body["price"] if status == 200 else f"HTTP {status}"
            except Exception as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            with self._lock:
                if isinstance(outcome, int):
                    self.served[host.name] += 1
                    self.prices[host.name][outcome] += 1
                else:
                    self.failed[host.name] += 1
                    self.errors.append(f"{host.name}: {outcome}")
            time.sleep(self.pause)

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(60)

    def __enter__(self) -> Load:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
