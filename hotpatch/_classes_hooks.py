"""Per-class hooks: the project's code that making a class runs, refused before it runs.

A ``replace_class`` patch class is a class statement like any other, so making it
runs what its bases and metaclass run for every class made from them: a base's
``__init_subclass__``, a metaclass's ``__prepare__``, ``__new__`` and ``__init__``.
In the service, when the patch file loads, a plugin registry would gain the patch
class (a class nothing uses) in place of the running one, a counter would count it.
A class holding ``@patch.replace`` defs is made from its bases likewise. ``Guard``
runs the patch file's ``replace_class`` class statements, and those holding
replacements, through a check of their bases and metaclass before the class is
made, and refuses (``NotPatchable``) one whose making would run such a hook;
``hooks_of`` names the hooks a class already made ran (a patch built in code, which
the registry then refuses).

The standard library's hooks are not counted: ``ABCMeta``, ``EnumType``,
``Protocol``, ``Generic`` and ``NamedTuple`` keep their own books (abstract
methods, members, protocol members, fields), which ``_classes`` compares.
"""

from __future__ import annotations

import ast
import builtins
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

from hotpatch._errors import NotPatchable
from hotpatch._patch import Patch

__all__ = ["Guard", "class_hooks", "hooks_of", "refusal"]

# Per-class hooks of a metaclass; __call__ runs when an instance is made, not a class.
_META_HOOKS = ("__prepare__", "__new__", "__init__")
# Not the standard library, but its backports of typing's classes, which only keep books.
_HARMLESS = frozenset({"builtins", "typing_extensions"})


def class_hooks(bases: tuple[Any, ...], metaclass: Any = None) -> list[str]:
    """The project's hooks making a class from ``bases`` (and ``metaclass``) would run.

    Each as ``module:Owner.name``, the metaclass's first, then each base's
    ``__init_subclass__`` in method resolution order.
    """
    resolved = types.resolve_bases(bases) if bases else (object,)
    found: list[str] = []
    if metaclass is not None and not isinstance(metaclass, type):
        if not _harmless(metaclass):  # a function called in place of a metaclass
            found.append(_name(metaclass, ""))
    else:
        meta = _winner(metaclass, resolved)
        if meta is not type:  # most classes: nothing to look at
            found += [_name(m, h) for m in meta.__mro__ for h in _META_HOOKS if _runs(m, h)]
    seen: set[int] = {id(object)}
    for base in resolved:
        for owner in getattr(base, "__mro__", ()):
            if id(owner) not in seen and _runs(owner, "__init_subclass__"):
                found.append(_name(owner, "__init_subclass__"))
            seen.add(id(owner))
    return found


def hooks_of(cls: type) -> list[str]:
    """The project's hooks that ran when ``cls`` was made (its bases', its metaclass's)."""
    return class_hooks(cls.__bases__, type(cls))


def refusal(
    target: str,
    hooks: list[str],
    *,
    patch: str | None,
    where: str = "",
    ran: bool = False,
    holder: str | None = None,
) -> NotPatchable:
    """The ``NotPatchable`` for a class patch whose patch class runs ``hooks`` when made.

    ``target`` is ``module:qualname``, or how a target computed at import was written
    (then the error's ``.target`` is ``None``). With ``holder`` (a class's name), the
    class is one holding ``@patch.replace`` defs, of which ``target`` is the first.
    """
    if holder is not None:
        msg = (
            f"patch {patch or '?'}{where}: class {holder} holds @patch.replace defs (the "
            f"first for {target}), and making it runs {', '.join(hooks)} for it, as for "
            "every class made from its bases and metaclass: what that does (register the "
            "class, count it, check it) would be done, in the service, for a class nothing "
            "uses. A class holding @patch.replace defs needs no bases: write it "
            f"`class {holder}:`, whose defs are applied to the running class all the same"
        )
        return NotPatchable(msg, patch=patch, target=target if ":" in target else None)
    _, sep, _ = target.partition(":")
    literal = bool(sep) and " " not in target
    method = f"{target}.METHOD" if literal else "module:Class.METHOD"
    when = (
        "ran when the patch class was made (it was built in code, not loaded from a file)"
        if ran
        else "would run when the patch file is imported, before anything is checked"
    )
    msg = (
        f"patch {patch or '?'}{where}: class {target}: its patch class is a class made from "
        f"its bases and metaclass, so making it runs {', '.join(hooks)} for it, as for every "
        "class made from them: what that does (register the class, count it, check it) "
        "would be done for the patch class, which nothing uses, and a registry would then "
        f"hold it instead of the running class. The hook {when}, so the patch is refused. "
        f"Patch the class's methods one by one with @patch.replace('{method}'), or ship the "
        "change as a baseline (`hotpatch make` makes such a change one)"
    )
    return NotPatchable(msg, patch=patch, target=target if literal else None)


