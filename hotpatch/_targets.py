"""``module:qualname`` -> the function object to patch (methods, properties, ``__wrapped__``)."""

from __future__ import annotations

import builtins
import functools
import importlib
import re
import sys
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from hotpatch._decorators import made_otherwise
from hotpatch._errors import NotPatchable, TargetNotFound, VerificationFailed

__all__ = [
    "OWN_PACKAGES",
    "Kind",
    "NestedTarget",
    "Target",
    "accessor_of",
    "home_module",
    "import_module",
    "is_nested",
    "nested_qualnames",
    "refuse_own",
    "resolve",
    "resolve_class",
    "resolve_nested",
    "undecorated",
    "unwrap",
    "wrapper_names",
    "written_elsewhere",
]

# hotpatch's own code: never a target, so no patch can break the way to roll it back.
OWN_PACKAGES = ("hotpatch", "hotpatch_plugins")

Kind = Literal["function", "method", "classmethod", "staticmethod", "property", "cached_property"]
_ACCESSORS = {"getter": "fget", "setter": "fset", "deleter": "fdel"}


@dataclass(frozen=True, slots=True)
class Target:
    """A resolved target: the function whose code is swapped, and where it lives."""

    spec: str
    module: types.ModuleType
    function: types.FunctionType
    owner: type | None  # the class it was found in, if any
    kind: Kind
    accessor: str  # "fget"/"fset"/"fdel" for properties, else ""
    # what caches the function's answers on the way to it (lru_cache, cache): cleared
    # whenever its code changes
    caches: tuple[Any, ...] = ()
    # the decorators it runs under, outermost first (``wrapper_names``)
    wrappers: tuple[str, ...] = ()
    # what it is reached through under them: the outermost decorator's object
    outermost: Any = None


def refuse_own(module: object, *, patch: str, target: str) -> None:
    """``NotPatchable`` if ``module`` (a module name) is hotpatch's own code."""
    if not isinstance(module, str) or not module.startswith(OWN_PACKAGES):
        return
    if module.split(".", 1)[0] not in OWN_PACKAGES:
        return
    msg = (
        f"patch {patch}: target {target} is part of hotpatch itself (module {module}): a "
        "patch must not change the agent that files its outcome and rolls it back; upgrade "
        "hotpatch with a restart instead"
    )
    raise NotPatchable(msg, patch=patch, target=target)


@dataclass(frozen=True, slots=True)
class NestedTarget:
    """A nested function (``mod:outer.<locals>.inner``): its code lives in ``enclosing``'s."""

    spec: str
    module: types.ModuleType
    enclosing: types.FunctionType  # the module-level function or method it is nested in
    qualname: str  # the code's co_qualname


_LOCALS = ".<locals>."
# Code a function's body makes for an expression: run in place, never named by the user.
_COMPREHENSIONS = frozenset({"<genexpr>", "<listcomp>", "<setcomp>", "<dictcomp>"})


def is_nested(spec: str) -> bool:
    return _LOCALS in spec.partition(":")[2]


def resolve_nested(spec: str, *, patch: str, in_code: bool = False) -> NestedTarget:
    """The function whose code holds the nested function's; the code is found by the plan.

    ``in_code``: also check that the enclosing function's code, as it runs now,
    holds a nested function of that name (the verifier's check of a fresh import).
    """
    modname, _, qualname = spec.partition(":")
    head = qualname.partition(_LOCALS)[0]
    if qualname.rpartition(".")[2] in _COMPREHENSIONS:
        holder = qualname.rpartition(".")[0].removesuffix(".<locals>")
        msg = (
            f"patch {patch}: target {spec} is a comprehension or generator expression: part "
            "of an expression its function evaluates (list, set and dict comprehensions are "
            "inlined into it since Python 3.12), not a function a patch can replace on its "
            f"own; patch {modname}:{holder} instead, the function holding it"
        )
        raise NotPatchable(msg, patch=patch, target=spec)
    try:
        outer = resolve(f"{modname}:{head}", patch=patch)
    except (TargetNotFound, NotPatchable) as exc:
        msg = f"patch {patch}: target {spec}: the function it is nested in: {exc}"
        raise type(exc)(msg, patch=patch, target=spec) from None
    _refuse_dispatch(spec, qualname, outer.function.__code__, patch=patch)
    if in_code and qualname not in nested_qualnames(outer.function.__code__):
        msg = (
            f"patch {patch}: target {spec}: {modname}:{head} has no nested function "
            f"{qualname!r}; check the qualname against the running code"
        )
        raise TargetNotFound(msg, patch=patch, target=spec)
    return NestedTarget(spec, outer.module, outer.function, qualname)


