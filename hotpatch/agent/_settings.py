"""What an agent is configured with: the checks every patch passes, its plugins, its paths."""

from __future__ import annotations

import importlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from hotpatch._loader import DEFAULT_MAX_BYTES
from hotpatch._plugins import PluginHost
from hotpatch._registry import MIGRATION_TIMEOUT_S
from hotpatch.agent._signing import TrustedKeys
from hotpatch.agent._vital import VITAL_TIMEOUT_S

__all__ = [
    "DELIVER_TIMEOUT_S",
    "Checks",
    "PathLike",
    "PluginChoice",
    "Settings",
    "deliver_timeout_of",
    "vital_timeout_of",
]

log = logging.getLogger("hotpatch")

PathLike = str | os.PathLike[str]

# ``install(workers=True, deliver_timeout=)``: how long a worker waits for another's answer.
DELIVER_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Checks:
    """What the drop pipeline checks every patch with, before the service imports it."""

    require_signature: bool = False
    trusted_keys: Path | tuple[Path, ...] | None = None  # a directory or file, or a list
    verify_timeout: float = 10.0  # for the verification child
    verify: bool = True  # load the patch in a child process first
    max_bytes: int = DEFAULT_MAX_BYTES

    @classmethod
    def of(
        cls,
        *,
        require_signature: bool,
        trusted_keys: TrustedKeys | None,
        verify_timeout: float,
        verify: bool,
        max_bytes: int,
    ) -> Checks:
        """The checks ``install()`` was asked for; ``ValueError`` names a bad option."""
        if require_signature and trusted_keys is None:
            msg = (
                "require_signature=True needs trusted_keys: a directory of .pub files "
                "(made with `hotpatch keygen`), or a list of them"
            )
            raise ValueError(msg)
        if verify_timeout <= 0:
            msg = f"verify_timeout must be positive, not {verify_timeout!r}"
            raise ValueError(msg)
        if max_bytes <= 0:
            msg = f"max_bytes must be positive, not {max_bytes!r}"
            raise ValueError(msg)
        return cls(
            require_signature=require_signature,
            trusted_keys=(
                None
                if trusted_keys is None
                else Path(trusted_keys)
                if isinstance(trusted_keys, str | os.PathLike)
                else tuple(Path(p) for p in trusted_keys)
            ),
            verify_timeout=verify_timeout,
            verify=verify,
            max_bytes=max_bytes,
        )


@dataclass(frozen=True, slots=True)
class PluginChoice:
    """The plugins of an agent's registry: explicit ones, built-in ones asked for, entry points."""

    explicit: tuple[object, ...] = ()
    audit_log: Path | None = None  # the audit-log plugin, writing there
    entry_points: bool = True  # also those of the ``hotpatch`` entry-point group

    def load(self, checks: Checks) -> list[object]:
        """The plugin objects, in pluggy's registration order (entry points, then explicit ones)."""
        explicit = list(self.explicit)
        # The built-in plugins are imported when asked for, by name: they import
        # hotpatch (a cycle at import time), and type checkers see them under
        # their source directory, plugins/, rather than their installed name.
        if self.audit_log is not None:
            audit = importlib.import_module("hotpatch_plugins.audit")
            explicit.append(audit.AuditLog(self.audit_log))
        if checks.require_signature:
            signature = importlib.import_module("hotpatch_plugins.signature")
            explicit.append(signature.SignatureCheck(checks.trusted_keys))
        if not self.entry_points:
            return explicit
        try:
            host = PluginHost(explicit, entry_points=True)
        except Exception:
            log.exception("loading plugins from the 'hotpatch' entry points failed; skipping them")
            return explicit
        return [plugin for _, plugin in host.manager.list_name_plugin() if plugin is not None]


@dataclass(frozen=True, slots=True)
class Settings:
    """What an agent was asked for, resolved: paths absolute, defaults filled in."""

    baseline: str
    watch: Path | None  # the patch folder, if it watches one
    journal: Path | None  # where the level is recorded, if anywhere
    socket: Path | None  # the control socket, if it serves one
    checks: Checks
    plugins: PluginChoice
    migration_timeout: float = MIGRATION_TIMEOUT_S  # for each migration of a patch to return
    state_dir: Path | None = None  # where it writes instead of ``watch`` (only read then)
    deliver_timeout: float = DELIVER_TIMEOUT_S  # a worker's wait for another worker's answer
    vital_timeout: float = VITAL_TIMEOUT_S  # for the check after an apply, before a rollback

    @property
    def state(self) -> Path | None:
        """Where the agent writes: its state directory, else the folder it watches."""
        return self.state_dir if self.state_dir is not None else self.watch


def deliver_timeout_of(value: float | None, *, workers: bool) -> float:
    """``install(deliver_timeout=)`` checked: seconds, ``DELIVER_TIMEOUT_S`` when ``None``;
    ``ValueError`` names what is wrong and what to give instead."""
    if value is None:
        return DELIVER_TIMEOUT_S
    if not workers:
        msg = (
            f"deliver_timeout={value!r} is how long a worker of a pre-fork server waits for "
            "another worker's answer: it needs workers=True (an agent alone on its folder "
            "delivers to no one); pass workers=True, or drop deliver_timeout"
        )
        raise ValueError(msg)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        msg = (
            f"deliver_timeout must be a positive number of seconds, not {value!r} "
            f"(the default is {DELIVER_TIMEOUT_S:g}: give more if a worker's apply, migrations "
            "included, can take longer)"
        )
        raise ValueError(msg)
    return float(value)


def vital_timeout_of(value: float | None) -> float:
    """``install(vital_timeout=)`` checked: seconds, ``VITAL_TIMEOUT_S`` when ``None``;
    ``ValueError`` names what is wrong and what to give instead."""
    if value is None:
        return VITAL_TIMEOUT_S
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        msg = (
            f"vital_timeout must be a positive number of seconds, not {value!r}: how long "
            "the check after an apply (can the agent still file an outcome and answer its "
            f"control socket?) may take before the patch is rolled back (the default is "
            f"{VITAL_TIMEOUT_S:g}: give more when a slow machine needs longer, less for a "
            "quicker rollback)"
        )
        raise ValueError(msg)
    return float(value)
