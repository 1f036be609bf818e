"""Where an agent writes: beside the drops in its patch folder, or in a state directory of its own.

By default an agent keeps everything it writes in the folder it watches: the
outcome folders and result files, the outcome log, its lock and pidfile, the
control socket, staging. A folder it may only read -- a Kubernetes ConfigMap
volume, which the kubelet mounts read-only -- needs a *state directory*
elsewhere (``install(..., state_dir=DIR)``, ``hotpatch run --state-dir DIR``):
every one of those files goes there, and the watched folder is only read. A
read-only folder without one is refused at start, naming the option.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["ENV_STATE_DIR", "check_state_dir", "read_only", "refuse_read_only"]

# The state directory of `hotpatch run` (its default) and of the CLI commands that
# look for an agent's files: set once in a pod's environment, both find it.
ENV_STATE_DIR = "HOTPATCH_STATE_DIR"


def read_only(folder: Path) -> bool:
    """Can this process not write in ``folder`` (a read-only mount, or no permission)?"""
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return True
    except OSError:
        return False  # not there: whoever opens it reports that
    return not os.access(folder, os.W_OK | os.X_OK, effective_ids=True)


def refuse_read_only(folder: Path) -> None:
    """``PermissionError`` naming the state directory options when ``folder`` cannot be written."""
    if not read_only(folder):
        return
    msg = (
        f"patch folder {folder} is read-only (a Kubernetes ConfigMap volume is mounted "
        "read-only), and hotpatch writes its outcomes, outcome log, lock and pidfile beside "
        "the drops. Give it a writable state directory outside the folder: "
        "`hotpatch run --state-dir DIR` (or $HOTPATCH_STATE_DIR), "
        "hotpatch.install(..., state_dir=DIR); the folder is then only read"
    )
    raise PermissionError(msg)


def check_state_dir(state: Path, watch: Path) -> Path:
    """Create ``state`` (mode 0700) if needed; refuse one inside ``watch`` or others could write.

    Whoever can write there can plant result files (so a patch is never taken)
    or replace the pidfile the CLI follows: it gets the patch folder's checks.
    """
    state = Path(state).absolute()
    real_state, real_watch = os.path.realpath(state), os.path.realpath(watch)
    if real_state == real_watch or real_state.startswith(real_watch.rstrip(os.sep) + os.sep):
        msg = (
            f"state directory {state} is inside the patch folder {watch}: the folder is then "
            "written to after all; give a directory outside it (e.g. a sibling)"
        )
        raise ValueError(msg)
    if not state.exists() and not state.is_symlink():
        state.mkdir(mode=0o700, parents=True)
    st = state.lstat()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        msg = f"state directory {state} must be a directory, not a link or a file"
        raise PermissionError(msg)
    if st.st_uid != os.geteuid():
        msg = (
            f"state directory {state} is owned by uid {st.st_uid}, not by this service's user "
            f"(uid {os.geteuid()}); run `chown {os.geteuid()} {state}` or use a directory "
            "the service's user owns"
        )
        raise PermissionError(msg)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        msg = (
            f"state directory {state} is writable by other users (mode "
            f"{stat.S_IMODE(st.st_mode):04o}), so anyone could make hotpatch skip a patch; "
            f"run `chmod go-w {state}` and start again"
        )
        raise PermissionError(msg)
    if read_only(state):
        msg = f"state directory {state} is read-only: it must be writable (an emptyDir, say)"
        raise PermissionError(msg)
    return state
