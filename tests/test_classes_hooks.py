"""Per-class hooks: a ``replace_class`` patch whose patch class would run them is refused first.

The patch class of a class whose base registers every subclass (``__init_subclass__``),
or whose metaclass counts or registers the classes it makes, is such a class itself:
loading the patch would run the hook in the service for a class nothing uses. Each
test holds the service's own record of what the hook did (a registry, a counter) and
checks it is untouched after the refusal: the refusal comes before the hook runs.
"""

from __future__ import annotations

import builtins
import importlib
import pkgutil
import sys
import textwrap
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import packaging
import pytest
from drops import DropFolder

import hotpatch
from hotpatch import NotPatchable, VerificationFailed
from hotpatch._classes_hooks import class_hooks, hooks_of
from hotpatch.agent._verify import verify_in_child

HEADER = "from hotpatch import Patch\npatch = Patch(version='1.0.1', baseline='1.0')\n"

PLUGINS = """
REGISTRY = {}

class Plugin:
    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        REGISTRY[cls.__name__] = cls

class Echo(Plugin):
    def run(self, text):
        return text
"""

COUNTED = """
MADE = []

class Counted(type):
    def __new__(meta, name, bases, namespace, **kwargs):
        cls = super().__new__(meta, name, bases, namespace, **kwargs)
        MADE.append(name)
        return cls

class Model(metaclass=Counted):
    def run(self):
        return "old"
"""

ECHO_PATCH = """
from {mod} import Plugin

@patch.replace_class("{mod}:Echo")
class Echo(Plugin):
    def run(self, text):
        return text.upper()
"""


def _load(write_patch: Callable[..., Path], body: str, **names: str) -> hotpatch.Patch:
    return hotpatch.load_patch(write_patch(HEADER + textwrap.dedent(body).format(**names)))


def _in_code(body: str, **names: str) -> hotpatch.Patch:
    """The patch built in Python code, not loaded from a file: its class statements run."""
    namespace: dict[str, Any] = {}
    exec(compile(HEADER + textwrap.dedent(body).format(**names), "<in code>", "exec"), namespace)
    patch = namespace["patch"]
    assert isinstance(patch, hotpatch.Patch)
    return patch


def test_a_subclass_registry_is_not_touched_by_a_refused_patch(
    make_module, write_patch, registry
) -> None:
    mod = make_module(PLUGINS)
    running = mod.Echo
    modules = set(sys.modules)
    with pytest.raises(NotPatchable) as info:
        _load(write_patch, ECHO_PATCH, mod=mod.__name__)
    assert {"Echo": running} == mod.REGISTRY  # the hook never ran for the patch class
    error = info.value
    assert error.patch == "1.0.1"
    assert error.target == f"{mod.__name__}:Echo"
    message = str(error)
    assert f"class {mod.__name__}:Echo" in message
    assert f"{mod.__name__}:Plugin.__init_subclass__" in message
    assert f"@patch.replace('{mod.__name__}:Echo.METHOD')" in message
    assert "baseline" in message
    assert set(sys.modules) <= modules  # the patch module is forgotten
    assert registry.level == ()
    assert mod.Echo().run("a") == "a"


def test_the_way_in_named_by_the_refusal_goes_in_hot(make_module, write_patch, registry) -> None:
    mod = make_module(PLUGINS)
    echo = mod.Echo()
    patch = _load(
        write_patch,
        """
        @patch.replace("{mod}:Echo.run")
        def run(self, text):
            return text.upper()
        """,
        mod=mod.__name__,
    )
    assert registry.check(patch).hot
    registry.apply(patch)
    assert echo.run("a") == "A"
    assert {"Echo": mod.Echo} == mod.REGISTRY


@pytest.mark.parametrize(
    "hook",
    [
        "def __new__(meta, name, bases, ns, **kw):\n"
        "    MADE.append(name)\n"
        "    return super().__new__(meta, name, bases, ns, **kw)",
        "def __init__(cls, name, bases, ns, **kw):\n"
        "    MADE.append(name)\n"
        "    super().__init__(name, bases, ns, **kw)",
        "@classmethod\n"
        "def __prepare__(meta, name, bases, **kw):\n"
        "    MADE.append(name)\n"
        "    return {}",
    ],
    ids=["__new__", "__init__", "__prepare__"],
)
def test_a_metaclass_hook_is_refused_before_it_runs(
    hook: str, make_module, write_patch, registry
) -> None:
    source = (
        "MADE = []\n\nclass Meta(type):\n"
        + textwrap.indent(hook, "    ")
        + "\n\nclass Model(metaclass=Meta):\n    def run(self):\n        return 'old'\n"
    )
    mod = make_module(source)
    assert mod.MADE == ["Model"]
    hook_name = hook.split("def ")[1].split("(", maxsplit=1)[0]
    with pytest.raises(NotPatchable, match=rf"{mod.__name__}:Meta\.{hook_name}") as info:
        _load(
            write_patch,
            """
            import {mod}
            @patch.replace_class("{mod}:Model")
            class Model(metaclass={mod}.Meta):
                def run(self):
                    return "new"
            """,
            mod=mod.__name__,
        )
    assert info.value.target == f"{mod.__name__}:Model"
    assert mod.MADE == ["Model"]
    assert mod.Model().run() == "old"


