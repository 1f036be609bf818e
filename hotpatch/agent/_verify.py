"""Verification before the service imports a patch: a pre-started verifier that forks per patch.

A ``Verifier`` starts the verification process (``hotpatch.agent._verifier``,
through ``hotpatch.agent._verifier_link``)
ahead of need with the service's ``sys.path``, has it import the modules
patches are likely to target, and sends it each patch: the verifier forks a
fresh child that imports the patch and resolves its targets, so a check costs
a fork rather than a new interpreter. The patch's code runs only in that
child; the verifier and the service are untouched by what it does (exits,
loops, daemons, changed global state), and whatever it started is killed when
its check ends. The verifier is started again when the ``sys.path`` it is
asked for changes, when the code it imported changes on disk, and after it
died; it ends with the service (it watches its socket) and with ``close()``.

``verify_in_child`` is the one-off form: a verifier for one patch.

This is a safety net against patches that break the process at import, not a
sandbox: the verifier runs with the service's user and rights. Signatures
decide who may patch.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from hotpatch._errors import VerificationFailed
from hotpatch._loader import DEFAULT_MAX_BYTES
from hotpatch.agent._resources import Shortage
from hotpatch.agent._verifier_link import Gone, VerifierProcess, output_tail, signal_name

__all__ = ["Verifier", "VerifyReport", "library_modules", "verify_in_child"]

log = logging.getLogger("hotpatch")

DEATHS_TOLERATED = 2  # verifiers dying during one check before the patch is blamed


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What the check found: the patch imports and these targets resolve."""

    version: str
    baseline: str
    targets: tuple[str, ...]
    elapsed_s: float
    imported: tuple[str, ...] = ()  # modules the check imported (not the patch's own)