def _refuse_dispatch(spec: str, qualname: str, code: types.CodeType, *, patch: str) -> None:
    """``mod:f.<locals>.show.registry[int]``: a dispatcher made inside a function is made
    anew by each call, so ``registry[int]`` names one function in each; ``NotPatchable``
    naming the way in (the implementation's own code, by the name of its def)."""
    tail = qualname.rpartition(_LOCALS)[2]
    dispatch = _DISPATCH.fullmatch(tail) if tail.endswith("]") else None
    if dispatch is None:
        return
    modname, head = spec.partition(":")[0], qualname.partition(_LOCALS)[0]
    scope = qualname.removesuffix(tail)  # "f.<locals>.": where its implementations are
    holder = scope + dispatch["function"]
    names = list(nested_qualnames(code))
    if holder not in names:
        return  # no such nested function: the plan says what there is
    defs = [
        f"{modname}:{n}"
        for n in names
        if n.startswith(scope) and "." not in n.removeprefix(scope) and n != holder
    ]
    msg = (
        f"patch {patch}: target {spec}: {holder} is made inside {modname}:{head}, a new "
        f"one by each call, so its registry[{dispatch['type']}] is one function in each "
        "dispatcher made, not one target. Target the implementation's own code as a nested "
        f"function by the name of its def ({', '.join(defs) or 'none found'}): every "
        "function made from it, in every dispatcher, runs the new code (a name that several "
        f"defs share cannot be told apart); or patch {modname}:{head} itself (dispatchers "
        "made from then on), or ship the change as a baseline"
    )
    raise NotPatchable(msg, patch=patch, target=spec)


def nested_qualnames(code: types.CodeType) -> Iterator[str]:
    """The qualnames of the code nested in ``code``, at any depth."""
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield const.co_qualname
            yield from nested_qualnames(const)


def import_module(name: str, *, patch: str, target: str) -> types.ModuleType:
    """The named module: already imported, or imported now. Never one of hotpatch's own."""
    refuse_own(name, patch=patch, target=target)
    module = sys.modules.get(name)
    if module is not None:
        return module
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name or (exc.name and name.startswith(exc.name + ".")):
            msg = (
                f"patch {patch}: target {target}: module {name!r} does not exist in this "
                "process; check the module name and that the patch targets this service"
            )
            raise TargetNotFound(msg, patch=patch, target=target) from None
        msg = f"patch {patch}: target {target}: importing {name!r} failed: {exc}"
        raise TargetNotFound(msg, patch=patch, target=target) from exc
    except Exception as exc:
        msg = (
            f"patch {patch}: target {target}: importing {name!r} raised {type(exc).__name__}: {exc}"
        )
        raise TargetNotFound(msg, patch=patch, target=target) from exc


def _lookup(spec: str, patch: str) -> tuple[types.ModuleType, Any, type | None, str]:
    """Walk ``module:a.b.c`` through ``__dict__``s; returns (module, obj, owner, accessor)."""
    modname, _, qualname = spec.partition(":")
    module = import_module(modname, patch=patch, target=spec)
    obj: Any = module
    owner: type | None = None
    parts = qualname.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(obj, property) and last and part in _ACCESSORS:
            return module, obj, owner, _ACCESSORS[part]
        namespace = getattr(obj, "__dict__", None)
        if not isinstance(namespace, types.MappingProxyType | dict) or part not in namespace:
            where = ".".join(parts[:i]) or modname
            hint = ""
            if isinstance(obj, type) and any(part in vars(b) for b in obj.__mro__[1:]):
                base = next(b for b in obj.__mro__[1:] if part in vars(b))
                hint = f" (it is inherited: target {base.__module__}:{base.__qualname__}.{part})"
            msg = (
                f"patch {patch}: target {spec}: {where!r} has no attribute {part!r}{hint}; "
                "check the qualname against the running code"
            )
            raise TargetNotFound(msg, patch=patch, target=spec)
        if isinstance(obj, type):
            owner = obj
        obj = namespace[part]
    return module, obj, owner, "fget" if isinstance(obj, property) else ""


