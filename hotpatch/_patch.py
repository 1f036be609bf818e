"""``Patch``: the declaration a patch file makes. Plain data; nothing here touches a target."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from packaging.version import InvalidVersion, Version

__all__ = ["Migration", "Patch", "PatchKind", "PatchSource", "Replacement", "version_key"]

PatchKind = Literal["hot", "planned-baseline", "unplanned-baseline"]
Quiescence = Literal["none", "strict"]

_KINDS: tuple[str, ...] = ("hot", "planned-baseline", "unplanned-baseline")
_F = TypeVar("_F", bound=Callable[..., Any])
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class PatchSource:
    """Where a patch came from: its text travels with it (files move), hashed."""

    path: str
    text: str
    sha256: str
    filename: str  # the name its code objects carry, registered in linecache

    @staticmethod
    def digest(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Replacement:
    """One ``@patch.replace`` (``is_class=False``) or ``@patch.replace_class`` entry."""

    target: str
    new: Any
    is_class: bool = False


@dataclass(frozen=True, slots=True)
class Migration:
    """A function run with a module when the patch is applied (or rolled back)."""

    module: str
    func: Callable[[Any], object]


def _check_target(target: str) -> str:
    module, sep, qualname = target.partition(":")
    if not sep or not module or not qualname or " " in target:
        msg = (
            f"target {target!r} is not of the form 'module:qualname' "
            "(for example 'shop.pricing:apply_discount' or 'shop.cart:Cart.total')"
        )
        raise ValueError(msg)
    return target


# A replay parses each version of the level several times over (the journal's
# record, the patch file's declaration, the plan): each text is parsed once. The key
# is the text itself, so another text is parsed anew; a Version is not changed once made.
_parsed = functools.lru_cache(maxsize=4096)(Version)


# A version's place in PEP 440 order as ints and strings only: epoch, release without
# its trailing zeros, (pre rank, pre number, post rank, post number, dev rank, dev
# number), local segments ((n, "") for a number, (-1, text) for text: text first).
VersionKey = tuple[int, tuple[int, ...], tuple[int, int, int, int, int, int], tuple[Any, ...]]
_PRE_RANK = {"a": 0, "b": 1, "rc": 2}  # a dev release alone: -1; no pre-release: 3


def version_key(version: Version) -> VersionKey:
    """``version``'s place in PEP 440 order, as a tuple of ints and strings.

    Two keys compare as their versions do. Compared in C (a ``Version``'s comparisons
    run Python code), and made of atoms only: once a collection has seen it, the
    garbage collector no longer tracks it (it tracks every ``Version``), so keys kept
    for thousands of waiting drops cost it nothing.
    """
    release = version.release
    end = len(release)
    while end and release[end - 1] == 0:  # 1.0.0 is 1.0 is 1
        end -= 1
    pre, post, dev = version.pre, version.post, version.dev
    if pre is not None:
        pre_rank, pre_n = _PRE_RANK[pre[0]], pre[1]
    else:
        pre_rank, pre_n = (-1 if post is None and dev is not None else 3), 0
    local = version.local
    return (
        version.epoch,
        release[:end],
        (
            pre_rank,
            pre_n,
            0 if post is None else 1,
            post or 0,
            1 if dev is None else 0,
            dev or 0,
        ),
        tuple((int(s), "") if s.isdigit() else (-1, s) for s in local.split(".")) if local else (),
    )


def parse_version(text: str, what: str) -> Version:
    """PEP 440 version, or a ``ValueError`` saying which field is wrong."""
    try:
        return _parsed(text) if type(text) is str else Version(text)
    except InvalidVersion:
        msg = f"{what} {text!r} is not a PEP 440 version (write it like '2.3.1')"
        raise ValueError(msg) from None


@dataclass(eq=False)
class Patch:
    """A versioned set of function replacements against one baseline.

    A patch file declares exactly one ``Patch`` and registers replacements with
    its decorators; nothing is touched until a ``Registry`` applies it.
    """

    version: str
    baseline: str = ""
    summary: str = ""
    kind: PatchKind = "hot"
    cumulative: bool = False
    signature_change: bool = False
    quiescence: Quiescence = "none"
    quiescence_timeout: float = 1.0
    restart: bool = False
    replacements: list[Replacement] = field(default_factory=list, init=False)
    migrations: list[Migration] = field(default_factory=list, init=False)
    unmigrations: list[Migration] = field(default_factory=list, init=False)
    source: PatchSource | None = field(default=None, init=False)
    parsed_version: Version = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.parsed_version = parse_version(self.version, "patch version")
        if self.kind not in _KINDS:
            msg = f"patch {self.version}: kind {self.kind!r} is not one of {', '.join(_KINDS)}"
            raise ValueError(msg)
        if self.kind == "hot":
            if not self.baseline:
                msg = (
                    f"patch {self.version}: a hot patch needs baseline='...' (the code it patches)"
                )
                raise ValueError(msg)
            parse_version(self.baseline, f"patch {self.version}: baseline")
        if self.quiescence not in ("none", "strict"):
            msg = f"patch {self.version}: quiescence must be 'none' or 'strict'"
            raise ValueError(msg)
        if self.quiescence_timeout < 0:
            msg = f"patch {self.version}: quiescence_timeout must not be negative"
            raise ValueError(msg)

    # -- decorators ---------------------------------------------------------

    def replace(self, target: str) -> Callable[[_F], _F]:
        """Register the decorated function as the new code of ``target``."""
        _check_target(target)

        def register(func: _F) -> _F:
            self._add(Replacement(target, func))
            return func

        return register

    def replace_class(self, target: str) -> Callable[[type[_T]], type[_T]]:
        """Patch a class's methods in place and add its new ones."""
        _check_target(target)

        def register(cls: Any) -> Any:
            if not isinstance(cls, type):
                msg = f"patch {self.version}: replace_class({target!r}) decorates a class"
                raise TypeError(msg)
            self._add(Replacement(target, cls, is_class=True))
            return cls

        return register

    def migrate(self, module: str) -> Callable[[_F], _F]:
        """Run the decorated ``func(module)`` once, when the patch is applied."""

        def register(func: _F) -> _F:
            self.migrations.append(Migration(module, func))
            return func

        return register

    def unmigrate(self, module: str) -> Callable[[_F], _F]:
        """Run the decorated ``func(module)`` when the patch is rolled back."""

        def register(func: _F) -> _F:
            self.unmigrations.append(Migration(module, func))
            return func

        return register

    # -- queries ------------------------------------------------------------

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(r.target for r in self.replacements)

    @property
    def sha256(self) -> str | None:
        return self.source.sha256 if self.source else None

    def _add(self, replacement: Replacement) -> None:
        target = replacement.target
        for r in self.replacements:  # a loop, not any(): a replay adds thousands
            if r.target == target:
                msg = f"patch {self.version}: {target} is replaced twice in one patch"
                raise ValueError(msg)
        self.replacements.append(replacement)

    def __repr__(self) -> str:
        return (
            f"<Patch {self.version} baseline={self.baseline or '-'} kind={self.kind} "
            f"targets={len(self.replacements)}>"
        )
