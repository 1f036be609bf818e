"""Ansible module hotpatch.fleet.rollback: roll a host's service back to a level."""

from __future__ import annotations

DOCUMENTATION = r"""
module: rollback
short_description: Roll a running service's hot patches back to a level
description:
  - Runs the host's C(hotpatch rollback --to V --json), which undoes the hot patches above
    level I(to) (I(to) is a version in the level, or the baseline for none).
  - Changes nothing when the service is at I(to) already. A baseline cannot be rolled back
    this way (a baseline bundle replaced the code); that fails, saying so.
  - Check mode tells what would be rolled back. Diff mode shows the level before and after.
options:
  folder:
    description: The service's watched folder.
    type: path
    required: true
  to:
    description: The level to go back to (a version in the level, or the baseline).
    type: str
    required: true
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
- name: Back to the baseline's 2.3.1
  hotpatch.fleet.rollback:
    folder: /srv/shop/patches
    to: "2.3.1"
"""

RETURN = r"""
versions:
  description: The versions rolled back, newest first.
  type: list
  returned: always
before:
  description: The host's status facts before.
  type: dict
  returned: always
after:
  description: The host's status facts after.
  type: dict
  returned: always
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hotpatch.fleet.plugins.module_utils.hotpatch import (
    COMMON_ARGS,
    HostError,
    ask,
    describe,
    status,
)


def run(module: AnsibleModule) -> dict[str, Any]:
    to = module.params["to"]
    before = status(module)
    level, baseline = before["level"], before["baseline"]
    if to != baseline and to not in level:
        msg = (
            f"cannot roll back to {to}: the service runs baseline {baseline} with level "
            f"{level or '[]'}; give a version of its level or its baseline (a baseline "
            "itself is not rolled back: drop the release you want as a newer baseline)"
        )
        raise HostError(msg, before=before)
    undo = list(reversed(level[level.index(to) + 1 :] if to in level else level))
    diff_before = describe(before)
    if not undo:
        return {
            "changed": False,
            "versions": [],
            "before": before,
            "after": before,
            "diff": {"before": diff_before, "after": diff_before},
        }
    if module.check_mode:
        predicted = {**before, "level": level[: len(level) - len(undo)]}
        return {
            "changed": True,
            "versions": undo,
            "before": before,
            "after": predicted,
            "diff": {"before": diff_before, "after": describe(predicted)},
        }
    _, answer = ask(module, "rollback", "--to", to)
    after = status(module)
    if not answer.get("ok"):
        msg = f"rollback to {to} refused: {answer.get('error')}"
        raise HostError(msg, before=before, after=after, answer=answer)
    return {
        "changed": True,
        "versions": answer.get("versions", undo),
        "before": before,
        "after": after,
        "diff": {"before": diff_before, "after": describe(after)},
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec={**COMMON_ARGS, "to": {"type": "str", "required": True}},
        supports_check_mode=True,
    )
    try:
        result = run(module)
    except HostError as exc:
        module.fail_json(msg=str(exc), **exc.details)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
