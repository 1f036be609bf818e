"""Every error of SPEC section 10, triggered for real: class, context attributes, message."""

from __future__ import annotations

import asyncio
import inspect
import re
import textwrap
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import hotpatch
from hotpatch import _errors

ERROR_NAMES = sorted(
    name
    for name, value in vars(_errors).items()
    if isinstance(value, type) and issubclass(value, hotpatch.PatchError)
)
# Errors a user can meet that are not about a patch: documented beside the tree.
BESIDE = ("ServiceError",)


@pytest.fixture
def load(write_patch: Callable[[str], Path]) -> Callable[[str], hotpatch.Patch]:
    return lambda source: hotpatch.load_patch(write_patch(source))


def patch_for(mod: types.ModuleType, name: str, replacement: str, **options: object) -> str:
    """A patch file (version 1.0.1) replacing ``mod:name`` with the ``replacement`` def."""
    extra = "".join(f", {key}={value!r}" for key, value in options.items())
    return (
        "from hotpatch import Patch\n"
        f"patch = Patch(version='1.0.1', baseline='1.0'{extra})\n\n"
        f"@patch.replace('{mod.__name__}:{name}')\n" + textwrap.dedent(replacement)
    )


def words(message: str, *expected: str) -> None:
    for word in expected:
        assert word in message, f"{word!r} is not in the message {message!r}"


# -- the API surface -------------------------------------------------------------------------


