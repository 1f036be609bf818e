"""What the hotpatch.fleet modules share: the host's ``hotpatch`` CLI, its status, patch identity.

Everything here runs on the managed host, in the module's Python, and talks
to the service only through the ``hotpatch`` command and its ``--json``
answers (and through the watched folder, for drops and their outcomes).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from typing import Any

OUTCOME_DIRS = ("applied", "rejected", "pending")
RESULT_SUFFIX = ".result.json"
SIGNATURE_SUFFIX = ".sig"

COMMON_ARGS: dict[str, Any] = {
    "folder": {"type": "path", "required": True},
    "executable": {"type": "str", "default": "hotpatch"},
    "cli_timeout": {"type": "float", "default": 120.0},
}


class HostError(Exception):
    """The host's hotpatch said no, or could not be asked: the message says which and why."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


# -- the CLI ----------------------------------------------------------------------------


def cli_command(module: Any) -> list[str]:
    """The ``hotpatch`` command as a list (``executable`` may be ``python -m hotpatch``)."""
    words = str(module.params["executable"]).split()
    if not words:
        raise HostError("executable is empty: give the path of the host's hotpatch command")
    if os.sep not in words[0]:
        words[0] = module.get_bin_path(words[0], required=False) or words[0]
    return words


def ask(module: Any, *args: str) -> tuple[int, dict[str, Any]]:
    """Run ``hotpatch ARGS --json --folder FOLDER``; the exit code and the JSON answer."""
    folder = module.params["folder"]
    command = [
        *cli_command(module),
        *args,
        "--json",
        "--folder",
        folder,
        "--timeout",
        str(module.params["cli_timeout"]),
    ]
    try:
        rc, out, err = module.run_command(command)
    except OSError as exc:
        raise HostError(f"cannot run {command[0]}: {exc}", command=command) from None
    try:
        answer = json.loads(out)
    except ValueError:
        msg = (
            f"`{' '.join(command)}` exited {rc} without a JSON answer: "
            f"{(err or out).strip()[-2000:] or 'no output'}"
        )
        raise HostError(msg, command=command, rc=rc) from None
    if not isinstance(answer, dict):
        raise HostError(f"`{' '.join(command)}` answered {answer!r}, not a JSON object")
    return rc, answer


def status(module: Any) -> dict[str, Any]:
    """The host's status, the same shape for an embedded agent and a supervisor (``facts``)."""
    _, answer = ask(module, "status")
    if not answer.get("ok", False):
        raise HostError(
            f"hotpatch status on {module.params['folder']} failed: {answer.get('error')}",
            status=answer,
        )
    return facts(answer)


def facts(answer: dict[str, Any]) -> dict[str, Any]:
    """``hotpatch status --json`` boiled down to what a playbook asks about."""
    supervised = bool(answer.get("supervisor"))
    patches = (answer.get("patches") or {}) if supervised else answer
    child = answer.get("child") or {}
    level = list(patches.get("level") or [])
    baseline = patches.get("baseline")
    state = answer.get("state", "running") if supervised else "running"
    return {
        "supervisor": supervised,
        "state": state,
        "ready": bool(child.get("ready")) if supervised else True,
        "pid": answer.get("pid"),
        "child_pid": child.get("pid"),
        "generation": child.get("generation"),
        "baseline": baseline,
        "level": level,
        "version": level[-1] if level else baseline,
        "baseline_pending": patches.get("baseline_pending"),
        "pending": list(patches.get("pending") or []),
        "queued": list(patches.get("queued") or []),
        "last": patches.get("last"),
        "last_restart": answer.get("last_restart"),
        "error": answer.get("error"),
    }


# -- a patch's identity -------------------------------------------------------------------

_TOML_VERSION = re.compile(r'^\s*version\s*=\s*"([^"]+)"', re.MULTILINE)


def identity(path: str) -> dict[str, Any]:
    """What a patch is without loading it: ``kind`` (file/bundle), ``version``, ``sha256``."""
    if os.path.isdir(path):
        return {"kind": "bundle", "version": _bundle_version(path), "sha256": None}
    if path.endswith(".zip"):
        import zipfile

        try:
            with zipfile.ZipFile(path) as archive:
                text = archive.read("patch.toml").decode("utf-8")
        except (OSError, KeyError, zipfile.BadZipFile) as exc:
            raise HostError(f"{path} is not a bundle with a patch.toml: {exc}") from None
        return {"kind": "bundle", "version": _toml_version(path, text), "sha256": _sha256(path)}
    if not path.endswith(".py"):
        msg = (
            f"{path} is not a patch: a hot patch is one NAME.py file, a baseline bundle a "
            "directory or .zip holding patch.toml"
        )
        raise HostError(msg)
    return {"kind": "file", "version": peek_version(path), "sha256": _sha256(path)}


