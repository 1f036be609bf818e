"""Ansible module hotpatch.fleet.status: a host's hotpatch status as facts, and its health."""

from __future__ import annotations

DOCUMENTATION = r"""
module: status
short_description: Read a service's hotpatch status as facts, and check its health
description:
  - Asks the host's C(hotpatch status --json) about the service watching I(folder) and sets
    the fact C(hotpatch) (baseline, level, version, supervisor state, child readiness, the
    last outcome and restart).
  - As a health check (I(expect_version) or I(health_url) given) it fails, naming every
    problem, unless the service is running and ready (waiting up to I(wait_ready)), at
    I(expect_version) (in its level, or its baseline), and answers I(health_url) with 200
    (asked from the host, I(health_retries) more times I(health_delay) apart).
options:
  folder:
    description: The service's watched folder.
    type: path
    required: true
  wait_ready:
    description: Seconds to wait for a running, ready service (0 reads it once).
    type: float
    default: 0
  expect_version:
    description: The version the service must be at (in its level, or its baseline).
    type: str
  health_url:
    description: An HTTP URL the service must answer with 200.
    type: str
  health_retries:
    description: More tries of I(health_url) before it counts as failed.
    type: int
    default: 2
  health_delay:
    description: Seconds between tries of I(health_url).
    type: float
    default: 1
  executable:
    description: The host's C(hotpatch) command (a path, or C(python -m hotpatch)).
    type: str
    default: hotpatch
  cli_timeout:
    description: Seconds the C(hotpatch) command waits for the service's answer.
    type: float
    default: 120
author: hotpatch contributors
"""

EXAMPLES = r"""
- name: Read the level
  hotpatch.fleet.status:
    folder: /srv/shop/patches
- name: Health check after 2.3.1
  hotpatch.fleet.status:
    folder: /srv/shop/patches
    wait_ready: 30
    expect_version: "2.3.1"
    health_url: http://127.0.0.1:8000/health
"""

RETURN = r"""
ansible_facts:
  description: C(hotpatch) with supervisor, state, ready, pid, child_pid, generation,
    baseline, level, version (top of the level, or the baseline), baseline_pending,
    pending, queued, last, last_restart, error.
  type: dict
  returned: always
healthy:
  description: Whether every check held (true when none was asked for).
  type: bool
  returned: always
problems:
  description: What did not hold.
  type: list
  returned: always
"""

import http
import time
import urllib.error
import urllib.request
from typing import Any

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hotpatch.fleet.plugins.module_utils.hotpatch import (
    COMMON_ARGS,
    HostError,
    status,
)


def run(module: AnsibleModule) -> dict[str, Any]:
    params = module.params
    deadline = time.monotonic() + params["wait_ready"]
    while True:
        try:
            fact = status(module)
        except HostError:
            if time.monotonic() >= deadline:
                raise
        else:
            if (fact["state"] == "running" and fact["ready"]) or time.monotonic() >= deadline:
                break
        time.sleep(0.1)
    problems = []
    if fact["state"] != "running" or not fact["ready"]:
        problems.append(f"the service is {fact['state']}, ready {fact['ready']}")
    expect = params["expect_version"]
    if expect and expect not in fact["level"] and expect != fact["baseline"]:
        problems.append(
            f"it is not at {expect}: baseline {fact['baseline']}, level {fact['level'] or '[]'}"
        )
    if params["health_url"]:
        answer = _http_health(
            params["health_url"], params["health_retries"], params["health_delay"]
        )
        if answer:
            problems.append(answer)
    checked = bool(expect or params["health_url"])
    result = {
        "changed": False,
        "ansible_facts": {"hotpatch": fact},
        "healthy": not problems,
        "problems": problems,
    }
    if checked and problems:
        raise HostError("unhealthy: " + "; ".join(problems), **result)
    return result


def _http_health(url: str, retries: int, delay: float) -> str | None:
    """``None`` once ``url`` answers 200; else what it answered the last time."""
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(delay)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                if response.status == http.HTTPStatus.OK:
                    return None
                last = f"GET {url} answered {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"GET {url} answered {exc.code}"
        except (OSError, ValueError) as exc:
            last = f"GET {url} failed: {exc}"
    return f"{last} ({retries + 1} tries)"


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            **COMMON_ARGS,
            "wait_ready": {"type": "float", "default": 0.0},
            "expect_version": {"type": "str"},
            "health_url": {"type": "str"},
            "health_retries": {"type": "int", "default": 2},
            "health_delay": {"type": "float", "default": 1.0},
        },
        supports_check_mode=True,
    )
    try:
        result = run(module)
    except HostError as exc:
        module.fail_json(msg=str(exc), **exc.details)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