def test_all_is_sorted_and_lists_exactly_the_public_names():
    public = {
        name
        for name, value in vars(hotpatch).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert hotpatch.__all__ == sorted(hotpatch.__all__)
    assert set(hotpatch.__all__) == public
    assert len(hotpatch.__all__) == len(set(hotpatch.__all__))


def test_every_error_is_exported_and_is_a_patch_error():
    assert ERROR_NAMES  # the scan found the tree
    for name in ERROR_NAMES:
        cls = getattr(hotpatch, name)
        assert cls is getattr(_errors, name)
        assert issubclass(cls, hotpatch.PatchError)
        assert issubclass(cls, Exception)
        assert cls.__doc__, f"{name} has no docstring"
    assert set(ERROR_NAMES) <= set(hotpatch.__all__)
    assert set(ERROR_NAMES) | set(BESIDE) == set(_errors.__all__)


def test_the_errors_beside_the_tree_are_exported_and_documented():
    for name in BESIDE:
        cls = getattr(hotpatch, name)
        assert cls is getattr(_errors, name)
        assert not issubclass(cls, hotpatch.PatchError)
        assert cls.__doc__, f"{name} has no docstring"
        assert name in hotpatch.__all__


def test_service_error_is_the_one_listen_socket_raises(monkeypatch):
    """What a user meets through ``hotpatch.listen_socket`` is ``hotpatch.ServiceError``."""
    from hotpatch.service import _runtime

    monkeypatch.delenv("HOTPATCH_SOCKETS", raising=False)
    monkeypatch.delenv("HOTPATCH_BIND", raising=False)
    _runtime.reset()
    try:
        with pytest.raises(hotpatch.ServiceError, match="HOTPATCH_BIND") as info:
            hotpatch.listen_socket("http")
    finally:
        _runtime.reset()
    assert isinstance(info.value, RuntimeError)


def test_the_tree_in_the_docstring_draws_every_error_with_its_parent():
    doc = _errors.__doc__
    assert doc is not None
    drawn: dict[str, str | None] = {}  # class -> parent, as drawn
    stack: list[tuple[int, str]] = []
    for line in doc.splitlines():
        match = re.match(r"^(\s*)(?:\+-- )?([A-Z]\w+)(?:\s{2,}\S|$)", line)
        if not match or match.group(2) not in (*ERROR_NAMES, *BESIDE, "RuntimeError"):
            continue
        depth, name = match.start(2), match.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        drawn[name] = stack[-1][1] if stack else None
        stack.append((depth, name))
    assert sorted(drawn) == sorted([*ERROR_NAMES, *BESIDE, "RuntimeError"])
    for name, parent in drawn.items():
        if name == "RuntimeError":
            continue
        bases = getattr(_errors, name).__bases__
        if parent is None:
            assert bases == (Exception,), name
        else:
            expected = RuntimeError if parent == "RuntimeError" else getattr(_errors, parent)
            assert bases == (expected,), name


# -- validation errors -----------------------------------------------------------------------


def test_baseline_mismatch(make_module, load, registry):
    mod = make_module("def f():\n    return 1\n")
    text = patch_for(mod, "f", "def f():\n    return 2\n").replace("'1.0')", "'2.0')")
    with pytest.raises(hotpatch.BaselineMismatch) as info:
        registry.apply(load(text))
    err = info.value
    assert isinstance(err, hotpatch.PatchError)
    assert (err.patch, err.target) == ("1.0.1", None)
    words(str(err), "patch 1.0.1", "baseline 2.0", "runs baseline 1.0", "rebuild the patch")
    assert mod.f() == 1


def test_version_conflict(make_module, load, registry):
    mod = make_module("def f():\n    return 1\n")
    registry.apply(load(patch_for(mod, "f", "def f():\n    return 2\n")))
    with pytest.raises(hotpatch.VersionConflict) as info:
        registry.apply(load(patch_for(mod, "f", "def f():\n    return 3\n")))
    err = info.value
    assert isinstance(err, hotpatch.PatchError)
    assert (err.patch, err.target) == ("1.0.1", None)
    words(str(err), "patch 1.0.1", "already applied", "newer version")
    assert mod.f() == 2


def test_version_conflict_on_rollback(registry):
    with pytest.raises(hotpatch.VersionConflict) as info:
        registry.rollback()
    assert (info.value.patch, info.value.target) == (None, None)
    words(str(info.value), "nothing to roll back", "baseline 1.0")


@pytest.mark.parametrize(
    ("qualname", "expected"),
    [
        ("missing", ("has no attribute 'missing'", "check the qualname")),
        ("Cart.missing", ("'Cart' has no attribute 'missing'", "check the qualname")),
        ("Cart.total", ("it is inherited", "Base.total")),
    ],
)
def test_target_not_found(make_module, load, registry, qualname, expected):
    mod = make_module(
        """
        class Base:
            def total(self):
                return 1

        class Cart(Base):
            pass
        """
    )
    text = patch_for(mod, qualname, "def f(self):\n    return 2\n")
    with pytest.raises(hotpatch.TargetNotFound) as info:
        registry.apply(load(text))
    err = info.value
    assert isinstance(err, hotpatch.PatchError)
    spec = f"{mod.__name__}:{qualname}"
    assert (err.patch, err.target) == ("1.0.1", spec)
    words(str(err), "patch 1.0.1", spec, *expected)


def test_target_not_found_for_a_missing_module(load, registry):
    text = (
        "from hotpatch import Patch\n"
        "patch = Patch(version='1.0.1', baseline='1.0')\n"
        "@patch.replace('no_such_module_for_hotpatch_tests:f')\n"
        "def f():\n    return 1\n"
    )
    with pytest.raises(hotpatch.TargetNotFound) as info:
        registry.apply(load(text))
    assert info.value.target == "no_such_module_for_hotpatch_tests:f"
    words(str(info.value), "patch 1.0.1", "does not exist", "check the module name")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sqrt", "builtin or C-extension function"),
        ("Cart", "patch a class with patch.replace_class"),
        ("LIMIT", "not a function"),
        ("handler", "callable Handler object"),
    ],
)
def test_not_patchable(make_module, load, registry, name, expected):
    mod = make_module(
        """
        from math import sqrt

        LIMIT = 3

        class Cart:
            pass

        class Handler:
            def __call__(self):
                return 1

        handler = Handler()
        """
    )
    with pytest.raises(hotpatch.NotPatchable) as info:
        registry.apply(load(patch_for(mod, name, "def f():\n    return 2\n")))
    err = info.value
    assert isinstance(err, hotpatch.PatchError)
    spec = f"{mod.__name__}:{name}"
    assert (err.patch, err.target) == ("1.0.1", spec)
    words(str(err), "patch 1.0.1", spec, expected)
    if name != "Cart":
        words(str(err), "patch the Python function that calls it")
    assert mod.sqrt(4) == 2


