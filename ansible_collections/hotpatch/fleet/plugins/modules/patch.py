"""Ansible module hotpatch.fleet.patch: drop a patch or bundle on a host, wait for its outcome."""

from __future__ import annotations

DOCUMENTATION = r"""
module: patch
short_description: Give a running service a hot patch or a baseline bundle, and wait for its outcome
description:
  - Puts a hot patch file (C(NAME.py)) or a baseline bundle (a directory or C(.zip) holding
    C(patch.toml)) into the watched folder of a service running under C(hotpatch run) or
    embedding C(hotpatch.install()), the safe way (its signature C(NAME.sig) first, each
    copied under a temporary dotted name the folder ignores, then renamed in), and waits
    for the outcome the service files (C(NAME.result.json) in C(applied/), C(rejected/)
    or C(pending/)).
  - A patch already applied with the same content (or a bundle whose version is the running
    baseline) changes nothing, and nothing is dropped; the host's C(hotpatch verify --json)
    tells same content from other content, and a version it cannot read from the file.
    Any other patch is dropped, and the service's own verification decides.
  - Check mode only verifies (C(hotpatch verify --json)), so a patch the service would
    refuse fails there. Diff mode shows the host's baseline and level before and after.
  - I(src) is on the controller (sent to a temporary directory on the host, a bundle
    directory as one tar archive, with C(NAME.sig) when it is beside it), or on the host
    with I(remote_src).
options:
  folder:
    description: The service's watched folder (C(hotpatch run --watch DIR)).
    type: path
    required: true
  src:
    description: The patch file or bundle (on the controller, or the host with I(remote_src)).
    type: path
    required: true
  remote_src:
    description: I(src) is on the host already.
    type: bool
    default: false
  archive:
    description: Internal - I(src) is a tar archive of a bundle directory (the action sends
      directories so).
    type: bool
    default: false
  name:
    description: The name it gets in the folder (default the name of I(src)).
    type: str
  signature:
    description: Its detached signature (default I(src)C(.sig) when that exists).
    type: path
  timeout:
    description: Seconds to wait for the outcome (a baseline goes in through a restart).
    type: float
    default: 300
  allow_pending:
    description: Accept the outcome C(pending) (a planned baseline waiting for its window).
    type: bool
    default: false
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
- name: Apply the pricing fix
  hotpatch.fleet.patch:
    folder: /srv/shop/patches
    src: patches/fix-2.3.1.py
  register: fix
"""

RETURN = r"""
outcome:
  description: applied, unchanged, rejected or pending (C(would-apply) or
    C(would-restart) in check mode).
  type: str
  returned: always
version:
  description: The patch's version.
  type: str
  returned: when known
reason:
  description: Why it was rejected, pending or unchanged.
  type: str
  returned: always
before:
  description: The host's status facts before (see hotpatch.fleet.status).
  type: dict
  returned: when the host answered
after:
  description: The host's status facts after.
  type: dict
  returned: when the host answered
result:
  description: The NAME.result.json the service filed.
  type: dict
  returned: when dropped
elapsed_s:
  description: Seconds from the drop to its outcome.
  type: float
  returned: when dropped
"""

import os
import shutil
import tarfile
import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hotpatch.fleet.plugins.module_utils.hotpatch import (
    COMMON_ARGS,
    SIGNATURE_SUFFIX,
    HostError,
    ask,
    describe,
    drop,
    identity,
    results_seen,
    status,
    wait_outcome,
)