class Verifier:
    """A verification process started ahead of need and used for every check, one at a time.

    ``prepare(sys_path)`` starts it (returns at once); ``check()`` starts it if
    needed, or again if ``sys_path`` changed. ``warm`` names modules to import
    into it at every start; the modules of the targets of each patch that
    passes are added. Thread-safe; a context manager (``close()`` ends it).
    """

    def __init__(self, *, warm: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._warm: dict[str, None] = dict.fromkeys(warm)  # ordered set
        self._skip: set[str] = set()  # modules that made a verifier unusable: never warmed
        self._process: VerifierProcess | None = None
        self._closed = False
        self.starts = 0  # how many verification processes were started (for tests, stats)
        _forget_after_fork.add(self)

    @property
    def pid(self) -> int | None:
        """The running verifier's process id, ``None`` when none runs."""
        process = self._process
        return process.pid if process is not None and process.alive() else None

    @property
    def warmed(self) -> tuple[str, ...]:
        """The modules each verifier imports as it starts (those found unsafe left out)."""
        with self._lock:
            return tuple(m for m in self._warm if m not in self._skip)

    @property
    def loaded(self) -> frozenset[str]:
        """The modules the running verifier said it imported when asked to (so far)."""
        process = self._process
        return frozenset(process.loaded) if process is not None else frozenset()

    def prepare(self, sys_path: Sequence[str]) -> None:
        """Start the verifier for ``sys_path`` unless it runs already; does not wait for it."""
        with self._lock:
            if not self._closed:
                self._ensure(tuple(sys_path))

    def prepare_from(self, sys_path: Callable[[], Sequence[str]]) -> None:
        """``prepare(sys_path())`` in a thread of its own: ``sys_path`` may wait (for a
        service to start); a failure is left for the first check to meet."""

        def run() -> None:
            try:
                self.prepare(sys_path())
            except Exception as exc:
                log.debug("the verifier was not started ahead: %s", exc)

        threading.Thread(target=run, name="hotpatch-verifier-start", daemon=True).start()

    def learn(self, modules: Iterable[str]) -> None:
        """Warm ``modules`` too, now and at every later start."""
        with self._lock:
            new = [m for m in dict.fromkeys(modules) if m not in self._warm and m not in self._skip]
            self._warm.update(dict.fromkeys(new))
            if new and self._process is not None and self._process.alive():
                self._process.warm(new)

    def check(
        self,
        path: str | os.PathLike[str],
        *,
        sys_path: Sequence[str],
        timeout: float = 10.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> VerifyReport:
        """Load the patch at ``path`` in a fresh child of the verifier, whose ``sys.path`` is
        ``sys_path``.

        Raises ``VerificationFailed`` with a reason a person understands when the
        patch fails to load, a target or migration module does not resolve, the
        child exits or dies at import, or it does not finish within ``timeout``
        seconds (it is killed, with whatever it started).
        """
        file = Path(path).absolute()
        with self._lock:
            if self._closed:
                msg = "the verifier is closed: this agent no longer takes patches"
                raise VerificationFailed(msg)
            report = self._check(file, tuple(sys_path), timeout, max_bytes)
        # What this patch needed, the next one (of the same targets) will need again.
        self.learn([*(module_of(t) for t in report.targets), *report.imported])
        return report

    def close(self) -> None:
        """End the verifier (and a check it runs). Idempotent.

        At interpreter exit (an agent never stopped) the lock may be held by a
        thread the interpreter has frozen for good: then it is not waited for
        (the verification process dies with this one anyway).
        """
        locked = self._lock.acquire(blocking=not sys.is_finalizing())
        try:
            self._closed = True
            process, self._process = self._process, None
        finally:
            if locked:
                self._lock.release()
        if process is not None:
            process.stop()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- under the lock -----------------------------------------------------------------

    def _ensure(self, sys_path: tuple[str, ...]) -> VerifierProcess:
        process = self._process
        if process is not None and process.alive() and process.sys_path == sys_path:
            return process
        if process is not None:
            process.stop()
        self._process = None
        process = VerifierProcess(sys_path)
        self.starts += 1
        self._process = process
        process.warm([m for m in self._warm if m not in self._skip])
        return process

    def _check(
        self, file: Path, sys_path: tuple[str, ...], timeout: float, max_bytes: int
    ) -> VerifyReport:
        """One check; a verifier that turns out stale or unusable is replaced (bounded)."""
        died = 0
        why = "?"
        for _ in range(8):
            process = self._ensure(sys_path)
            try:
                unsafe = process.settle()
            except Gone as exc:
                why = f"it {exc}"
                self._replace(process, why, skip=process.unacknowledged())
                continue
            if unsafe is not None:
                why = f"module {unsafe} starts a thread at import"
                self._replace(process, why, skip=[unsafe])
                continue
            try:
                answer = process.check(file, timeout, max_bytes)
            except Gone as exc:
                # Perhaps the patch ended it (it runs with the same rights), perhaps not:
                # once more with a fresh verifier, then the patch is refused.
                died += 1
                self._replace(process, f"it {exc} while checking {file.name}")
                if died < DEATHS_TOLERATED:
                    continue
                msg = (
                    f"patch file {file.name}: the verification process {exc} while checking "
                    "it, twice; a patch must not signal or kill other processes at import"
                )
                raise VerificationFailed(msg) from None
            if answer.get("op") == "stale":
                why = f"{answer.get('file')} changed on disk"
                self._replace(process, why)
                continue
            return _interpret(answer, file.name, timeout)
        msg = (
            f"patch file {file.name}: no usable verification process could be started (the "
            f"last one: {why}); the patch was not imported anywhere"
        )
        raise VerificationFailed(msg)

    def _replace(self, process: VerifierProcess, why: str, *, skip: Iterable[str] = ()) -> None:
        self._skip.update(skip)
        log.info("verification process %s restarted: %s", process.pid, why)
        process.stop()
        if self._process is process:
            self._process = None

    def _after_fork(self) -> None:
        """In a forked child of the service: the verifier is the parent's, not this one's."""
        self._lock = threading.Lock()
        process, self._process = self._process, None
        if process is not None:
            process.abandon()


_forget_after_fork: weakref.WeakSet[Verifier] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for verifier in list(_forget_after_fork):
        verifier._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


# -- answers -> reports and refusals -----------------------------------------------------


def _interpret(answer: dict[str, Any], name: str, timeout: float) -> VerifyReport:
    report = answer.get("report")
    shortage = (report if isinstance(report, dict) else answer).get("shortage")
    if isinstance(shortage, str):
        why = answer.get("fork_failed") or (report or {}).get("error")
        raise Shortage(shortage, f"verifying patch file {name}: {why}")
    if answer.get("timed_out"):
        msg = (
            f"patch file {name} did not finish importing within {timeout:g} s: killed. "
            "A patch must not block, wait or loop at import; move that work into a function"
        )
        raise VerificationFailed(msg)
    report, status, signum = answer.get("report"), answer.get("status"), answer.get("signal")
    tail = output_tail(str(answer.get("output", "")).encode())
    elapsed = float(answer.get("elapsed_s", 0.0))
    if isinstance(report, dict) and status == 0:
        try:
            if report["ok"]:
                return VerifyReport(
                    version=str(report["version"]),
                    baseline=str(report["baseline"]),
                    targets=tuple(str(t) for t in report["targets"]),
                    elapsed_s=elapsed,
                    imported=tuple(str(m) for m in report.get("imported", ())),
                )
            error, patch, target = str(report["error"]), report.get("patch"), report.get("target")
        except (KeyError, TypeError):
            msg = f"patch file {name}: the verification child wrote no readable report"
            raise VerificationFailed(msg) from None
        raise VerificationFailed(error, patch=patch, target=target)
    if signum is not None:
        msg = (
            f"patch file {name} killed the verification child at import "
            f"({signal_name(int(signum))}){tail}"
        )
        raise VerificationFailed(msg)
    msg = (
        f"patch file {name} exits at import (os._exit({status}) or equivalent: the verification "
        f"child ended with status {status} before reporting); a patch must not end the "
        f"process{tail}"
    )
    raise VerificationFailed(msg)


def module_of(target: str) -> str:
    """The module part of a ``module:qualname`` target."""
    return target.partition(":")[0]


def library_modules() -> list[str]:
    """The modules this process has loaded from the standard library and installed packages.

    Cheap to import again elsewhere and free of the service's own start-up side
    effects; the service's own modules are warmed once a patch targets them.
    """
    import sysconfig  # noqa: PLC0415 - only when an agent starts

    paths = sysconfig.get_paths()
    roots = tuple(
        os.path.join(os.path.realpath(paths[k]), "")
        for k in ("stdlib", "platstdlib", "purelib", "platlib")
        if k in paths
    )
    names = []
    for name, module in list(sys.modules.items()):
        if name == "hotpatch" or name.startswith(("hotpatch.", "__")):
            continue
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and os.path.realpath(file).startswith(roots):
            names.append(name)
    return names


def verify_in_child(
    path: str | os.PathLike[str],
    *,
    sys_path: Sequence[str],
    timeout: float = 10.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> VerifyReport:
    """Check one patch in a verifier of its own, ended afterwards (see ``Verifier.check``)."""
    start = time.perf_counter()
    with Verifier() as verifier:
        report = verifier.check(path, sys_path=sys_path, timeout=timeout, max_bytes=max_bytes)
    return VerifyReport(
        report.version, report.baseline, report.targets, time.perf_counter() - start
    )