def test_not_patchable_replace_class_on_a_function(make_module, load, registry):
    mod = make_module("def f():\n    return 1\n")
    text = (
        "from hotpatch import Patch\n"
        "patch = Patch(version='1.0.1', baseline='1.0')\n"
        f"@patch.replace_class('{mod.__name__}:f')\n"
        "class f:\n    pass\n"
    )
    with pytest.raises(hotpatch.NotPatchable) as info:
        registry.apply(load(text))
    assert info.value.target == f"{mod.__name__}:f"
    words(str(info.value), "patch 1.0.1", "not a class", "use patch.replace")


SIGNATURE_CASES = {
    "removed parameter": ("def f(a, b):", "def f(a):", "argument 2 'b' is not accepted"),
    "new required parameter": (
        "def f(a):",
        "def f(a, b):",
        "requires 'b', which callers do not pass",
    ),
    "new required keyword": (
        "def f(a):",
        "def f(a, *, b):",
        "requires 'b', which callers do not pass",
    ),
    "renamed parameter": ("def f(a, b):", "def f(a, c):", "'b' can be passed by name"),
    "parameter made positional-only": (
        "def f(a, b):",
        "def f(a, b, /):",
        "'b' can be passed by name",
    ),
    "dropped *args": ("def f(a, *args):", "def f(a):", "*args (extra positional"),
    "dropped **kwargs": ("def f(a, **kw):", "def f(a):", "**kw (extra keyword"),
    "dropped keyword-only": ("def f(a, *, key=1):", "def f(a):", "keyword argument 'key'"),
    "optional made required": (
        "def f(a, b=1):",
        "def f(a, b):",
        "'b' is optional, but required",
    ),
    "optional keyword made required": (
        "def f(a, *, key=1):",
        "def f(a, *, key):",
        "keyword 'key' is optional, but required",
    ),
}


@pytest.mark.parametrize("case", sorted(SIGNATURE_CASES))
def test_signature_incompatible(make_module, load, registry, case):
    old, new, problem = SIGNATURE_CASES[case]
    mod = make_module(f"{old}\n    return 'old'\n")
    code = mod.f.__code__
    with pytest.raises(hotpatch.SignatureIncompatible) as info:
        registry.apply(load(patch_for(mod, "f", f"{new}\n    return 'new'\n")))
    err = info.value
    assert isinstance(err, hotpatch.PatchError)
    spec = f"{mod.__name__}:f"
    assert (err.patch, err.target) == ("1.0.1", spec)
    words(str(err), "patch 1.0.1", spec, "cannot accept every call", problem)
    words(str(err), "Keep the original's parameters", "signature_change=True")
    assert mod.f.__code__ is code
    assert registry.level == ()


@pytest.mark.parametrize("case", sorted(SIGNATURE_CASES))
def test_signature_change_true_lets_a_signature_change_through(make_module, load, registry, case):
    old, new, _ = SIGNATURE_CASES[case]
    mod = make_module(f"{old}\n    return 'old'\n")
    patch = load(patch_for(mod, "f", f"{new}\n    return 'new'\n", signature_change=True))
    report = registry.check(patch)
    assert report.hot
    mode = report.modes[f"{mod.__name__}:f"]
    if case in ("optional made required", "optional keyword made required"):
        assert mode == "inline"  # same layout: the replacement's own code, its defaults
    else:
        assert mode.startswith("forward (")
    registry.apply(patch)
    # inspect.signature reports the new parameters; a call written for them runs the new code
    args, kwargs = [], {}
    for param in inspect.signature(mod.f).parameters.values():
        if param.default is not param.empty or param.kind in (
            param.VAR_POSITIONAL,
            param.VAR_KEYWORD,
        ):
            continue
        if param.kind is param.KEYWORD_ONLY:
            kwargs[param.name] = 0
        else:
            args.append(0)
    assert mod.f(*args, **kwargs) == "new"
    assert inspect.signature(mod.f) == inspect.signature(patch.replacements[0].new)
    registry.rollback()
    assert mod.f(*["a", "b"][: mod.f.__code__.co_argcount]) == "old"