def resolve(spec: str, *, patch: str) -> Target:
    """Resolve a function target; ``NotPatchable`` for anything but Python functions."""
    qualname = spec.partition(":")[2]
    dispatch = _DISPATCH.fullmatch(qualname) if qualname.endswith("]") else None
    if dispatch is None:
        module, obj, owner, accessor = _lookup(spec, patch)
    else:
        head = f"{spec.partition(':')[0]}:{dispatch['function']}"
        module, obj, owner, accessor = _lookup(head, patch)
        obj = _registered(obj, head, dispatch["type"], module, patch=patch, spec=spec)
    kind: Kind
    if isinstance(obj, classmethod):
        kind, obj = "classmethod", obj.__func__
    elif isinstance(obj, staticmethod):
        kind, obj = "staticmethod", obj.__func__
    elif isinstance(obj, property):
        kind, obj = "property", getattr(obj, accessor)
        if obj is None:
            msg = (
                f"patch {patch}: target {spec}: the property has no {accessor[1:]}ter; "
                "a missing accessor cannot be patched in place (use replace_class)"
            )
            raise TargetNotFound(msg, patch=patch, target=spec)
    elif isinstance(obj, functools.cached_property):
        kind, obj = "cached_property", obj.func
    elif isinstance(obj, types.MethodType):
        kind, obj = "method", obj.__func__
    else:
        kind = "method" if owner is not None else "function"
    wrappers: tuple[str, ...] = ()
    if type(obj) is types.FunctionType and obj.__closure__ is None and not obj.__dict__:
        function, caches = obj, ()  # the usual target: nothing wraps it, nothing to look up
    else:
        function, caches = unwrap(obj, spec, patch=patch)
        wrappers = wrapper_names(obj)
    refuse_own(function.__module__, patch=patch, target=spec)  # hotpatch's, imported elsewhere
    return Target(spec, module, function, owner, kind, accessor, caches, wrappers, obj)


# ``f.registry[int]``: what a singledispatch function holds for a type (``@f.register def _``).
_DISPATCH = re.compile(r"(?P<function>[^\[\]]+)\.registry\[(?P<type>[\w.]+)\]")


def _registered(
    obj: Any, head: str, name: str, module: types.ModuleType, *, patch: str, spec: str
) -> Any:
    """The implementation ``obj`` (``head``: a singledispatch function or
    singledispatchmethod) holds for the type named ``name``; ``TargetNotFound``
    naming what it holds."""
    dispatcher = obj.dispatcher if isinstance(obj, functools.singledispatchmethod) else obj
    registry = getattr(dispatcher, "registry", None)
    if not (isinstance(registry, types.MappingProxyType) and callable(dispatcher)):
        msg = (
            f"patch {patch}: target {spec}: {head} is a {type(obj).__name__}, not a "
            "singledispatch function or singledispatchmethod; a registry[TYPE] target names "
            "one of their registered implementations"
        )
        raise NotPatchable(msg, patch=patch, target=spec)
    found = [t for t in registry if name in _type_names(t)]
    if len(found) == 1:
        return registry[found[0]]
    registered = ", ".join(_type_name(t) for t in registry)
    if found:
        msg = (
            f"patch {patch}: target {spec}: {len(found)} registered types are named "
            f"{name!r} ({', '.join(_type_name(t) for t in found)}); name one with its module"
        )
        raise TargetNotFound(msg, patch=patch, target=spec)
    where = ""
    cls = _find_type(name, module)
    if cls is not None:
        impl = dispatcher.dispatch(cls)
        key = next((t for t in registry if registry[t] is impl), None)
        if key is not None:
            head = spec.rpartition("[")[0]
            where = (
                f"; a {name} is dispatched to the implementation registered for "
                f"{_type_name(key)}: target {head}[{_type_name(key)}]"
            )
    msg = (
        f"patch {patch}: target {spec}: no implementation is registered for {name!r} "
        f"(registered: {registered}){where}"
    )
    raise TargetNotFound(msg, patch=patch, target=spec)


def _type_name(cls: type) -> str:
    """How a registry target names a type: ``int``, ``decimal.Decimal``, ``shop.cart.Cart``."""
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _type_names(cls: type) -> tuple[str, ...]:
    return (cls.__qualname__, f"{cls.__module__}.{cls.__qualname__}")


def _find_type(name: str, module: types.ModuleType) -> type | None:
    """The class ``name`` stands for, if it is a builtin, the target module's, or importable."""
    modname, _, qualname = name.rpartition(".")
    holders: list[Any] = [builtins, module]
    if modname:
        holders = [sys.modules.get(modname)]
    for holder in holders:
        obj = holder
        for part in (qualname if modname else name).split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, type):
            return obj
    return None