class Guard:
    """The check a patch file's ``replace_class`` class statements go through before they run.

    ``Guard.of(text, name)`` is ``None`` for a file that never names
    ``replace_class`` (nothing to guard). ``builtins()`` is the ``__builtins__`` to
    import the patch module with: its ``__build_class__`` works out what making each
    class would run and, if that is a hook of the project, whether the statement is a
    ``replace_class`` one (the source is parsed only then); such a statement is
    refused before the class is made (the refusal is kept in ``refused``, in case
    the patch file catches it).
    """

    def __init__(self, text: str, name: str):
        self.text = text
        self.name = name  # the patch file's, for messages
        self.refused: NotPatchable | None = None
        self.armed = True
        self._marked: dict[tuple[str, int], tuple[str, bool]] | None = None

    @classmethod
    def of(cls, text: str, name: str) -> Guard | None:
        holders = "class " in text and "replace(" in text  # a class holding replacements
        return cls(text, name) if "replace_class" in text or holders else None

    def builtins(self) -> dict[str, Any]:
        """A copy of the builtins with the checking ``__build_class__`` (unarmed after the load).

        Functions the patch file defines keep it as their builtins, as every function
        keeps its module's; a name added to the builtins module after the load (what
        ``gettext.install`` adds) is not seen by them. A replacement runs in the target
        module's namespace, with its builtins.
        """
        namespace = dict(vars(builtins))
        namespace["__build_class__"] = self._build_class
        return namespace

    def marked(self) -> dict[tuple[str, int], tuple[str, bool]]:
        """(class name, first line of its statement) -> its target, as written, and
        whether it is a class holding ``@patch.replace`` defs (the target: the first's)."""
        if self._marked is None:
            try:
                self._marked = dict(_marked(ast.parse(self.text), self.text))
            except SyntaxError:  # pragma: no cover - compile() accepted it
                self._marked = {}
        return self._marked

    def _build_class(self, func: Callable[..., Any], name: str, *bases: Any, **kw: Any) -> Any:
        # Only the patch module's own code makes classes through this __builtins__.
        code = getattr(func, "__code__", None)
        if self.armed and code is not None and (hooks := class_hooks(bases, kw.get("metaclass"))):
            marked = self.marked().get((name, code.co_firstlineno))
            if marked is not None:
                target, holder = marked
                where = f" (patch file {self.name})"
                self.refused = refusal(
                    target,
                    hooks,
                    patch=_version(func),
                    where=where,
                    holder=name if holder else None,
                )
                raise self.refused
        return builtins.__build_class__(func, name, *bases, **kw)


def _marked(tree: ast.Module, text: str) -> Iterator[tuple[tuple[str, int], tuple[str, bool]]]:
    """(class name, the first line of its statement) -> (target, holder), for each class
    statement a ``replace_class(...)`` decorates or is called with (``replace_class(t)(Cls)``),
    and each holding a def a ``replace(...)`` decorates (``holder``; its first target)."""
    called: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _is_replace_class(node.func):
            for arg in node.args:
                if isinstance(arg, ast.Name):
                    called[arg.id] = _target(node.func, text)
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        for decorator in node.decorator_list:
            if _is_replace_class(decorator):
                assert isinstance(decorator, ast.Call)
                target = _shown(node.name, _target(decorator, text))
                yield (node.name, first), (target, False)
                yield from _nested(node, target)
                break
        else:
            if node.name in called:
                yield (node.name, first), (_shown(node.name, called[node.name]), False)
                yield from _nested(node, _shown(node.name, called[node.name]))
            elif held := _held(node, text):
                yield (node.name, first), (held, True)


