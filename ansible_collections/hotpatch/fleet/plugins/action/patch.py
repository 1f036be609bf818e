"""Action hotpatch.fleet.patch: send the patch (and its signature) from the controller, then
run the module on the host. A bundle directory travels as one tar archive."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

SIGNATURE_SUFFIX = ".sig"


class ActionModule(ActionBase):  # type: ignore[misc]  # ansible ships no types
    TRANSFERS_FILES = True

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars)
        del tmp
        args = dict(self._task.args)
        try:
            if not args.pop("remote_src", False):
                self._send(args)
            result.update(
                self._execute_module(
                    module_name="hotpatch.fleet.patch", module_args=args, task_vars=task_vars
                )
            )
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result

    def _send(self, args: dict[str, Any]) -> None:
        """Put ``src`` (and ``src.sig``) in the remote temporary directory; point args there."""
        if not args.get("src"):
            raise AnsibleActionFail("src is required: the patch file or bundle to send")
        local = self._find_needle("files", str(args["src"]).rstrip("/"))
        name = os.path.basename(local)
        args.setdefault("name", name)
        remote_dir = self._connection._shell.tmpdir
        join = self._connection._shell.join_path
        sent = []
        with tempfile.TemporaryDirectory(prefix="hotpatch-fleet-") as scratch:
            if os.path.isdir(local):
                archive = os.path.join(scratch, name + ".tar")
                with tarfile.open(archive, "w") as tar:
                    tar.add(local, arcname=name, filter=_plain)
                args["src"] = join(remote_dir, name + ".tar")
                args["archive"] = True
                sent.append(self._transfer_file(archive, args["src"]))
            else:
                args["src"] = join(remote_dir, name)
                sent.append(self._transfer_file(local, args["src"]))
            signature = args.get("signature") or (
                local + SIGNATURE_SUFFIX if os.path.exists(local + SIGNATURE_SUFFIX) else None
            )
            if signature:
                args["signature"] = join(remote_dir, name + SIGNATURE_SUFFIX)
                sent.append(self._transfer_file(signature, args["signature"]))
            shutil.rmtree(scratch, ignore_errors=True)
        self._fixup_perms2([remote_dir, *sent], execute=False)


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """Regular files and directories only, owned by nobody in particular."""
    if not (info.isfile() or info.isdir()):
        raise AnsibleActionFail(f"{info.name} in the bundle is neither a file nor a directory")
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info