def wrapper_names(obj: Any) -> tuple[str, ...]:
    """The decorators ``obj`` is made of, outermost first, down its ``__wrapped__`` chain.

    A Python wrapper by its code's qualname (``functools.wraps`` copies the wrapped
    function's names), another one by its type (``functools._lru_cache_wrapper``).
    """
    return tuple(
        w.__code__.co_qualname
        if type(w) is types.FunctionType
        else f"{type(w).__module__}.{type(w).__qualname__}"
        for w in _wrapped_chain(obj)[:-1]
    )


def undecorated(target: Target, new: Any, *, patch: str) -> Any:
    """The function a replacement stands for: ``new``, or, written under the target's
    decorators (``@contextmanager``, ``@lru_cache``, ``@logged``), the function under them.

    The target's decorators keep applying to the function a patch replaces, with what
    they were made with; written under them too, they would apply twice. Written
    under other decorators than the target's, or under the same made otherwise
    (``@retry(5)`` over ``@retry(3)``, an attribute a decorator set to another value),
    ``VerificationFailed``: the patch would not do what it says.
    """
    decorated = hasattr(new, "__wrapped__")
    written = wrapper_names(new) if target.wrappers and decorated else ()
    if not written:  # written plain, or a target under no decorator: the replacement as is
        if not decorated:  # (one under decorators its target lacks is refused as such)
            _refuse_made_otherwise(target, [target.function], [new], patch)
        return new
    if written == target.wrappers:
        chain = _wrapped_chain(new)
        running = target.outermost if target.outermost is not None else target.function
        _refuse_made_otherwise(target, _wrapped_chain(running), chain, patch)
        return chain[-1]
    msg = (
        f"patch {patch}: the replacement for {target.spec} is written under the decorators "
        f"{', '.join(written)}, but {target.spec} runs under {', '.join(target.wrappers)}, "
        "which keep applying to the function a patch replaces. Write the replacement plain "
        "(or under exactly the target's decorators); a change of decorators needs a baseline"
    )
    raise VerificationFailed(msg, patch=patch, target=target.spec)


def _refuse_made_otherwise(
    target: Target, running: Sequence[Any], written: Sequence[Any], patch: str
) -> None:
    changes = made_otherwise(running, written)
    if changes:
        msg = (
            f"patch {patch}: the replacement for {target.spec} was made otherwise than the "
            f"running function: {'; '.join(changes)}. A patch swaps code: the running function "
            "and its decorators' wrappers keep what they were made with (a decorator's "
            "arguments, attributes set on them). Write the replacement plain to keep them as "
            "they are; changing them needs a baseline (or a patch of the code that reads them)"
        )
        raise VerificationFailed(msg, patch=patch, target=target.spec)


def unwrap(obj: Any, spec: str, *, patch: str) -> tuple[types.FunctionType, tuple[Any, ...]]:
    """The Python function at the end of ``obj``'s ``__wrapped__`` chain, and the caches
    on the way (what has a ``cache_clear``).

    ``NotPatchable`` if there is none, or if it is a decorator's wrapper hiding the
    function ``spec`` names (no ``__wrapped__``).
    """
    if type(obj) is types.FunctionType and not obj.__dict__:  # the usual target: no lookups
        if obj.__closure__ is not None:
            _refuse_hidden(obj, spec, patch)
        return obj, ()
    chain = _wrapped_chain(obj)
    function = _unwrap(chain[-1], spec, patch)
    if function.__closure__ is not None:  # without cells, nothing can hide in it
        _refuse_hidden(function, spec, patch)
    return function, tuple(w for w in chain if callable(getattr(w, "cache_clear", None)))


def home_module(func: types.FunctionType) -> types.ModuleType | None:
    """The module whose namespace ``func``'s code looks its global names up in; ``None``
    when that namespace is no imported module's (code made by ``exec``, as attrs makes)."""
    namespace = func.__globals__
    name = namespace.get("__name__")
    module = sys.modules.get(name) if isinstance(name, str) else None
    return module if module is not None and vars(module) is namespace else None


def written_elsewhere(
    spec: str, home: types.ModuleType, *, patch: str, suggestion: str, how: str = "replace"
) -> NotPatchable:
    """The refusal of target ``spec`` whose code was written in (and runs in) module
    ``home``, not in the module the target names, which only holds it (imported)."""
    named = spec.partition(":")[0]
    msg = (
        f"patch {patch}: target {spec} was written in module {home.__name__}, whose names its "
        f"code looks up, and {named} only holds it (imported from there): a replacement "
        f"would run in {home.__name__} while what it needs was checked against, and "
        f"brought into, {named}. Name the target where it was written: "
        f"@patch.{how}('{home.__name__}:{suggestion}'), which every reference to it sees "
        "all the same"
    )
    return NotPatchable(msg, patch=patch, target=spec)


