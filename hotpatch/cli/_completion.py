"""Shell completion of the ``hotpatch`` command, by argcomplete (the ``completion`` extra).

``hotpatch completion bash`` (or zsh, fish, ...) prints the code that registers
the command with the shell: ``eval "$(hotpatch completion bash)"``. When the
shell asks for completions it runs ``hotpatch`` with argcomplete's variables
set (``_ARGCOMPLETE``, ``COMP_LINE``, ``COMP_POINT``); ``complete`` then
answers and exits before anything else runs. ``show VERSION`` completes the
versions the agent has applied.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from hotpatch.cli._ask import UsageError, ask

__all__ = ["INSTALL_HINT", "SHELLS", "AppliedVersion", "applied_versions", "complete", "shell_code"]

INSTALL_HINT = "pip install 'pyhotpatch[completion]'"
SHELLS = ("bash", "zsh", "fish", "tcsh", "powershell")  # what argcomplete writes code for
ASK_TIMEOUT = 2.0  # a completion that waits longer than this is worse than none


def complete(parser: argparse.ArgumentParser) -> None:
    """When the shell asks, print the completions of the command line and exit.

    Otherwise (no ``_ARGCOMPLETE`` in the environment), or without argcomplete,
    nothing: argcomplete is not even imported.
    """
    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        import argcomplete  # noqa: PLC0415 -- an optional dependency, for completion only
    except ImportError:
        return
    argcomplete.autocomplete(parser)


def shell_code(shell: str) -> str:
    """The code that registers ``hotpatch``'s completion with ``shell``."""
    try:
        from argcomplete.shell_integration import shellcode  # noqa: PLC0415 -- optional
    except ImportError:
        msg = f"shell completion needs argcomplete, which is not installed: {INSTALL_HINT}"
        raise UsageError(msg) from None
    return shellcode(["hotpatch"], shell=shell)


def applied_versions(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """``show VERSION``: the versions applied by the agent the command line names."""
    args = argparse.Namespace(**{**vars(parsed_args), "timeout": ASK_TIMEOUT})
    try:
        answer = ask(args, {"cmd": "status"})
    except UsageError:
        return []  # no agent to ask: nothing to offer
    level = answer.get("level")
    if level is None:  # a supervisor: its service's level
        level = (answer.get("patches") or {}).get("level")
    return [str(v) for v in level or [] if str(v).startswith(prefix)]


class AppliedVersion(argparse.Action):
    """Stores a positional ``VERSION``, which argcomplete completes with ``applied_versions``."""

    completer = staticmethod(applied_versions)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
