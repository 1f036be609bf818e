"""A patch's migrations, each in a thread of its own within a timeout; unmigrations."""

from __future__ import annotations

import logging
import threading
import time
import types
from collections.abc import Callable, Sequence
from typing import Any

from hotpatch._errors import MigrationFailed
from hotpatch._patch import Migration
from hotpatch._plan import Plan

__all__ = ["run_migration", "run_migrations", "run_unmigrations"]

log = logging.getLogger("hotpatch")


def run_migrations(plan: Plan, timeout: float, undo: list[Callable[[], object]]) -> None:
    """Run the plan's migrations in turn; each one's unmigrate joins ``undo``."""
    for migration, module in plan.migrations:
        run_migration(migration, module, plan.patch.version, timeout)
        undo.extend(
            _call(m.func, mod) for m, mod in plan.unmigrations if m.module == migration.module
        )


def run_unmigrations(
    version: str, unmigrations: Sequence[tuple[Migration, types.ModuleType]]
) -> None:
    """A rolled-back patch's unmigrations, in turn; one that raises is logged, the next runs."""
    for migration, module in unmigrations:
        try:
            migration.func(module)
        except Exception:
            log.exception(
                "rollback of %s: unmigrate %s of %s raised; the code is rolled back, "
                "the migrated state may not be",
                version,
                migration.func.__name__,
                migration.module,
            )


def run_migration(
    migration: Migration, module: types.ModuleType, version: str, timeout: float
) -> None:
    """Run ``migration`` in a thread of its own; ``MigrationFailed`` if it raises or hangs.

    A thread cannot be killed: past ``timeout`` the migration is abandoned where it
    is (the caller undoes the apply, so the switch never follows it), and when it
    returns at last that is logged, since what it changed meanwhile stays.
    """
    name = f"{migration.func.__name__} of {migration.module}"
    outcome: list[BaseException | None] = []
    lock = threading.Lock()  # the verdict (returned in time, or abandoned) is taken once
    abandoned: list[bool] = []
    started = time.monotonic()

    def run() -> None:
        try:
            migration.func(module)
        except BaseException as exc:  # SystemExit too: a patch never ends the process
            result: BaseException | None = exc
        else:
            result = None
        with lock:
            outcome.append(result)
            late = bool(abandoned)
        if late:
            log.error(
                "patch %s: migration %s returned %.1f s after it was abandoned; its patch stays "
                "refused, and what it changed in %s since stays as it is (no unmigrate ran)",
                version,
                name,
                time.monotonic() - started,
                migration.module,
            )

    thread = threading.Thread(target=run, name=f"hotpatch-migration-{version}", daemon=True)
    thread.start()
    thread.join(timeout)
    with lock:
        if not outcome:
            abandoned.append(True)
    if abandoned:
        msg = (
            f"patch {version}: migration {name} did not return within {timeout:g} s "
            f"(migration_timeout); the apply was undone and the migration abandoned in "
            f"thread {thread.name!r}: it cannot be stopped, so whatever it still changes in "
            f"{migration.module} stays. Make the migration quick, or raise migration_timeout"
        )
        log.error("%s", msg)
        raise MigrationFailed(msg, patch=version, target=migration.module)
    exc = outcome[0]
    if exc is not None:
        msg = (
            f"patch {version}: migration {name} raised {type(exc).__name__}: {exc}; the apply "
            "was undone. Fix the migration and publish a newer version"
        )
        raise MigrationFailed(msg, patch=version, target=migration.module) from exc


def _call(func: Callable[[Any], object], arg: Any) -> Callable[[], object]:
    return lambda: func(arg)