def test_a_hook_of_a_base_further_up_and_of_the_metaclass_are_both_named(
    make_module, write_patch
) -> None:
    mod = make_module(
        PLUGINS
        + textwrap.dedent(
            """
            class Meta(type):
                def __init__(cls, *args, **kwargs):
                    super().__init__(*args, **kwargs)
            class Loud(Echo, metaclass=Meta):
                pass
            """
        )
    )
    with pytest.raises(NotPatchable) as info:
        _load(
            write_patch,
            """
            from {mod} import Echo, Meta
            @patch.replace_class("{mod}:Loud")
            class Loud(Echo, metaclass=Meta):
                def shout(self):
                    return "!"
            """,
            mod=mod.__name__,
        )
    message = str(info.value)
    assert f"{mod.__name__}:Meta.__init__, {mod.__name__}:Plugin.__init_subclass__" in message
    assert list(mod.REGISTRY) == ["Echo", "Loud"]


def test_a_target_computed_at_import_is_refused_naming_the_class_statement(
    make_module, write_patch
) -> None:
    mod = make_module(PLUGINS)
    with pytest.raises(NotPatchable) as info:
        _load(
            write_patch,
            """
            from {mod} import Plugin
            MODULE = "{mod}"
            @patch.replace_class(f"{{MODULE}}:Echo")
            class Echo(Plugin):
                def run(self, text):
                    return text.upper()
            """,
            mod=mod.__name__,
        )
    message = str(info.value)
    assert 'class Echo (the target of patch.replace_class(f"{MODULE}:Echo") at line 6)' in message
    assert "@patch.replace('module:Class.METHOD')" in message
    assert info.value.target is None
    assert f"{mod.__name__}:Plugin.__init_subclass__" in str(info.value)
    assert {"Echo": mod.Echo} == mod.REGISTRY


def test_replace_class_called_with_the_class_is_refused_too(make_module, write_patch) -> None:
    mod = make_module(PLUGINS)
    with pytest.raises(NotPatchable) as info:
        _load(
            write_patch,
            """
            from {mod} import Plugin
            class Echo(Plugin):
                def run(self, text):
                    return text.upper()
            patch.replace_class("{mod}:Echo")(Echo)
            """,
            mod=mod.__name__,
        )
    assert info.value.target == f"{mod.__name__}:Echo"
    assert {"Echo": mod.Echo} == mod.REGISTRY


def test_a_patch_file_catching_the_refusal_is_still_refused(make_module, write_patch) -> None:
    mod = make_module(PLUGINS)
    with pytest.raises(NotPatchable):
        _load(
            write_patch,
            """
            from {mod} import Plugin
            try:
                @patch.replace_class("{mod}:Echo")
                class Echo(Plugin):
                    pass
            except Exception:
                pass
            """,
            mod=mod.__name__,
        )
    assert {"Echo": mod.Echo} == mod.REGISTRY


def test_a_patch_class_given_a_hooked_base_the_running_class_lacks_is_refused(
    make_module, write_patch
) -> None:
    """Not a layout change found afterwards: the hook would have run by then."""
    mod = make_module(PLUGINS + "\nclass Plain:\n    pass\n")
    with pytest.raises(NotPatchable, match=r"Plugin\.__init_subclass__"):
        _load(
            write_patch,
            """
            from {mod} import Plugin
            @patch.replace_class("{mod}:Plain")
            class Plain(Plugin):
                pass
            """,
            mod=mod.__name__,
        )
    assert list(mod.REGISTRY) == ["Echo"]


def test_the_verifier_refuses_it_in_its_child_with_the_same_words(make_module, write_patch) -> None:
    mod = make_module(PLUGINS)
    path = write_patch(HEADER + textwrap.dedent(ECHO_PATCH).format(mod=mod.__name__))
    with pytest.raises(NotPatchable) as loaded:
        hotpatch.load_patch(path)
    with pytest.raises(VerificationFailed) as verified:
        verify_in_child(path, sys_path=list(sys.path), timeout=30)
    assert str(verified.value) == str(loaded.value)
    assert verified.value.target == f"{mod.__name__}:Echo"
    assert {"Echo": mod.Echo} == mod.REGISTRY


