"""Ansible callback hotpatch.fleet.timeline: a rollout's batches and outcomes as JSON lines."""

from __future__ import annotations

DOCUMENTATION = r"""
name: timeline
type: aggregate
short_description: Write a rollout's batches and each host's outcomes as JSON lines
description:
  - Appends one JSON object per line to I(path) as the play runs - C(batch) when a serial
    batch starts, C(task) for each host's result (with the hotpatch modules' outcome,
    version and timings), C(item) for each host a looped task handled (the rollback of the
    hosts already changed), C(end) with each host's totals. A tool can follow the file
    to show a rollout as it goes, or read it afterwards for the timings.
requirements:
  - enable it in ansible.cfg (callbacks_enabled) or ANSIBLE_CALLBACKS_ENABLED
options:
  path:
    description: The file the lines are appended to (nothing is written without it).
    env:
      - name: HOTPATCH_FLEET_TIMELINE
    ini:
      - section: hotpatch_fleet
        key: timeline
    type: path
"""

import json
import time
from typing import Any

from ansible.plugins.callback import CallbackBase

_KEEP = ("outcome", "version", "reason", "elapsed_s", "versions", "msg")


class CallbackModule(CallbackBase):  # type: ignore[misc]  # ansible ships no types
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "hotpatch.fleet.timeline"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.batch = 0
        self.path: str | None = None

    def set_options(
        self, task_keys: Any = None, var_options: Any = None, direct: Any = None
    ) -> None:
        super().set_options(task_keys=task_keys, var_options=var_options, direct=direct)
        self.path = self.get_option("path")

    def _write(self, event: str, **fields: Any) -> None:
        if not self.path:
            return
        line = json.dumps({"event": event, "t": round(time.time(), 3), **fields}, default=str)
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(line + "\n")

    def v2_playbook_on_play_start(self, play: Any) -> None:
        # Sent once per serial batch.
        self.batch += 1
        self._write("batch", batch=self.batch, play=play.get_name())

    def _result(self, status: str, result: Any) -> None:
        data = result._result
        fields = {k: data[k] for k in _KEEP if k in data}
        after = data.get("after") or (data.get("ansible_facts") or {}).get("hotpatch") or {}
        if after:
            fields["level"] = after.get("level")
            fields["baseline"] = after.get("baseline")
        restart = (data.get("result") or {}).get("restart")
        if restart:
            fields["paused_s"] = restart.get("paused_s")
        self._write(
            "task",
            batch=self.batch,
            host=result._host.get_name(),
            task=result._task.get_name(),
            action=result._task.action,
            status="changed" if status == "ok" and data.get("changed") else status,
            **fields,
        )

    def v2_runner_on_ok(self, result: Any) -> None:
        self._result("ok", result)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._result("ignored" if ignore_errors else "failed", result)

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._result("unreachable", result)

    def _item(self, status: str, result: Any) -> None:
        data = result._result
        self._write(
            "item",
            batch=self.batch,
            host=str(data.get("item")),
            task=result._task.get_name(),
            action=result._task.action,
            status="changed" if status == "ok" and data.get("changed") else status,
            **{k: data[k] for k in _KEEP if k in data},
        )

    def v2_runner_item_on_ok(self, result: Any) -> None:
        self._item("ok", result)

    def v2_runner_item_on_failed(self, result: Any) -> None:
        self._item("failed", result)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        hosts = sorted(stats.processed.keys())
        self._write("end", hosts={h: stats.summarize(h) for h in hosts})
