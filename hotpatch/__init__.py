"""hotpatch: function-level hot patching for running Python services.

The core is flat, in the order a patch goes through it: ``_patch`` (a ``Patch``,
plain data) -> ``_loader`` (patch file -> ``Patch``) -> ``_targets`` and
``_validate`` (``module:qualname`` -> function; the checks) -> ``_plan`` (the
values a switch will set, built with ``_codegen``'s trampolines) -> ``_switch``
(the atomic switch) -> ``_registry`` (commit, rollback, level, history; a
rollback's course from ``_unwind``; migrations through ``_migration``; its
journal through ``_recording``, replayed by ``_replay`` with the code
``_codecache`` keeps, the file in ``_journal`` and its records in
``_journal_format``; ``wrap()`` through ``_wrap``),
with ``_results``, ``_hookspecs``/``_plugins`` and ``_errors`` beside it. The
wings sit on the core and never the reverse: ``agent/`` (``install()``, the
watched folder, verification, the control socket), ``service/`` (what a
supervised process imports), ``supervisor/`` (``hotpatch run``) and ``cli/``
(the ``hotpatch`` command).

This module only re-exports (``__version__`` from ``_version``, its one source).
"""

from hotpatch._errors import (
    BaselineMismatch,
    JournalError,
    MigrationFailed,
    NameConflict,
    NotPatchable,
    PatchError,
    QuiescenceTimeout,
    RestartRequired,
    ServiceError,
    SignatureIncompatible,
    TargetNotFound,
    VerificationFailed,
    VersionConflict,
)
from hotpatch._hookspecs import hookimpl
from hotpatch._loader import load_patch
from hotpatch._patch import Patch
from hotpatch._registry import Registry
from hotpatch._results import ApplyResult, CheckReport, HistoryEntry, RollbackResult
from hotpatch._version import __version__ as __version__
from hotpatch.agent._agent import Agent, install
from hotpatch.service._api import listen_socket, preserved, ready, ready_for_baseline
from hotpatch.service._rounds import PreservedDict

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
    "ServiceError",
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