def _nested(node: ast.ClassDef, target: str) -> Iterator[tuple[tuple[str, int], tuple[str, bool]]]:
    """The class statements in a patch class's body: each patches the running class's
    nested class of its name, a class target of its own (``mod:Outer.Handler``)."""
    for item in node.body:
        if isinstance(item, ast.ClassDef):
            first = min([item.lineno, *(d.lineno for d in item.decorator_list)])
            inner = f"{target}.{item.name}" if ":" in target and " " not in target else target
            yield (item.name, first), (inner, False)
            yield from _nested(item, inner)


def _held(node: ast.ClassDef, text: str) -> str | None:
    """The target of the first def in the class's body a ``replace(...)`` decorates."""
    for item in node.body:
        if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
            for decorator in item.decorator_list:
                if _is_call_of(decorator, "replace"):
                    return _target(decorator, text)
    return None


def _shown(name: str, target: str) -> str:
    return target if not target.startswith("(") else f"{name} {target}"


def _is_replace_class(node: ast.expr) -> bool:
    """``X.replace_class(...)`` or ``replace_class(...)``."""
    return _is_call_of(node, "replace_class")


def _is_call_of(node: ast.expr, name: str) -> bool:
    """``X.name(...)`` or ``name(...)``."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    return (isinstance(func, ast.Attribute) and func.attr == name) or (
        isinstance(func, ast.Name) and func.id == name
    )


def _target(call: ast.expr, text: str) -> str:
    """The target as written: the string, or the expression computing it."""
    assert isinstance(call, ast.Call)
    if call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str):
        return call.args[0].value
    written = ast.get_source_segment(text, call) or "replace_class(...)"
    return f"(the target of {written} at line {call.lineno})"


def _version(func: Callable[..., Any]) -> str | None:
    """The version of the one ``Patch`` the patch module declared so far, if it did."""
    found = {id(v): v for v in getattr(func, "__globals__", {}).values() if isinstance(v, Patch)}
    return next(iter(found.values())).version if len(found) == 1 else None


def _winner(metaclass: type | None, bases: tuple[Any, ...]) -> type:
    """The metaclass Python picks: the most derived of the given one and the bases' types."""
    winner: type = type if metaclass is None else metaclass
    for base in bases:
        meta = type(base)
        if issubclass(winner, meta):
            continue
        if issubclass(meta, winner):
            winner = meta
    return winner


def _runs(owner: Any, hook: str) -> bool:
    """Does ``owner`` define ``hook`` itself, outside the standard library?"""
    return hook in vars(owner) and not _harmless(owner)


def _harmless(owner: Any) -> bool:
    top = _module(owner).partition(".")[0]
    return top in sys.stdlib_module_names or top in _HARMLESS


def _name(owner: Any, hook: str) -> str:
    qualname = getattr(owner, "__qualname__", repr(owner))
    return f"{_module(owner)}:{qualname}" + (f".{hook}" if hook else "")


def _module(owner: Any) -> str:
    """The module ``owner`` was defined in. A metaclass may define ``__module__`` as a
    property for its classes (wrapt's proxies'), which is then its own ``__module__``:
    the module its functions were defined in says it instead."""
    module = getattr(owner, "__module__", None)
    if isinstance(module, str):
        return module
    for value in vars(owner).values() if isinstance(owner, type) else ():
        func = getattr(value, "__func__", value)
        if isinstance(func, types.FunctionType) and isinstance(func.__module__, str):
            return func.__module__
    return "?"