def run(module: AnsibleModule) -> dict[str, Any]:
    params = module.params
    src, folder = params["src"], params["folder"]
    if not os.path.lexists(src):
        raise HostError(f"{src}: no such file on this host")
    if params["archive"]:
        src = _unpack(src)
    name = params["name"] or os.path.basename(src.rstrip(os.sep))
    patch = identity(src)
    signature = params["signature"]
    if signature is None and os.path.exists(src + SIGNATURE_SUFFIX):
        signature = src + SIGNATURE_SUFFIX
    before = status(module)

    # The host's `hotpatch verify` is asked in check mode, when the version cannot be
    # read from the file, and when that version is applied already (same content:
    # unchanged; other content: refused). Otherwise the drop goes straight in: the
    # service verifies it anyway, and its outcome is the verdict.
    verdict: dict[str, Any] = {}
    if module.check_mode or patch["version"] is None or _already(before, patch):
        _, verdict = ask(module, "verify", src)
        if not verdict.get("ok"):
            msg = f"{name}: the service on this host would refuse it: {verdict.get('error')}"
            raise HostError(msg, outcome="rejected", verify=verdict, before=before)
        patch["version"] = verdict.get("version") or patch["version"]
    version = patch["version"]
    common = {"version": version, "kind": patch["kind"], "before": before}

    if _already(before, patch):
        reason = (
            f"baseline {version} is already running"
            if patch["kind"] == "bundle"
            else f"patch {version} is already applied with this content"
        )
        return {
            **common,
            "changed": False,
            "outcome": "unchanged",
            "reason": reason,
            "after": before,
            "diff": _diff(before, before),
        }

    if module.check_mode:
        hot = bool(verdict.get("hot")) and patch["kind"] == "file"
        predicted = dict(before)
        if patch["kind"] == "bundle":
            predicted.update(baseline=version, level=[], version=version)
        else:
            predicted.update(level=[*before["level"], version], version=version)
        reasons = "; ".join(verdict.get("reasons") or [])
        return {
            **common,
            "changed": True,
            "outcome": "would-apply" if hot else "would-restart",
            "reason": reasons or None,
            "verify": verdict,
            "after": predicted,
            "diff": _diff(before, predicted),
        }

    seen = results_seen(folder)
    start = time.monotonic()
    drop(src, folder, name, signature)
    record = wait_outcome(folder, name, seen, patch, params["timeout"])
    elapsed = time.monotonic() - start
    outcome = record.get("outcome")
    after = _after(before, record, patch)
    answer = {
        **common,
        "outcome": outcome,
        "reason": record.get("reason"),
        "result": record,
        "elapsed_s": round(elapsed, 3),
        "after": after,
        "diff": _diff(before, after),
    }
    if outcome == "rejected" or (outcome == "pending" and not params["allow_pending"]):
        what = "rejected" if outcome == "rejected" else "left pending (allow_pending: false)"
        raise HostError(f"{name} ({version}) was {what}: {record.get('reason')}", **answer)
    return {**answer, "changed": outcome != "unchanged"}


def _unpack(archive: str) -> str:
    """The bundle directory a tar archive holds, unpacked beside it (plain files and
    directories only, nothing outside it)."""
    where = archive + ".d"
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        tops = {m.name.split("/", 1)[0] for m in members}
        for member in members:
            parts = member.name.split("/")
            if member.name.startswith("/") or ".." in parts or len(tops) != 1:
                raise HostError(f"{archive}: {member.name} would land outside the bundle")
            if not (member.isfile() or member.isdir()):
                raise HostError(f"{archive}: {member.name} is neither a file nor a directory")
        shutil.rmtree(where, ignore_errors=True)
        os.mkdir(where, 0o700)
        for member in members:
            target = os.path.join(where, member.name)
            if member.isdir():
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            with source, open(target, "wb") as out:
                shutil.copyfileobj(source, out)
    return os.path.join(where, tops.pop())


def _already(before: dict[str, Any], patch: dict[str, Any]) -> bool:
    """Is it in already? ``verify`` refuses an applied version with other content, so a
    version in the level that verify accepted is this very patch."""
    if patch["kind"] == "bundle":
        return bool(before["baseline"] == patch["version"])
    return patch["version"] in before["level"]


def _after(before: dict[str, Any], record: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """The host's level as the outcome left it (the result file records it)."""
    after = dict(before)
    if record.get("outcome") in ("applied", "unchanged"):
        if patch["kind"] == "bundle":
            after.update(baseline=record.get("version") or patch["version"], level=[])
        else:
            level = list(record.get("level") or before["level"])
            size = record.get("level_size")
            if isinstance(size, int) and size > len(level):  # the file carries the top only
                level = [*before["level"][: size - len(level)], *level]  # the rest as it was
            after.update(level=level)
    after["version"] = after["level"][-1] if after["level"] else after["baseline"]
    return after


def _diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, str]:
    return {
        "before_header": "hotpatch level (before)",
        "after_header": "hotpatch level (after)",
        "before": describe(before),
        "after": describe(after),
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            **COMMON_ARGS,
            "src": {"type": "path", "required": True},
            "remote_src": {"type": "bool", "default": False},
            "archive": {"type": "bool", "default": False},
            "name": {"type": "str"},
            "signature": {"type": "path"},
            "timeout": {"type": "float", "default": 300.0},
            "allow_pending": {"type": "bool", "default": False},
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