def test_a_patch_built_in_code_is_refused_by_check_and_apply_alike(make_module, registry) -> None:
    """Its class statement ran (no loader to stop it): the registry says so and applies nothing."""
    mod = make_module(COUNTED)
    patch = _in_code(
        """
        import {mod}
        @patch.replace_class("{mod}:Model")
        class Model(metaclass={mod}.Counted):
            def run(self):
                return "new"
        """,
        mod=mod.__name__,
    )
    messages = []
    for attempt in (registry.check, registry.apply, registry.apply):
        with pytest.raises(NotPatchable) as info:
            attempt(patch)
        assert info.value.target == f"{mod.__name__}:Model"
        messages.append(str(info.value))
    assert len(set(messages)) == 1, messages
    assert f"{mod.__name__}:Counted.__new__" in messages[0]
    assert "ran when the patch class was made" in messages[0]
    assert registry.level == ()
    assert mod.Model().run() == "old"


def test_the_class_that_owns_the_hook_is_patched_hot(make_module, write_patch, registry) -> None:
    """Patching ``Plugin`` itself makes a class from ``object``: no hook of the project runs."""
    mod = make_module(PLUGINS)
    patch = _load(
        write_patch,
        """
        @patch.replace_class("{mod}:Plugin")
        class Plugin:
            def describe(self):
                return "plugin " + type(self).__name__
        """,
        mod=mod.__name__,
    )
    assert registry.check(patch).hot
    registry.apply(patch)
    assert mod.Echo().describe() == "plugin Echo"
    assert {"Echo": mod.Echo} == mod.REGISTRY


HARMLESS = {
    "abc.ABC": "import abc\nclass C(abc.ABC):\n    @abc.abstractmethod\n    def f(self): ...\n",
    "dataclass": "import dataclasses\n@dataclasses.dataclass\nclass C:\n    a: int = 0\n",
    "Enum": "import enum\nclass C(enum.Enum):\n    A = 1\n",
    "IntFlag": "import enum\nclass C(enum.IntFlag):\n    A = 1\n",
    "Protocol": "import typing\nclass C(typing.Protocol):\n    def f(self) -> int: ...\n",
    "Generic": "import typing\nT = typing.TypeVar('T')\nclass C(typing.Generic[T]):\n    pass\n",
    "NamedTuple": "import typing\nclass C(typing.NamedTuple):\n    a: int\n",
    "TypedDict": "import typing\nclass C(typing.TypedDict):\n    a: int\n",
    "typing_extensions.Protocol": (
        "import typing_extensions\nclass C(typing_extensions.Protocol):\n    def f(self): ...\n"
    ),
    "string.Template": "import string\nclass C(string.Template):\n    delimiter = '%'\n",
    "collections.abc": "import collections.abc as c\nclass C(c.Mapping):\n    pass\n",
    "click.ParamType": "import click\nclass C(click.ParamType):\n    name = 'c'\n",
    "click.Command": "import click\nclass C(click.Command):\n    pass\n",
    "packaging.version": "import packaging.version as v\nclass C(v.Version):\n    pass\n",
}


@pytest.mark.parametrize("base", list(HARMLESS))
def test_classes_whose_hooks_only_keep_their_own_books_are_not_counted(base: str) -> None:
    namespace: dict[str, Any] = {}
    exec(HARMLESS[base], namespace)
    cls = namespace["C"]
    assert hooks_of(cls) == []
    assert class_hooks(tuple(getattr(cls, "__orig_bases__", cls.__bases__))) == []


@pytest.mark.parametrize("package", [click, packaging, hotpatch])
def test_no_class_of_an_installed_library_is_counted(package: types.ModuleType) -> None:
    """Their classes patch as before: none is refused for a hook."""
    names = [package.__name__] + [
        info.name
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
        if not info.name.endswith(("__main__", "_winconsole"))  # Windows only
    ]
    modules = [importlib.import_module(name) for name in names]
    classes = {
        f"{c.__module__}:{c.__qualname__}": c
        for module in modules
        for c in vars(module).values()
        if isinstance(c, type) and c.__module__.startswith(package.__name__)
    }
    assert len(classes) > 20
    assert {name: h for name, c in classes.items() if (h := hooks_of(c))} == {}


def test_a_click_class_still_patches_hot(write_patch, registry) -> None:
    patch = _load(
        write_patch,
        """
        import click
        @patch.replace_class("click.types:IntParamType")
        class IntParamType(click.types._NumberParamTypeBase):
            name = "integer"
            _number_class = int
            def __repr__(self):
                return "PATCHED"
        """,
    )
    before = click.INT
    assert registry.check(patch).hot
    registry.apply(patch)
    assert repr(before) == "PATCHED"
    registry.rollback()
    assert repr(before) == "INT"


