"""hotpatch: function-level hot patching for running Python services.

Layers, each importing only from those above it:

1. ``_errors``, ``_patch``            -- the error tree; ``Patch``, plain data
2. ``_loader``, ``_targets``          -- patch file -> ``Patch``; ``module:qualname`` -> function
3. ``_validate``, ``_codegen``        -- checks; code objects built with ``bytecode``
4. ``_switch``                        -- the atomic switch and the quiescence check
5. ``_hookspecs``, ``_plugins``       -- pluggy hooks and the plugin host
6. ``_journal``, ``_registry``        -- the durable level; ``Registry`` drives 2-5
7. ``_signing``, ``_verify``, ``_control`` -- signatures; the verification child; the socket
8. ``_drops``, ``_outcome``, ``_folder`` -- reading a drop; result files; watching the folder
9. ``_pipeline``, ``_commands``, ``_agent`` -- a drop's steps; the socket's commands; ``install()``
10. ``_fanout_*``, ``_fanout``        -- pre-fork workers sharing one folder (``workers=True``)
11. ``_channel``, ``_rounds``, ``_service_patches``, ``_runtime``, ``_service``
                                      -- the service side of ``supervisor/`` (wire, state, patches)
12. ``_cli_agent``, ``_cli_show``, ``_cli_follow``, ``cli`` -- the ``hotpatch`` command

This module only re-exports.
"""

from hotpatch._agent import Agent, install
from hotpatch._errors import (
    BaselineMismatch,
    JournalError,
    MigrationFailed,
    NameConflict,
    NotPatchable,
    PatchError,
    QuiescenceTimeout,
    RestartRequired,
    SignatureIncompatible,
    TargetNotFound,
    VerificationFailed,
    VersionConflict,
)
from hotpatch._hookspecs import hookimpl
from hotpatch._loader import load_patch
from hotpatch._patch import Patch
from hotpatch._registry import ApplyResult, CheckReport, HistoryEntry, Registry, RollbackResult
from hotpatch._service import PreservedDict, listen_socket, preserved, ready, ready_for_baseline

__all__ = [
    "Agent",
    "ApplyResult",
    "BaselineMismatch",
    "CheckReport",
    "HistoryEntry",
    "JournalError",
    "MigrationFailed",
    "NameConflict",
    "NotPatchable",
    "Patch",
    "PatchError",
    "PreservedDict",
    "QuiescenceTimeout",
    "Registry",
    "RestartRequired",
    "RollbackResult",
    "SignatureIncompatible",
    "TargetNotFound",
    "VerificationFailed",
    "VersionConflict",
    "hookimpl",
    "install",
    "listen_socket",
    "load_patch",
    "preserved",
    "ready",
    "ready_for_baseline",
]