def test_after_a_signature_change_calls_follow_the_replacements_signature(
    make_module, load, registry
):
    mod = make_module(
        """
        def f(a, b, *, key=1):
            return ("old", a, b, key)

        def gen(a, b):
            yield a + b

        async def coro(a, b):
            return a + b
        """
    )
    text = patch_for(
        mod, "f", "def f(a, c=5):\n    return ('new', a, c)\n", signature_change=True
    ) + (
        f"@patch.replace('{mod.__name__}:gen')\n"
        "def gen(a):\n    yield a * 10\n"
        f"@patch.replace('{mod.__name__}:coro')\n"
        "async def coro(*, a):\n    return a * 100\n"
    )
    registry.apply(load(text))
    assert mod.f(1) == ("new", 1, 5)
    assert mod.f(1, c=2) == ("new", 1, 2)
    with pytest.raises(TypeError):
        mod.f(1, b=2)  # the old parameter is gone, as the new signature says
    with pytest.raises(TypeError):
        mod.f(1, 2, key=3)
    assert list(mod.gen(2)) == [20]
    assert asyncio.run(mod.coro(a=3)) == 300
    registry.rollback()
    assert mod.f(1, 2) == ("old", 1, 2, 1)
    assert list(mod.gen(1, 2)) == [3]


def test_compatible_signature_changes_are_accepted(make_module, load, registry):
    mod = make_module("def f(a, /, b, *, c=1):\n    return 'old'\n")
    new = "def f(x, /, b, extra=0, *args, c=2, d=3, **kw):\n    return 'new'\n"
    registry.apply(load(patch_for(mod, "f", new)))
    assert mod.f(1, b=2) == "new"


KIND_CASES = {
    "function -> generator": ("def f():\n    return 1\n", "def f():\n    yield 1\n"),
    "function -> coroutine": ("def f():\n    return 1\n", "async def f():\n    return 1\n"),
    "coroutine -> function": ("async def f():\n    return 1\n", "def f():\n    return 1\n"),
    "generator -> async generator": (
        "def f():\n    yield 1\n",
        "async def f():\n    yield 1\n",
    ),
}
KIND_WORDS = {
    "function -> generator": ("is a function", "is a generator function", "Keep it a function"),
    "function -> coroutine": ("is a function", "is a coroutine function", "Keep it a function"),
    "coroutine -> function": ("is a coroutine function", "is a function", "Keep it a coroutine"),
    "generator -> async generator": (
        "is a generator function",
        "replacement is a",
        "async generator",
    ),
}


@pytest.mark.parametrize("case", sorted(KIND_CASES))
@pytest.mark.parametrize("signature_change", [False, True])
def test_a_kind_change_is_incompatible_even_with_signature_change(
    make_module, load, registry, case, signature_change
):
    old, new = KIND_CASES[case]
    mod = make_module(old)
    code = mod.f.__code__
    options = {"signature_change": True} if signature_change else {}
    with pytest.raises(hotpatch.SignatureIncompatible) as info:
        registry.check(load(patch_for(mod, "f", new, **options)))
    err = info.value
    assert (err.patch, err.target) == ("1.0.1", f"{mod.__name__}:f")
    words(str(err), "patch 1.0.1", f"{mod.__name__}:f", *KIND_WORDS[case], "baseline")
    assert mod.f.__code__ is code


def test_name_conflict(make_module, load, registry):
    mod = make_module("helper = 'the module own'\n\ndef f():\n    return helper\n")
    text = (
        "from hotpatch import Patch\n"
        "from os.path import join as helper\n"
        "patch = Patch(version='1.0.1', baseline='1.0')\n"
        f"@patch.replace('{mod.__name__}:f')\n"
        "def f():\n    return helper('a', 'b')\n"
    )
    with pytest.raises(hotpatch.NameConflict) as info:
        registry.apply(load(text))
    err = info.value
    assert isinstance(err, hotpatch.PatchError)
    assert (err.patch, err.target) == ("1.0.1", f"{mod.__name__}:f")
    words(str(err), "patch 1.0.1", f"{mod.__name__}:f", "'helper'", "rename it in the patch")
    assert mod.helper == "the module own"
    assert mod.f() == "the module own"