def test_a_function_called_in_place_of_a_metaclass_is_named(make_module, write_patch) -> None:
    mod = make_module(
        """
        MADE = []
        def tracked(name, bases, namespace):
            MADE.append(name)
            return type(name, bases, namespace)
        class K(metaclass=tracked):
            pass
        """
    )
    with pytest.raises(NotPatchable, match=rf"runs {mod.__name__}:tracked for it"):
        _load(
            write_patch,
            """
            from {mod} import tracked
            @patch.replace_class("{mod}:K")
            class K(metaclass=tracked):
                pass
            """,
            mod=mod.__name__,
        )
    assert mod.MADE == ["K"]


def test_the_patch_module_keeps_the_real_builtins_after_the_check(make_module, write_patch) -> None:
    mod = make_module(PLUGINS)
    patch = _load(
        write_patch,
        """
        @patch.replace_class("{mod}:Plugin")
        class Plugin:
            pass
        """,
        mod=mod.__name__,
    )
    module = sys.modules[patch.replacements[0].new.__module__]
    assert module.__dict__["__builtins__"] is vars(builtins)  # as exec() leaves it


@pytest.mark.e2e
@pytest.mark.parametrize("verify", [False, True], ids=["embedded", "verifier"])
def test_a_dropped_patch_is_rejected_and_the_service_registry_keeps_its_class(
    verify: bool, make_module, tmp_path: Path
) -> None:
    """The folder agent, with and without its verifier child: the hook never runs in the
    service, the drop is rejected with the refusal's words, and nothing is applied."""
    mod = make_module(PLUGINS)
    folder = DropFolder(tmp_path)
    with hotpatch.install("1.0", watch=folder.path, verify=verify) as agent:
        folder.drop("echo.py", HEADER + textwrap.dedent(ECHO_PATCH).format(mod=mod.__name__))
        result = folder.filed("echo.py", "rejected")
        assert agent.status()["level"] == []
    assert f"{mod.__name__}:Plugin.__init_subclass__" in result["reason"], result
    assert f"@patch.replace('{mod.__name__}:Echo.METHOD')" in result["reason"], result
    assert result["targets"] == [f"{mod.__name__}:Echo"]
    assert {"Echo": mod.Echo} == mod.REGISTRY
    assert mod.Echo().run("a") == "a"


PROXIES = """
MADE = []


class ProxyMeta(type):
    '''A metaclass that shows its classes' module through a property of its own, as
    wrapt's proxies' does: its own ``__module__`` is that property, not a string.'''

    @property
    def __module__(cls):
        return cls.__dict__.get("__proxy_module__", "?")

    def __new__(meta, name, bases, namespace, **kwargs):
        namespace["__proxy_module__"] = namespace.get("__module__")
        MADE.append(name)
        return super().__new__(meta, name, bases, namespace, **kwargs)


class Proxy(metaclass=ProxyMeta):
    def run(self):
        return "old"
"""


def test_a_hook_of_a_metaclass_hiding_its_module_is_named_by_its_module(
    make_module, write_patch, registry
) -> None:
    mod = make_module(PROXIES)
    with pytest.raises(NotPatchable) as info:
        _load(
            write_patch,
            """
            from {mod} import ProxyMeta

            @patch.replace_class("{mod}:Proxy")
            class Proxy(metaclass=ProxyMeta):
                def run(self):
                    return "new"
            """,
            mod=mod.__name__,
        )
    message = str(info.value)
    assert f"runs {mod.__name__}:ProxyMeta.__new__ for it" in message, message
    assert "property object" not in message
    assert mod.MADE == ["Proxy"]


OUTER = """
REGISTRY = {}

class Plugin:
    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        REGISTRY[cls.__name__] = cls

class Outer:
    class Handler(Plugin):
        def run(self):
            return "old"
"""


def test_a_nested_class_whose_base_runs_a_hook_is_refused_before_it_runs(
    make_module, write_patch, registry
) -> None:
    """A class nested in a ``replace_class`` class statement is patched as a class target
    of its own, and is made when the patch file loads: made from a base with a hook of
    the project, it would register itself in the service's registry at that moment."""
    mod = make_module(OUTER)
    running = mod.Outer.Handler
    with pytest.raises(NotPatchable) as info:
        _load(
            write_patch,
            """
            from {mod} import Plugin

            @patch.replace_class("{mod}:Outer")
            class Outer:
                class Handler(Plugin):
                    def run(self):
                        return "new"
            """,
            mod=mod.__name__,
        )
    assert {"Handler": running} == mod.REGISTRY  # the hook never ran for the patch class
    message = str(info.value)
    assert f"class {mod.__name__}:Outer.Handler" in message, message
    assert f"{mod.__name__}:Plugin.__init_subclass__" in message
