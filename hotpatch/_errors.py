"""The exceptions hotpatch raises, one leaf per meaning.

The tree::

    PatchError                      root: anything hotpatch refuses or cannot do
    +-- BaselineMismatch            the patch was built for another baseline
    +-- VersionConflict             version not newer than the level, or not in it (rollback)
    +-- TargetNotFound              ``module:qualname`` does not resolve
    +-- NotPatchable                the target exists but is not a Python function
    +-- SignatureIncompatible       the replacement cannot take every call the original took
    +-- NameConflict                a name the patch brings would shadow another object
    +-- VerificationFailed          the patch file does not load, or a plugin vetoed it
    +-- MigrationFailed             a ``@patch.migrate`` function raised; nothing was applied
    +-- JournalError                the journal cannot be read, written or replayed
    +-- RestartRequired             valid, but cannot go in hot (see ``.reasons``)
        +-- QuiescenceTimeout       ``quiescence="strict"`` was not reached in time

Every error keeps its context as attributes: ``.patch`` (the patch version, or
``None``), ``.target`` (``module:qualname``, or ``None``) and, for
``RestartRequired``, ``.reasons``. The message says what happened, to what, and
what to do next.

Beside the tree, one error is about no patch at all: what a supervised service
calls (``listen_socket``, ``preserved``, ``ready``) failing. It is a
``RuntimeError``, so ``except PatchError`` keeps meaning "a patch was refused"::

    RuntimeError
    +-- ServiceError                a service-side call cannot be done: no such socket,
                                    state that cannot be pickled, a broken supervisor channel
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "BaselineMismatch",
    "JournalError",
    "MigrationFailed",
    "NameConflict",
    "NotPatchable",
    "PatchError",
    "QuiescenceTimeout",
    "RestartRequired",
    "ServiceError",
    "SignatureIncompatible",
    "TargetNotFound",
    "VerificationFailed",
    "VersionConflict",
]


class PatchError(Exception):
    """Root of every error hotpatch raises on purpose."""

    def __init__(self, message: str, *, patch: str | None = None, target: str | None = None):
        super().__init__(message)
        self.message = message
        self.patch = patch
        self.target = target

    def __str__(self) -> str:
        return self.message


class BaselineMismatch(PatchError):
    """The patch names a baseline other than the one the process runs."""


class VersionConflict(PatchError):
    """The version is not newer than the current level, or is not in the level (rollback)."""


class TargetNotFound(PatchError):
    """A ``module:qualname`` target (or a migration's module) does not resolve."""


class NotPatchable(PatchError):
    """The target exists but is not a Python function: a builtin, a C function, a constant."""


class SignatureIncompatible(PatchError):
    """The replacement cannot accept every call the original function accepted."""


class NameConflict(PatchError):
    """A global the replacement needs would shadow a different object in the target module."""


class VerificationFailed(PatchError):
    """The patch could not be loaded or verified, or a plugin vetoed it."""


class MigrationFailed(PatchError):
    """A migration raised; the apply was undone and nothing of the patch remains."""


class JournalError(PatchError):
    """The journal is unreadable, cannot be written, or its level cannot be replayed."""


class RestartRequired(PatchError):
    """The patch is valid but cannot be applied hot; ``.reasons`` says why."""

    def __init__(
        self,
        message: str,
        *,
        reasons: Sequence[str],
        patch: str | None = None,
        target: str | None = None,
    ):
        super().__init__(message, patch=patch, target=target)
        self.reasons: tuple[str, ...] = tuple(reasons)


class QuiescenceTimeout(RestartRequired):
    """``quiescence="strict"``: a target was still running when the timeout expired."""


class ServiceError(RuntimeError):
    """A supervised service's call cannot be done: no such socket, state not picklable, ...

    Not a ``PatchError``: no patch is involved. Raised by ``listen_socket``,
    ``preserved`` and the channel to the supervisor; the message names the
    socket, state or message, and what to do.
    """


# Tracebacks, pytest's reports and reprs name each error the way users import and
# catch it (hotpatch.BaselineMismatch), not by this private module.
for _name in __all__:
    globals()[_name].__module__ = "hotpatch"
del _name