def test_verification_failed_when_loading(write_patch):
    path = write_patch("from hotpatch import Patch\npatch = Patch(version='1.0.1'\n")
    with pytest.raises(hotpatch.VerificationFailed) as info:
        hotpatch.load_patch(path)
    err = info.value
    assert isinstance(err, hotpatch.PatchError)
    assert (err.patch, err.target) == (None, None)  # the file never got to declare a version
    words(str(err), path.name, "syntax error", "line 2")


def test_verification_failed_for_a_plugin_veto(make_module, load):
    class Veto:
        @hotpatch.hookimpl
        def hotpatch_validate(self, patch, report):
            return f"change freeze, {len(report.targets)} target(s)"

    mod = make_module("def f():\n    return 1\n")
    reg = hotpatch.Registry("1.0", plugins=[Veto()])
    patch = load(patch_for(mod, "f", "def f():\n    return 2\n"))
    for attempt in (reg.check, reg.apply):
        with pytest.raises(hotpatch.VerificationFailed) as info:
            attempt(patch)
        assert (info.value.patch, info.value.target) == ("1.0.1", None)
        words(str(info.value), "patch 1.0.1", "vetoed", "change freeze, 1 target(s)", "plugin")
    assert mod.f() == 1
    assert reg.level == ()


def test_verification_failed_for_a_patch_that_replaces_nothing(load, registry):
    patch = load("from hotpatch import Patch\npatch = Patch(version='1.0.1', baseline='1.0')\n")
    with pytest.raises(hotpatch.VerificationFailed) as info:
        registry.apply(patch)
    words(str(info.value), "patch 1.0.1", "replaces nothing", "@patch.replace")


def test_migration_failed(make_module, load, registry):
    mod = make_module("def f():\n    return 1\n")
    text = patch_for(mod, "f", "def f():\n    return 2\n") + (
        f"\n@patch.migrate({mod.__name__!r})\ndef move(module):\n    raise OSError('disk')\n"
    )
    with pytest.raises(hotpatch.MigrationFailed) as info:
        registry.apply(load(text))
    err = info.value
    assert isinstance(err, hotpatch.PatchError)
    assert (err.patch, err.target) == ("1.0.1", mod.__name__)
    words(str(err), "patch 1.0.1", "migration move", mod.__name__, "OSError", "undone", "Fix")
    assert mod.f() == 1


def test_journal_error_for_a_corrupt_journal(tmp_path):
    journal = tmp_path / "journal.json"
    journal.write_text("{not json")
    with pytest.raises(hotpatch.JournalError) as info:
        hotpatch.Registry("1.0", journal=journal)
    err = info.value
    assert isinstance(err, hotpatch.PatchError)
    assert (err.patch, err.target) == (None, None)
    words(str(err), str(journal), "corrupt", "Move it aside")
    assert journal.read_text() == "{not json"


def test_journal_error_for_a_patch_without_a_file(make_module, tmp_path):
    mod = make_module("def f():\n    return 1\n")
    reg = hotpatch.Registry("1.0", journal=tmp_path / "journal.json")
    patch = hotpatch.Patch(version="1.0.1", baseline="1.0")
    patch.replace(f"{mod.__name__}:f")(lambda: 2)
    with pytest.raises(hotpatch.JournalError) as info:
        reg.apply(patch)
    assert (info.value.patch, info.value.target) == ("1.0.1", None)
    words(str(info.value), "patch 1.0.1", "not loaded from a file", "hotpatch.load_patch")
    assert not (tmp_path / "journal.json").exists()


def test_journal_error_when_the_level_cannot_be_replayed(make_module, load, tmp_path):
    mod = make_module("def f():\n    return 1\n")
    journal = tmp_path / "journal.json"
    first = hotpatch.Registry("1.0", journal=journal)
    first.apply(load(patch_for(mod, "f", "def f():\n    return 2\n")))
    f = mod.f
    del mod.f  # the target is gone from the "restarted" process
    try:
        with pytest.raises(hotpatch.JournalError) as info:
            hotpatch.Registry("1.0", journal=journal)
        err = info.value
        assert isinstance(err, hotpatch.PatchError)
        assert (err.patch, err.target) == ("1.0.1", None)
        assert isinstance(err.__cause__, hotpatch.TargetNotFound)
        words(str(err), str(journal), "patch 1.0.1", "cannot be replayed", "move the journal")
    finally:
        mod.f = f
        first.rollback()
    assert f() == 1