_PATCH_CALL = re.compile(r"\bPatch\(([^)]*)\)", re.DOTALL)
_VERSION_ARG = re.compile(r"""(?:\bversion\s*=\s*|^\s*)["']([^"']+)["']""")


def peek_version(path: str) -> str | None:
    """The version of a patch file's one ``Patch(version="...")``, read without running it;
    ``None`` when there is not exactly one (then the host's ``hotpatch verify`` says)."""
    try:
        with open(path, encoding="utf-8") as source:
            text = source.read()
    except (OSError, UnicodeDecodeError):
        return None
    found = [m.group(1) for call in _PATCH_CALL.findall(text) if (m := _VERSION_ARG.search(call))]
    return found[0] if len(found) == 1 else None


def _bundle_version(path: str) -> str:
    try:
        with open(os.path.join(path, "patch.toml"), encoding="utf-8") as toml:
            return _toml_version(path, toml.read())
    except OSError as exc:
        raise HostError(f"bundle {path} has no readable patch.toml: {exc}") from None


def _toml_version(path: str, text: str) -> str:
    """``[patch] version`` (tomllib where the module's Python has it)."""
    try:
        import tomllib

        version = tomllib.loads(text).get("patch", {}).get("version")
    except ImportError:
        found = _TOML_VERSION.search(text)
        version = found.group(1) if found else None
    except ValueError as exc:
        raise HostError(f"the patch.toml of {path} does not parse: {exc}") from None
    if not isinstance(version, str) or not version:
        raise HostError(f"the patch.toml of {path} has no [patch] version")
    return version


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        for chunk in iter(lambda: data.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- the folder ---------------------------------------------------------------------------


def results_seen(folder: str) -> set[str]:
    """The result files in the outcome folders (``applied/NAME.result.json``, ...)."""
    seen = set()
    for where in OUTCOME_DIRS:
        try:
            entries = os.listdir(os.path.join(folder, where))
        except FileNotFoundError:
            continue
        seen.update(os.path.join(where, e) for e in entries if e.endswith(RESULT_SUFFIX))
    return seen


def drop(src: str, folder: str, name: str, signature: str | None) -> None:
    """Put ``src`` (file or bundle directory) into ``folder`` as ``name``: the signature
    first, each copied under a temporary dotted name the folder ignores, then renamed in."""
    target = os.path.join(folder, name)
    if os.path.lexists(target):
        msg = (
            f"{target} is already in the folder (a drop still being processed?); "
            "wait for its outcome, or remove it, and run again"
        )
        raise HostError(msg)
    if signature is not None:
        _place(signature, folder, name + SIGNATURE_SUFFIX)
    _place(src, folder, name)


def _place(src: str, folder: str, name: str) -> None:
    temporary = os.path.join(folder, f".{name}.fleet-{os.getpid()}.tmp")
    try:
        if os.path.isdir(src):
            shutil.copytree(src, temporary, symlinks=False)
        else:
            shutil.copyfile(src, temporary)
            with open(temporary, "rb") as written:
                os.fsync(written.fileno())
        os.rename(temporary, os.path.join(folder, name))
    except BaseException:
        if os.path.isdir(temporary):
            shutil.rmtree(temporary, ignore_errors=True)
        elif os.path.lexists(temporary):
            os.unlink(temporary)
        raise


def wait_outcome(
    folder: str, name: str, before: set[str], patch: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """The new ``NAME.result.json`` filed for our drop, once the drop has left the folder."""
    deadline = time.monotonic() + timeout
    while True:
        for relative in sorted(results_seen(folder) - before):
            record = _read_result(os.path.join(folder, relative))
            if record is None or record.get("file") != name:
                continue
            if patch["sha256"] and record.get("sha256") not in (None, patch["sha256"]):
                continue
            if not os.path.lexists(os.path.join(folder, name)) or time.monotonic() > deadline:
                record["result_file"] = os.path.join(folder, relative)
                record["filed_in"] = relative.split(os.sep, 1)[0]
                return record
        if time.monotonic() > deadline:
            msg = (
                f"no outcome for {name} in {folder} within {timeout:g} s; it is still there "
                "(is the service's agent or supervisor watching the folder?)"
            )
            raise HostError(msg)
        time.sleep(0.05)


def _read_result(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as result:
            record = json.load(result)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def describe(fact: dict[str, Any]) -> str:
    """A host's level as the few lines diff mode shows."""
    level = fact.get("level") or []
    lines = [f"baseline: {fact.get('baseline')}", "level:"]
    lines += [f"  - {v}" for v in level] or ["  []"]
    return "\n".join(lines) + "\n"