def resolve_class(spec: str, *, patch: str) -> tuple[types.ModuleType, type]:
    module, obj, _, _ = _lookup(spec, patch)
    if not isinstance(obj, type):
        msg = (
            f"patch {patch}: target {spec} is a {type(obj).__name__}, not a class; "
            "use patch.replace for functions"
        )
        raise NotPatchable(msg, patch=patch, target=spec)
    refuse_own(obj.__module__, patch=patch, target=spec)
    return module, obj


def _wrapped_chain(obj: Any) -> list[Any]:
    """``obj``, then what its ``__wrapped__`` leads to, down to the innermost (no cycles)."""
    chain = [obj]
    seen = {id(obj)}
    while True:
        try:
            inner = chain[-1].__wrapped__
        except AttributeError:
            return chain
        except Exception:  # a __getattr__ that raises something else: no further
            return chain
        if id(inner) in seen:
            return [obj]  # a cycle: none of it is the function
        seen.add(id(inner))
        chain.append(inner)


def _unwrap(inner: Any, spec: str, patch: str) -> types.FunctionType:
    """The innermost Python function of a ``__wrapped__`` chain (the decorators keep applying)."""
    if isinstance(inner, types.FunctionType):
        return inner
    if isinstance(inner, type):
        what = "a class; patch a class with patch.replace_class"
    elif isinstance(inner, types.BuiltinFunctionType | types.MethodDescriptorType):
        what = "a builtin or C-extension function, which has no Python code to replace"
    elif isinstance(inner, types.WrapperDescriptorType | types.MethodWrapperType):
        what = "a slot wrapper of a C type, which has no Python code to replace"
    elif callable(inner):
        what = f"a callable {type(inner).__name__} object, not a Python function"
    else:
        what = f"a {type(inner).__name__}, not a function"
    msg = (
        f"patch {patch}: target {spec} is {what}; patch the Python function that "
        "calls it instead, or ship the change as a baseline"
    )
    raise NotPatchable(msg, patch=patch, target=spec)


def _refuse_hidden(function: types.FunctionType, spec: str, patch: str) -> None:
    """``NotPatchable`` if ``function`` is a decorator's wrapper hiding the target's function.

    A wrapper without ``__wrapped__`` (a decorator not using ``functools.wraps``)
    is what the name leads to; the function the user means sits in its closure.
    Replacing the wrapper's code would silently drop the decorators.
    """
    qualname = spec.partition(":")[2]
    if function.__code__.co_qualname == qualname:
        return
    for suffix in (".setter", ".deleter", ".getter"):
        qualname = qualname.removesuffix(suffix)
    if function.__code__.co_qualname == qualname:
        return
    path = _path_to(function, qualname, depth=8)
    if not path:
        return  # a closure some factory made: patching it patches what the name holds
    wrappers = [f"{f.__module__}:{f.__code__.co_qualname}" for f in path[:-1]]
    name = qualname.rpartition(".")[2]
    msg = (
        f"patch {patch}: target {spec} is hidden by decorator wrappers that do not keep "
        f"__wrapped__ (functools.wraps): {spec.partition(':')[0]}:{qualname} leads to "
        f"{', around '.join(wrappers)}, around {name} itself. Replacing it would replace "
        f"{wrappers[0]} and drop the decorators. The ways in: give those decorators "
        f"functools.wraps (a baseline), then {name} is patched under them; or, to change "
        f"what a wrapper does for every function it wrapped, target {wrappers[0]} "
        "(a nested function)"
    )
    raise NotPatchable(msg, patch=patch, target=spec)


def _path_to(function: types.FunctionType, qualname: str, depth: int) -> list[types.FunctionType]:
    """Functions from ``function`` down closure cells to one whose code is ``qualname``."""
    if function.__code__.co_qualname == qualname:
        return [function]
    if depth == 0:
        return []
    for cell in function.__closure__ or ():
        try:
            held = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        for inner in _wrapped_chain(held):
            if isinstance(inner, types.FunctionType) and inner is not function:
                path = _path_to(inner, qualname, depth - 1)
                if path:
                    return [function, *path]
    return []


def accessor_of(obj: Any, accessor: str) -> Any:
    """The plain function a replacement declares, for any way the user wrote it."""
    if isinstance(obj, classmethod | staticmethod):
        return obj.__func__
    if isinstance(obj, property):
        return getattr(obj, accessor or "fget") or obj.fget
    if isinstance(obj, functools.cached_property):
        return obj.func
    return obj