# -- not hot ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["unplanned-baseline", "planned-baseline"])
def test_restart_required_for_a_baseline_patch(make_module, registry, kind):
    mod = make_module("def f():\n    return 1\n")
    code = mod.f.__code__
    baseline_patch = hotpatch.Patch(version="2.0", kind=kind, summary="new engine")
    report = registry.check(baseline_patch)
    assert not report.hot
    assert report.reasons
    with pytest.raises(hotpatch.RestartRequired) as info:
        registry.apply(baseline_patch)
    err = info.value
    assert isinstance(err, hotpatch.PatchError)
    assert type(err) is hotpatch.RestartRequired
    assert (err.patch, err.target) == ("2.0", None)
    assert err.reasons == report.reasons
    words(err.reasons[0], kind, "always needs a restart")
    words(str(err), "patch 2.0", "cannot be applied hot", "Nothing changed", "hotpatch run")
    assert registry.level == ()
    assert registry.history == ()
    assert mod.f.__code__ is code


def test_restart_required_when_the_patch_asks_for_it(make_module, load, registry):
    mod = make_module("def f():\n    return 1\n")
    code = mod.f.__code__
    patch = load(patch_for(mod, "f", "def f():\n    return 2\n", restart=True))
    report = registry.check(patch)  # valid: check() reports instead of raising
    assert (report.hot, report.reasons) == (
        False,
        ("patch 1.0.1 asks for a restart (restart=True)",),
    )
    with pytest.raises(hotpatch.RestartRequired) as info:
        registry.apply(patch)
    err = info.value
    assert err.patch == "1.0.1"
    assert err.reasons == ("patch 1.0.1 asks for a restart (restart=True)",)
    words(str(err), "patch 1.0.1", "restart=True", "memory-preserving restart")
    assert mod.f.__code__ is code
    assert registry.level == ()


@pytest.fixture
def busy(make_module) -> Iterator[types.ModuleType]:
    """A module whose ``work()`` is running in a real thread until the test ends."""
    mod = make_module(
        """
        import threading
        entered = threading.Event()
        release = threading.Event()

        def work():
            entered.set()
            release.wait()
            return "old"
        """
    )
    thread = threading.Thread(target=mod.work, name="worker-1")
    thread.start()
    assert mod.entered.wait(30)
    yield mod
    mod.release.set()
    thread.join()


def test_quiescence_timeout(busy, load, registry):
    code = busy.work.__code__
    patch = load(
        patch_for(
            busy,
            "work",
            "def work():\n    return 'new'\n",
            quiescence="strict",
            quiescence_timeout=0.05,
        )
    )
    with pytest.raises(hotpatch.QuiescenceTimeout) as info:
        registry.apply(patch)
    err = info.value
    assert isinstance(err, hotpatch.RestartRequired)
    assert isinstance(err, hotpatch.PatchError)
    assert err.patch == "1.0.1"
    assert len(err.reasons) == 1
    words(err.reasons[0], "strict quiescence not reached", "'worker-1'", "work")
    words(str(err), "patch 1.0.1", "Nothing changed", "quiescence_timeout", "restart")
    assert busy.work.__code__ is code
    assert registry.level == ()

    report = registry.check(patch)  # the dry run sees the same busy thread, without waiting
    assert not report.hot
    words(report.reasons[0], "'worker-1'")


@pytest.mark.parametrize("name", ERROR_NAMES)
def test_every_error_keeps_its_context(name):
    cls = getattr(hotpatch, name)
    extra = {"reasons": ["why"]} if issubclass(cls, hotpatch.RestartRequired) else {}
    err = cls("message", patch="1.2.3", target="m:f", **extra)
    assert (str(err), err.patch, err.target) == ("message", "1.2.3", "m:f")
    assert err.args == ("message",)
    if extra:
        assert err.reasons == ("why",)
